"""A GPU preset's stages without its hub models: stand-ins of the same architecture, built locally.

``stand_in(preset, scale)`` builds, for the preset's base model and reward base model, a Qwen2 model with
random weights (nothing downloaded) and a tokenizer trained on the bundled corpus that carries Qwen2.5's
special tokens and its real chat template (from TRL's bundled copy), and returns the preset pointed at them,
with a few steps per stage:

- ``scale="small"``: every dimension cut to a few multiples of 64 (bitsandbytes' CPU 4-bit kernels need
  sizes divisible by 32 on AVX-512-BF16 processors), so every stage runs on a CPU in seconds. Everything the
  GPU path does is kept except the device: 4-bit NF4 weights, k-bit preparation, gradient checkpointing,
  LoRA on every linear layer, the reward model on its own base, PPO generation with the 4-bit policy. On a
  CPU the compute dtype is fp32 (fp16 autocast needs CUDA).
- ``scale="full"``: the real shapes (``memory.SHAPES``: Qwen2.5-0.5B's 151,936 embedding rows) and the preset's real batch sizes and lengths: on a
  GPU, ``medgpt run --preset colab-t4 --dry-run full`` measures each stage's peak memory and step time, the
  card capped to the preset's budget (``cap_gpu_memory``: 15 GiB for colab-t4, as a T4 leaves to PyTorch).

The outputs go to ``outputs/<preset>-dry-run-<scale>/``; ``budget_table`` reads them back as a table.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .artifacts import output_root, stage_dir
from .memory import SHAPES, Shape
from .presets import Preset, override

SCALES = ("small", "full")
DRY_RUN_STEPS = 3
# What a T4 leaves to PyTorch, and a 24 GB card: the caps a larger card is held to in a full dry run.
GPU_BUDGET_GIB = {"colab-t4": 15.0, "gpu-24gb": 24.0}
STAND_IN_VERSION = "qwen2.5-template"  # in the cached folders' names: a stand-in built by older code is rebuilt
SMALL = {"hidden": 128, "intermediate": 256, "layers": 2, "heads": 2, "kv_heads": 1}


def stand_in_shape(shape: Shape, scale: str, vocab: int) -> Shape:
    """The real shape, or a small one keeping what makes the architecture (grouped KV heads, tied embeddings)."""
    if scale == "full":
        return dataclasses.replace(shape, vocab=max(shape.vocab, vocab))
    # More embedding rows than tokens, in a multiple of 64, as Qwen2.5 has (151,936 rows for 151,665 tokens).
    rows = -(-vocab // 64) * 64
    return Shape(SMALL["hidden"], SMALL["layers"], SMALL["intermediate"], SMALL["heads"], SMALL["kv_heads"], rows,
                 shape.tied_embeddings)


def build_stand_in(model_id: str, folder: Path, scale: str, tokenizer, dtype: str = "float32") -> Path:
    """A Qwen2 causal LM with random weights shaped like ``model_id`` (``memory.SHAPES``), saved as safetensors."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if (folder / "config.json").is_file():
        return folder
    if model_id not in SHAPES:
        raise ValueError(f"no shape known for {model_id!r}; known: {', '.join(SHAPES)}")
    shape = stand_in_shape(SHAPES[model_id], scale, len(tokenizer))
    config = Qwen2Config(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        tie_word_embeddings=shape.tied_embeddings, max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# Qwen2.5's added tokens beyond the three the course's tokenizer has (<|endoftext|>, <|im_start|>, <|im_end|>), in
# Qwen2.5-0.5B-Instruct's tokenizer_config.json order: the special ones, then the plain added ones.
QWEN2_5_EXTRA_SPECIAL_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN2_5_ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
                        "<|repo_name|>", "<|file_sep|>")


def _tokenizer():
    """A tokenizer dressed as Qwen2.5-Instruct's where the course meets it, without a download: byte-level BPE
    trained on the bundled corpus (3,000 tokens instead of Qwen's 151,643; one per Chinese character where Qwen's
    merges words), Qwen2.5's special and added tokens, ``<|im_end|>`` as EOS, ``<|endoftext|>`` as pad, no BOS, and
    Qwen2.5's real chat template as TRL ships it (``trl/chat_templates/qwen2_5.jinja``: a default system prompt, no
    ``{% generation %}`` marks; SFTTrainer and ``models.training_chat_template`` use TRL's training variant of it)."""
    from trl.chat_template_utils import qwen2_5_chat_template

    from . import data, models

    texts = data.load_bundled("pretrain/train.jsonl")["text"]
    tokenizer = models.build_tiny_tokenizer(texts, 3000, chinese_characters=True)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", models.EOS_TOKEN, *QWEN2_5_EXTRA_SPECIAL_TOKENS]})
    tokenizer.add_tokens(list(QWEN2_5_ADDED_TOKENS))
    tokenizer.chat_template = qwen2_5_chat_template
    return tokenizer


def short_run(preset: Preset, scale: str) -> dict:
    """A few steps per stage; at the small scale also short answers and few evaluation questions."""
    steps = DRY_RUN_STEPS
    overrides = {f"{stage}.max_steps": steps for stage in ("pt", "sft", "rm", "dpo", "orpo", "grpo", "ppo")}
    overrides.update({"pt.logging_steps": 1, "sft.logging_steps": 1, "rm.logging_steps": 1, "preference.pair_prompts": 8,
                      "eval_question_stride": 200, "rl.heldout_prompt_stride": 100})
    if scale == "small":
        overrides.update({"max_new_tokens": 16, "ppo.batch_size": 4 * preset.rl.samples_per_prompt, "rl.minibatch_size": 2})
    return overrides


def stand_in(preset: Preset, scale: str, device: str | None = None) -> Preset:
    """``preset`` with its hub models replaced by local stand-ins (see the module's docstring)."""
    import torch

    if scale not in SCALES:
        raise ValueError(f"dry-run scale must be one of {SCALES}, got {scale!r}")
    if preset.base_model is None:
        raise ValueError(f"the {preset.name} preset builds its own model; a dry run is for presets that name hub models")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = preset.compute_dtype if device == "cuda" else "float32"
    folders = {m: output_root() / "stand_in_models" / (m.replace("/", "--") + f"-{scale}-{dtype}-{STAND_IN_VERSION}")
               for m in {preset.base_model, preset.reward_base_model or preset.base_model}}
    tokenizer = None if all((f / "config.json").is_file() for f in folders.values()) else _tokenizer()
    paths = {m: str(build_stand_in(m, f, scale, tokenizer, dtype)) for m, f in folders.items()}
    settings = {"name": f"{preset.name}-dry-run-{scale}", "dry_run": scale, "base_model": paths[preset.base_model], "device": device,
                "compute_dtype": dtype, **short_run(preset, scale)}
    if preset.reward_base_model:
        settings["reward_base_model"] = paths[preset.reward_base_model]
    return override(preset, settings)


DRY_RUN_ENV = "MEDGPT_DRY_RUN"  # a notebook's preset as stand-ins: MEDGPT_PRESET=colab-t4 MEDGPT_DRY_RUN=small


def from_environment(preset: Preset) -> Preset:
    """``preset``, or its stand-ins at the scale ``$MEDGPT_DRY_RUN`` names (how the test suite runs the notebooks
    on a GPU preset's code path without a GPU or a download)."""
    import os

    scale = os.environ.get(DRY_RUN_ENV, "").strip()
    if not scale:
        return preset
    try:
        return announced(preset, scale)
    except ValueError as err:  # stand_in's own checks: the scale, a preset that names hub models
        raise ValueError(f"${DRY_RUN_ENV}={scale!r}: {err} (MEDGPT_PRESET=colab-t4 or gpu-24gb)") from err


def announced(preset: Preset, scale: str) -> Preset:
    """``stand_in`` as the command and the notebooks start a dry run: a full one holds the GPU to the preset's
    budget first (``cap_gpu_memory``), and both say what stands in for what."""
    cap = cap_gpu_memory(preset.name) if scale == "full" else None
    preset = stand_in(preset, scale)
    print(f"[dry run] {preset.name}: stand-in models {preset.base_model}"
          f"{f', GPU capped at {cap} GiB' if cap else ''}; {preset.describe()}")
    return preset


def cap_gpu_memory(preset_name: str) -> float | None:
    """Hold a larger card to the preset's budget (``GPU_BUDGET_GIB``), so a full dry run's out-of-memory is the
    preset's own; returns the cap in GiB, or None without CUDA or a budget."""
    import torch

    budget = GPU_BUDGET_GIB.get(preset_name)
    if budget is None or not torch.cuda.is_available():
        return None
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total))
    return budget


BUDGET_COLUMNS = ("stage", "train_seconds", "seconds_per_step", "tokens_per_second", "peak_memory_gib",
                  "peak_reserved_gib", "peak_memory_kind", "first_losses")


def budget_row(preset: Preset, stage: str) -> dict:
    """One stage's measured time and memory, from its ``metrics.json``."""
    metrics = json.loads((stage_dir(preset.name, stage) / "metrics.json").read_text(encoding="utf-8"))
    if "history" in metrics:  # the PPO loop: its policy loss per step
        losses = [h["policy_loss"] for h in metrics["history"]]
    else:
        losses = metrics.get("loss_history", {}).get("loss", []) if isinstance(metrics.get("loss_history"), dict) else []
    steps = metrics.get("steps") or DRY_RUN_STEPS
    seconds = metrics.get("train_seconds")
    return {"stage": stage, "train_seconds": seconds,
            "seconds_per_step": round(seconds / steps, 2) if seconds else None,
            "tokens_per_second": metrics.get("tokens_per_second") or metrics.get("real_tokens_per_second"),
            "peak_memory_gib": metrics.get("peak_memory_gib"), "peak_reserved_gib": metrics.get("peak_memory_gib_reserved"),
            "peak_memory_kind": metrics.get("peak_memory_gib_kind"), "first_losses": [round(x, 4) for x in losses[:3]]}


def budget_table(preset: Preset, stages) -> str:
    """The dry run's per-stage figures as a markdown table (``outputs/<preset>-dry-run-<scale>/budget.md``)."""
    rows = [budget_row(preset, s) for s in stages if (stage_dir(preset.name, s) / "metrics.json").is_file()]
    lines = ["| " + " | ".join(BUDGET_COLUMNS) + " |", "|" + "---|" * len(BUDGET_COLUMNS)]
    lines += ["| " + " | ".join("-" if r[c] is None else str(r[c]) for c in BUDGET_COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_budget(preset: Preset, stages) -> Path:
    path = output_root() / preset.name / "budget.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(budget_table(preset, stages), encoding="utf-8")
    return path
