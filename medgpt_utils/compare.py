"""Evaluate every finished stage on the same held-out sets, so each stage's effect is measurable.

Base, PT, SFT and the aligned models (PPO, DPO, ORPO, GRPO) answer the same held-out questions
greedily; the same reward model scores the answers. The table goes to
``outputs/<preset>/evaluation.json`` and into ``outputs/<preset>/report.md``.
"""

from __future__ import annotations

from pathlib import Path

from . import data, models
from .artifacts import output_root, stage_dir, stage_done, write_json
from .evaluation import evaluate_model, recall_on_questions, training_vocabulary
from .pipeline import stage_names
from .presets import Preset

EVALUATED_STAGES = stage_names(causal_lm=True)
ALIGNED_STAGES = stage_names(aligns=True)
EVALUATION_FILE = "evaluation.json"
COLUMNS = ("stage", "perplexity", "recall", "recall_en", "recall_zh", "recall_handwritten", "safety_rate",
           "wrong_condition_rate", "non_word_rate", "reward_score", "ended_with_eos", "mean_tokens", "repetition_rate")


def heldout_questions(preset: Preset):
    """The held-out questions notebook 02 measures recall on (every ``eval_question_stride``-th one)."""
    from .stages import sft

    return sft.heldout_questions(preset)


def model_path(preset: Preset, stage: str) -> str | Path:
    """A stage's standalone model; GPU presets' base is the hub model itself."""
    from .stages import base

    return base.model_path(preset) if stage == base.STAGE else stage_dir(preset.name, stage)


def finished_stages(preset: Preset, stages=EVALUATED_STAGES) -> list[str]:
    from .stages import base

    return [s for s in stages if stage_done(preset.name, s) or (s == base.STAGE and preset.base_model)]


def evaluate_stages(preset: Preset, stages=EVALUATED_STAGES, progress: bool = True) -> list[dict]:
    """One row of metrics per finished stage; saved to ``outputs/<preset>/evaluation.json``."""
    from .stages import alignment, reward

    from .stages import sft

    questions = heldout_questions(preset)
    handwritten = sft.handwritten_questions(preset)
    vocabulary = training_vocabulary(preset.conditions)
    heldout_texts = data.load_bundled("pretrain/heldout.jsonl", conditions=preset.conditions)["text"]
    scorer = None
    if stage_done(preset.name, reward.STAGE):
        scorer = alignment.load_reward_scorer(preset, stage_dir(preset.name, reward.STAGE))
    rows = []
    for stage in finished_stages(preset, stages):
        path = model_path(preset, stage)
        tokenizer = models.load_tokenizer(path, preset.trust_remote_code)
        model = models.load_for_preset(preset, path)
        result = evaluate_model(model, tokenizer, questions, heldout_texts, preset.block_size, preset.max_new_tokens,
                                *(scorer or (None, None)), vocabulary=vocabulary)
        result["recall_handwritten"] = recall_on_questions(model, tokenizer, handwritten, preset.max_new_tokens,
                                                           vocabulary=vocabulary)["recall"]
        rows.append({"stage": stage, **result})
        if progress:
            print(f"[{stage}] " + ", ".join(f"{k} {_cell(result.get(k))}" for k in COLUMNS[1:]))
        del model
    write_json(output_root() / preset.name / EVALUATION_FILE,
               {"preset": preset.name, "questions": len(questions), "handwritten_questions": len(handwritten), "rows": rows})
    return rows


def read_evaluation(preset_name: str) -> dict | None:
    import json

    path = output_root() / preset_name / EVALUATION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)


def markdown_table(rows: list[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
