"""T4 hazards, closed for every trainer: precision comes from the preset (TRL configs default to bf16, which a
T4 only emulates), trainable weights stay fp32 under fp16 mixed precision ("Attempting to unscale FP16
gradients"), and an fp16 overflow stops a stage with a message that names the fix, whether it shows in the
loss or in the logits a policy samples from (PPO rollouts, GRPO's groups, evaluation)."""

import pytest
import torch

from medgpt_utils import generation, models, ppo
from medgpt_utils.presets import TinyArchitecture, get_preset, override
from medgpt_utils.stages import dpo, grpo, orpo, pretrain, reward, sft, vocab
from medgpt_utils.training import StageRun, prepared


def trainer_configs(preset, folder):
    """Every trainer configuration the stages build, by stage."""
    run = StageRun(preset, "any", None, None, None, {}, workdir=folder)
    return {"pt": pretrain.training_arguments(run), "vocab": vocab.training_arguments(run), "sft": sft.sft_config(preset, folder),
            "rm": reward.reward_config(run), "dpo": dpo.dpo_config(preset, folder), "orpo": orpo.orpo_config(preset, folder),
            "grpo": grpo.grpo_config(preset, folder)}


@pytest.mark.parametrize("name, fp16, bf16", [("colab-t4", True, False), ("gpu-24gb", False, True), ("tiny", False, False)])
def test_every_trainer_gets_its_precision_from_the_preset(name, fp16, bf16, tmp_path, monkeypatch):
    # transformers refuses bf16 without a bf16 GPU: this machine stands in for one (the flags are what is tested)
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)
    configs = trainer_configs(get_preset(name, verbose=False), tmp_path)
    assert len(configs) == 7
    for stage, config in configs.items():
        assert (config.fp16, config.bf16) == (fp16, bf16), (name, stage, config.fp16, config.bf16)


def test_a_config_left_to_trl_would_train_in_bf16():
    """Why the preset sets both flags: TRL's own default is bf16 (what a T4 emulates slowly)."""
    from trl import SFTConfig

    assert SFTConfig(output_dir="/tmp/unused", use_cpu=True).bf16 is True


@pytest.fixture(scope="module")
def tiny_lm():
    tokenizer = models.build_tiny_tokenizer(["what causes gout? uric acid crystals in the joints."] * 20, 300)
    arch = TinyArchitecture(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    return models.build_tiny_model(tokenizer, arch), tokenizer


class FakeTrainer:
    def __init__(self, model):
        self.model, self.callbacks = model, []

    def add_callback(self, callback):
        self.callbacks.append(callback)


@pytest.mark.parametrize("compute_dtype, kept", [("float16", torch.float32), ("bfloat16", torch.bfloat16)])
def test_trainable_weights_stay_fp32_under_fp16_mixed_precision(tiny_lm, compute_dtype, kept):
    """TRL casts a quantized model's adapter to bf16; fp16 mixed precision needs fp32 master weights (else
    "Attempting to unscale FP16 gradients", MedicalGPT #283); bf16 QLoRA keeps TRL's cast."""
    import copy

    model = copy.deepcopy(tiny_lm[0])
    preset = override(get_preset("colab-t4", verbose=False), {"compute_dtype": compute_dtype})
    lora = models.add_lora(model, 4, 8)
    for p in lora.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)  # what TRL's trainers do
    trainer = prepared(FakeTrainer(lora), preset, "sft")
    assert {p.dtype for p in lora.parameters() if p.requires_grad} == {kept}
    assert any(type(c).__name__ == "FiniteLossGuard" for c in trainer.callbacks)


def poisoned(model):
    """The model with an overflowed output layer, as fp16 leaves it."""
    head = model.get_output_embeddings()
    head.weight.data[0, 0] = float("nan")
    return model


def test_nan_logits_stop_generation_with_the_fix(tiny_lm):
    import copy

    model, tokenizer = tiny_lm
    broken = poisoned(copy.deepcopy(model))
    with pytest.raises(FloatingPointError, match=r"generation: the model's logits became nan; stopped\. In fp16 this is an "
                                                 r"overflow.*compute_dtype=float32"):
        generation.generate(broken, tokenizer, ["what causes gout?"], max_new_tokens=4, temperature=1.0)
    with pytest.raises(FloatingPointError, match="logits became nan"):  # a PPO rollout samples through the same call
        ppo.rollout(broken, tokenizer, ["what causes gout?"], max_new_tokens=4)
    assert not broken.get_output_embeddings()._forward_hooks  # the watch ends with the call


def test_a_trainers_policy_is_watched_for_nan_logits(tiny_lm):
    """GRPO samples inside TRL: ``prepared`` watches the trained model's logits, so an overflow names the stage."""
    import copy

    model, tokenizer = tiny_lm
    broken = poisoned(copy.deepcopy(model))
    trainer = prepared(FakeTrainer(broken), get_preset("colab-t4", verbose=False), "grpo")
    (guard,) = [c for c in trainer.callbacks if type(c).__name__ == "FiniteLogitsGuard"]
    guard.on_train_begin(None, None, None, model=broken)
    ids = tokenizer("what causes gout?", return_tensors="pt")["input_ids"]
    with pytest.raises(FloatingPointError, match=r"grpo: the model's logits became nan; stopped\. In fp16"):
        broken(input_ids=ids)
    guard.on_train_end(None, None, None)
    assert not broken.get_output_embeddings()._forward_hooks  # evaluation and chat after training are not the stage's


def test_an_infinite_logit_is_caught_too(tiny_lm):
    import copy

    model, tokenizer = tiny_lm
    broken = copy.deepcopy(model)
    broken.get_output_embeddings().weight.data[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="logits became (inf|nan)"):
        generation.generate(broken, tokenizer, ["what causes gout?"], max_new_tokens=2)
