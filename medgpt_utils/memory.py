"""GPU memory budgets per stage and preset, computed from parameter, optimizer and activation sizes.

These are **estimates** (no GPU was available to measure them): the sum of

- weights: 4-bit NF4 about 0.56 bytes per parameter (values plus double-quantized block scales),
  fp16/bf16 2 bytes, fp32 4 bytes; embeddings and the LM head stay in 16 bit under bitsandbytes;
- LoRA: trainable fp32 weights, their gradients and AdamW's two moments, 16 bytes per parameter;
- activations saved for the backward pass: with gradient checkpointing one hidden state per layer
  and token, plus one layer's working set while it is recomputed (Korthikanti et al. 2022, 34·h
  bytes per token in 16 bit, attention scores aside since SDPA does not store them);
- logits: batch x length x vocabulary in fp32, twice (values and gradient): large for Qwen's 152k
  vocabulary;
- for PPO and GRPO, the KV cache of generation and a reward model;
- 0.8 GiB for the CUDA context and the allocator's slack.

``tests/test_memory.py`` checks the arithmetic; notebooks/RESULTS.md's course map shows the results.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pipeline import stage_names
from .presets import PRESETS, Preset

GIB = 2**30
CUDA_OVERHEAD = 0.8 * GIB


@dataclass(frozen=True)
class Shape:
    """What the estimate needs from a model's config (public configs of the hub models)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def body_parameters(self) -> int:
        """Parameters of the transformer layers (attention + MLP), the quantized part."""
        attention = self.hidden * self.hidden * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp)

    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    def lora_parameters(self, r: int) -> int:
        """LoRA on every linear layer of the body: r x (in + out) each."""
        kv = self.kv_heads * self.head_dim
        per_layer = r * ((self.hidden + self.hidden) * 2 + (self.hidden + kv) * 2 + 3 * (self.hidden + self.intermediate))
        return self.layers * per_layer


# From the models' published config.json files.
SHAPES = {
    "Qwen/Qwen2.5-0.5B-Instruct": Shape(896, 24, 4864, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": Shape(1536, 28, 8960, 12, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": Shape(3584, 28, 18944, 28, 4, 152064, False),
}
BYTES = {"4bit": 0.5625, "8bit": 1.0625, "float16": 2.0, "bfloat16": 2.0, "float32": 4.0}


def weights_bytes(shape: Shape, preset: Preset) -> float:
    body = BYTES[preset.quantization] if preset.quantization else BYTES[preset.compute_dtype]
    return shape.body_parameters() * body + shape.embedding_parameters() * 2.0


def lora_training_bytes(shape: Shape, preset: Preset) -> float:
    return shape.lora_parameters(preset.lora_r) * 16.0


def activation_bytes(shape: Shape, preset: Preset, sequences: int, length: int, vocab_logits: bool = True) -> float:
    """Saved activations plus, for a language-model head, the fp32 logits and their gradient
    (a reward model's scalar head has none)."""
    tokens = sequences * length
    per_token = (shape.layers * shape.hidden * 2.0 + 34.0 * shape.hidden) if preset.gradient_checkpointing \
        else shape.layers * 34.0 * shape.hidden
    logits = tokens * shape.vocab * 4.0 * 2 if vocab_logits else 0.0
    return tokens * per_token + logits


def kv_cache_bytes(shape: Shape, sequences: int, length: int) -> float:
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * 2.0 * sequences * length


def stage_budget(preset: Preset, stage: str) -> dict:
    """Estimated peak GPU memory of ``stage`` on ``preset`` (GiB), with its parts."""
    shape = SHAPES[preset.base_model]
    reward_shape = SHAPES.get(preset.reward_base_model or preset.base_model, shape)
    knobs = getattr(preset, stage)
    length = preset.block_size if stage == "pt" else preset.max_length
    sequences = knobs.batch_size * (2 if stage in ("rm", "dpo", "orpo") else 1)  # chosen and rejected together
    implicit = preset.reward_kind == "implicit"  # a reward model trained the DPO way scores with a causal LM and its
    # reference: two models when trained in full, one when trained as a LoRA adapter (the reference is the adapter off)
    implicit_models = 2 if implicit and "rm" in preset.full_parameter_stages else 1
    parts = {"weights": weights_bytes(shape if stage != "rm" else reward_shape, preset),
             "lora_and_optimizer": lora_training_bytes(shape if stage != "rm" else reward_shape, preset)}
    if stage in ("ppo", "grpo"):
        rollouts = preset.rl.minibatch_size if stage == "ppo" else knobs.batch_size
        length = preset.max_prompt_length + preset.max_new_tokens
        parts["activations"] = activation_bytes(shape, preset, rollouts, length)
        generating = knobs.batch_size * (preset.preference.grpo_num_generations if stage == "grpo" else 1)
        parts["kv_cache"] = kv_cache_bytes(shape, generating, length)
        parts["reward_model"] = implicit_models * weights_bytes(reward_shape, preset)
    else:
        parts["activations"] = activation_bytes(shape if stage != "rm" else reward_shape, preset, sequences, length,
                                                vocab_logits=stage != "rm" or implicit)
    if stage == "rm" and implicit_models == 2:  # the frozen SFT model it is trained and scored against
        parts["reference"] = weights_bytes(reward_shape, preset)
    parts["cuda_overhead"] = CUDA_OVERHEAD
    total = sum(parts.values())
    return {"stage": stage, "preset": preset.name, "total_gib": round(total / GIB, 1),
            "parts_gib": {k: round(v / GIB, 2) for k, v in parts.items()}, "estimate": True}


TRAINING_STAGES = stage_names(trains=True)


def budgets(preset_names=("colab-t4", "gpu-24gb")) -> list[dict]:
    return [stage_budget(PRESETS[name], stage) for name in preset_names for stage in TRAINING_STAGES]
