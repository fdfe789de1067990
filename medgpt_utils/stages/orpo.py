"""Stage 5b, odds-ratio preference optimisation (ORPO): SFT and preference in one loss, no reference model.

Recipe: L = L_SFT(y_c) + lambda * -log sigma(log odds(y_c|x) - log odds(y_r|x)),  odds(y|x) = p / (1 - p)
with p the length-normalised likelihood (Hong et al. 2024). No reference model is kept at all, so it
is the cheapest of the preference methods; TRL ships it in ``trl.experimental``. Its pairs come
from ``stages.pairs``, as DPO's do (by default the SFT model's own answers ranked by the reward
model; measured on the tiny preset, 40 steps on the bundled pairs lowered the reward score).
"""

from __future__ import annotations

from pathlib import Path

from ..presets import Preset
from ..training import measuring, prepared, trainer_arguments
from . import alignment, pairs

STAGE = "orpo"


def orpo_config(preset: Preset, output_dir):
    from trl.experimental.orpo import ORPOConfig

    return trainer_arguments(ORPOConfig, preset, preset.orpo, output_dir, beta=preset.preference.orpo_beta,
                             max_length=preset.max_length)


def run(preset: Preset) -> Path:
    """The whole stage, as ``medgpt orpo`` runs it (notebook 05 takes the same steps one cell at a time); its pairs
    come from ``preference.pair_source`` ("sampled", or "data": the pairs of ``data.preference``)."""
    from trl.experimental.orpo import ORPOTrainer

    run = pairs.prepare(preset, STAGE)
    trainer = prepared(ORPOTrainer(model=run.model, args=orpo_config(preset, run.workdir), train_dataset=run.train_set,
                                   processing_class=run.tokenizer), preset, STAGE)
    with measuring(run):
        trainer.train(resume_from_checkpoint=run.resume_from)  # None: from the start
    return alignment.finish(run, trainer)
