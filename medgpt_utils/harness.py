"""Benchmarks through lm-eval-harness, on every finished stage: the course's own task offline, the field's with network.

The course's task, ``medgpt_kb_mc`` (``data/eval/lm_eval/``, lm-eval's YAML format): four-option questions from the
knowledge base in English and Chinese (``medgpt_kb_mc_en``, ``medgpt_kb_mc_zh``), scored by the log-likelihood of
each choice. It runs with no network, so the harness path is exercised on the tiny preset in CI. Before a run the
questions are restricted to the preset's conditions (the tiny preset learns 24 of the 84) and the task files are
pointed at that copy, in ``outputs/<preset>/lm_eval/tasks/``.

With network, the same call takes the field's task names (``MEDICAL_BENCHMARKS``) on a GPU preset's models.
Scores go to ``outputs/<preset>/lm_eval.json`` and into notebook 06's table.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .artifacts import output_root, write_json
from .presets import Preset

TASK_DIR = Path(__file__).resolve().parent.parent / "data" / "eval" / "lm_eval"
COMMITTED_DATA = "data/eval/multiple_choice.jsonl"  # as the committed task files name it (from the repository root)
LOCAL_TASKS = ("medgpt_kb_mc_en", "medgpt_kb_mc_zh")
RESULTS_FILE = "lm_eval.json"

# The field's medical benchmarks in lm-eval 0.4.13 (task name: language, licence, what it is). They download their
# data from the Hugging Face Hub. Not run here (no network); run time not measured.
MEDICAL_BENCHMARKS = {
    "medqa_4options": ("en", "MIT", "USMLE-style questions, 4 options (GBaker/MedQA-USMLE-4-options-hf)"),
    "medmcqa": ("en", "MIT", "Indian medical entrance exam questions (openlifescienceai/medmcqa); validation split"),
    "pubmedqa": ("en", "MIT", "yes/no/maybe questions on PubMed abstracts (bigbio/pubmed_qa)"),
    "cmmlu_clinical_knowledge": ("zh", "CC BY-NC 4.0", "CMMLU subject"),
    "cmmlu_college_medicine": ("zh", "CC BY-NC 4.0", "CMMLU subject"),
    "cmmlu_professional_medicine": ("zh", "CC BY-NC 4.0", "CMMLU subject"),
    "cmmlu_traditional_chinese_medicine": ("zh", "CC BY-NC 4.0", "CMMLU subject"),
    "ceval-valid_clinical_medicine": ("zh", "CC BY-NC-SA 4.0", "C-Eval subject, validation split"),
    "ceval-valid_basic_medicine": ("zh", "CC BY-NC-SA 4.0", "C-Eval subject, validation split"),
    "ceval-valid_physician": ("zh", "CC BY-NC-SA 4.0", "C-Eval subject, validation split"),
}


def requirement() -> str:
    """The pinned lm-eval requirement of pyproject.toml's ``course`` extra (Colab installs it in notebook 06)."""
    import re

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    return re.search(r'"(lm-eval==[^"]+)"', text).group(1)


def task_folder(preset: Preset) -> Path:
    """The repository's task files, pointed at the questions about the preset's conditions."""
    from .data import load_bundled

    folder = output_root() / preset.name / "lm_eval" / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    questions = load_bundled("eval/multiple_choice.jsonl", conditions=preset.conditions)
    data_file = folder / "multiple_choice.jsonl"
    data_file.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in questions), encoding="utf-8")
    for source in TASK_DIR.iterdir():
        if source.suffix == ".yaml":
            (folder / source.name).write_text(source.read_text(encoding="utf-8").replace(COMMITTED_DATA, str(data_file)),
                                              encoding="utf-8")
        elif source.suffix == ".py":
            shutil.copy(source, folder / source.name)
    return folder


def evaluate_model(path: str | Path, tasks, preset: Preset, include_path: Path | None = None, limit: int | None = None,
                   batch_size: int = 16) -> dict[str, dict[str, float]]:
    """``tasks`` on the model at ``path`` (lm-eval's ``hf`` model): ``{task: {"acc": ..., "acc_norm": ...}}``."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    device = "cuda" if preset.device == "cuda" else "cpu"
    dtype = "float32" if preset.device == "cpu" else preset.compute_dtype
    manager = TaskManager(include_path=str(include_path) if include_path else None,
                          include_defaults=any(t not in LOCAL_TASKS for t in tasks))
    output = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": str(path), "dtype": dtype, "trust_remote_code": preset.trust_remote_code},
        tasks=list(tasks), task_manager=manager, device=device, batch_size=batch_size, limit=limit,
        log_samples=False, bootstrap_iters=0, random_seed=preset.seed, numpy_random_seed=preset.seed,
        torch_random_seed=preset.seed, fewshot_random_seed=preset.seed)
    return {task: {metric.split(",")[0]: value for metric, value in scores.items()
                   if metric.split(",")[0] in ("acc", "acc_norm") and isinstance(value, float)}
            for task, scores in output["results"].items()}


def evaluate_stages(preset: Preset, tasks=LOCAL_TASKS, stages=None, limit: int | None = None) -> dict[str, dict]:
    """``tasks`` on every finished stage that generates text (``compare.finished_stages``); saved to
    ``outputs/<preset>/lm_eval.json`` and returned as ``{stage: {task: {metric: value}}}``."""
    from . import compare

    include = task_folder(preset) if set(tasks) & set(LOCAL_TASKS) else None
    scores = {}
    for stage in compare.finished_stages(preset, stages or compare.EVALUATED_STAGES):
        scores[stage] = evaluate_model(compare.model_path(preset, stage), tasks, preset, include, limit)
        print(f"[lm-eval] {stage}: " + ", ".join(f"{t} acc {s.get('acc', float('nan')):.3f}" for t, s in scores[stage].items()))
    write_json(output_root() / preset.name / RESULTS_FILE, {"preset": preset.name, "tasks": list(tasks), "limit": limit,
                                                          "scores": scores})
    return scores


def columns(tasks=LOCAL_TASKS) -> tuple[str, ...]:
    """The evaluation table's columns for ``tasks`` (accuracy)."""
    return tuple(f"{task} acc" for task in tasks)


def add_to_rows(rows: list[dict], scores: dict[str, dict], tasks=LOCAL_TASKS) -> list[dict]:
    """The evaluation table's rows (``compare.evaluate_stages``) with each stage's lm-eval accuracies added."""
    for row in rows:
        for task, column in zip(tasks, columns(tasks)):
            row[column] = scores.get(row["stage"], {}).get(task, {}).get("acc")
    return rows
