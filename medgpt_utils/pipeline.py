"""The pipeline's stages in order: the one list that the command line, evaluation, chat, memory
estimates and reports derive theirs from. It names stages; ``medgpt_utils.stages`` implements them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str  # folder under outputs/<preset>/ and the `medgpt <name>` command
    summary: str
    trains: bool = True  # updates weights (the base stage only builds or names a model)
    causal_lm: bool = True  # saves a model that chats (the reward model scores instead)
    aligns: bool = False  # starts from the SFT and reward models and is judged against the SFT model
    optional: bool = False  # has its own command; `medgpt run` leaves it out, nothing downstream reads it
    inputs: tuple[str, ...] = ()  # the stages whose outputs it starts from
    reads: tuple[str, ...] = ()  # the preset fields it reads besides TRAINING_FIELDS (its fingerprint covers them)


# Preset fields every training stage reads: how weights are held and trained, which data, which seed.
TRAINING_FIELDS = ("device", "compute_dtype", "quantization", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                   "full_parameter_stages", "gradient_checkpointing", "optim", "conditions", "seed", "trust_remote_code")
# What the judge and the sampled answers of every alignment stage read (a dotted path names one sub-field).
_JUDGED = ("rl.heldout_prompt_stride", "rl.missing_eos_penalty", "rl.temperature", "rl.seed", "rl.kl_bound", "rl.recall_tolerance",
           "rl.urgent_care_reward", "rl.wrong_condition_penalty", "rl.key_fact_reward", "rl.non_word_penalty", "max_new_tokens")
# Where each stage's data comes from (``Preset.data``); every reader also depends on the shared options.
_DATA_OPTIONS = ("data.validation_percent", "data.on_error")
DATA_READS = {kind: (f"data.{kind}", f"data.{kind}_validation") + _DATA_OPTIONS for kind in ("pt", "sft", "preference", "prompts")}
# The data a stage's ``--data`` gives (``medgpt dpo --data pairs.jsonl`` also sets preference.pair_source=data).
STAGE_DATA = {"base": "pt", "pt": "pt", "vocab": "pt", "sft": "sft", "rm": "preference", "dpo": "preference",
              "orpo": "preference", "ppo": "prompts", "grpo": "prompts"}
_PREFERENCE_READS = _JUDGED + ("preference", "max_length", "max_prompt_length") + DATA_READS["prompts"] + DATA_READS["preference"]

PIPELINE = (
    StageInfo("base", "build the tiny tokenizer and model (tiny preset) or name the hub base model", trains=False,
              reads=("base_model", "tiny", "data.sft", "data.sft_validation") + DATA_READS["pt"]),
    StageInfo("pt", "continued pretraining on the medical corpus, perplexity before/after", inputs=("base",),
              reads=("pt", "block_size", "eval_question_stride") + DATA_READS["pt"]),
    StageInfo("sft", "supervised fine-tuning on single- and multi-turn dialogues (LoRA, assistant-only loss)", inputs=("pt",),
              reads=("sft", "max_length", "max_new_tokens", "eval_question_stride") + DATA_READS["sft"]),
    StageInfo("rm", "reward model from the SFT model: a scalar head, pairwise loss (reward_kind=implicit: DPO's loss, no head)",
              causal_lm=False, inputs=("sft",),
              reads=("rm", "max_length", "reward_base_model", "reward_degenerate_pairs", "reward_kind", "reward_beta") + DATA_READS["preference"]),
    StageInfo("ppo", "RLHF with PPO: LoRA policy, KL leash to the SFT model, reward-model scores", aligns=True,
              inputs=("sft", "rm"), reads=("ppo", "rl", "max_new_tokens") + DATA_READS["prompts"]),
    StageInfo("dpo", "DPO: pairs of the SFT model's own answers ranked by the reward model (or the bundled pairs), "
                     "reference = adapter off", aligns=True, inputs=("sft", "rm"), reads=("dpo",) + _PREFERENCE_READS),
    StageInfo("orpo", "ORPO: SFT loss + odds-ratio preference term on the same pairs as DPO, no reference model", aligns=True,
              inputs=("sft", "rm"), reads=("orpo",) + _PREFERENCE_READS),
    StageInfo("grpo", "GRPO: group-relative advantages from the reward model + an urgent-care rule", aligns=True,
              inputs=("sft", "rm"), reads=("grpo",) + _PREFERENCE_READS),
    StageInfo("vocab", "optional: add medical terms to the vocabulary, resize embeddings, keep training", optional=True,
              inputs=("pt",), reads=("vocab", "pt", "block_size") + DATA_READS["pt"]),
)


def stage_names(optional: bool = False, **wanted: bool) -> tuple[str, ...]:
    """Stage names in pipeline order whose flags match ``wanted`` (e.g. ``aligns=True``); optional
    stages only when ``optional`` is true."""
    return tuple(s.name for s in PIPELINE
                 if (optional or not s.optional) and all(getattr(s, k) == v for k, v in wanted.items()))


def info(name: str) -> StageInfo:
    for stage in PIPELINE:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in PIPELINE)}")


def summary(name: str) -> str:
    return info(name).summary
