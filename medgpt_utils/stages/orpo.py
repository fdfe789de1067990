"""Stage 5b, odds-ratio preference optimisation (ORPO): SFT and preference in one loss, no reference model.

Recipe: L = L_SFT(y_c) + lambda * -log sigma(log odds(y_c|x) - log odds(y_r|x)),  odds(y|x) = p / (1 - p)
with p the length-normalised likelihood (Hong et al. 2024). No reference model is kept at all, so it
is the cheapest of the preference methods; TRL ships it in ``trl.experimental``.
"""

from __future__ import annotations

from pathlib import Path

from ..presets import Preset
from .alignment import train_and_judge
from .reward import training_pairs
from .common import trainer_arguments

STAGE = "orpo"


def orpo_config(preset: Preset, output_dir):
    from trl.experimental.orpo import ORPOConfig

    return trainer_arguments(ORPOConfig, preset, preset.orpo, output_dir, beta=preset.preference.orpo_beta,
                             max_length=preset.max_length)


def run(preset: Preset) -> Path:
    from trl.experimental.orpo import ORPOTrainer

    pairs = training_pairs()

    def build(policy, tokenizer, reward_model, reward_tokenizer, workdir):
        return ORPOTrainer(model=policy, args=orpo_config(preset, workdir), train_dataset=pairs, processing_class=tokenizer)

    return train_and_judge(preset, STAGE, build)
