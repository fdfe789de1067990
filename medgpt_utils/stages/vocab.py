"""Optional stage 1b, vocabulary expansion: give frequent medical terms tokens of their own.

Recipe (as in the original pipeline's optional step): find the knowledge base's terms that the
tokenizer splits into many pieces, add them as tokens, resize the embeddings, initialise each new
row as the mean of the rows of the pieces it replaces (so the model starts from what it already
knew about those pieces), and continue pretraining for a few steps to show training goes on.
Measured by tokens per character on held-out medical text, before and after.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from .. import data, models
from ..artifacts import stage_dir
from ..evaluation import heldout_loss, tokens_per_char
from ..presets import Preset
from ..training import prepared, stage_data, is_main_process, loss_history, save_metrics, stage_output, timed, trainer_arguments, seed_stage, build_if_stale
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


def run(preset: Preset) -> Path:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    build_if_stale(preset, pretrain)
    seed_stage(preset)  # after any missing earlier stage is built, so runs match
    start = stage_dir(preset.name, pretrain.STAGE)
    tokenizer = models.load_tokenizer(start, preset.trust_remote_code)
    model = models.load_for_preset(preset, start)
    texts = stage_data(preset, "pt")
    heldout = data.split_by_language([r["text"] for r in texts.validation])
    metrics = {"stage": STAGE, "preset": preset.name, "vocab_before": len(tokenizer)}
    metrics["tokens_per_char_before"] = {lang: tokens_per_char(tokenizer, texts) for lang, texts in heldout.items()}
    all_heldout = heldout["en"] + heldout["zh"]
    metrics["tokens_per_char_all_before"] = tokens_per_char(tokenizer, all_heldout)

    candidates = split_terms(tokenizer, knowledge_base_terms(preset.conditions), preset.vocab.min_pieces)[: preset.vocab.max_added_tokens]
    new_ids = add_terms(model, tokenizer, [t for t, _ in candidates])
    metrics.update(added_tokens=len(new_ids), vocab_after=len(tokenizer), examples=candidates[:10])
    metrics["tokens_per_char_after"] = {lang: tokens_per_char(tokenizer, texts) for lang, texts in heldout.items()}
    metrics["tokens_per_char_all_after"] = tokens_per_char(tokenizer, all_heldout)
    # Heldout loss is per token and the tokens changed, so compare it only after vs. right-after-resize.
    metrics["heldout_loss_after_resize"] = heldout_loss(model, tokenizer, all_heldout, preset.block_size)

    if preset.quantization:  # GPU presets: LoRA, plus training of the new embedding rows only
        from peft import get_peft_model

        model = models.prepare_for_kbit_training(model, preset.gradient_checkpointing)
        config = models.lora_config_for(preset)
        config.trainable_token_indices = {"embed_tokens": new_ids}
        model = get_peft_model(model, config)
    blocks = data.pack_texts([r["text"] for r in texts.train], tokenizer, preset.block_size)
    train_set = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
    with stage_output(preset, STAGE) as out:
        args = trainer_arguments(TrainingArguments, preset, preset.pt, out / "trainer", max_steps=preset.vocab.train_steps, logging_steps=5)
        trainer = prepared(Trainer(model=model, args=args, train_dataset=train_set, data_collator=default_data_collator), preset, STAGE)
        with timed(metrics, "train_seconds"):
            trainer.train()
        metrics["heldout_loss_after_training"] = heldout_loss(model, tokenizer, all_heldout, preset.block_size)
        metrics["loss_history"] = loss_history(trainer)
        if is_main_process():
            shutil.rmtree(out / "trainer", ignore_errors=True)
            if preset.quantization:
                model.save_pretrained(out / "adapter", safe_serialization=True)
                tokenizer.save_pretrained(out / "adapter")
            else:
                model.save_pretrained(out, safe_serialization=True)
                tokenizer.save_pretrained(out)
            save_metrics(out, metrics, preset, STAGE)
    return stage_dir(preset.name, STAGE)
