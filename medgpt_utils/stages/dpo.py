"""Stage 5a, direct preference optimisation (DPO): learn from preference pairs without a reward model.

Recipe: the SFT model with a LoRA adapter is the policy; the same model with the adapter off is the
reference. DPO minimises  -log sigma(beta * [(log pi(y_c|x) - log pi_ref(y_c|x)) - (log pi(y_r|x) - log pi_ref(y_r|x))])
over the preference pairs (Rafailov et al. 2023): the reward model and the sampling loop of PPO are
folded into one classification loss. Judged like PPO, against the SFT model on held-out prompts.
"""

from __future__ import annotations

from pathlib import Path

from ..presets import Preset
from .alignment import train_and_judge
from .reward import training_pairs
from .common import trainer_arguments

STAGE = "dpo"


def dpo_config(preset: Preset, output_dir):
    from trl import DPOConfig

    return trainer_arguments(DPOConfig, preset, preset.dpo, output_dir, beta=preset.preference.dpo_beta,
                             max_length=preset.max_length)


def run(preset: Preset) -> Path:
    from trl import DPOTrainer

    pairs = training_pairs()

    def build(policy, tokenizer, reward_model, reward_tokenizer, workdir):
        # ref_model=None with a LoRA policy: TRL scores the reference with the adapter off
        return DPOTrainer(model=policy, ref_model=None, args=dpo_config(preset, workdir), train_dataset=pairs,
                          processing_class=tokenizer)

    return train_and_judge(preset, STAGE, build)
