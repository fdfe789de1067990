"""The pipeline's stages in order. Notebooks, the ``medgpt`` command and tests call these.

Each stage module has ``STAGE`` (its folder name under ``outputs/<preset>/``) and
``run(preset) -> Path``; a stage whose input is missing builds it through the same function.
"""

from __future__ import annotations

from . import base, pretrain

# name -> (module, one-line description); ``medgpt run`` runs them in this order.
STAGES = {
    base.STAGE: (base, "build the tiny tokenizer and model (tiny preset) or name the hub base model"),
    pretrain.STAGE: (pretrain, "continued pretraining on the medical corpus, perplexity before/after"),
}


def run_stage(name: str, preset) -> "Path":  # noqa: F821 - Path only in the annotation
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    return STAGES[name][0].run(preset)
