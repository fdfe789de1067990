"""The GPU memory estimates (the course map of notebooks/RESULTS.md): arithmetic checks, no GPU needed."""

import pytest

from medgpt_utils import memory
from medgpt_utils.presets import PRESETS, override


def test_shapes_give_the_published_parameter_counts():
    counts = {name: s.body_parameters() + s.embedding_parameters() for name, s in memory.SHAPES.items()}
    assert counts["Qwen/Qwen2.5-0.5B-Instruct"] == pytest.approx(0.494e9, rel=0.01)
    assert counts["Qwen/Qwen2.5-1.5B-Instruct"] == pytest.approx(1.54e9, rel=0.01)
    assert counts["Qwen/Qwen2.5-7B-Instruct"] == pytest.approx(7.62e9, rel=0.01)


def test_lora_parameters_match_peft_on_a_real_model_of_the_same_shape():
    """Build a tiny Qwen2-shaped model locally and count what PEFT actually adds."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from medgpt_utils import models

    shape = memory.Shape(hidden=64, layers=2, intermediate=176, heads=4, kv_heads=2, vocab=300, tied_embeddings=True)
    config = Qwen2Config(hidden_size=64, num_hidden_layers=2, intermediate_size=176, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, tie_word_embeddings=True)
    model = models.add_lora(Qwen2ForCausalLM(config), r=8, alpha=16)
    assert models.count_parameters(model)["trainable"] == shape.lora_parameters(8)


def test_every_gpu_preset_fits_its_card_and_the_larger_model_needs_more():
    """What the course map promises: each stage of colab-t4 fits a T4 (about 15 GB left to PyTorch) and each
    stage of gpu-24gb fits 24 GB; the 7B preset needs more than the 0.5B one at every stage."""
    budgets = {(b["preset"], b["stage"]): b["total_gib"] for b in memory.budgets()}
    for stage in memory.TRAINING_STAGES:
        assert budgets[("colab-t4", stage)] < 15, stage
        assert budgets[("gpu-24gb", stage)] < 24, stage
        assert budgets[("gpu-24gb", stage)] > budgets[("colab-t4", stage)], stage


def test_budgets_grow_with_batch_and_shrink_with_4bit():
    t4 = PRESETS["colab-t4"]
    small = memory.stage_budget(t4, "sft")["total_gib"]
    assert memory.stage_budget(override(t4, {"sft.batch_size": 8}), "sft")["total_gib"] > small
    assert memory.stage_budget(override(t4, {"quantization": None}), "sft")["parts_gib"]["weights"] > \
        memory.stage_budget(t4, "sft")["parts_gib"]["weights"]
    assert memory.stage_budget(override(t4, {"gradient_checkpointing": False}), "sft")["total_gib"] > small


def test_a_reward_model_trained_the_dpo_way_is_budgeted_as_two_models_only_when_trained_in_full():
    """``reward_kind="implicit"`` scores with the trained model and its reference. Trained as a LoRA adapter (colab-t4)
    the reference is the same model with the adapter off: the reward stage adds the vocabulary's logits, PPO and GRPO
    hold one reward-model's weights as with the classifier. Trained in full, a second model everywhere."""
    t4 = PRESETS["colab-t4"]
    implicit = override(t4, {"reward_kind": "implicit"})
    in_full = override(implicit, {"full_parameter_stages": ("rm",)})
    assert memory.stage_budget(implicit, "rm")["total_gib"] > memory.stage_budget(t4, "rm")["total_gib"]
    assert "reference" not in memory.stage_budget(implicit, "rm")["parts_gib"]
    assert memory.stage_budget(in_full, "rm")["parts_gib"]["reference"] > 0
    for stage in ("rm", "ppo", "grpo"):
        assert memory.stage_budget(in_full, stage)["total_gib"] > memory.stage_budget(t4, stage)["total_gib"], stage
        assert memory.stage_budget(in_full, stage)["total_gib"] < 15, stage
    classifier = memory.stage_budget(t4, "ppo")["parts_gib"]["reward_model"]
    assert memory.stage_budget(implicit, "ppo")["parts_gib"]["reward_model"] == pytest.approx(classifier, abs=0.01)
    assert memory.stage_budget(in_full, "ppo")["parts_gib"]["reward_model"] == pytest.approx(2 * classifier, abs=0.01)
    assert memory.stage_budget(implicit, "sft") == memory.stage_budget(t4, "sft")
