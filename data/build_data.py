"""Generate every bundled data file from the knowledge base in data/source/ (deterministic).

    python data/build_data.py            # rewrite data/ in place
    python data/build_data.py --out DIR  # write somewhere else (the reproducibility test does)

The same seed and sources give the same bytes: tests/test_bundled_data.py regenerates into a
temporary folder and compares every file with the committed one.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]
import templates as T  # noqa: E402

SEED = 20261125
LANGS = ("en", "zh")
FACTS = T.LIST_FACTS
REJECTED_KINDS = ("other_condition", "off_question", "unsafe", "evasive", "truncated", "incomplete")


# ---------------------------------------------------------------- knowledge base
def load_conditions() -> list[dict]:
    from medgpt_utils.data import load_knowledge_base

    return load_knowledge_base()


# ---------------------------------------------------------------- sentence builders
def join(items: list[str], lang: str, word: str = "and") -> str:
    if lang == "zh":
        conj = "和" if word == "and" else "或"
        return items[0] if len(items) == 1 else "、".join(items[:-1]) + conj + items[-1]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" {word} " + items[-1]


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def urgent_advice(kb: dict, lang: str, flags: list[str]) -> str:
    if lang == "zh":
        return f"如果出现{join(flags, lang, 'or')}，请立即去急诊或拨打120。"
    return f"If there is {join(flags, lang, 'or')}, go to the emergency department or call an ambulance right away."


def fact_answer(kb: dict, lang: str, fact: str, items: list[str] | None = None, with_urgent: bool = True) -> str:
    """The answer to a question about ``fact``; ``items`` may be a subset (less complete)."""
    name = kb["name"]
    items = kb[fact] if items is None and fact != "department" else items
    if lang == "zh":
        text = {
            "definition": lambda: kb["definition"],
            "symptoms": lambda: f"{name}的常见症状包括{join(items, lang)}。",
            "causes": lambda: f"{name}的常见原因和危险因素包括{join(items, lang)}。",
            "department": lambda: f"{name}一般应到{kb['department']}就诊。",
            "self_care": lambda: f"应对{name}可以：{join(items, lang)}。症状加重时请及时就医。",
            "red_flags": lambda: f"{name}患者如果出现{join(items, lang, 'or')}，需要立即去急诊或拨打120急救电话。",
            "prevention": lambda: f"预防{name}的方法有{join(items, lang)}。",
        }[fact]()
    else:
        text = {
            "definition": lambda: kb["definition"],
            "symptoms": lambda: f"Common symptoms of {name} include {join(items, lang)}.",
            "causes": lambda: f"Common causes and risk factors of {name} include {join(items, lang)}.",
            "department": lambda: f"For {name}, see a doctor in {kb['department']}.",
            "self_care": lambda: f"To manage {name}: {join(items, lang)}. See a doctor if symptoms get worse.",
            "red_flags": lambda: f"With {name}, get emergency care right away if you notice {join(items, lang, 'or')}. Call your local emergency number or go to the nearest emergency department.",
            "prevention": lambda: f"To lower the risk of {name}: {join(items, lang)}.",
        }[fact]()
    if fact == "symptoms" and with_urgent:
        text += " " + urgent_advice(kb, lang, kb["red_flags"][:2])
    return text


def red_flag_answer(kb: dict, lang: str, flag: str) -> str:
    if lang == "zh":
        return (f"{kb['name']}患者出现{flag}可能提示病情严重。请立即就医：拨打120急救电话或尽快前往最近的医院急诊科，"
                f"不要在家等待观察。")
    return (f"{cap(flag)} with {kb['name']} can be a sign of a serious problem. Seek emergency care now: call your "
            f"local emergency number or go to the nearest emergency department. Do not wait to see if it passes.")


def ask(template: str, kb: dict, lang: str, flag: str = "") -> str:
    text = template.format(name=kb["name"], flag=flag)
    return cap(text) if lang == "en" else text


def key_facts(kb: dict, lang: str, fact: str) -> list[str]:
    if fact == "department":
        return [kb["department"]]
    if fact == "red_flag_case":
        return list(T.URGENT_MARKERS[lang][:1])
    return list(kb[fact])


# ---------------------------------------------------------------- pretraining corpus
def paragraphs(kb: dict, lang: str, rng: random.Random) -> list[str]:
    """Encyclopedia-style paragraphs about one condition (several wordings of the same facts)."""
    n, dept = kb["name"], kb["department"]
    j = lambda key, word="and": join(kb[key], lang, word)  # noqa: E731
    if lang == "zh":
        return [
            f"{kb['definition']}{n}的常见症状包括{j('symptoms')}。常见原因有{j('causes')}。患者通常到{dept}就诊。",
            f"{n}患者可以采取以下措施：{j('self_care')}。预防{n}的方法包括{j('prevention')}。",
            f"{n}的危险信号包括{j('red_flags', 'or')}。出现这些情况时应立即去急诊或拨打120急救电话。",
            f"关于{n}：它的典型表现是{j('symptoms')}。{n}一般由{j('causes')}引起。诊治{n}的科室是{dept}。",
            f"{n}的日常管理包括{j('self_care')}。为了降低患病风险，建议{j('prevention')}。如有{j('red_flags', 'or')}，要尽快急诊就医。",
            f"{kb['definition']}{n}的危险因素有{j('causes')}。",
            f"{n}概览。{kb['definition']}症状：{j('symptoms')}。自我护理：{j('self_care')}。预防：{j('prevention')}。紧急信号：{j('red_flags', 'or')}，需立即急诊。",
        ]
    N = cap(n)
    return [
        f"{kb['definition']} Common symptoms of {n} include {j('symptoms')}. Typical causes are {j('causes')}. Patients are usually seen in {dept}.",
        f"People with {n} can help themselves: {j('self_care')}. Ways to prevent {n}: {j('prevention')}.",
        f"Warning signs of {n} include {j('red_flags', 'or')}. Anyone with these signs needs emergency care right away.",
        f"About {n}: it typically presents with {j('symptoms')}. {N} is usually caused by {j('causes')}. The department that treats {n} is {dept}.",
        f"Everyday care for {n} includes {j('self_care')}. To lower the risk: {j('prevention')}. With {j('red_flags', 'or')}, go to the emergency department at once.",
        f"{kb['definition']} Risk factors for {n} include {j('causes')}.",
        f"{N} at a glance. {kb['definition']} Symptoms: {j('symptoms')}. Self-care: {j('self_care')}. Prevention: {j('prevention')}. Urgent signs: {j('red_flags', 'or')}; these need emergency care.",
    ]


VARIED_PARAGRAPHS = 8  # per condition and language, besides the seven fixed ones


def varied_paragraphs(kb: dict, lang: str, rng: random.Random) -> list[str]:
    """Paragraphs of three to five facts, each in a frame drawn from ``PRETRAIN_FRAMES``."""
    frames = T.PRETRAIN_FRAMES[lang]
    result = []
    for _ in range(VARIED_PARAGRAPHS):
        sentences = []
        for fact in rng.sample(FACTS, rng.randint(3, 5)):
            word = "or" if fact == "red_flags" else "and"
            items = "" if fact == "department" else join(kb[fact], lang, word)
            text = rng.choice(frames[fact]).format(n=kb["name"], N=cap(kb["name"]), x=items, d=kb["department"])
            sentences.append(text)
        result.append((" " if lang == "en" else "").join(sentences))
    return result


def heldout_paragraph(kb: dict, lang: str) -> str:
    n = kb["name"]
    if lang == "zh":
        return (f"{n}可表现为{join(kb['symptoms'], lang)}，与{join(kb['causes'], lang)}有关。就诊科室为{kb['department']}。"
                f"建议{join(kb['prevention'], lang)}。若出现{join(kb['red_flags'], lang, 'or')}，应立刻急诊就医。")
    return (f"In {n}, a person may have {join(kb['symptoms'], lang)}, often linked to {join(kb['causes'], lang)}. "
            f"It is managed in {kb['department']}. Helpful habits: {join(kb['prevention'], lang)}. "
            f"If {join(kb['red_flags'], lang, 'or')} occurs, seek emergency care at once.")


# ---------------------------------------------------------------- SFT
def partial(items: list[str], rng: random.Random) -> list[str]:
    """Real answers vary in completeness: all facts, some, or just one."""
    roll = rng.random()
    if roll < FULL_ANSWER_SHARE or len(items) == 1:
        return list(items)
    if roll < (1 + FULL_ANSWER_SHARE) / 2 and len(items) > 2:
        k = rng.randint(2, len(items) - 1)
    else:
        k = 1
    return sorted(rng.sample(items, k), key=items.index)


SFT_QUESTIONS_PER_FACT = 4  # wordings per condition, language and fact type in single-turn SFT
RED_FLAG_WORDINGS = 2  # single-turn SFT questions per red-flag sign
FULL_ANSWER_SHARE = 0.7  # share of training answers that list every fact; the rest list some or one


def hand_written_wordings() -> dict:
    """The hand-written training wordings per language and fact type (``training_wordings`` less the grammar's)."""
    return {lang: {fact: T.TRAIN_QUESTIONS[lang][fact] + T.EXTRA_SFT_QUESTIONS[lang].get(fact, [])
                   for fact in T.TRAIN_QUESTIONS[lang]} for lang in LANGS}


def grammar_wordings() -> dict:
    """The question grammar's wordings per language and fact type (none where the grammar has no clauses for it)."""
    return {lang: {fact: T.grammar_questions(lang, fact) if fact in T.GRAMMAR_CLAUSES[lang] else []
                   for fact in T.TRAIN_QUESTIONS[lang]} for lang in LANGS}


def sft_wordings(hand: list[str], grammar: list[str], rng: random.Random) -> list[str]:
    """The SFT_QUESTIONS_PER_FACT wordings one condition's fact is asked in: half from its ``hand``-written wordings,
    half from the question ``grammar``'s (all hand-written where the grammar has no clauses for the fact type). Drawn
    from the pooled wordings, 90% of the draws were the grammar's and recall on held-out wordings fell in Chinese; half
    and half raised it in both languages on three seeds of three (English on two; notebooks/EXPERIMENTS.md, ninth part)."""
    from_hand = SFT_QUESTIONS_PER_FACT // 2 if grammar else SFT_QUESTIONS_PER_FACT
    return rng.sample(hand, from_hand) + rng.sample(grammar, SFT_QUESTIONS_PER_FACT - from_hand)


def sft_single(conditions, rng: random.Random) -> list[dict]:
    rows, hand, grammar = [], hand_written_wordings(), grammar_wordings()
    for c in conditions:
        for lang in LANGS:
            kb = c[lang]
            for fact in ("definition",) + FACTS:
                for template in sft_wordings(hand[lang][fact], grammar[lang][fact], rng):
                    items = None if fact in ("definition", "department") else partial(kb[fact], rng)
                    answer = fact_answer(kb, lang, fact, items, with_urgent=rng.random() < 0.6)
                    rows.append({"instruction": ask(template, kb, lang), "input": "", "output": answer,
                                 "condition": c["id"], "lang": lang, "fact": fact})
            # Every red flag, in two wordings: red-flag cases stay about a fifth of the questions, so that
            # more wordings per fact type do not dilute the urgent-care lesson (measured: EXPERIMENTS.md).
            for flag in kb["red_flags"]:
                for template in rng.sample(T.TRAIN_QUESTIONS[lang]["red_flag_case"], RED_FLAG_WORDINGS):
                    rows.append({"instruction": ask(template, kb, lang, flag), "input": "", "output": red_flag_answer(kb, lang, flag),
                                 "condition": c["id"], "lang": lang, "fact": "red_flag_case"})
    rng.shuffle(rows)
    return rows


def sft_multi(conditions, rng: random.Random) -> list[dict]:
    rows = []
    for c in conditions:
        for lang in LANGS:
            kb = c[lang]
            for _ in range(2):
                facts = rng.sample(FACTS, rng.randint(2, 4))
                turns = []
                if rng.random() < 0.4:
                    turns.append({"from": "system", "value": rng.choice(T.SYSTEM_PROMPTS[lang])})
                for i, fact in enumerate(facts):
                    question = (ask(rng.choice(T.TRAIN_QUESTIONS[lang][fact]), kb, lang) if i == 0
                                else rng.choice(T.FOLLOW_UPS[lang][fact]))
                    turns.append({"from": "human", "value": question})
                    turns.append({"from": "gpt", "value": fact_answer(kb, lang, fact)})
                rows.append({"conversations": turns, "condition": c["id"], "lang": lang})
    rng.shuffle(rows)
    return rows


def sft_valid(conditions, rng: random.Random) -> list[dict]:
    rows = []
    for c in conditions:
        for lang in LANGS:
            kb, fact = c[lang], rng.choice(FACTS)
            rows.append({"instruction": ask(rng.choice(T.HELDOUT_QUESTIONS[lang][fact]), kb, lang), "input": "",
                         "output": fact_answer(kb, lang, fact), "condition": c["id"], "lang": lang, "fact": fact})
    return rows


# ---------------------------------------------------------------- preference pairs
def truncate(text: str, lang: str, rng: random.Random) -> str:
    cut = int(len(text) * rng.uniform(0.35, 0.6))
    if lang == "en":
        cut = text.rfind(" ", 0, cut)
    return text[:cut].rstrip(" ,.;:，。、")


def off_question_fact(fact: str, rng: random.Random, balanced: bool) -> str:
    """The kind of fact an off-question answer gives. Unbalanced (the first version, kept for the held-out pairs):
    the department half the time, so department answers were rejected far more often than chosen and a reward
    model learned that short department answers are bad. Balanced: any other kind, uniformly."""
    choices = [f for f in FACTS if f != fact]
    if not balanced and fact != "department" and rng.random() < 0.5:
        return "department"
    return rng.choice(choices)


def rejected_answer(kind, c, other, kb, lang, fact, flag, rng, balanced: bool = False) -> str:
    if kind == "other_condition":  # this condition's name, another condition's facts
        alien = dict(other[lang], name=kb["name"])
        return red_flag_answer(alien, lang, rng.choice(alien["red_flags"])) if fact == "red_flag_case" else fact_answer(alien, lang, fact)
    if kind == "off_question":  # right condition, wrong kind of fact
        return fact_answer(kb, lang, off_question_fact(fact, rng, balanced))
    if kind == "unsafe":
        return rng.choice(T.UNSAFE[lang])
    if kind == "evasive":
        return rng.choice(T.EVASIVE[lang])
    chosen = chosen_answer(kb, lang, fact, flag)
    if kind == "truncated":
        return truncate(chosen, lang, rng)
    if kind == "incomplete":
        return fact_answer(kb, lang, fact, kb[fact][:1], with_urgent=False)
    raise ValueError(kind)


def other_condition(conditions, index, lang, fact, rng):
    """Another condition whose facts of this kind differ (two may share a department)."""
    mine = conditions[index][lang][fact]
    while True:
        other = conditions[(index + rng.randint(1, len(conditions) - 1)) % len(conditions)]
        if other[lang][fact] != mine:
            return other


def chosen_answer(kb, lang, fact, flag) -> str:
    return red_flag_answer(kb, lang, flag) if fact == "red_flag_case" else fact_answer(kb, lang, fact)


def pair_row(conditions, index, lang, fact, kind, questions, rng, balanced: bool = False) -> dict:
    """One preference pair: the question about ``fact``, the right answer, and a rejected one of ``kind``."""
    c = conditions[index]
    kb = c[lang]
    flag = rng.choice(kb["red_flags"])
    other = other_condition(conditions, index, lang, "red_flags" if fact == "red_flag_case" else fact, rng)
    prompt = ask(rng.choice(questions[lang][fact]), kb, lang, flag)
    turns = []
    if rng.random() < 0.2:
        turns.append({"from": "system", "value": rng.choice(T.SYSTEM_PROMPTS[lang])})
    turns.append({"from": "human", "value": prompt})
    return {
        "conversations": turns,
        "chosen": chosen_answer(kb, lang, fact, flag),
        "rejected": rejected_answer(kind, c, other, kb, lang, fact, flag, rng, balanced),
        "rejected_kind": kind, "condition": c["id"], "lang": lang, "fact": fact,
    }


def preference_pairs(conditions, rng: random.Random, heldout: bool) -> list[dict]:
    """A pair per condition, language and fact type (three fact types when held out), of a random rejected kind."""
    questions = T.HELDOUT_QUESTIONS if heldout else T.TRAIN_QUESTIONS
    facts = ("red_flag_case",) + FACTS
    rows = []
    for index, c in enumerate(conditions):
        for lang in LANGS:
            chosen_facts = rng.sample(facts, 3) if heldout else facts
            for fact in chosen_facts:
                kinds = [k for k in REJECTED_KINDS if not (k == "incomplete" and fact in ("department", "red_flag_case"))]
                if fact == "red_flag_case" and rng.random() < 0.5:
                    kind = "unsafe"  # the safety lesson: a red flag must never be told to wait
                else:
                    kind = rng.choice(kinds)
                rows.append(pair_row(conditions, index, lang, fact, kind, questions, rng))
    rng.shuffle(rows)
    return rows


# The two rejected kinds that need knowledge rather than form: another condition's facts under this
# condition's name, and this condition's facts of another kind. A random kind per held-out question gave
# 14-31 pairs per kind on the tiny preset's 24 conditions, so one pair moved a kind by 0.03-0.07 and
# seeds by 0.2-0.4 (EXPERIMENTS.md); the held-out set adds one pair of each per condition, language and
# fact type. Adding the same to the training pairs was tried and did not help (EXPERIMENTS.md, r5).
KNOWLEDGE_KINDS = ("other_condition", "off_question")


def knowledge_pairs(conditions, rng: random.Random) -> list[dict]:
    rows = [pair_row(conditions, index, lang, fact, kind, T.HELDOUT_QUESTIONS, rng)
            for index in range(len(conditions)) for lang in LANGS
            for fact in ("red_flag_case",) + FACTS for kind in KNOWLEDGE_KINDS]
    rng.shuffle(rows)
    return rows


TRAIN_KNOWLEDGE_PAIRS = 1  # per condition, language, fact type and knowledge kind, in the reward model's training pairs


def training_wordings() -> dict:
    """Every training wording per language and fact type: the hand-written ones and the grammar's."""
    hand, grammar = hand_written_wordings(), grammar_wordings()
    return {lang: {fact: hand[lang][fact] + grammar[lang][fact] for fact in hand[lang]} for lang in LANGS}


def balance_off_question(rows: list[dict], conditions, rng: random.Random) -> list[dict]:
    """The off-question answers of ``rows`` drawn again, balanced (``off_question_fact``), from their own stream:
    the pairs were drawn the first way, and redrawing them here leaves every file after them as it was."""
    kb = {c["id"]: c for c in conditions}
    for row in rows:
        if row["rejected_kind"] == "off_question":
            row["rejected"] = fact_answer(kb[row["condition"]][row["lang"]], row["lang"], off_question_fact(row["fact"], rng, balanced=True))
    return rows


def training_knowledge_pairs(conditions, rng: random.Random) -> list[dict]:
    """Pairs of the two knowledge kinds for the reward model's training, asked in training wordings, with the
    off-question answer's kind of fact drawn uniformly (every kind of answer chosen about as often as rejected)."""
    wordings = training_wordings()

    def distinct_pair(index, lang, fact, kind):
        while True:  # another condition may share the asked red flag: then the two answers are the same
            row = pair_row(conditions, index, lang, fact, kind, wordings, rng, balanced=True)
            if row["chosen"] != row["rejected"]:
                return row

    rows = [distinct_pair(index, lang, fact, kind) for index in range(len(conditions)) for lang in LANGS
            for fact in ("red_flag_case",) + FACTS for kind in KNOWLEDGE_KINDS for _ in range(TRAIN_KNOWLEDGE_PAIRS)]
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------- prompts and held-out questions
def question_rows(conditions, rng: random.Random, heldout: bool, per_condition: int) -> list[dict]:
    """Prompts with the key facts a correct answer must contain; red-flag cases among them."""
    questions = T.HELDOUT_QUESTIONS if heldout else T.TRAIN_QUESTIONS
    rows = []
    for c in conditions:
        for lang in LANGS:
            kb = c[lang]
            facts = list(FACTS) + ["red_flag_case"] if per_condition == 0 else rng.sample(FACTS, per_condition) + ["red_flag_case"]
            for fact in facts:
                flag = rng.choice(kb["red_flags"]) if fact == "red_flag_case" else ""
                rows.append({
                    "prompt": [{"role": "user", "content": ask(rng.choice(questions[lang][fact]), kb, lang, flag)}],
                    "condition": c["id"], "lang": lang, "fact": fact, "red_flag": fact == "red_flag_case",
                    "key_facts": key_facts(kb, lang, fact),
                })
    return rows


def cloze_rows(conditions) -> list[dict]:
    """Held-out sentence openings about the knowledge base, for a greedy fact-completion test."""
    openings = {
        "en": {"symptoms": "The typical symptoms of {name} include", "causes": "The usual causes of {name} are",
               "department": "The hospital department for {name} is"},
        "zh": {"symptoms": "{name}的典型症状有", "causes": "{name}的主要病因有", "department": "{name}的就诊科室是"},
    }
    rows = []
    for c in conditions:
        for lang in LANGS:
            for fact, opening in openings[lang].items():
                rows.append({"text": ask(opening, c[lang], lang), "condition": c["id"], "lang": lang, "fact": fact,
                             "key_facts": key_facts(c[lang], lang, fact)})
    return rows


def handwritten_rows(conditions) -> list[dict]:
    """The questions written by hand in ``source/handwritten_questions.json`` (learner wordings that no
    template produces), with the key facts of the knowledge base, in the held-out questions' schema."""
    kb = {c["id"]: c for c in conditions}
    rows = []
    for line, q in enumerate(json.loads((HERE / "source" / "handwritten_questions.json").read_text(encoding="utf-8")), 1):
        if q["condition"] not in kb or q["lang"] not in LANGS or q["fact"] not in FACTS + ("red_flag_case",):
            raise ValueError(f"source/handwritten_questions.json item {line}: unknown condition, lang or fact in {q}")
        rows.append({"prompt": [{"role": "user", "content": q["question"]}], "condition": q["condition"], "lang": q["lang"],
                     "fact": q["fact"], "red_flag": q["fact"] == "red_flag_case",
                     "key_facts": key_facts(kb[q["condition"]][q["lang"]], q["lang"], q["fact"])})
    return rows


MC_FACTS = ("symptoms", "causes", "department")
MC_QUESTIONS = {
    "en": {"symptoms": "Which of the following is a typical symptom of {name}?",
           "causes": "Which of the following is a common cause of {name}?",
           "department": "Which hospital department usually treats {name}?"},
    "zh": {"symptoms": "下列哪一项是{name}的典型症状？", "causes": "下列哪一项是{name}的常见病因？",
           "department": "{name}通常应到医院哪个科室就诊？"},
}


def multiple_choice_rows(conditions, rng: random.Random) -> list[dict]:
    """Four-option questions for lm-eval-harness (``data/eval/lm_eval/``): one key fact of the condition against
    three of the same kind from other conditions that are not facts of it, in both languages. A question about one
    of the tiny preset's conditions takes its wrong choices from those conditions too: the tiny tokenizer is built
    from their text only, so choices from the other conditions would cost more tokens, and a model that knows
    nothing would pick the right (cheaper) choice by length alone."""
    from medgpt_utils.presets import TINY_CONDITIONS

    tiny = set(TINY_CONDITIONS)
    rows = []
    for c in conditions:
        same_set = [o for o in conditions if (o["id"] in tiny) == (c["id"] in tiny)] if c["id"] in tiny else conditions
        for lang in LANGS:
            for fact in MC_FACTS:
                own = set(key_facts(c[lang], lang, fact))
                pool = sorted({item for other in same_set if other["id"] != c["id"]
                               for item in key_facts(other[lang], lang, fact)} - own)
                choices = [rng.choice(sorted(own))] + rng.sample(pool, 3)
                rng.shuffle(choices)
                correct = next(i for i, choice in enumerate(choices) if choice in own)
                rows.append({"question": MC_QUESTIONS[lang][fact].format(name=c[lang]["name"]), "choices": choices,
                             "answer": correct, "condition": c["id"], "lang": lang, "fact": fact})
    return rows


# ---------------------------------------------------------------- writing
def dump_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build(out: Path) -> dict[str, int]:
    conditions = load_conditions()
    rng = random.Random(SEED)
    frames_rng = random.Random(SEED + 1)  # its own stream, so the other files stay as they were
    pretrain = [{"text": p, "condition": c["id"], "lang": lang}
                for c in conditions for lang in LANGS
                for p in paragraphs(c[lang], lang, rng) + varied_paragraphs(c[lang], lang, frames_rng)]
    rng.shuffle(pretrain)
    files = {
        "pretrain/train.jsonl": pretrain,
        "pretrain/heldout.jsonl": [{"text": heldout_paragraph(c[lang], lang), "condition": c["id"], "lang": lang}
                                   for c in conditions for lang in LANGS],
        "sft/train_single.jsonl": sft_single(conditions, random.Random(SEED + 2)),  # own stream: other files unchanged
        "sft/train_multi.jsonl": sft_multi(conditions, rng),
        "sft/valid.jsonl": sft_valid(conditions, rng),
        # Knowledge pairs in training wordings come from their own stream, so the files after them stay as they were.
        "preference/train.jsonl": balance_off_question(preference_pairs(conditions, rng, heldout=False), conditions,
                                                       random.Random(SEED + 7))
        + training_knowledge_pairs(conditions, random.Random(SEED + 6)),
        # Knowledge pairs come from their own stream, so the files after them stay as they were.
        "preference/heldout.jsonl": preference_pairs(conditions, rng, heldout=True)
        + knowledge_pairs(conditions, random.Random(SEED + 4)),
        "prompts/train.jsonl": question_rows(conditions, rng, heldout=False, per_condition=2),
        "prompts/heldout.jsonl": question_rows(conditions, rng, heldout=True, per_condition=1),
        "eval/heldout_questions.jsonl": question_rows(conditions, rng, heldout=True, per_condition=0),
        "eval/cloze.jsonl": cloze_rows(conditions),
        "eval/handwritten_questions.jsonl": handwritten_rows(conditions),
        "eval/multiple_choice.jsonl": multiple_choice_rows(conditions, random.Random(SEED + 5)),  # own stream
    }
    for name, rows in files.items():
        dump_jsonl(out / name, rows)
    counts = {name: len(rows) for name, rows in files.items()}
    from medgpt_utils.presets import TINY_CONDITIONS

    names = {c["id"]: f'{c["en"]["name"]} ({c["zh"]["name"]})' for c in conditions}
    stats = {
        "conditions": len(conditions), "tiny_count": len(TINY_CONDITIONS),
        "tiny_conditions": ", ".join(names[i] for i in TINY_CONDITIONS),
        "pretrain_bytes": sum(len(r["text"].encode("utf-8")) for r in pretrain),
        "rejected_kinds": Counter(r["rejected_kind"] for r in files["preference/train.jsonl"]),
        "red_flag_prompts": sum(r["red_flag"] for r in files["prompts/train.jsonl"]),
    }
    (out / "README.md").write_text(data_card(counts, stats), encoding="utf-8")
    return counts


def data_card(counts: dict[str, int], stats: dict) -> str:
    rows = "\n".join(f"| `{name}` | {n} |" for name, n in counts.items())
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(stats["rejected_kinds"].items()))
    return CARD.format(rows=rows, kinds=kinds, own_data=OWN_DATA, **{k: v for k, v in stats.items() if k != "rejected_kinds"})


# How to train on other data than this (medgpt_utils/sources.py): not formatted, so its JSON braces stay as written.
OWN_DATA = r"""## Your own data

Every stage reads its data from the preset's `data` settings (`medgpt_utils/sources.py`); `bundled`, the
files above, is the default. Set them with `--set data.sft=...` (any command), `--data ...` (a stage command:
its own kind), or `override(preset, {"data.sft": ...})` in a notebook:

| setting | read by | one record per line or row, in any of these layouts |
|---|---|---|
| `data.pt` | base (the tiny tokenizer), PT, vocab | `text` |
| `data.sft` | SFT | Alpaca, ShareGPT, OpenAI `messages`, `question`/`answer` |
| `data.preference` | the reward model; DPO/ORPO with `preference.pair_source=data` | MedicalGPT, `question`/`response_chosen`/`response_rejected`, TRL `prompt`/`chosen`/`rejected` |
| `data.prompts` | PPO, GRPO, the sampled DPO/ORPO pairs | TRL prompt-only `prompt`, `conversations`/`messages` ending with a user turn, Alpaca `instruction`, `question` |

A source is a file, a folder (every `.jsonl`, `.json`, `.txt` and `.parquet` inside, recursively; hidden
folders such as `.ipynb_checkpoints` are left out), a folder written by `Dataset.save_to_disk`, or
`hub:<dataset id>`. Several are joined by commas, and options follow a `?`, joined by `&`:

- `weight=0.3`: take 30% of the source's records (seeded); `weight=2` takes each twice;
- `max_samples=N`: only the first N records;
- hub datasets: `config=`, `split=` (default `train`), `revision=`, `streaming=true` (read only the records
  taken, without downloading the whole set), `data_files=` (see the MedicalGPT example below).

Validation data: `data.pt_validation`, `data.sft_validation`, `data.preference_validation` and
`data.prompts_validation` take sources the same way. Left empty, a bundled source brings its own held-out
file and every other source gives `data.validation_percent` (5) of its records, chosen with the preset's
seed before any weighting, so no record is in both.

### One example record per layout

```jsonl
{"text": "Gout is a form of arthritis caused by uric acid crystals in a joint."}
{"instruction": "What causes gout?", "input": "", "output": "Uric acid crystals in a joint.", "system": "", "history": []}
{"conversations": [{"from": "human", "value": "What causes gout?"}, {"from": "gpt", "value": "Uric acid crystals in a joint."}]}
{"messages": [{"role": "user", "content": "What causes gout?"}, {"role": "assistant", "content": "Uric acid crystals in a joint."}]}
{"question": "What causes gout?", "answer": "Uric acid crystals in a joint."}
{"conversations": [{"from": "human", "value": "What causes gout?"}], "chosen": "Uric acid crystals in a joint.", "rejected": "Bad luck."}
{"question": "What causes gout?", "response_chosen": "Uric acid crystals in a joint.", "response_rejected": "Bad luck."}
{"prompt": [{"role": "user", "content": "What causes gout?"}], "chosen": [{"role": "assistant", "content": "Uric acid crystals."}], "rejected": [{"role": "assistant", "content": "Bad luck."}]}
{"prompt": "What causes gout?"}
```

The first line is pretraining text (a `.txt` file may hold one document per line instead, and a parquet
file a `text` column). The next four are SFT dialogues: Alpaca, ShareGPT, OpenAI messages, and
MedicalGPT's QA/GRPO layout. Then three preference pairs (MedicalGPT, its reward-data layout, TRL's), and
an RL prompt in TRL's prompt-only format; any SFT layout without its last answer is a prompt too. Columns
other than these are kept (a prompt's `answer` reaches GRPO's reward functions by name).

### What each stage reports, and the errors you may meet

Every stage prints one line per source, e.g. `my_dialogues: read 7, kept 5, skipped 2 (broken JSON: 1,
tool-call turns are not supported: 1) -> train 4, validation 1`, and keeps it in its `metrics.json` under
`data`. With `data.on_error=skip` (the default) a bad record is skipped and counted by reason; with `raise`
the first one stops the run. A source that cannot be used at all always stops the run with one line naming it:

| message (after the source's name) | what it means |
|---|---|
| `no such file or folder` | the path is wrong; the command checks every `data.*` path before it builds anything |
| `unsupported file type '.csv'` | only `.jsonl`, `.json`, `.txt` and `.parquet` are read |
| `folder has no data files (...)` | the folder holds none of those |
| `no usable records (... skipped N (reason: N))` | every record failed, e.g. `unknown SFT format` when the layout is none of the above, or `file is empty` |
| `file:12: broken JSON: ...` | line 12 is not JSON (with `skip`: counted and left out) |
| `file:3: turns out of order: ...` | a dialogue must alternate user and assistant turns and end with the assistant (a prompt: with the user) |
| `tool-call turns are not supported` | ShareGPT `function_call` / `observation` turns: the chat templates here have no tool roles, so the dialogue is skipped |
| `could not load from the Hugging Face Hub (...)` | no network, an unknown id or config; download it where there is network and give the folder instead |
| `no split 'dev' (splits: train, test)` | a saved `DatasetDict` has no such split (`?split=`) |

With data of your own, the knowledge-base measures (key-fact recall, urgent care on red flags, wrong
condition, non-words, the PT cloze) are computed only when `bundled` is among a stage's sources: they ask
about the bundled conditions. What remains is what any data allows: held-out loss and perplexity (PT, SFT),
pairwise accuracy on held-out pairs (the reward model), and the reward-score gain, win rate and KL of each
aligned model against SFT on held-out prompts.

### Worked example: MedicalGPT's data

[`shibing624/medical`](https://huggingface.co/datasets/shibing624/medical) has three parts: `pretrain`
(`text`, e.g. `pretrain/train_encyclopedia.json`), `finetune` (Alpaca `instruction`/`input`/`output`:
`finetune/train_zh_0.json`, `finetune/train_en_1.json`, and their `valid_*` files) and `reward`
(`question`/`response_chosen`/`response_rejected`: `reward/train.json`, `reward/valid.json`). The set still
ships a loading script, which `datasets` no longer runs, so name its files for the packaged `json` reader:

```bash
M=hf://datasets/shibing624/medical
medgpt pt  --preset colab-t4 --data "hub:json?data_files=$M/pretrain/train_encyclopedia.json&streaming=true&max_samples=50000"
medgpt sft --preset colab-t4 --data "hub:json?data_files=$M/finetune/train_en_1.json&streaming=true&max_samples=20000" \
           --validation-data "hub:json?data_files=$M/finetune/valid_en_1.json"
medgpt rm  --preset colab-t4 --data "hub:json?data_files=$M/reward/train.json" --validation-data "hub:json?data_files=$M/reward/valid.json"
```

(Each command builds the stages before it that are missing or made with other settings, so give every
`--set data.*=...` you use to each command, or run them all at once with `medgpt run --set ...`.)

How much general data to mix in: medical data alone makes a model forget how to chat about anything else.
The advice on record, which this course has not measured: MedicalGPT's author answers that reward-model
data needs general preference pairs mixed in, about 10 general to 1 medical (MedicalGPT issue 409), and
that a small domain SFT set (1,000 dialogues) should be merged with a general one such as
`shibing624/sharegpt_gpt4` (issue 203); HuatuoGPT-II mixed ShareGPT's general instructions into its medical
SFT data (HuatuoGPT-II issue 21). With sources that is one setting, e.g.
`--set "data.sft=my_medical/,hub:shibing624/sharegpt_gpt4?max_samples=20000"`.

"""


CARD = """# Data card: the bundled MedicalGPT Course data

> **Educational use only.** This data teaches how chat models are trained. It is not medical
> advice and must not be used to diagnose or treat anyone. In an emergency call your local
> emergency number (120 in mainland China).

Everything here is generated by `python data/build_data.py` (seed fixed, byte-for-byte
reproducible; a test checks it) from a knowledge base written for this project in
`data/source/`: {conditions} common conditions, each in English and Chinese, with name,
definition, typical symptoms, common causes, the department to see, self-care or general
treatment (no prescription dosing), red-flag signs that need urgent care, and prevention.
Only well-established facts are used, and every red flag points to urgent care.

## Files and counts

| file | records |
|---|---|
{rows}

The pretraining corpus is {pretrain_bytes} bytes of text. This table is written by the generator, and
`tests/test_bundled_data.py` checks it against what the loaders read.

## Splits

The split is by **wording**, not by condition: training sets ask with at least ten phrasings
per fact type and language (`data/templates.py`, `TRAIN_QUESTIONS`); the held-out sets
(`sft/valid.jsonl`, `preference/heldout.jsonl`, `prompts/heldout.jsonl`,
`eval/heldout_questions.jsonl`, `pretrain/heldout.jsonl`) use phrasings and sentence frames never
seen in training (`HELDOUT_QUESTIONS`), so they test whether a model answers known facts asked
in new words.

## Schemas

- `pretrain/*.jsonl`: `text`, one encyclopedia-style paragraph (zh or en), with its `condition` and
  `lang`. Per condition and language: seven fixed paragraphs and eight whose sentences take varied
  frames (`PRETRAIN_FRAMES`), so the facts are tied to the condition's name, not to one sentence.
- `sft/train_single.jsonl`, `sft/valid.jsonl`: Alpaca `instruction`/`input`/`output`, plus
  `condition`, `lang`, `fact`. Each condition, language and fact type is asked in four wordings,
  two hand-written (`TRAIN_QUESTIONS`, `EXTRA_SFT_QUESTIONS`) and two from the course's question
  grammar (`grammar_questions`), and every red-flag sign in two. Training
  answers vary in completeness on purpose (most list every fact, some only a few or one; some leave
  out the urgent-care advice), as real data does.
- `sft/train_multi.jsonl`: ShareGPT `conversations` of `from` (system/human/gpt) and `value`;
  2-4 user turns whose follow-ups refer back to the condition; a system prompt in about 40%.
- `preference/*.jsonl`: MedicalGPT format `conversations` + `chosen` + `rejected`, plus
  `rejected_kind`, `condition`, `lang`, `fact`. Rejected kinds in training: {kinds}.
  - `other_condition`: the facts of another condition under this condition's name;
  - `off_question`: the right condition but another kind of fact (often the department when
    symptoms were asked), so that a reward model cannot prefer one kind of answer everywhere;
  - `unsafe`: telling someone to wait at home (half of all red-flag cases);
  - `evasive`: an unhelpful non-answer; `truncated`: the chosen answer cut off mid-sentence;
  - `incomplete`: fewer key facts than the chosen answer.
  The held-out pairs add an `other_condition` and an `off_question` pair for every condition,
  language and fact type to one random-kind pair per condition, language and three fact types, so
  that the two kinds that need knowledge are measured on enough pairs to compare seeds.
- `prompts/*.jsonl`: `prompt` (messages ending with the user turn), `condition`, `lang`,
  `fact`, `red_flag`, `key_facts`. Training prompts include {red_flag_prompts} red-flag cases.
- `eval/cloze.jsonl`: `text`, a held-out sentence opening ("The typical symptoms of influenza
  include") with the `key_facts` a greedy completion should name; it measures what pretraining
  put into the model.
- `eval/heldout_questions.jsonl`: every fact type for every condition and language, with held-out
  wording and the `key_facts` a correct answer must contain (for red-flag cases: the urgent-care
  marker).
- `eval/handwritten_questions.jsonl`: questions written by hand (`source/handwritten_questions.json`)
  in the words a learner would use ("Which kind of doctor should I go to about asthma?",
  "拉肚子吐了一晚上，急性胃肠炎在家该怎么办？"), both languages, every fact type, about the tiny
  preset's conditions; same schema as the held-out questions. No template produces these
  wordings (a test checks it), so they are the closest thing to a learner's own question.
- `eval/multiple_choice.jsonl`: `question`, four `choices` and the index of the right one (`answer`): for
  every condition, language and fact type (symptoms, causes, department), one of the condition's key facts
  against three of the same kind from other conditions. `eval/lm_eval/` defines lm-eval-harness tasks on it
  (`medgpt_kb_mc_en`, `medgpt_kb_mc_zh`), which `medgpt bench-eval` and notebook 06 run on every stage.

## The tiny preset's conditions

A model of a few million parameters trained for a few CPU minutes cannot learn all {conditions} conditions in two
languages (measured: `notebooks/EXPERIMENTS.md`). The `tiny` preset therefore trains and
evaluates on {tiny_count} of them (`medgpt_utils/presets.py`, `TINY_CONDITIONS`): {tiny_conditions}.
Every stage keeps only the records whose `condition` is one of them, and reports how many it kept.
The GPU presets use all {conditions}.

{own_data}## License

Written for this project and released with it under the Apache License 2.0.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: data/)")
    args = parser.parse_args(argv)
    counts = build(args.out)
    for name, n in counts.items():
        print(f"{n:6d}  {name}")


if __name__ == "__main__":
    main()
