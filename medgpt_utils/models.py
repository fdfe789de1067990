"""Tokenizers and models: build the tiny one, load any one (full, 8-bit, 4-bit), LoRA, merge.

Safety defaults: weights are read and written as safetensors only, and ``trust_remote_code``
stays off unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable

import torch

from .presets import Preset, TinyArchitecture

EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN]

# ChatML, as Qwen uses it: every turn ends with <|im_end|>, which is also the EOS token, so a
# model trained on this template learns to stop. {% generation %} marks the assistant tokens
# that carry the SFT loss (TRL's assistant_only_loss reads these marks).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_chat_template(tokenizer) -> str:
    """The template that marks the assistant's tokens (``{% generation %}``) for ``tokenizer``: its own when it
    has the marks (the course's), else the training variant TRL keeps for known models (Qwen2.5's), which is
    what SFTTrainer's ``assistant_only_loss`` swaps in. Pass it as ``apply_chat_template(..., chat_template=)``."""
    from trl.chat_template_utils import get_training_chat_template

    try:
        template = get_training_chat_template(tokenizer)
    except ValueError as err:  # a template without marks that TRL has no training variant of
        raise ValueError(f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')}: its chat template marks no assistant turn "
                         "({% generation %}) and TRL has no training variant of it; give the tokenizer a template with "
                         f"those marks ({err})") from err
    return tokenizer.chat_template if template is None else template


def assistant_labels(tokenizer, dialogues: Iterable[list[dict]], max_length: int | None = None) -> dict[str, list[list[int]]]:
    """Token ids and labels (-100 outside the assistant's turns) of chat ``dialogues``, as TRL's assistant-only loss
    makes them (``training_chat_template``); each cut to ``max_length`` tokens when given."""
    rows, template = {"input_ids": [], "labels": []}, training_chat_template(tokenizer)
    for messages in dialogues:
        out = tokenizer.apply_chat_template(messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True,
                                            tokenize=True)
        ids, mask = out["input_ids"][:max_length], out["assistant_masks"][:max_length]
        rows["input_ids"].append(ids)
        rows["labels"].append([t if m else -100 for t, m in zip(ids, mask)])
    return rows


def assistant_labelled_batch(tokenizer, dialogues: list[list[dict]], max_length: int | None = None) -> dict:
    """``assistant_labels`` of ``dialogues`` as one batch of tensors, padded by transformers' ``DataCollatorForSeq2Seq``
    on the tokenizer's side (label -100, attention 0 on the padding): PPO-ptx's SFT batches."""
    from transformers import DataCollatorForSeq2Seq

    rows = assistant_labels(tokenizer, dialogues, max_length)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")
    return dict(collate([{"input_ids": i, "labels": l} for i, l in zip(rows["input_ids"], rows["labels"])]))


# ---------------------------------------------------------------- the tiny preset's own model
CJK_CHARACTER = r"[\u3400-\u9fff]"


def build_tiny_tokenizer(texts: Iterable[str], vocab_size: int = 8000, chinese_characters: bool = False):
    """Train a byte-level BPE tokenizer on ``texts`` (any byte sequence stays encodable).

    ``chinese_characters``: every Chinese character is a token of its own and no merge crosses two of
    them. On a small corpus BPE otherwise learns whole template phrases ("的常见症状包括") as single
    tokens, and the same facts in other words tokenize into pieces the model never saw together.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CJK_CHARACTER), behavior="isolated"), byte_level])
                          if chinese_characters else byte_level)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer, arch: TinyArchitecture, seed: int = 42):
    """A freshly initialised LLaMA-architecture causal LM sized by ``arch`` (fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config)


# ---------------------------------------------------------------- loading
def load_tokenizer(path: str | Path, trust_remote_code: bool = False, padding_side: str = "right"):
    """Load a tokenizer and make sure it can pad (falls back to EOS as the pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def quantization_config(quantization: str | None, compute_dtype: torch.dtype = torch.float32):
    """``BitsAndBytesConfig`` for "4bit" (NF4, double quantization) or "8bit"; None for full."""
    if quantization in (None, "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"unknown quantization {quantization!r}; use None, '4bit' or '8bit'")


def _load_kwargs(quantization, compute_dtype, device, trust_remote_code):
    kwargs = dict(dtype=compute_dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    qconfig = quantization_config(quantization, compute_dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        # bitsandbytes places quantized weights when they load; "" maps the whole model. Under
        # accelerate/torchrun each process owns the GPU of its LOCAL_RANK, not GPU 0.
        kwargs["device_map"] = {"": device if device != "cuda" else int(os.environ.get("LOCAL_RANK", 0))}
    return kwargs


def keep_4bit_layers_differentiable_on_cpu(model) -> int:
    """On CPUs with AVX-512-BF16, bitsandbytes repacks a 4-bit layer's weights for a faster kernel the first
    time it runs without gradients, and keeps that layout: the kernel has no backward pass, so training after
    an evaluation would silently stop gradients at every 4-bit layer (and fail outright on layers with a bias,
    as Qwen2's attention has). The course evaluates before it trains, so on the CPU it turns that repacking
    off; GPUs are not affected. Returns the number of layers changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def load_causal_lm(
    path: str | Path,
    quantization: str | None = None,
    compute_dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load a causal LM in full precision, 8-bit or 4-bit (safetensors only)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), **_load_kwargs(quantization, compute_dtype, device, trust_remote_code)
    )
    if quantization in (None, "none"):
        model.to(device)
    elif device == "cpu":
        keep_4bit_layers_differentiable_on_cpu(model)
    return model


def load_reward_model(
    path: str | Path,
    pad_token_id: int | None = None,
    quantization: str | None = None,
    compute_dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    trust_remote_code: bool = False,
):
    """Load a sequence-classification model with one output: the reward score; or, from a folder that a reward stage
    of kind "implicit" saved, the DPO-trained model and its reference as one ``scoring.ImplicitReward`` (trained as
    a LoRA adapter: one model, the reference with the adapter on top)."""
    from transformers import AutoModelForSequenceClassification

    implicit = implicit_reward_settings(path)
    if implicit is not None:
        from .scoring import ImplicitReward

        def causal_lm(where):
            return load_causal_lm(where, quantization, compute_dtype, device, trust_remote_code)

        adapter = Path(path) / ADAPTER_FOLDER
        if (adapter / "adapter_config.json").is_file():  # trained as a LoRA adapter: the reference with the adapter
            # on top, as in training (the merged copy beside it is for other tools; re-quantized it would shift scores)
            from peft import PeftModel

            policy = PeftModel.from_pretrained(causal_lm(implicit["reference"]), str(adapter))
            return ImplicitReward(policy, None, implicit["beta"])
        return ImplicitReward(causal_lm(path), causal_lm(implicit["reference"]), implicit["beta"])
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, **_load_kwargs(quantization, compute_dtype, device, trust_remote_code)
    )
    if pad_token_id is not None:
        # The score is read at the last non-pad token, so the model must know the pad id.
        model.config.pad_token_id = pad_token_id
    if quantization in (None, "none"):
        model.to(device)
    elif device == "cpu":
        keep_4bit_layers_differentiable_on_cpu(model)
    return model


IMPLICIT_REWARD_FILE = "implicit_reward.json"
ADAPTER_FOLDER = "adapter"  # where a LoRA stage saves its adapter, beside the merged model (read back by the implicit kind)


def implicit_reward_settings(path: str | Path) -> dict | None:
    """The reference model and beta of a reward model trained the DPO way (None: a classifier, or a hub id). A relative
    reference is relative to the reward model's folder, so outputs can be moved together."""
    settings_file = Path(path) / IMPLICIT_REWARD_FILE
    if not settings_file.is_file():
        return None
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    if not isinstance(settings.get("reference"), str) or not isinstance(settings.get("beta"), (int, float)):
        raise ValueError(f"{settings_file}: wants a 'reference' model path and a number 'beta', got {settings}")
    reference = Path(path) / settings["reference"]
    return {"reference": str(reference) if reference.exists() else settings["reference"], "beta": float(settings["beta"])}


def load_for_preset(preset: Preset, path: str | Path, reward: bool = False, pad_token_id: int | None = None):
    """Load a model with the preset's quantization, dtype, device and remote-code setting."""
    common = dict(
        quantization=preset.quantization,
        compute_dtype=preset.torch_dtype,
        device=preset.device,
        trust_remote_code=preset.trust_remote_code,
    )
    if reward:
        return load_reward_model(path, pad_token_id=pad_token_id, **common)
    return load_causal_lm(path, **common)


# ---------------------------------------------------------------- LoRA
def prepare_for_kbit_training(model, gradient_checkpointing: bool = False):
    """Freeze the quantized base, upcast norms, enable input grads (PEFT's recipe)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def add_lora(model, r: int, alpha: int, dropout: float = 0.0, target_modules="all-linear", task_type="CAUSAL_LM"):
    """Attach a LoRA adapter to every linear layer (or to ``target_modules``)."""
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules) if isinstance(target_modules, (tuple, list)) else target_modules
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type=task_type)
    return get_peft_model(model, config)


def lora_config_for(preset: Preset, task_type: str = "CAUSAL_LM"):
    """The preset's LoRA settings as a ``peft.LoraConfig`` (what TRL trainers take)."""
    from peft import LoraConfig

    targets = preset.lora_target_modules
    targets = list(targets) if isinstance(targets, (tuple, list)) else targets
    return LoraConfig(
        r=preset.lora_r,
        lora_alpha=preset.lora_alpha,
        lora_dropout=preset.lora_dropout,
        target_modules=targets,
        task_type=task_type,
    )


def load_lora_model(preset: Preset, path: str | Path, task_type: str = "CAUSAL_LM", pad_token_id: int | None = None):
    """Load ``path`` the preset's way and attach a fresh LoRA adapter (QLoRA when 4-bit)."""
    model = load_for_preset(preset, path, reward=task_type == "SEQ_CLS", pad_token_id=pad_token_id)
    if preset.quantization:
        model = prepare_for_kbit_training(model, preset.gradient_checkpointing)
    return add_lora(
        model, preset.lora_r, preset.lora_alpha, preset.lora_dropout, preset.lora_target_modules, task_type
    )


def load_trainable(preset: Preset, path: str | Path, stage: str):
    """The model a training stage updates: every weight if the preset says so, else LoRA/QLoRA."""
    if stage in preset.full_parameter_stages:
        return load_for_preset(preset, path)
    return load_lora_model(preset, path)


def save_trained(preset: Preset, stage: str, model, tokenizer, base_path: str | Path, out: Path) -> None:
    """Save a stage's result as a standalone model in ``out`` (LoRA: adapter in ``out/adapter``, then merged)."""
    if stage in preset.full_parameter_stages:
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return
    for name in [n for n in getattr(model, "peft_config", {}) if n != "default"]:
        model.delete_adapter(name)  # TRL's DPO trainer adds a frozen copy, "ref", as its reference: not the result
    model.save_pretrained(out / ADAPTER_FOLDER, safe_serialization=True)
    merge_adapter(base_path, out / ADAPTER_FOLDER, out, dtype=preset.torch_dtype,
                  trust_remote_code=preset.trust_remote_code, atomic=False)


def device_that_fits(folder: str | Path, headroom: float = 1.3) -> str:
    """'cuda' when the model saved in ``folder`` (its safetensors, times ``headroom`` for activations) fits in the GPU's
    free memory, else 'cpu': where a full-precision copy can be checked without running a small card out of memory."""
    if not torch.cuda.is_available():
        return "cpu"
    size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    return "cuda" if size * headroom < torch.cuda.mem_get_info()[0] else "cpu"


def count_parameters(model) -> dict:
    """Trainable and total parameter counts (4-bit weights counted as stored elements x 2)."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if param.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values are packed in one uint8 element
        total += n
        if param.requires_grad:
            trainable += n
    return {"trainable": trainable, "total": total, "trainable_percent": 100.0 * trainable / max(total, 1)}


def describe_parameters(model) -> str:
    c = count_parameters(model)
    return f"trainable params: {c['trainable']:,} / {c['total']:,} ({c['trainable_percent']:.2f}%)"


# ---------------------------------------------------------------- merge and export
def merge_adapter(base_path: str | Path, adapter_path: str | Path, out_dir: str | Path,
                  dtype: torch.dtype = torch.float32, reward: bool = False, trust_remote_code: bool = False,
                  atomic: bool = True) -> Path:
    """Fold a LoRA adapter into a full-precision copy of its base and save it standalone.

    The base is reloaded unquantized on purpose: merging into 4-bit weights would round the
    adapter away. The result is a plain model folder (safetensors + tokenizer + config),
    written atomically unless the caller already writes into a temporary stage folder.
    """
    from peft import PeftModel

    from .artifacts import atomic_dir

    tokenizer_source = adapter_path if (Path(adapter_path) / "tokenizer_config.json").exists() else base_path
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)
    if reward:
        base = load_reward_model(base_path, tokenizer.pad_token_id, compute_dtype=dtype, trust_remote_code=trust_remote_code)
    else:
        base = load_causal_lm(base_path, compute_dtype=dtype, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_path)).merge_and_unload()
    out_dir = Path(out_dir)
    with (atomic_dir(out_dir) if atomic else contextlib.nullcontext(out_dir)) as folder:
        merged.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    return out_dir

