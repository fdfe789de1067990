"""Stage 1, continued pretraining (PT): next-token prediction on medical text.

Recipe: tokenize the corpus, join documents with EOS, cut the stream into fixed blocks (no
padding at all), train with the causal-LM loss, and compare held-out perplexity before and
after. The tiny preset trains every weight of its fresh model; GPU presets train a LoRA
adapter on the 4-bit base (QLoRA) and merge it into a standalone model for the next stage.
"""

from __future__ import annotations

from pathlib import Path

from .. import models
from ..artifacts import stage_dir
from ..data import pack_texts
from ..evaluation import cloze_accuracy, heldout_loss, perplexity
from ..presets import Preset
from ..training import (StageRun, begin_stage, build_if_stale, bundled, data_report, is_main_process, loss_history,
                        measuring, prepared, save_metrics, seed_stage, stage_data, stage_output, trainer_arguments)
from . import base

STAGE = "pt"


def cloze_items(preset: Preset):
    """Held-out sentence openings ("The typical symptoms of influenza include"), every Nth one."""
    rows = bundled(preset, "eval/cloze.jsonl")
    return rows.select(range(0, len(rows), preset.eval_question_stride))


def load_start_model(preset: Preset):
    """The model PT trains: all weights (tiny) or a LoRA adapter on the quantized base."""
    return models.load_trainable(preset, base.model_path(preset), STAGE)


def prepare(preset: Preset) -> StageRun:
    """Everything before the trainer: the tokenizer, the packed training blocks, the model, and the held-out
    loss (and the knowledge base's cloze accuracy) before training."""
    begin_stage(preset, STAGE)  # the output folder's lock, before anything is built
    from datasets import Dataset

    if preset.base_model is None:
        build_if_stale(preset, base)
    seed_stage(preset)  # after any missing earlier stage is built, so runs match
    tokenizer = models.load_tokenizer(base.model_path(preset), preset.trust_remote_code)
    texts = stage_data(preset, "pt")
    train_texts, heldout_texts = [r["text"] for r in texts.train], [r["text"] for r in texts.validation]
    if not heldout_texts:
        raise ValueError("data.pt: no validation text (give data.pt_validation, or a data.validation_percent above 0)")
    blocks = pack_texts(train_texts, tokenizer, preset.block_size)
    model = load_start_model(preset)
    metrics = {"stage": STAGE, "preset": preset.name, "train_blocks": len(blocks), "block_size": preset.block_size,
               "data": data_report(texts), "parameters": models.count_parameters(model)}
    metrics["heldout_loss_before"] = heldout_loss(model, tokenizer, heldout_texts, preset.block_size)
    cloze = cloze_items(preset) if texts.uses_bundled else None  # the knowledge base's openings: only with its text
    if cloze is not None:
        metrics["cloze_before"] = cloze_accuracy(model, tokenizer, cloze)
    return StageRun(preset, STAGE, model, tokenizer, base.model_path(preset), metrics,
                    train_set=Dataset.from_dict({"input_ids": blocks, "labels": blocks}), eval_set=heldout_texts,
                    extras={"cloze": cloze})


def training_arguments(run: StageRun):
    """The ``TrainingArguments`` of the preset's ``pt`` knobs."""
    from transformers import TrainingArguments

    return trainer_arguments(TrainingArguments, run.preset, run.preset.pt, run.workdir)


def finish(run: StageRun, trainer, result) -> Path:
    """After ``trainer.train()``: held-out loss and perplexity after, throughput, and the model saved."""
    preset, model, tokenizer, metrics = run.preset, run.model, run.tokenizer, run.metrics
    metrics["heldout_loss_after"] = heldout_loss(model, tokenizer, run.eval_set, preset.block_size)
    if run.extras["cloze"] is not None:
        metrics["cloze_after"] = cloze_accuracy(model, tokenizer, run.extras["cloze"])
    args = trainer.args
    metrics["train_tokens"] = result.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * preset.block_size
    metrics["tokens_per_second"] = round(metrics["train_tokens"] / max(metrics["train_seconds"], 1e-9), 1)
    for key in ("before", "after"):
        metrics[f"heldout_perplexity_{key}"] = perplexity(metrics[f"heldout_loss_{key}"])
    metrics["loss_history"] = loss_history(trainer)
    with stage_output(preset, STAGE) as out:
        if is_main_process():
            models.save_trained(preset, STAGE, model, tokenizer, run.start_path, out)
            save_metrics(out, metrics, preset, STAGE)
    run.clean_up()  # the saved stage supersedes its step checkpoints
    return stage_dir(preset.name, STAGE)


def run(preset: Preset) -> Path:
    """The whole stage, as ``medgpt pt`` runs it (notebook 01 takes the same steps one cell at a time)."""
    from transformers import Trainer, default_data_collator

    run = prepare(preset)
    trainer = prepared(Trainer(model=run.model, args=training_arguments(run), train_dataset=run.train_set,
                               data_collator=default_data_collator), preset, STAGE)
    with measuring(run):
        result = trainer.train(resume_from_checkpoint=run.resume_from)  # None: from the start
    return finish(run, trainer, result)
