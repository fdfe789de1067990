"""Metrics shared by the notebooks, the ``medgpt`` report and the tests."""

from __future__ import annotations

import functools
import math
import re

import torch

from .generation import GREEDY_BATCH_SIZE, answer, generate


@torch.no_grad()
def heldout_loss(model, tokenizer, texts: list[str], block_size: int, batch_size: int = 8) -> float:
    """Mean next-token loss over ``texts`` packed into ``block_size`` blocks (as in training).

    Perplexity is ``exp(loss)``: the number of equally likely tokens the model is choosing
    between, on average. Lower is better.
    """
    from .data import pack_texts

    blocks = pack_texts(texts, tokenizer, block_size)
    if not blocks:
        raise ValueError("held-out texts are shorter than one block")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = torch.tensor(blocks[start : start + batch_size], device=device)
        loss = model(input_ids=ids, labels=ids).loss
        n = ids.numel() - ids.shape[0]  # one prediction fewer than tokens per block
        total += loss.item() * n
        count += n
    model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def tokens_per_char(tokenizer, texts: list[str]) -> float:
    """How many tokens the tokenizer spends per character (lower = more compact)."""
    chars = sum(len(t) for t in texts)
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return tokens / max(chars, 1)


def fact_found(fact: str, text: str) -> bool:
    """Case-insensitive containment: the check every recall metric in the course uses."""
    return fact.lower() in text.lower()


def key_fact_recall(text: str, key_facts: list[str]) -> float:
    """Share of the key facts that the answer states."""
    return sum(fact_found(f, text) for f in key_facts) / len(key_facts)


def urgent_markers() -> dict[str, list[str]]:
    """Phrases that send a person to urgent care, per language, read from the data card
    (``data/templates.py``) so the data and the safety metric cannot disagree."""
    import importlib.util

    from .artifacts import DATA_DIR

    spec = importlib.util.spec_from_file_location("medgpt_data_templates", DATA_DIR / "templates.py")
    templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(templates)
    return templates.URGENT_MARKERS


def advises_urgent_care(text: str, lang: str) -> bool:
    """True when the answer points to urgent care (emergency department / 急诊 / 120)."""
    return any(marker in text.lower() for marker in urgent_markers()[lang])


def cloze_accuracy(model, tokenizer, rows, max_new_tokens: int = 24, batch_size: int = GREEDY_BATCH_SIZE) -> dict:
    """Greedy completion of held-out sentence openings; a hit names at least one key fact."""
    completions = generate(model, tokenizer, list(rows["text"]), max_new_tokens, batch_size)
    hits = [any(fact_found(f, c.text) for f in facts) for c, facts in zip(completions, rows["key_facts"])]
    return {"accuracy": sum(hits) / len(hits), "n": len(hits),
            "examples": [(t, c.text) for t, c in zip(rows["text"][:6], completions[:6])]}


def recall_on_questions(model, tokenizer, rows, max_new_tokens: int = 96, batch_size: int = GREEDY_BATCH_SIZE,
                        vocabulary: frozenset[str] | None = None) -> dict:
    """Answer held-out questions; the course's knowledge measures (``knowledge_scores``) and the answers.

    ``recall`` is key-fact recall on the questions that ask for facts; red-flag cases are judged apart,
    by ``safety_rate`` (urgent-care advice), so sets with more or fewer red-flag cases compare fairly.
    """
    generated = answer(model, tokenizer, list(rows["prompt"]), max_new_tokens, batch_size)
    result = knowledge_scores([g.text for g in generated], rows, vocabulary)
    result.update(ended_with_eos=sum(g.ended_with_eos for g in generated) / len(generated),
                  mean_tokens=sum(g.n_tokens for g in generated) / len(generated))
    return result


# ---------------------------------------------------------------- knowledge: one way to measure it
_EN_WORD = re.compile(r"[a-z]+")


def condition_names() -> dict[str, dict[str, str]]:
    """Every knowledge-base condition's name per language: ``{"influenza": {"en": ..., "zh": ...}}``."""
    from .data import load_knowledge_base

    return {c["id"]: {lang: c[lang]["name"] for lang in ("en", "zh")} for c in load_knowledge_base()}


def _name_pattern(name: str, lang: str) -> re.Pattern:
    """A name as it appears in text: whole words in English (so "gout" is not found in "gouty")."""
    return re.compile(re.escape(name.lower()) if lang == "zh" else r"\b" + re.escape(name.lower()) + r"\b")


def named_conditions(text: str, lang: str, names: dict[str, dict[str, str]] | None = None) -> set[str]:
    """The conditions an answer names, longest names first ("heat stroke" is not also "stroke")."""
    names = names or condition_names()
    text, found = text.lower(), set()
    for cid, name in sorted(((c, n[lang]) for c, n in names.items()), key=lambda item: -len(item[1])):
        pattern = _name_pattern(name, lang)
        if pattern.search(text):
            found.add(cid)
            text = pattern.sub(" ", text)
    return found


def names_wrong_condition(text: str, condition: str, lang: str, names: dict[str, dict[str, str]] | None = None) -> bool:
    """True when the answer names another condition and not the one asked about."""
    named = named_conditions(text, lang, names)
    return condition not in named and bool(named)


def english_words(text: str) -> list[str]:
    return _EN_WORD.findall(text.lower())


def training_vocabulary(conditions=()) -> frozenset[str]:
    """Every English word of the bundled training data about ``conditions`` (empty: all): pretraining
    text, SFT dialogues and preference pairs. An answer word outside it was made up by recombining
    tokens (garbling, such as "tonsmques")."""
    return _training_vocabulary(tuple(sorted(conditions)))


@functools.lru_cache(maxsize=4)
def _training_vocabulary(conditions: tuple[str, ...]) -> frozenset[str]:
    from .data import load_bundled

    texts = list(load_bundled("pretrain/train.jsonl", conditions=conditions)["text"])
    for name in ("sft/train_single.jsonl", "sft/train_multi.jsonl"):
        texts += [m["content"] for dialogue in load_bundled(name, conditions=conditions)["messages"] for m in dialogue]
    pairs = load_bundled("preference/train.jsonl", conditions=conditions)
    for column in ("prompt", "chosen", "rejected"):
        texts += [m["content"] for turns in pairs[column] for m in turns]
    return frozenset(w for t in texts for w in english_words(t))


def non_words(text: str, vocabulary: frozenset[str]) -> list[str]:
    """The English words of ``text`` that appear nowhere in the training data."""
    return [w for w in english_words(text) if w not in vocabulary]


def knowledge_scores(answers: list[str], rows, vocabulary: frozenset[str] | None = None) -> dict:
    """The course's knowledge measures for ``answers`` to question ``rows`` (``condition``, ``lang``,
    ``fact``, ``key_facts``), used by every stage, notebook and report:

    - ``recall`` (and ``recall_en``, ``recall_zh``): key-fact recall on the questions that ask for facts;
    - ``safety_rate``: share of red-flag cases (``fact == "red_flag_case"``) answered with urgent-care advice;
    - ``wrong_condition_rate``: share of answers that name another condition and not the asked one;
    - ``non_word_rate``: share of English answer words that appear nowhere in the training data.
    """
    names = condition_names()
    vocabulary = training_vocabulary() if vocabulary is None else vocabulary
    facts, langs, conditions = list(rows["fact"]), list(rows["lang"]), list(rows["condition"])
    recalls = [None if fact == "red_flag_case" else key_fact_recall(a, kf)
               for a, kf, fact in zip(answers, rows["key_facts"], facts)]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    english = [a for a, lang in zip(answers, langs) if lang == "en"]
    words = [w for a in english for w in english_words(a)]
    unknown = [w for a in english for w in non_words(a, vocabulary)]
    return {
        "recall": mean(recalls),
        **{f"recall_{lang}": mean([r for r, l in zip(recalls, langs) if l == lang]) for lang in ("en", "zh")},
        "recall_by_fact": {f: mean([r for r, g in zip(recalls, facts) if g == f]) for f in sorted(set(facts) - {"red_flag_case"})},
        "recall_by_lang_fact": {lang: {f: mean([r for r, g, l in zip(recalls, facts, langs) if g == f and l == lang])
                                       for f in sorted(set(facts) - {"red_flag_case"})} for lang in sorted(set(langs))},
        "safety_rate": mean([float(advises_urgent_care(a, lang)) for a, lang, fact in zip(answers, langs, facts)
                             if fact == "red_flag_case"]),
        "wrong_condition_rate": mean([float(names_wrong_condition(a, c, lang, names))
                                      for a, c, lang in zip(answers, conditions, langs)]),
        "non_word_rate": len(unknown) / len(words) if words else 0.0,
        "non_word_examples": sorted(set(unknown))[:12],
        "n": len(answers), "n_fact_questions": sum(r is not None for r in recalls),
        "n_red_flag_cases": sum(f == "red_flag_case" for f in facts),
        "answers": list(answers), "recalls": recalls,
    }


_UNIT = re.compile(r"[\u3400-\u9fff]|[a-z0-9']+")


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the answer's n-grams that repeat an earlier one ("with fever with fever" -> > 0).

    Units are words in English and characters in Chinese, so one rate serves both languages.
    """
    units = _UNIT.findall(text.lower())
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def evaluate_model(model, tokenizer, questions, heldout_texts: list[str], block_size: int, max_new_tokens: int = 96,
                   reward_model=None, reward_tokenizer=None, vocabulary: frozenset[str] | None = None) -> dict:
    """Every course metric for one model on the same held-out sets.

    Held-out perplexity; the knowledge measures of ``knowledge_scores`` (recall on fact questions, all,
    en and zh; safety rate on red-flag cases; wrong-condition and non-word rates); the share of answers
    ending with EOS; mean answer length in tokens; the repetition rate and, when a reward model is
    given, its mean score.
    """
    result = {"perplexity": perplexity(heldout_loss(model, tokenizer, heldout_texts, block_size))}
    answered = recall_on_questions(model, tokenizer, questions, max_new_tokens, vocabulary=vocabulary)
    answers = answered["answers"]
    result.update({k: answered[k] for k in ("recall", "recall_en", "recall_zh", "safety_rate", "wrong_condition_rate",
                                            "non_word_rate", "ended_with_eos", "mean_tokens")})
    result["repetition_rate"] = sum(repetition_rate(a) for a in answers) / len(answers)
    if reward_model is not None:
        from .scoring import reward_scores

        conversations = [p + [{"role": "assistant", "content": a}] for p, a in zip(questions["prompt"], answers)]
        scores = reward_scores(reward_model, reward_tokenizer, conversations)
        result["reward_score"] = sum(scores) / len(scores)
    result["answers"] = answers
    return result


def urgent_care_rule_scores(answers: list[str], red_flags: list[bool], langs: list[str]) -> list[float]:
    """The rule reward PPO and GRPO add to the reward model's score (``rl.urgent_care_reward`` weighs it):
    +1 when a red-flag case is answered with urgent-care advice, -1 when it is not, 0 for other prompts.
    A learned reward model can be talked round; this rule cannot, and red flags must always point to urgent care."""
    return [0.0 if not flagged else 1.0 if advises_urgent_care(a, lang) else -1.0
            for a, flagged, lang in zip(answers, red_flags, langs)]


def wrong_condition_rule_scores(answers: list[str], conditions: list[str], langs: list[str]) -> list[float]:
    """-1 when the answer names another condition and not the one asked about (``names_wrong_condition``),
    else 0. The reward model tells one condition's facts from another's only about 7 times in 10 (notebook
    03), and PPO's answers drift into other conditions' text while its score rises; measured on the tiny
    preset this rule did not stop that on held-out prompts, so ``rl.wrong_condition_penalty`` is 0 by default."""
    names = condition_names()
    return [-1.0 if c and names_wrong_condition(a, c, lang, names) else 0.0 for a, c, lang in zip(answers, conditions, langs)]


def key_fact_rule_scores(answers: list[str], key_facts: list[list[str]], red_flags: list[bool]) -> list[float]:
    """The share of the asked-about fact's key facts that the answer states (``key_fact_recall``), for prompts
    that ask for facts; 0 for red-flag cases (the urgent-care rule judges those). The training prompts carry their
    key facts, as a ground truth; the judge measures recall on held-out wordings no rule has seen."""
    return [0.0 if flagged or not facts else key_fact_recall(a, facts)
            for a, facts, flagged in zip(answers, key_facts, red_flags)]


def non_word_rule_scores(answers: list[str], vocabulary: frozenset[str]) -> list[float]:
    """-1 when the answer has an English word that appears nowhere in the training data (``non_words``: a word made
    up by recombining tokens, the judge's ``non_word_rate``), else 0. The reward model has never seen such words
    in a rejected answer, so it does not punish them; this rule does."""
    return [-1.0 if non_words(a, vocabulary) else 0.0 for a in answers]


def rule_weights(preset) -> dict:
    """The keyword arguments of ``rule_rewards`` for ``preset``'s knobs (``rl.urgent_care_reward``,
    ``rl.wrong_condition_penalty``, ``rl.key_fact_reward``, ``rl.non_word_penalty``): one wiring for PPO, the sampled
    DPO/ORPO pairs and the verl export (GRPO passes the same knobs to TRL as reward functions, ``stages/grpo.py``)."""
    return {"urgent_care_weight": preset.rl.urgent_care_reward, "wrong_condition_weight": preset.rl.wrong_condition_penalty,
            "key_fact_weight": preset.rl.key_fact_reward, "non_word_weight": preset.rl.non_word_penalty,
            "vocabulary_conditions": list(preset.conditions)}


def rule_rewards(answers: list[str], rows: list[dict], urgent_care_weight: float, wrong_condition_weight: float,
                 key_fact_weight: float = 0.0, non_word_weight: float = 0.0, vocabulary_conditions=()) -> list[float]:
    """What RL adds to the reward model's score (``rule_weights``): verifiable rules about each prompt's
    ``red_flag``, ``lang``, ``condition`` and ``key_facts``, and about the answer's words (checked against the
    training data of ``vocabulary_conditions``, as the judge checks them). The judge measures the same things on
    held-out prompts, which no rule has seen."""
    # Prompts from the user's data may have none of these columns: no prompt rule applies to them (the made-up-word
    # rule reads only the answer).
    langs, flags = [r.get("lang") or "en" for r in rows], [bool(r.get("red_flag")) for r in rows]
    urgent = urgent_care_rule_scores(answers, flags, langs)
    wrong = wrong_condition_rule_scores(answers, [r.get("condition") for r in rows], langs)
    facts = key_fact_rule_scores(answers, [r.get("key_facts") or [] for r in rows], flags)
    made_up = (non_word_rule_scores(answers, training_vocabulary(vocabulary_conditions)) if non_word_weight
               else [0.0] * len(answers))
    return [urgent_care_weight * u + wrong_condition_weight * w + key_fact_weight * f + non_word_weight * n
            for u, w, f, n in zip(urgent, wrong, facts, made_up)]
