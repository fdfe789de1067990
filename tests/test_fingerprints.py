"""Outputs that know how they were made: a changed preset field rebuilds exactly the stages that depend on it."""

import json

from medgpt_utils import fingerprints
from medgpt_utils.artifacts import METRICS_FILE, stage_dir
from medgpt_utils.presets import get_preset, override
from medgpt_utils.stages import sft

# Two optimizer steps per stage and short evaluations: the test is about what gets rebuilt, not the numbers.
QUICK = {"pt.max_steps": 2, "sft.max_steps": 2, "eval_question_stride": 64, "max_new_tokens": 8}


def built_at(preset, stage):
    return (stage_dir(preset.name, stage) / METRICS_FILE).stat().st_mtime_ns


def test_a_changed_field_rebuilds_exactly_the_stages_that_depend_on_it(outputs, capsys):
    preset = override(get_preset("tiny", verbose=False), QUICK)
    sft.run(preset)  # builds base and pt first
    first = {s: built_at(preset, s) for s in ("base", "pt", "sft")}
    assert all(fingerprints.is_current(preset, s) for s in first)
    saved = json.loads((stage_dir(preset.name, "sft") / METRICS_FILE).read_text())["made_with"]
    assert saved["settings"]["sft"]["max_steps"] == 2 and saved["preset_settings"]["seed"] == preset.seed

    later_sft = override(preset, {"sft.learning_rate": 5e-4})
    assert fingerprints.stale_reason(later_sft, "sft") == "made with other settings (changed: sft)"
    sft.run(later_sft)
    second = {s: built_at(preset, s) for s in first}
    assert second["base"] == first["base"] and second["pt"] == first["pt"] and second["sft"] != first["sft"]

    later_pt = override(later_sft, {"pt.max_steps": 3})
    assert fingerprints.stale_reason(later_pt, "sft") == "made with other settings (changed: the pt stage)"
    capsys.readouterr()
    sft.run(later_pt)
    assert "[pt] made with other settings (changed: pt): building it first" in capsys.readouterr().out
    third = {s: built_at(preset, s) for s in first}
    assert third["base"] == first["base"] and third["pt"] != second["pt"] and third["sft"] != second["sft"]
    assert fingerprints.is_current(later_pt, "sft") and not fingerprints.is_current(preset, "sft")


def test_a_stage_from_before_fingerprints_is_not_current(outputs):
    preset = get_preset("tiny", verbose=False)
    folder = stage_dir(preset.name, "pt")
    folder.mkdir(parents=True)
    (folder / METRICS_FILE).write_text(json.dumps({"stage": "pt"}))
    assert fingerprints.stale_reason(preset, "pt") == "built before outputs recorded how they were made"
    assert fingerprints.stale_reason(preset, "sft") == "not built yet"


def test_fingerprints_follow_the_pipeline_inputs():
    preset = get_preset("tiny", verbose=False)
    changed = override(preset, {"rm.epochs": 1})
    same = [s for s in ("base", "pt", "sft") if fingerprints.stage_fingerprint(preset, s) == fingerprints.stage_fingerprint(changed, s)]
    differ = [s for s in ("rm", "ppo", "dpo", "orpo", "grpo") if fingerprints.stage_fingerprint(preset, s) != fingerprints.stage_fingerprint(changed, s)]
    assert same == ["base", "pt", "sft"] and differ == ["rm", "ppo", "dpo", "orpo", "grpo"]
    assert fingerprints.stage_fingerprint(preset, "ppo") == fingerprints.stage_fingerprint(override(preset, {"dpo.epochs": 9}), "ppo")


def test_training_one_more_stage_in_full_leaves_the_stages_before_it_current():
    preset = get_preset("tiny", verbose=False)
    lora_rm, full_rm = (override(preset, {"full_parameter_stages": v}) for v in ("pt,sft", "pt,sft,rm"))
    differ = [s for s in ("base", "pt", "sft", "rm", "ppo")
              if fingerprints.stage_fingerprint(lora_rm, s) != fingerprints.stage_fingerprint(full_rm, s)]
    assert differ == ["rm", "ppo"]


def test_the_optimizer_reaches_every_trainer_and_rebuilds_the_trained_stages():
    from trl import RewardConfig, SFTConfig

    from medgpt_utils.training import trainer_arguments

    preset = get_preset("tiny", verbose=False)
    fused = override(preset, {"optim": "adamw_torch_fused"})
    for cls, knobs in ((SFTConfig, fused.sft), (RewardConfig, fused.rm)):
        assert trainer_arguments(cls, fused, knobs, "/tmp/unused").optim == "adamw_torch_fused"
    assert trainer_arguments(SFTConfig, preset, preset.sft, "/tmp/unused").optim == "adamw_torch"
    # a fused AdamW is not bit-identical to the default (notebooks/EXPERIMENTS.md): every trained stage is stale
    assert fingerprints.stage_fingerprint(preset, "base") == fingerprints.stage_fingerprint(fused, "base")
    assert all(fingerprints.stage_fingerprint(preset, s) != fingerprints.stage_fingerprint(fused, s)
               for s in ("pt", "sft", "rm", "dpo", "grpo"))


def test_the_sft_data_shapes_the_base_stage_only_when_the_tokenizer_learns_the_dialogues(tmp_path):
    preset = get_preset("tiny", verbose=False)
    own_sft = tmp_path / "own_sft.jsonl"
    own_sft.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n')

    def base_changes(start):
        return fingerprints.stage_fingerprint(start, "base") != fingerprints.stage_fingerprint(override(start, {"data.sft": str(own_sft)}), "base")

    assert not base_changes(preset)  # the PT text alone makes the tokenizer: new SFT data keeps base and PT
    assert base_changes(override(preset, {"tiny.tokenizer_learns_dialogues": True}))
