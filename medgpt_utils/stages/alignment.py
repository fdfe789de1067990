"""What the alignment stages (PPO, DPO, ORPO, GRPO) share: their inputs and how they are judged.

Every aligned policy is the SFT model plus a LoRA adapter, so the SFT model is always one
``disable_adapter()`` away. Each stage judges the SFT model and its own policy on the same
held-out prompts, greedily, with the same reward model: score, win rate, key-fact recall,
urgent-care advice on red-flag cases, answers that end, and the KL to the SFT model.
"""

from __future__ import annotations

import functools
from pathlib import Path

from .. import models
from ..artifacts import stage_dir, stage_done
from ..generation import chat_prompt_texts
from ..judging import (comparison, examples, judge, kl_to_reference, question_set_comparison, question_set_gains,
                       question_set_scores, verdict)
from ..pipeline import stage_names
from ..presets import Preset
from ..sources import local_files_signature
from ..training import (StageRun, as_dataset, begin_stage, build_if_stale, data_report, is_main_process, loss_history,
                        save_metrics, seed_stage, stage_data, stage_output, timed)
from . import reward, sft


def ensure_inputs(preset: Preset) -> tuple[Path, Path]:
    """The SFT model and the reward model, built by their own stages if missing."""
    build_if_stale(preset, sft)
    build_if_stale(preset, reward)
    return stage_dir(preset.name, sft.STAGE), stage_dir(preset.name, reward.STAGE)


def load_reward_scorer(preset: Preset, reward_path: Path, pad_token_id: int | None = None):
    """The frozen reward model and its tokenizer (pad id: the given one, else the reward tokenizer's)."""
    tokenizer = models.load_tokenizer(reward_path, preset.trust_remote_code)
    pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    model = models.load_for_preset(preset, reward_path, reward=True, pad_token_id=pad_token_id)
    model.eval().requires_grad_(False)
    return model, tokenizer


def _prompt_data(preset: Preset):
    """``data.prompts`` read once per preset and state of its files: PPO and GRPO ask for both halves, and a
    notebook that edits a prompt file between two runs gets the new prompts."""
    files = tuple(map(tuple, local_files_signature(preset.data.prompts) + local_files_signature(preset.data.prompts_validation or "bundled")))
    return _read_prompt_data(preset, files)


@functools.lru_cache(maxsize=2)
def _read_prompt_data(preset: Preset, files: tuple):
    return stage_data(preset, "prompts")


def training_prompts(preset: Preset):
    """The RL prompts of ``data.prompts`` (bundled: with their condition, language, red flag and key facts)."""
    return as_dataset(_prompt_data(preset).train)


def prompt_data_report(preset: Preset) -> list[dict]:
    """What each source of ``data.prompts`` gave, for ``metrics.json``."""
    return data_report(_prompt_data(preset))


def heldout_prompts(preset: Preset):
    """Every Nth held-out prompt (``rl.heldout_prompt_stride``): both languages, all kinds of question."""
    rows = _prompt_data(preset).validation
    if not rows:
        raise ValueError("data.prompts: no held-out prompts to judge on (give data.prompts_validation, or a data.validation_percent above 0)")
    return as_dataset(rows).select(range(0, len(rows), preset.rl.heldout_prompt_stride))


def sft_question_set_knowledge(preset: Preset, policy, tokenizer) -> dict | None:
    """The SFT model's measures and answers on its question sets (held-out and hand-written), as the SFT stage
    measured them (``metrics.json``: the same greedy answers the policy with its adapter off gives, measured once
    per SFT model instead of once per aligned run); None when the SFT data had no key facts. An SFT model saved
    before its answers were kept is asked again here, with ``policy``'s adapter off."""
    import json

    saved = json.loads((stage_dir(preset.name, sft.STAGE) / "metrics.json").read_text(encoding="utf-8")).get("knowledge")
    if saved is None or all("answers" in measured for measured in saved.values()):
        return saved
    with policy.disable_adapter():
        return sft.knowledge(policy, tokenizer, preset)


def judge_question_sets(preset: Preset, policy, tokenizer, extras: dict, after: dict) -> dict:
    """``policy`` against the SFT model on the SFT stage's question sets, for the verdict: recall and
    wrong-condition rate on each set, and the reward-score gain there and over every judged prompt (``after``:
    the policy's judgement on the RL prompts). Empty where SFT's were not measured (the user's own data)."""
    before = extras["knowledge_before"]
    if before is None:
        return {}
    sets = sft.question_sets(preset)  # read once: answered, then scored
    knowledge_after = sft.knowledge(policy, tokenizer, preset, sets)
    scored = [question_set_scores(extras["reward_model"], extras["reward_tokenizer"], sets, k) for k in (before, knowledge_after)]
    return {**question_set_comparison(before, knowledge_after), **question_set_gains(extras["before"], after, *scored)}


def prepare(preset: Preset, stage: str) -> StageRun:
    """What DPO, ORPO and GRPO share before their trainer: the SFT and reward models (built if missing), the
    policy (the SFT model plus a fresh LoRA adapter), and the SFT model judged on the held-out prompts.
    ``run.extras`` holds the reward model and its tokenizer, the held-out prompts and the SFT model's judgement."""
    begin_stage(preset, stage)  # the output folder's lock, before anything is built
    sft_path, reward_path = ensure_inputs(preset)
    seed_stage(preset, preset.alignment_seed)
    tokenizer = models.load_tokenizer(sft_path, preset.trust_remote_code)
    policy = models.load_lora_model(preset, sft_path)
    reward_model, reward_tokenizer = load_reward_scorer(preset, reward_path, tokenizer.pad_token_id)
    rows = heldout_prompts(preset)
    metrics = {"stage": stage, "preset": preset.name, "heldout_prompts": len(rows),
               "parameters": models.count_parameters(policy), "data": prompt_data_report(preset)}
    with policy.disable_adapter(), timed(metrics, "judge_sft_seconds"):
        before = judge(policy, tokenizer, reward_model, reward_tokenizer, rows, preset.max_new_tokens, preset.conditions)
    knowledge_before = sft_question_set_knowledge(preset, policy, tokenizer)
    return StageRun(preset, stage, policy, tokenizer, sft_path, metrics, eval_set=rows,
                    extras={"reward_model": reward_model, "reward_tokenizer": reward_tokenizer, "before": before,
                            "knowledge_before": knowledge_before})


def judge_and_save(run: StageRun, policy, loss_curve: dict, name: str | None = None) -> Path:
    """The trained ``policy`` judged on the same prompts as the SFT model (score, win rate, recall, urgent care,
    KL, the verdict), then adapter, merged model and ``metrics.json`` saved to ``outputs/<preset>/<name>/``."""
    preset, tokenizer, rows, metrics, x = run.preset, run.tokenizer, run.eval_set, run.metrics, run.extras
    name = name or run.stage
    after = judge(policy, tokenizer, x["reward_model"], x["reward_tokenizer"], rows, preset.max_new_tokens, preset.conditions)
    metrics.update(comparison(x["before"], after))
    metrics.update(judge_question_sets(preset, policy, tokenizer, x, after))
    metrics.update(loss_history=loss_curve, examples=examples(rows, x["before"], after),
                   kl_to_reference=kl_to_reference(policy, tokenizer, chat_prompt_texts(tokenizer, list(rows["prompt"])),
                                                   preset.max_new_tokens, preset.rl.temperature))
    metrics["verdict"] = verdict(metrics, preset.rl.kl_bound, preset.rl.recall_tolerance)
    with stage_output(preset, name) as out:
        if is_main_process():
            models.save_trained(preset, run.stage, policy, tokenizer, run.start_path, out)
            save_metrics(out, metrics, preset, run.stage)
    run.clean_up()  # the saved stage supersedes its step checkpoints
    return stage_dir(preset.name, name)


def finish(run: StageRun, trainer) -> Path:
    """After ``trainer.train()`` (DPO, ORPO, GRPO): the trained policy judged and saved (``judge_and_save``)."""
    return judge_and_save(run, trainer.model, loss_history(trainer))


METHODS = stage_names(aligns=True)
TABLE_COLUMNS = ("method", "reward score", "win rate vs SFT", "KL to SFT", "key-fact recall",
                 "urgent care on red flags", "train seconds", "pair sampling seconds", "peak memory GiB")


def comparison_rows(preset: Preset, methods=METHODS) -> list[dict]:
    """One row per finished method plus the SFT model they all start from (judged on the same prompts)."""
    from ..artifacts import read_metrics

    rows, sft_row = [], None
    for method in methods:
        if not stage_done(preset.name, method):
            continue
        m = read_metrics(preset.name, method)
        if sft_row is None:
            sft_row = {"method": "sft", "reward score": m["score_before"], "win rate vs SFT": 0.5, "KL to SFT": 0.0,
                       "key-fact recall": m["recall_before"], "urgent care on red flags": m["urgent_care_before"],
                       "train seconds": read_metrics(preset.name, sft.STAGE).get("train_seconds"),
                       "pair sampling seconds": None, "peak memory GiB": None}
        rows.append({"method": method, "reward score": m["score_after"], "win rate vs SFT": m["win_rate"],
                     "KL to SFT": m["kl_to_reference"], "key-fact recall": m["recall_after"],
                     "urgent care on red flags": m["urgent_care_after"], "train seconds": m["train_seconds"],
                     # DPO and ORPO share one set of sampled pairs: the one-time cost of sampling and ranking them
                     "pair sampling seconds": (m.get("sampled_pairs") or {}).get("seconds"),
                     "peak memory GiB": m.get("peak_memory_gib")})
    return ([sft_row] if sft_row else []) + rows


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a markdown table (the README reproduces it)."""
    def cell(value):
        return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
