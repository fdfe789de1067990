import dataclasses

import pytest

from medgpt_utils import presets
from medgpt_utils.presets import PRESETS, get_preset, override, parse_overrides


def test_explicit_name_wins_over_environment(monkeypatch):
    monkeypatch.setenv("MEDGPT_PRESET", "gpu-24gb")
    assert get_preset("colab-t4", verbose=False).name == "colab-t4"


def test_environment_variable_chooses_preset(monkeypatch, capsys):
    monkeypatch.setenv("MEDGPT_PRESET", "colab-t4")
    assert get_preset().name == "colab-t4"
    assert "colab-t4" in capsys.readouterr().out  # the choice is printed


def test_detects_cpu_as_tiny(monkeypatch):
    monkeypatch.delenv("MEDGPT_PRESET", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert get_preset(verbose=False).name == "tiny"


@pytest.mark.parametrize("gib, expected", [(15, "colab-t4"), (24, "gpu-24gb"), (80, "gpu-24gb")])
def test_detects_gpu_by_memory(monkeypatch, gib, expected):
    class Props:
        total_memory = gib * 2**30

    monkeypatch.delenv("MEDGPT_PRESET", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_properties", lambda i: Props())
    assert presets.detect_preset_name()[0] == expected


def test_unknown_preset_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MEDGPT_PRESET", "huge")
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*tiny"):
        get_preset(verbose=False)


def test_override_nested_fields_with_string_values():
    tiny = PRESETS["tiny"]
    changed = override(tiny, parse_overrides(["sft.max_steps=20", "lora_r=8", "quantization=4bit", "gradient_checkpointing=true"]))
    assert (changed.sft.max_steps, changed.lora_r, changed.quantization, changed.gradient_checkpointing) == (20, 8, "4bit", True)
    assert tiny.sft.max_steps == -1  # the original is untouched
    assert override(changed, {"quantization": "none"}).quantization is None
    stages = override(tiny, parse_overrides(["full_parameter_stages=pt, sft,rm"])).full_parameter_stages
    assert stages == ("pt", "sft", "rm")  # a list field takes a comma list


@pytest.mark.parametrize("bad, message", [
    ({"sft.nope": 1}, "unknown preset field 'sft.nope'"),
    ({"lora_r": "eight"}, "wants a int"),
    ({"lora_r.x": 1}, "has no sub-fields"),
])
def test_override_errors_name_the_field(bad, message):
    with pytest.raises(ValueError, match=message):
        override(PRESETS["tiny"], bad)


def test_every_preset_holds_every_stage_knob():
    for preset in PRESETS.values():
        for stage in ("pt", "sft", "rm", "dpo", "orpo", "grpo", "ppo"):
            knobs = getattr(preset, stage)
            assert knobs.learning_rate > 0 and knobs.batch_size > 0
        assert preset.lora_r > 0 and preset.max_length > 0 and preset.trust_remote_code is False


def test_gpu_presets_name_hub_models_and_quantize():
    t4, big = PRESETS["colab-t4"], PRESETS["gpu-24gb"]
    assert t4.base_model and big.base_model and PRESETS["tiny"].base_model is None
    assert t4.quantization == big.quantization == "4bit"
    assert (t4.fp16, t4.bf16) == (True, False)  # the T4 has no bf16
    assert (big.fp16, big.bf16) == (False, True)


def test_no_cpu_preset_turns_on_half_precision():
    from transformers import TrainingArguments
    from trl import DPOConfig, RewardConfig, SFTConfig

    from medgpt_utils.training import trainer_arguments

    cpu_presets = [p for p in PRESETS.values() if p.device == "cpu"]
    assert cpu_presets
    for preset in cpu_presets:
        assert preset.compute_dtype == "float32" and not preset.bf16 and not preset.fp16
        for cls in (TrainingArguments, SFTConfig, RewardConfig, DPOConfig):
            args = trainer_arguments(cls, preset, preset.sft, "/tmp/unused")
            assert args.bf16 is False and args.fp16 is False, cls.__name__
    # and a GPU preset with the same field set to CPU would also stay fp32
    forced = dataclasses.replace(PRESETS["gpu-24gb"], device="cpu")
    assert not forced.bf16 and not forced.fp16


def test_alignment_stage_configs_stay_fp32_on_cpu_and_carry_the_preset_knobs():
    from medgpt_utils.stages import dpo, grpo, orpo

    tiny = PRESETS["tiny"]
    for build in (dpo.dpo_config, orpo.orpo_config, grpo.grpo_config):
        args = build(tiny, "/tmp/unused")
        assert args.bf16 is False and args.fp16 is False, build.__name__
    assert dpo.dpo_config(tiny, "/tmp/unused").beta == tiny.preference.dpo_beta
    assert orpo.orpo_config(tiny, "/tmp/unused").beta == tiny.preference.orpo_beta
    config = grpo.grpo_config(tiny, "/tmp/unused")
    assert config.num_generations == tiny.preference.grpo_num_generations
    assert config.top_k == 0 and config.top_p == 1.0  # samples from the policy itself
    assert config.reward_weights == [1.0, tiny.rl.urgent_care_reward]  # the wrong-condition rule is off by default


def _all_fields(obj, prefix=""):
    import dataclasses

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        yield f"{prefix}{f.name}", f
        if dataclasses.is_dataclass(value):
            yield from _all_fields(value, f"{prefix}{f.name}.")


def test_every_preset_field_says_what_it_means_and_presets_explain_prints_it(capsys):
    import dataclasses

    from medgpt_utils.cli import main

    missing = [path for path, f in _all_fields(PRESETS["tiny"]) if not f.metadata.get("help")]
    assert not missing, missing
    assert main(["presets", "--name", "tiny", "--explain"]) == 0
    out = capsys.readouterr().out
    for path, f in _all_fields(PRESETS["tiny"]):
        shown = f"{path}.*" if dataclasses.is_dataclass(getattr(PRESETS["tiny"], path.split(".")[0])) and "." not in path else f"{path} = "
        assert shown in out and f.metadata["help"] in out, path


def test_ppo_loop_takes_every_field_from_the_preset():
    """No second source of PPO settings: each loop field comes from a preset field that --set reaches."""
    import dataclasses

    from medgpt_utils import ppo
    from medgpt_utils.presets import override
    from medgpt_utils.stages import ppo as ppo_stage

    assert set(ppo_stage.PPO_FIELDS_FROM_PRESET) == {f.name for f in dataclasses.fields(ppo.PPOConfig)}
    changed = override(PRESETS["tiny"], {"rl.cliprange": "0.3", "rl.vf_coef": "0.5", "rl.lam": "0.9", "rl.score_clip": "5",
                                         "ppo.batch_size": "12", "rl.missing_eos_penalty": "none"})
    config = ppo_stage.ppo_config(changed)
    assert (config.cliprange, config.vf_coef, config.lam, config.score_clip, config.prompts_per_step) == (0.3, 0.5, 0.9, 5.0, 12)
    assert config.missing_eos_penalty is None


def test_stages_take_no_knob_outside_the_preset():
    """A notebook varies a knob through override(), not through a stage's own keyword."""
    import inspect

    from medgpt_utils.stages import ALL_STAGES

    extra = {name: [p for p in inspect.signature(module.run).parameters if p != "preset"]
             for name, (module, _) in ALL_STAGES.items()}
    assert extra == {name: (["name", "resume"] if name == "ppo" else []) for name in ALL_STAGES}, extra
