"""Optional stage 1b, vocabulary expansion: give frequent medical terms tokens of their own.

Recipe (as in the original pipeline's optional step): find the knowledge base's terms that the
tokenizer splits into many pieces, add them as tokens, resize the embeddings, initialise each new
row as the mean of the rows of the pieces it replaces (so the model starts from what it already
knew about those pieces), and continue pretraining for a few steps to show training goes on.
Measured by tokens per character on held-out medical text, before and after.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import data, models
from ..artifacts import stage_dir
from ..evaluation import heldout_loss, tokens_per_char
from ..presets import Preset
from ..training import (StageRun, begin_stage, build_if_stale, is_main_process, loss_history, measuring, prepared,
                        save_metrics, seed_stage, stage_data, stage_output, trainer_arguments)
from . import pretrain

STAGE = "vocab"
FACT_LISTS = ("symptoms", "causes", "self_care", "red_flags", "prevention")


def knowledge_base_terms(conditions=()) -> list[str]:
    """Every condition name, department and fact phrase of ``conditions`` (empty: all), both languages (unique, sorted)."""
    terms = set()
    for condition in data.load_knowledge_base():
        if conditions and condition["id"] not in conditions:
            continue
        for lang in ("en", "zh"):
            kb = condition[lang]
            terms.update([kb["name"], kb["department"]] + [item for key in FACT_LISTS for item in kb[key]])
    return sorted(terms)


def split_terms(tokenizer, terms: list[str], min_pieces: int) -> list[tuple[str, int]]:
    """Terms the tokenizer cuts into at least ``min_pieces`` tokens, most-split first."""
    pieces = [(t, len(tokenizer(t, add_special_tokens=False)["input_ids"])) for t in terms]
    return sorted([p for p in pieces if p[1] >= min_pieces], key=lambda p: (-p[1], p[0]))


def add_terms(model, tokenizer, terms: list[str]) -> list[int]:
    """Add ``terms`` as tokens; new embedding rows start as the mean of their old pieces."""
    known = [t for t in terms if t in tokenizer.get_vocab()]
    if known or len(set(terms)) != len(terms):
        raise ValueError(f"terms must be new and distinct; already tokens: {known[:5]}")
    old_pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in terms}
    tokenizer.add_tokens(terms)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    new_ids = tokenizer.convert_tokens_to_ids(terms)
    with torch.no_grad():
        for term, new_id in zip(terms, new_ids):
            embeddings[new_id] = embeddings[old_pieces[term]].mean(dim=0)
        output = model.get_output_embeddings()
        if output is not None and output.weight.data_ptr() != embeddings.data_ptr():
            for term, new_id in zip(terms, new_ids):
                output.weight[new_id] = output.weight[old_pieces[term]].mean(dim=0)
    return new_ids


def prepare(preset: Preset) -> StageRun:
    """The PT model (built if missing) and its tokenizer, and tokens per character on held-out text before."""
    begin_stage(preset, STAGE)  # the output folder's lock, before anything is built
    build_if_stale(preset, pretrain)
    seed_stage(preset)  # after any missing earlier stage is built, so runs match
    start = stage_dir(preset.name, pretrain.STAGE)
    tokenizer = models.load_tokenizer(start, preset.trust_remote_code)
    model = models.load_for_preset(preset, start)
    texts = stage_data(preset, "pt")
    heldout = data.split_by_language([r["text"] for r in texts.validation])
    metrics = {"stage": STAGE, "preset": preset.name, "vocab_before": len(tokenizer)}
    metrics["tokens_per_char_before"] = {lang: tokens_per_char(tokenizer, texts) for lang, texts in heldout.items()}
    metrics["tokens_per_char_all_before"] = tokens_per_char(tokenizer, heldout["en"] + heldout["zh"])
    return StageRun(preset, STAGE, model, tokenizer, start, metrics, eval_set=heldout, extras={"texts": texts})


def candidates(run: StageRun) -> list[tuple[str, int]]:
    """The knowledge-base terms to add: split into ``vocab.min_pieces`` or more, at most ``vocab.max_added_tokens``."""
    knobs = run.preset.vocab
    return split_terms(run.tokenizer, knowledge_base_terms(run.preset.conditions), knobs.min_pieces)[: knobs.max_added_tokens]


def after_resize(run: StageRun, added: list[tuple[str, int]], new_ids: list[int]) -> None:
    """After ``add_terms``: tokens per character and held-out loss on the new vocabulary; the model made
    trainable (GPU presets: LoRA plus the new embedding rows only) and the training text packed again."""
    from datasets import Dataset

    preset, tokenizer, metrics, heldout = run.preset, run.tokenizer, run.metrics, run.eval_set
    metrics.update(added_tokens=len(new_ids), vocab_after=len(tokenizer), examples=added[:10])
    metrics["tokens_per_char_after"] = {lang: tokens_per_char(tokenizer, texts) for lang, texts in heldout.items()}
    metrics["tokens_per_char_all_after"] = tokens_per_char(tokenizer, heldout["en"] + heldout["zh"])
    # Heldout loss is per token and the tokens changed, so compare it only after vs. right-after-resize.
    metrics["heldout_loss_after_resize"] = heldout_loss(run.model, tokenizer, heldout["en"] + heldout["zh"], preset.block_size)
    run.model = trainable_after_resize(preset, run.model, new_ids)
    blocks = data.pack_texts([r["text"] for r in run.extras["texts"].train], tokenizer, preset.block_size)
    run.train_set = Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def trainable_after_resize(preset: Preset, model, new_ids: list[int]):
    """The resized model as the stage trains it: every weight on a full-precision preset; on a 4-bit one (GPU
    presets) a LoRA adapter plus the new embedding rows only (a quantized model cannot train its own weights)."""
    if not preset.quantization:
        return model
    from peft import get_peft_model

    model = models.prepare_for_kbit_training(model, preset.gradient_checkpointing)
    config = models.lora_config_for(preset)
    config.trainable_token_indices = {"embed_tokens": new_ids}
    return get_peft_model(model, config)


def training_arguments(run: StageRun):
    """The preset's ``pt`` knobs, for ``vocab.train_steps`` steps."""
    from transformers import TrainingArguments

    return trainer_arguments(TrainingArguments, run.preset, run.preset.pt, run.workdir, max_steps=run.preset.vocab.train_steps,
                             logging_steps=5)


def finish(run: StageRun, trainer) -> Path:
    """After ``trainer.train()``: the held-out loss after training; model (or adapter) and tokenizer saved."""
    preset, model, tokenizer, metrics = run.preset, run.model, run.tokenizer, run.metrics
    metrics["heldout_loss_after_training"] = heldout_loss(model, tokenizer, run.eval_set["en"] + run.eval_set["zh"], preset.block_size)
    metrics["loss_history"] = loss_history(trainer)
    with stage_output(preset, STAGE) as out:
        if is_main_process():
            target = out / "adapter" if preset.quantization else out
            model.save_pretrained(target, safe_serialization=True)
            tokenizer.save_pretrained(target)
            save_metrics(out, metrics, preset, STAGE)
    run.clean_up()  # the saved stage supersedes its step checkpoints
    return stage_dir(preset.name, STAGE)


def run(preset: Preset) -> Path:
    """The whole stage, as ``medgpt vocab`` runs it (notebook 01b takes the same steps one cell at a time)."""
    from transformers import Trainer, default_data_collator

    run = prepare(preset)
    added = candidates(run)
    new_ids = add_terms(run.model, run.tokenizer, [t for t, _ in added])
    after_resize(run, added, new_ids)
    trainer = prepared(Trainer(model=run.model, args=training_arguments(run), train_dataset=run.train_set,
                               data_collator=default_data_collator), preset, STAGE)
    with measuring(run, peak=False):
        trainer.train(resume_from_checkpoint=run.resume_from)  # None: from the start
    return finish(run, trainer)
