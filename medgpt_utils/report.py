"""``outputs/<preset>/report.md``: one table of what every finished stage measured."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

from .artifacts import METRICS_FILE, output_root
from .presets import Preset

HEADLINE_KEYS = (
    "train_seconds", "tokens_per_second", "real_tokens_per_second", "heldout_perplexity_before",
    "heldout_perplexity_after", "cloze_before", "cloze_after", "eval_loss_before", "eval_loss_after",
    "recall_before", "recall_after", "ended_with_eos", "accuracy_before", "accuracy_after", "accuracy_by_kind", "degenerate_accuracy",
    "parameters", "vocab_size", "tokens_per_char", "score_before", "score_after", "score_gain", "score_gain_all_prompts", "win_rate", "peak_memory_gib",
    "urgent_care_before", "urgent_care_after", "kl_to_reference", "time_split",
)


def _fmt(value) -> str:
    if isinstance(value, dict):
        if "accuracy" in value:
            return _fmt(value["accuracy"])
        if "trainable" in value:
            return f"{value['trainable']:,} trainable / {value['total']:,}"
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_report(preset: Preset, stages: list[str]) -> Path:
    """Collect each finished stage's ``metrics.json`` into a markdown report; return its path."""
    root = output_root() / preset.name
    lines = [
        f"# MedicalGPT Course report - preset `{preset.name}`",
        "",
        f"{preset.describe()}",
        f"Written {datetime.datetime.now().isoformat(timespec='seconds')} on {platform.machine()} "
        f"({platform.system()}), Python {platform.python_version()}.",
        "",
        "| stage | metric | value |",
        "|---|---|---|",
    ]
    for stage in stages:
        path = root / stage / METRICS_FILE
        if not path.is_file():
            lines.append(f"| {stage} | - | not run |")
            continue
        metrics = json.loads(path.read_text(encoding="utf-8"))
        for key in HEADLINE_KEYS:
            if key in metrics:
                lines.append(f"| {stage} | {key} | {_fmt(metrics[key])} |")
        if "model" in metrics:
            lines.append(f"| {stage} | model | {metrics['model']} |")
    from .compare import markdown_table, read_evaluation

    evaluation = read_evaluation(preset.name)
    if evaluation:
        handwritten = evaluation.get("handwritten_questions")
        extra = f" and {handwritten} hand-written ones" if handwritten else ""
        lines += ["", f"## Evaluation across stages ({evaluation['questions']} held-out questions{extra}, greedy answers)", "",
                  markdown_table(evaluation["rows"])]
    lines += ["", "Educational use only: not medical advice.", ""]
    report = root / "report.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def _alignment_headline(metrics: dict) -> str:
    """The reward gain the verdict judges (the RL prompts and the question sets together, where the run scored
    both) and the recall on the held-out questions."""
    from .judging import judged_gain

    return f"score {judged_gain(metrics)['mean']:+.2f}\nrecall {metrics['recall_heldout_after']:.2f}"


# One line per stage for the pipeline figure (``plotting.plot_pipeline``): the number a learner looks at first.
_HEADLINES = {
    "base": lambda m: f"{m['parameters'] / 1e6:.1f}M parameters" if isinstance(m.get("parameters"), int) else None,
    "pt": lambda m: f"perplexity {m['heldout_perplexity_before']:.0f} → {m['heldout_perplexity_after']:.1f}",
    "vocab": lambda m: f"+{m['added_tokens']} terms",
    "sft": lambda m: f"recall {m['recall_before']:.2f} → {m['recall_after']:.2f}",
    "rm": lambda m: f"pair accuracy {m['accuracy_after']:.2f}",
    **{method: _alignment_headline for method in ("ppo", "dpo", "orpo", "grpo")},
}


def stage_headlines(preset_name: str) -> dict[str, str]:
    """Each finished stage's headline number, from its ``metrics.json`` (stages without one are left out)."""
    from .artifacts import read_metrics, stage_done

    headlines = {}
    for stage, headline in _HEADLINES.items():
        if stage_done(preset_name, stage):
            try:
                text = headline(read_metrics(preset_name, stage))
            except (KeyError, TypeError):  # measured on the bundled data only, or an older metrics file
                continue
            if text:
                headlines[stage] = text
    return headlines

