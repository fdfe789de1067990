"""Stage 0, the base model: build the tiny preset's tokenizer and model, or name a hub model.

The tiny preset trains a byte-level BPE tokenizer on the bundled pretraining corpus and
initialises a small LLaMA from scratch, so the whole course runs offline. GPU presets start
from a real pretrained chat model; nothing is built and nothing is downloaded here.
"""

from __future__ import annotations

from pathlib import Path

from .. import data, models
from ..artifacts import stage_dir
from ..evaluation import tokens_per_char
from ..presets import Preset
from ..training import begin_stage, save_metrics, seed_stage, stage_data, stage_output

STAGE = "base"


def model_path(preset: Preset) -> str | Path:
    """Where the base model lives: the built folder (tiny) or the hub id (GPU presets)."""
    return stage_dir(preset.name, STAGE) if preset.base_model is None else preset.base_model


def run(preset: Preset) -> Path:
    begin_stage(preset, STAGE)  # the output folder's lock
    seed_stage(preset)
    with stage_output(preset, STAGE) as out:
        metrics = {"stage": STAGE, "preset": preset.name}
        if preset.base_model is None:
            pt_data = stage_data(preset, "pt")  # the tokenizer learns the text PT will train on
            corpus = [r["text"] for r in pt_data.train]
            if preset.tiny.tokenizer_learns_dialogues:
                corpus += [m["content"] for r in stage_data(preset, "sft").train for m in r["messages"]]
            tokenizer = models.build_tiny_tokenizer(corpus, preset.tiny.vocab_size, preset.tiny.chinese_characters)
            model = models.build_tiny_model(tokenizer, preset.tiny, seed=preset.seed)
            model.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
            metrics.update(
                model="tiny LLaMA built locally",
                parameters=models.count_parameters(model)["total"],
                vocab_size=len(tokenizer),
                tokens_per_char={lang: round(tokens_per_char(tokenizer, texts), 4)
                                 for lang, texts in data.split_by_language([r["text"] for r in pt_data.validation]).items() if texts},
            )
        else:
            metrics.update(model=preset.base_model)
        save_metrics(out, metrics, preset, STAGE)
    return stage_dir(preset.name, STAGE)
