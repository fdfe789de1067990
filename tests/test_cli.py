import json
import subprocess
import sys

import pytest

from medgpt_utils import cli
from medgpt_utils.stages import ALL_STAGES, STAGES


@pytest.mark.parametrize("command", [[], ["run"], ["presets"], ["eval"], ["infer"], ["web"], *[[name] for name in ALL_STAGES]])
def test_every_command_has_help(command):
    result = subprocess.run([sys.executable, "-m", "medgpt_utils.cli", *command, "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage: medgpt" in result.stdout


def test_presets_command_prints_every_preset(capsys):
    assert cli.main(["presets"]) == 0
    presets = json.loads(capsys.readouterr().out)
    assert set(presets) == {"tiny", "colab-t4", "gpu-24gb"}
    assert presets["tiny"]["compute_dtype"] == "float32"


def test_bad_override_is_a_clear_error(outputs, capsys):
    assert cli.main(["pt", "--preset", "tiny", "--set", "pt.nope=1"]) == 2
    assert "unknown preset field 'pt.nope'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--data", "--validation-data"])
def test_an_empty_data_option_is_refused_instead_of_meaning_the_bundled_data(outputs, capsys, option):
    assert cli.main(["sft", "--preset", "tiny", option, "  "]) == 2
    assert f"{option} is empty: name a file, a folder" in capsys.readouterr().err
    assert not (outputs / "tiny").exists()  # refused before anything was built


def test_web_auth_reaches_the_server_and_the_password_is_never_printed(tiny_base, monkeypatch, capsys):
    from medgpt_utils import web

    seen = {}
    monkeypatch.setattr(web, "launch", lambda *args, **kwargs: seen.update(kwargs))
    monkeypatch.setenv(web.PASSWORD_ENV, "s3cret")
    common = ["web", "--preset", "tiny", "--base_model", str(tiny_base), "--use_cpu"]
    assert cli.main(common + ["--auth", "alice"]) == 0
    assert seen["auth"] == ("alice", "s3cret") and seen["host"] == "127.0.0.1"
    monkeypatch.delenv(web.PASSWORD_ENV)
    seen.clear()
    assert cli.main(common + ["--auth", "alice"]) == 2 and not seen  # no password: refused before loading the model
    captured = capsys.readouterr()
    assert "--auth needs USER:PASSWORD, or USER with the password in $MEDGPT_WEB_PASSWORD" in captured.err
    assert "s3cret" not in captured.out + captured.err


@pytest.mark.slow
def test_run_writes_every_stage_and_the_report(outputs, capsys, small_validation):
    """`medgpt run` on the tiny preset, shortened: every stage's folder, metrics and the report."""
    short = ["pt.max_steps=4", "pt.logging_steps=1", "sft.max_steps=2", "rm.max_steps=2", "eval_question_stride=100",
             "ppo.max_steps=2", "ppo.batch_size=4", "rl.minibatch_size=2", "rl.heldout_prompt_stride=2",
             "dpo.max_steps=2", "orpo.max_steps=2", "grpo.max_steps=2", "preference.pair_prompts=8",
             "max_new_tokens=16"]  # short answers: the untrained models never stop by themselves
    args = ["run", "--preset", "tiny", *small_validation] + [arg for pair in short for arg in ("--set", pair)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    report = outputs / "tiny" / "report.md"
    assert f"Report written to {report}" in out
    for stage in STAGES:
        assert (outputs / "tiny" / stage / "metrics.json").is_file()
    assert (outputs / "tiny" / "pt" / "model.safetensors").is_file()
    assert not list((outputs / "tiny").glob(".*tmp*")), "no temporary folders left behind"
    pt = json.loads((outputs / "tiny" / "pt" / "metrics.json").read_text())
    assert pt["heldout_loss_after"] < pt["heldout_loss_before"]  # even 4 steps of PT learn something
    assert len(pt["loss_history"]["loss"]) >= 4
    assert "| pt | heldout_perplexity_after |" in report.read_text()
    # the tiny preset trains its reward model in full: a whole model, no adapter (issue 26)
    assert (outputs / "tiny" / "rm" / "model.safetensors").is_file() and not (outputs / "tiny" / "rm" / "adapter").exists()
    assert "| rm | degenerate_accuracy |" in report.read_text()  # does it see an answer that repeats itself?
    ppo_metrics = json.loads((outputs / "tiny" / "ppo" / "metrics.json").read_text())
    sft_knowledge = json.loads((outputs / "tiny" / "sft" / "metrics.json").read_text())["knowledge"]
    # the verdict sees the SFT stage's question sets: SFT's own measures before, the policy's after
    assert ppo_metrics["recall_heldout_before"] == sft_knowledge["heldout"]["recall"]
    assert ppo_metrics["recall_handwritten_after"] is not None
    assert ppo_metrics["verdict"]["recall_kept_on_question_sets"] is not None
    # ... and the reward gain there: SFT's kept answers and the policy's, scored by the same reward model
    asked = sum(len(sft_knowledge[name]["answers"]) for name in ("heldout", "handwritten"))
    assert asked == sft_knowledge["heldout"]["n"] + sft_knowledge["handwritten"]["n"]
    assert ppo_metrics["score_gain_question_sets"]["n"] == asked
    assert ppo_metrics["score_gain_all_prompts"]["n"] == asked + ppo_metrics["heldout_prompts"]
    assert [h["step"] for h in ppo_metrics["history"]] == [1, 2]
    assert (outputs / "tiny" / "ppo" / "checkpoint" / "value_head.safetensors").is_file()
    assert (outputs / "tiny" / "ppo" / "model.safetensors").is_file()  # merged policy for inference
    assert not (outputs / "tiny" / "ppo_checkpoint").exists()  # the finished stage supersedes it
    assert "| ppo | score_gain |" in report.read_text()
    for method in ("dpo", "orpo", "grpo"):
        metrics = json.loads((outputs / "tiny" / method / "metrics.json").read_text())
        assert len(metrics["scores_after"]) == metrics["heldout_prompts"] and 0 <= metrics["win_rate"] <= 1
        assert (outputs / "tiny" / method / "adapter" / "adapter_model.safetensors").is_file()
        assert (outputs / "tiny" / method / "model.safetensors").is_file()
        assert f"| {method} | win_rate |" in report.read_text()
    assert not (outputs / "tiny" / "vocab").exists()  # optional stages stay out of `run`
    evaluation = json.loads((outputs / "tiny" / "evaluation.json").read_text())
    assert [row["stage"] for row in evaluation["rows"]] == ["base", "pt", "sft", "ppo", "dpo", "orpo", "grpo"]
    assert "## Evaluation across stages" in report.read_text() and "| sft |" in report.read_text()
    assert json.loads((outputs / "tiny" / "dpo" / "metrics.json").read_text())["sampled_pairs"]["prompts"] == 8
    # a second run with the same settings skips finished stages; with another PPO setting it rebuilds PPO only
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert all(f"[{stage}] already done with these settings" in out for stage in STAGES), out
    assert cli.main(args + ["--set", "rl.kl_coef=0.2"]) == 0
    out = capsys.readouterr().out
    assert "[ppo] running (made with other settings (changed: rl))" in out
    assert all(f"[{stage}] already done with these settings" in out for stage in STAGES if stage != "ppo"), out


def test_multi_gpu_configs_are_valid():
    from pathlib import Path

    import yaml

    folder = Path(cli.__file__).parent / "configs"
    for stage in (2, 3):
        config = json.loads((folder / f"deepspeed_zero{stage}.json").read_text())
        assert config["zero_optimization"]["stage"] == stage
    zero2 = yaml.safe_load((folder / "accelerate_deepspeed_zero2.yaml").read_text())
    assert (folder.parent.parent / zero2["deepspeed_config"]["deepspeed_config_file"]).is_file()
    assert yaml.safe_load((folder / "accelerate_multi_gpu.yaml").read_text())["distributed_type"] == "MULTI_GPU"
