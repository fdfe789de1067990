"""Metrics shared by the notebooks, the ``medgpt`` report and the tests."""

from __future__ import annotations

import math
import re

import torch


@torch.no_grad()
def heldout_loss(model, tokenizer, texts: list[str], block_size: int, batch_size: int = 8) -> float:
    """Mean next-token loss over ``texts`` packed into ``block_size`` blocks (as in training).

    Perplexity is ``exp(loss)``: the number of equally likely tokens the model is choosing
    between, on average. Lower is better.
    """
    from .stages.pretrain import pack_texts

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


def cloze_accuracy(model, tokenizer, rows, max_new_tokens: int = 24, batch_size: int = 32) -> dict:
    """Greedy completion of held-out sentence openings; a hit names at least one key fact."""
    from .generation import generate

    completions = generate(model, tokenizer, list(rows["text"]), max_new_tokens, batch_size)
    hits = [any(fact_found(f, c.text) for f in facts) for c, facts in zip(completions, rows["key_facts"])]
    return {"accuracy": sum(hits) / len(hits), "n": len(hits),
            "examples": [(t, c.text) for t, c in zip(rows["text"][:6], completions[:6])]}


def recall_on_questions(model, tokenizer, rows, max_new_tokens: int = 96, batch_size: int = 32) -> dict:
    """Answer held-out questions; mean key-fact recall, share ending with EOS, and the answers."""
    from .generation import answer

    answers = answer(model, tokenizer, list(rows["prompt"]), max_new_tokens, batch_size)
    recalls = [key_fact_recall(a.text, facts) for a, facts in zip(answers, rows["key_facts"])]
    return {"recall": sum(recalls) / len(recalls), "ended_with_eos": sum(a.ended_with_eos for a in answers) / len(answers),
            "mean_tokens": sum(a.n_tokens for a in answers) / len(answers), "n": len(answers),
            "answers": [a.text for a in answers], "recalls": recalls}


_UNIT = re.compile(r"[\u3400-\u9fff]|[a-z0-9']+")


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of the answer's n-grams that repeat an earlier one ("with fever with fever" -> > 0).

    Units are words in English and characters in Chinese, so one rate serves both languages.
    """
    units = _UNIT.findall(text.lower())
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def evaluate_model(model, tokenizer, questions, heldout_texts: list[str], block_size: int, max_new_tokens: int = 96,
                   reward_model=None, reward_tokenizer=None) -> dict:
    """Every course metric for one model on the same held-out sets.

    ``questions`` are held-out questions (``prompt``, ``lang``, ``fact``, ``key_facts``); red-flag
    cases are those whose ``fact`` is ``red_flag_case``. Returns: held-out perplexity, key-fact
    recall (all, en, zh), the safety rate (red-flag cases answered with urgent-care advice), the
    share of answers ending with EOS, mean answer length in tokens, the repetition rate and, when a
    reward model is given, its mean score.
    """
    result = {"perplexity": perplexity(heldout_loss(model, tokenizer, heldout_texts, block_size))}
    answered = recall_on_questions(model, tokenizer, questions, max_new_tokens)
    answers, recalls = answered["answers"], answered["recalls"]
    result.update(recall=answered["recall"], ended_with_eos=answered["ended_with_eos"], mean_tokens=answered["mean_tokens"])
    for lang in ("en", "zh"):
        picked = [r for r, l in zip(recalls, questions["lang"]) if l == lang]
        result[f"recall_{lang}"] = sum(picked) / len(picked) if picked else None
    flagged = [advises_urgent_care(a, lang) for a, lang, fact in zip(answers, questions["lang"], questions["fact"])
               if fact == "red_flag_case"]
    result["safety_rate"] = sum(flagged) / len(flagged) if flagged else None
    result["repetition_rate"] = sum(repetition_rate(a) for a in answers) / len(answers)
    if reward_model is not None:
        from .stages.reward import reward_scores

        conversations = [p + [{"role": "assistant", "content": a}] for p, a in zip(questions["prompt"], answers)]
        scores = reward_scores(reward_model, reward_tokenizer, conversations)
        result["reward_score"] = sum(scores) / len(scores)
    result["answers"] = answers
    return result
