"""The pipeline's stages in order. Notebooks, the ``medgpt`` command and tests call these.

Each stage module has ``STAGE`` (its folder name under ``outputs/<preset>/``) and
``run(preset) -> Path``; a stage whose input is missing builds it through the same function.
"""

from __future__ import annotations

from ..pipeline import stage_names, summary
from . import base, dpo, grpo, orpo, ppo, pretrain, reward, sft, vocab

_MODULES = {module.STAGE: module for module in (base, pretrain, sft, reward, ppo, dpo, orpo, grpo, vocab)}

# name -> (module, one-line description), in the order of ``pipeline.PIPELINE``; ``medgpt run`` runs STAGES.
STAGES = {name: (_MODULES[name], summary(name)) for name in stage_names()}
# Stages with their own command that `medgpt run` leaves out (nothing downstream reads them).
OPTIONAL_STAGES = {name: (_MODULES[name], summary(name)) for name in stage_names(optional=True) if name not in STAGES}
ALL_STAGES = {**STAGES, **OPTIONAL_STAGES}


def run_stage(name: str, preset) -> "Path":  # noqa: F821 - Path only in the annotation
    if name not in ALL_STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(ALL_STAGES)}")
    return ALL_STAGES[name][0].run(preset)
