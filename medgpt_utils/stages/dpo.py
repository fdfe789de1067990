"""Stage 5a, direct preference optimisation (DPO): learn from preference pairs without a sampling loop.

Recipe: the SFT model with a LoRA adapter is the policy; the same model with the adapter off is the
reference. DPO minimises  -log sigma(beta * [(log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x))])
over preference pairs (Rafailov et al. 2023): the reward model and the sampling loop of PPO are
folded into one classification loss. With ``preference.dpo_sft_weight`` > 0 an NLL term on the
chosen answer is added (RPO). The pairs come from ``stages.pairs`` (by default the SFT model's own
answers ranked by the reward model). Judged like PPO, against the SFT model on held-out prompts.
"""

from __future__ import annotations

from pathlib import Path

from ..presets import Preset
from ..training import measuring, prepared, trainer_arguments
from . import alignment, pairs

STAGE = "dpo"


def dpo_config(preset: Preset, output_dir):
    from trl import DPOConfig

    knobs = preset.preference
    # With an SFT weight the loss is DPO's plus w * NLL(chosen): the chosen answers' likelihood
    # cannot fall while the margin grows (plain DPO often lowers both; Pang et al. 2024).
    losses = dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, knobs.dpo_sft_weight]) if knobs.dpo_sft_weight > 0 else {}
    return trainer_arguments(DPOConfig, preset, preset.dpo, output_dir, beta=knobs.dpo_beta,
                             max_length=preset.max_length, **losses)


def run(preset: Preset) -> Path:
    """The whole stage, as ``medgpt dpo`` runs it (notebook 05 takes the same steps one cell at a time); its pairs
    come from ``preference.pair_source`` ("sampled", or "data": the pairs of ``data.preference``)."""
    from trl import DPOTrainer

    run = pairs.prepare(preset, STAGE)
    # ref_model=None with a LoRA policy: TRL scores the reference with the adapter off
    trainer = prepared(DPOTrainer(model=run.model, ref_model=None, args=dpo_config(preset, run.workdir),
                                  train_dataset=run.train_set, processing_class=run.tokenizer), preset, STAGE)
    with measuring(run):
        trainer.train(resume_from_checkpoint=run.resume_from)  # None: from the start
    return alignment.finish(run, trainer)
