"""The GPU presets' code path on the CPU: stand-in Qwen2 models (random weights, nothing downloaded), 4-bit NF4,
k-bit preparation, gradient checkpointing, LoRA everywhere, the reward model on its own base, PPO with a 4-bit
policy; and the precision guards a T4 needs."""

import json
import math

import pytest
import torch

from medgpt_utils import cli, dryrun, models
from medgpt_utils.memory import SHAPES
from medgpt_utils.presets import PRESETS, get_preset
from medgpt_utils.training import finite_loss_guard, keep_trainable_fp32

GPU_PRESETS = [name for name, p in PRESETS.items() if p.base_model]


def test_small_stand_ins_keep_the_architecture_in_multiples_of_64():
    for model_id, shape in SHAPES.items():
        small = dryrun.stand_in_shape(shape, "small", vocab=3000)
        assert small.hidden % 64 == 0 and small.intermediate % 64 == 0 and small.head_dim % 32 == 0
        assert small.heads > small.kv_heads and small.tied_embeddings == shape.tied_embeddings  # grouped KV kept
        assert dryrun.stand_in_shape(shape, "full", vocab=3000) == shape  # full: the real shape


@pytest.fixture(scope="module")
def colab_stand_in(tmp_path_factory):
    import os

    old = os.environ.get("MEDGPT_OUTPUT_DIR")
    os.environ["MEDGPT_OUTPUT_DIR"] = str(tmp_path_factory.mktemp("dry"))
    try:
        yield dryrun.stand_in(get_preset("colab-t4", verbose=False), "small")
    finally:
        os.environ.pop("MEDGPT_OUTPUT_DIR") if old is None else os.environ.__setitem__("MEDGPT_OUTPUT_DIR", old)


def test_a_stand_in_is_the_presets_architecture_pointed_at_local_folders(colab_stand_in):
    preset = colab_stand_in
    config = json.loads((__import__("pathlib").Path(preset.base_model) / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["hidden_size"] == 128 and config["num_key_value_heads"] == 1
    assert preset.name == "colab-t4-dry-run-small" and preset.quantization == "4bit" and preset.gradient_checkpointing
    assert preset.device == "cpu" and preset.compute_dtype == "float32"  # fp16 autocast needs CUDA
    assert preset.pt.max_steps == dryrun.DRY_RUN_STEPS and preset.lora_target_modules == "all-linear"


def test_4bit_layers_still_pass_gradients_after_an_evaluation_on_the_cpu(colab_stand_in):
    """bitsandbytes repacks 4-bit weights for a kernel without a backward pass the first time a layer runs
    without gradients on an AVX-512-BF16 CPU; the course turns that off, so training after evaluating works."""
    model = models.load_lora_model(colab_stand_in, colab_stand_in.base_model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # what every stage does first: judge the model before training it
    packed = [m for m in model.modules() if getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]
    assert not packed, "4-bit weights were repacked for the inference-only kernel"
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()  # Qwen2's biased q/k/v: the repacked kernel fails right here
    first_layer = [p.grad for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n]
    assert len(first_layer) == 7 and all(g is not None and g.abs().sum() > 0 for g in first_layer)


def test_trl_bf16_adapter_weights_go_back_to_fp32_unless_the_preset_computes_in_bf16(colab_stand_in):
    model = models.load_lora_model(colab_stand_in, colab_stand_in.base_model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # what TRL's trainers do to a quantized model's adapter
    assert keep_trainable_fp32(model, colab_stand_in) > 0
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    bf16_preset = get_preset("gpu-24gb", verbose=False)
    assert keep_trainable_fp32(model, bf16_preset) == 0  # TRL's bf16 adapter is the QLoRA recipe there


def test_a_non_finite_loss_stops_training_with_a_clear_message():
    guard = finite_loss_guard("sft")
    state = type("State", (), {"global_step": 7})()
    guard.on_log(None, state, None, logs={"loss": 2.5})
    with pytest.raises(FloatingPointError, match=r"sft: the training loss became nan at step 7; stopped"):
        guard.on_log(None, state, None, logs={"loss": math.nan})


@pytest.mark.slow
@pytest.mark.parametrize("name", GPU_PRESETS)
def test_every_stage_of_a_gpu_preset_runs_on_cpu_stand_ins(name, outputs, capsys, small_validation):
    # A few held-out pairs and prompts: random stand-in weights make their judgement meaningless anyway.
    assert cli.main(["run", "--preset", name, "--dry-run", "small", *small_validation]) == 0
    out = capsys.readouterr().out
    folder = outputs / f"{name}-dry-run-small"
    assert f"[dry run] per-stage time and memory: {folder / 'budget.md'}" in out
    preset = dryrun.stand_in(get_preset(name, verbose=False), "small")
    for stage in ("pt", "sft", "rm", "ppo", "dpo", "orpo", "grpo"):
        row = dryrun.budget_row(preset, stage)
        assert row["train_seconds"] > 0 and row["peak_memory_gib"] > 0, row
        assert row["first_losses"] and all(math.isfinite(x) for x in row["first_losses"]), row
    from safetensors import safe_open

    # Every trainer's trainable weights as saved: fp32 unless the preset computes in bf16 (TRL casts them to bf16)
    for adapter_file in ("pt/adapter", "sft/adapter", "rm/adapter", "dpo/adapter", "orpo/adapter", "grpo/adapter",
                         "ppo/checkpoint/adapter"):
        with safe_open(str(folder / adapter_file / "adapter_model.safetensors"), "pt") as adapter:
            dtypes = {adapter.get_tensor(k).dtype for k in adapter.keys()}
        assert dtypes == ({torch.float32} if preset.compute_dtype != "bfloat16" else {torch.bfloat16}), (adapter_file, dtypes)


def test_the_stand_in_tokenizer_is_qwen2_5s_template_tokens_and_stops(colab_stand_in):
    """Qwen2.5-Instruct's chat template as TRL ships it (rendered here straight from the file), its special tokens,
    <|im_end|> as EOS and <|endoftext|> as pad; SFT's assistant mask comes from TRL's training variant."""
    from pathlib import Path

    import jinja2
    import trl

    tokenizer = models.load_tokenizer(colab_stand_in.base_model)
    chat = [{"role": "user", "content": "What causes gout?"}, {"role": "assistant", "content": "Uric acid crystals."},
            {"role": "user", "content": "痛风应该看哪个科？"}, {"role": "assistant", "content": "风湿免疫科。"}]
    source = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text(encoding="utf-8")
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    for add_generation_prompt, messages in ((False, chat), (True, chat[:3])):
        expected = template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=None)
        assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt) == expected
    assert expected.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")  # Qwen's default system prompt
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_pad|>", "<tool_call>", "<|fim_middle|>"):
        assert tokenizer.convert_ids_to_tokens(tokenizer(token)["input_ids"]) == [token], token  # one token each
    config = json.loads((__import__("pathlib").Path(colab_stand_in.base_model) / "config.json").read_text())
    assert config["vocab_size"] % 64 == 0 and config["vocab_size"] >= len(tokenizer)  # more rows than tokens, as Qwen2.5
    assert "{% generation %}" not in tokenizer.chat_template  # Qwen's own has no marks: the training variant adds them
    encoded = tokenizer.apply_chat_template(chat, chat_template=models.training_chat_template(tokenizer), return_dict=True,
                                            return_assistant_tokens_mask=True)
    marked = tokenizer.decode([i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m])
    assert marked == "\nUric acid crystals.<|im_end|>\n\n风湿免疫科。<|im_end|>\n", marked  # the answers and their EOS only


def test_stand_ins_have_more_embedding_rows_than_tokens_in_multiples_of_64():
    qwen = SHAPES["Qwen/Qwen2.5-0.5B-Instruct"]
    assert dryrun.stand_in_shape(qwen, "small", vocab=3041).vocab == 3072
    assert dryrun.stand_in_shape(qwen, "small", vocab=3072).vocab == 3072
    assert dryrun.stand_in_shape(qwen, "full", vocab=3041).vocab == 151_936  # Qwen2.5's own rows


def test_a_notebooks_dry_run_needs_a_gpu_preset_and_a_known_scale(monkeypatch):
    monkeypatch.setenv(dryrun.DRY_RUN_ENV, "small")
    with pytest.raises(ValueError, match=r"\$MEDGPT_DRY_RUN='small': the tiny preset builds its own model"):
        dryrun.from_environment(get_preset("tiny", verbose=False))
    monkeypatch.setenv(dryrun.DRY_RUN_ENV, "huge")
    with pytest.raises(ValueError, match=r"\$MEDGPT_DRY_RUN='huge': dry-run scale must be one of"):
        dryrun.from_environment(get_preset("colab-t4", verbose=False))
    monkeypatch.setenv(dryrun.DRY_RUN_ENV, "")
    assert dryrun.from_environment(get_preset("tiny", verbose=False)).dry_run is None
