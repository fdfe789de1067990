import dataclasses
import math

import pytest
import torch

from medgpt_utils import models
from medgpt_utils.presets import PRESETS

TINY = PRESETS["tiny"]


def test_tiny_model_is_a_few_million_parameter_llama(tiny_base):
    model = models.load_causal_lm(tiny_base)
    assert model.config.model_type == "llama"
    assert 1e6 < models.count_parameters(model)["total"] < 2e7
    assert next(model.parameters()).dtype == torch.float32


def test_chat_template_ends_assistant_turns_with_eos(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "感冒有哪些症状？"},
                {"role": "assistant", "content": "Runny nose."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.endswith("<|im_start|>assistant\nRunny nose.<|im_end|>\n")
    assert tokenizer.eos_token == "<|im_end|>"
    encoded = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    ids = encoded["input_ids"]
    masked = [i for i, m in zip(ids, encoded["assistant_masks"]) if m]
    assert masked[-1] == tokenizer.eos_token_id  # the loss teaches the model to stop
    assert tokenizer.decode(masked) == "Runny nose.<|im_end|>"
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_byte_level_tokenizer_round_trips_unseen_text(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    text = "Zebra-𝛼 罕见字 ☃ 123"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_chinese_characters_stay_single_tokens_while_english_words_merge():
    corpus = ["流行性感冒的常见症状包括发热和咳嗽。", "Common symptoms of influenza include fever and cough."] * 50
    merged = models.build_tiny_tokenizer(corpus, 400)
    per_character = models.build_tiny_tokenizer(corpus, 400, chinese_characters=True)
    phrase = "流行性感冒的常见症状包括"
    assert len(merged(phrase, add_special_tokens=False)["input_ids"]) < len(phrase)  # template phrases became tokens
    pieces = [per_character.decode([i]) for i in per_character(phrase, add_special_tokens=False)["input_ids"]]
    assert pieces == list(phrase)  # one token per character, each one decodable
    assert per_character.tokenize(" influenza") == merged.tokenize(" influenza") and len(per_character.tokenize(" influenza")) == 1
    assert per_character.decode(per_character("发热 and cough")["input_ids"]) == "发热 and cough"


def test_quantization_config_is_nf4_with_double_quant():
    config = models.quantization_config("4bit", torch.float16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.float16
    assert models.quantization_config(None) is None
    with pytest.raises(ValueError, match="unknown quantization"):
        models.quantization_config("3bit")


def test_qlora_forward_backward_on_cpu(tiny_base):
    """The 4-bit NF4 + LoRA path that GPU presets use, run for real on the CPU."""
    import bitsandbytes as bnb

    preset = dataclasses.replace(TINY, quantization="4bit")
    model = models.load_lora_model(preset, tiny_base)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized, "base linear layers should be 4-bit"
    counts = models.count_parameters(model)
    assert 0 < counts["trainable"] < counts["total"] * 0.2
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert math.isfinite(loss.item())
    # lora_B starts at zero, so only its gradient is non-zero after one step
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    # No-grad evaluation takes other kernels (on AVX-512-BF16 CPUs bitsandbytes packs 4-bit weights in
    # blocks of 32 output features): the evaluation every stage runs must work on 4-bit models too.
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_tiny_shapes_are_multiples_of_64_so_every_4bit_kernel_accepts_them():
    arch = TINY.tiny
    for name in ("hidden_size", "intermediate_size"):
        assert getattr(arch, name) % 64 == 0, name
    head_dim = arch.hidden_size // arch.num_attention_heads
    assert (head_dim * arch.num_key_value_heads) % 64 == 0  # k_proj and v_proj output features


def test_lora_targets_every_linear_layer(tiny_base):
    model = models.load_lora_model(TINY, tiny_base)
    wrapped = {n.split(".")[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= wrapped


def test_merge_save_reload_gives_same_logits(tiny_base, tmp_path):
    model = models.load_lora_model(TINY, tiny_base)
    with torch.no_grad():  # a fresh adapter is a no-op (B = 0); make it change the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    merged_dir = models.merge_adapter(tiny_base, tmp_path / "adapter", tmp_path / "merged")
    files = {p.name for p in merged_dir.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    reloaded = models.load_causal_lm(merged_dir).eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    base = models.load_causal_lm(tiny_base).eval()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, expected, atol=1e-3)  # the adapter mattered


def test_reward_model_scores_a_batch(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_reward_model(tiny_base, pad_token_id=tokenizer.pad_token_id)
    batch = tokenizer(["fever and cough", "rest"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 1)


def test_remote_code_is_off_by_default(monkeypatch, tiny_base):
    seen = {}
    import transformers

    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(path, **kwargs):
        seen.update(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    models.load_causal_lm(tiny_base)
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True


def test_the_training_template_of_a_template_without_marks_trl_does_not_know_names_the_fix():
    tokenizer = models.build_tiny_tokenizer(["a few words to train on"] * 5, 300)
    assert models.training_chat_template(tokenizer) == tokenizer.chat_template  # the course's own has the marks
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ValueError, match=r"marks no assistant turn .* give the tokenizer a template with those marks"):
        models.training_chat_template(tokenizer)
