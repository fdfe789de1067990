"""Stage 3, reward modeling (RM): learn a score that prefers the better of two answers.

Recipe: the SFT model with a scalar head (sequence classification, ``num_labels=1``) and a
LoRA adapter reads (prompt, answer) and returns r. Trained on preference pairs with the
pairwise (Bradley-Terry) loss  -log sigma(r_chosen - r_rejected); judged by pairwise accuracy on
held-out pairs, overall and for every kind of rejected answer.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .. import models
from ..scoring import pairwise_accuracy
from ..artifacts import stage_dir
from ..presets import Preset
from ..training import (as_dataset, build_if_stale, data_report, is_main_process, loss_history, peak_memory, prepared, save_metrics, seed_stage, stage_data,
                        stage_output, timed, trainer_arguments)
from . import sft

STAGE = "rm"
PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


def training_pairs(preset: Preset, loaded=None):
    """The training pairs of ``data.preference`` in TRL's conversational preference format (the reward model
    reads them; DPO and ORPO do with ``preference.pair_source="data"``)."""
    return as_dataset((loaded or stage_data(preset, "preference")).train, PAIR_COLUMNS)


def start_model_path(preset: Preset) -> Path | str:
    """The reward model starts from the SFT model (or the preset's reward base model)."""
    if preset.reward_base_model:
        return preset.reward_base_model
    build_if_stale(preset, sft)
    return stage_dir(preset.name, sft.STAGE)


def run(preset: Preset) -> Path:
    from trl import RewardConfig, RewardTrainer

    base_path = start_model_path(preset)
    seed_stage(preset)  # after any missing earlier stage is built, so runs match
    tokenizer = models.load_tokenizer(base_path, preset.trust_remote_code)
    pairs = stage_data(preset, "preference")
    if not pairs.validation:
        raise ValueError("data.preference: no validation pairs (give data.preference_validation, or a data.validation_percent above 0)")
    train_pairs, heldout_pairs = training_pairs(preset, pairs), as_dataset(pairs.validation)
    model = models.load_lora_model(preset, base_path, task_type="SEQ_CLS", pad_token_id=tokenizer.pad_token_id)
    metrics = {"stage": STAGE, "preset": preset.name, "train_pairs": len(train_pairs), "parameters": models.count_parameters(model),
               "data": data_report(pairs)}
    before = pairwise_accuracy(model, tokenizer, heldout_pairs)
    metrics.update(accuracy_before=before["accuracy"])

    with stage_output(preset, STAGE) as out:
        args = trainer_arguments(RewardConfig, preset, preset.rm, out / "trainer", max_length=preset.max_length)
        trainer = prepared(RewardTrainer(model=model, args=args, train_dataset=train_pairs, processing_class=tokenizer), preset, STAGE)
        with timed(metrics, "train_seconds"), peak_memory(metrics, preset):
            trainer.train()
        after = pairwise_accuracy(model, tokenizer, heldout_pairs)
        metrics.update(accuracy_after=after["accuracy"], accuracy_by_kind=after["by_kind"],
                       heldout_pairs=len(heldout_pairs), loss_history=loss_history(trainer),
                       chosen_scores=after["chosen_scores"], rejected_scores=after["rejected_scores"])
        if is_main_process():
            shutil.rmtree(out / "trainer", ignore_errors=True)
            model.save_pretrained(out / "adapter", safe_serialization=True)
            models.merge_adapter(base_path, out / "adapter", out, dtype=preset.torch_dtype, reward=True,
                                 trust_remote_code=preset.trust_remote_code, atomic=False)
            save_metrics(out, metrics, preset, STAGE)
    return stage_dir(preset.name, STAGE)
