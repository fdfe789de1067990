"""The pipeline's stages in order. Notebooks, the ``medgpt`` command and tests call these.

Each stage module has ``STAGE`` (its folder name under ``outputs/<preset>/``) and
``run(preset) -> Path``; a stage whose input is missing builds it through the same function.
"""

from __future__ import annotations

from . import base, dpo, grpo, orpo, ppo, pretrain, reward, sft, vocab

# name -> (module, one-line description); ``medgpt run`` runs them in this order.
STAGES = {
    base.STAGE: (base, "build the tiny tokenizer and model (tiny preset) or name the hub base model"),
    pretrain.STAGE: (pretrain, "continued pretraining on the medical corpus, perplexity before/after"),
    sft.STAGE: (sft, "supervised fine-tuning on single- and multi-turn dialogues (LoRA, assistant-only loss)"),
    reward.STAGE: (reward, "reward model: scalar head + LoRA on the SFT model, pairwise loss"),
    ppo.STAGE: (ppo, "RLHF with PPO: LoRA policy, KL leash to the SFT model, reward-model scores"),
    dpo.STAGE: (dpo, "DPO: pairs of the SFT model's own answers ranked by the reward model (or the bundled pairs), reference = adapter off"),
    orpo.STAGE: (orpo, "ORPO: SFT loss + odds-ratio preference term on the same pairs as DPO, no reference model"),
    grpo.STAGE: (grpo, "GRPO: group-relative advantages from the reward model + an urgent-care rule"),
}

# Stages with their own command that `medgpt run` leaves out (nothing downstream reads them).
OPTIONAL_STAGES = {
    vocab.STAGE: (vocab, "optional: add medical terms to the vocabulary, resize embeddings, keep training"),
}
ALL_STAGES = {**STAGES, **OPTIONAL_STAGES}


def run_stage(name: str, preset) -> "Path":  # noqa: F821 - Path only in the annotation
    if name not in ALL_STAGES:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(ALL_STAGES)}")
    return ALL_STAGES[name][0].run(preset)
