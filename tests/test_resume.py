"""Issue 27: stage outputs that hold under faults. One writer per output folder (a lock naming its holder), no
debris from killed runs, step checkpoints keyed by the stage's settings and its inputs' exact builds, and a killed
stage that resumes to the same numbers as an uninterrupted one."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medgpt_utils import artifacts, models, ppo
from medgpt_utils.artifacts import atomic_dir, clean_leftovers, hold_lock, lock_path, release_lock
from medgpt_utils.generation import chat_prompt_texts
from medgpt_utils.presets import get_preset, override
from medgpt_utils.training import StageRun, checkpoint_key, last_checkpoint

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- atomic folders and leftovers
def test_a_leftover_backup_with_this_pid_does_not_throw_the_fresh_output_away(tmp_path):
    """The backup name used to be `.X.old-<pid>`: a leftover one with the same pid (containers reuse pids) made the
    rename fail and the fresh output was deleted."""
    final = tmp_path / "sft"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("old")
    leftover = tmp_path / f".sft.old-{os.getpid()}"
    leftover.mkdir()
    (leftover / "junk").write_text("from a killed run")
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (final / "a.txt").read_text() == "new"


def test_atomic_dir_flushes_files_before_it_publishes(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(artifacts.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    with atomic_dir(tmp_path / "rm") as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 10)
        (tmp / "metrics.json").write_text("{}")
    assert len(synced) >= 3  # two files and at least the folder


def test_leftovers_of_killed_runs_are_cleaned_and_a_lost_output_restored(tmp_path):
    (tmp_path / ".dpo.tmp-abc123").mkdir()
    (tmp_path / ".dpo.tmp-abc123" / "model.safetensors").write_bytes(b"half")
    backup = tmp_path / ".dpo.old-77-deadbeef"  # killed between atomic_dir's two renames: the last good output
    backup.mkdir()
    (backup / "metrics.json").write_text('{"good": true}')
    (tmp_path / ".sft.tmp-keep").mkdir()  # another stage's: not this one's to clean
    notes = clean_leftovers(tmp_path / "dpo")
    assert json.loads((tmp_path / "dpo" / "metrics.json").read_text()) == {"good": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sft.tmp-keep", "dpo"]
    assert any("restored" in n for n in notes) and any(".dpo.tmp-abc123" in n for n in notes)


# ---------------------------------------------------------------- one writer per output folder
def test_a_second_process_cannot_take_a_held_stage_lock_and_is_told_who_holds_it(tmp_path):
    final = tmp_path / "tiny" / "sft"
    assert hold_lock(final, "stage sft of preset tiny (medgpt sft)")
    assert not hold_lock(final, "again")  # this process already holds it: nothing to do
    probe = ("import sys; from pathlib import Path; from medgpt_utils.artifacts import hold_lock, OutputLockedError\n"
             "try:\n    hold_lock(Path(sys.argv[1]), 'second')\nexcept OutputLockedError as err:\n    print(err); sys.exit(3)\n")
    held = subprocess.run([sys.executable, "-c", probe, str(final)], capture_output=True, text=True, cwd=REPO)
    assert held.returncode == 3, held.stderr
    assert f"pid {os.getpid()}" in held.stdout and "medgpt sft" in held.stdout and str(lock_path(final)) in held.stdout
    release_lock(final)
    free = subprocess.run([sys.executable, "-c", probe, str(final)], capture_output=True, text=True, cwd=REPO)
    assert free.returncode == 0, free.stdout + free.stderr


def _cli(args, env, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "medgpt_utils.cli", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def _env(outputs: Path) -> dict:
    return {**os.environ, "MEDGPT_OUTPUT_DIR": str(outputs), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_two_processes_writing_one_stage_leave_one_whole_output_and_no_debris(tmp_path):
    outputs = tmp_path / "outputs"
    env = _env(outputs)
    first = _cli(["base", "--preset", "tiny"], env)
    lock = outputs / "tiny" / ".base.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()):  # the first writer holds the lock
        assert first.poll() is None and time.time() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = _cli(["base", "--preset", "tiny"], env)
    second_out, _ = second.communicate(timeout=300)
    first_out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, first_out
    assert second.returncode == 2, second_out
    assert f"being written by another process: pid {first.pid}" in second_out and "Traceback" not in second_out
    assert (outputs / "tiny" / "base" / "metrics.json").is_file()
    names = sorted(p.name for p in (outputs / "tiny").iterdir())
    assert [n for n in names if n.startswith(".")] == [".base.lock"] and "base" in names  # no .base.tmp-*, .base.old-*


# ---------------------------------------------------------------- step checkpoints keyed by settings and inputs
def test_trainer_checkpoints_are_keyed_by_settings_and_by_the_exact_input_build(outputs):
    preset = get_preset("tiny", verbose=False)
    sft_metrics = outputs / "tiny" / "sft" / "metrics.json"
    sft_metrics.parent.mkdir(parents=True)
    sft_metrics.write_text('{"build": 1}')
    key = checkpoint_key(preset, "dpo")
    assert checkpoint_key(preset, "dpo") == key
    assert checkpoint_key(override(preset, {"dpo.learning_rate": 1e-4}), "dpo") != key  # another setting
    assert checkpoint_key(override(preset, {"checkpoint_steps": 7}), "dpo") == key  # how often it saves is not one
    sft_metrics.write_text('{"build": 2}')  # the SFT model was rebuilt
    assert checkpoint_key(preset, "dpo") != key
    run = StageRun(preset, "dpo", None, None, None, {})
    assert run.workdir == outputs / "tiny" / "dpo_checkpoint" / checkpoint_key(preset, "dpo")


def test_only_a_checkpoint_the_trainer_finished_writing_is_resumed_from(tmp_path):
    assert last_checkpoint(tmp_path / "none") is None
    for step, complete in ((4, True), (8, True), (12, False)):  # killed while saving step 12
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-8")


def _loop(tiny_base):
    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.add_lora(models.load_causal_lm(tiny_base), r=8, alpha=16, dropout=0.0)
    config = ppo.PPOConfig(prompts_per_step=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=4)
    loop = ppo.PPOLoop(model, tokenizer, lambda prompts, batch, answers: torch.ones(len(answers)), config)
    texts = chat_prompt_texts(tokenizer, [[{"role": "user", "content": q}] for q in ("What causes gout?", "头痛怎么办？")])
    return loop, texts


def test_ppo_resumes_only_its_own_undamaged_checkpoint_and_moves_others_aside(tiny_base, outputs, capsys):
    from medgpt_utils.stages import ppo as ppo_stage

    preset = get_preset("tiny", verbose=False)
    ckpt = ppo_stage.checkpoint_dir(preset)
    loop, texts = _loop(tiny_base)
    loop.step(texts)

    def saved():
        loop.save_checkpoint(ckpt, made_with=checkpoint_key(preset, "ppo"))

    def resumed(run_preset) -> bool:
        fresh, _ = _loop(tiny_base)
        ppo_stage.train(run_preset, fresh, texts, steps=1, checkpoint=ckpt, progress=False)
        return fresh.step_count == 1 and "resumed PPO" in capsys.readouterr().out

    saved()
    assert resumed(preset)
    assert not resumed(override(preset, {"rl.urgent_care_reward": 2.0}))  # another reward weight
    asides = list(ckpt.parent.glob("ppo_checkpoint.set-aside-*"))
    assert len(asides) == 1 and (asides[0] / "ppo_state.json").is_file()  # moved, not deleted
    shutil.rmtree(ckpt, ignore_errors=True)
    saved()
    (outputs / "tiny" / "sft").mkdir(parents=True, exist_ok=True)
    (outputs / "tiny" / "sft" / "metrics.json").write_text('{"rebuilt": true}')  # the SFT model was rebuilt
    assert not resumed(preset)
    shutil.rmtree(ckpt, ignore_errors=True)
    saved()
    (ckpt / "ppo_state.json").write_text('{"step": 1, "config": ')  # damaged
    fresh, _ = _loop(tiny_base)
    history = ppo_stage.train(preset, fresh, texts, steps=1, checkpoint=ckpt, progress=False)
    out = capsys.readouterr().out
    assert len(history) == 1 and f"{ckpt} is damaged (JSONDecodeError" in out and "Traceback" not in out
    shutil.rmtree(ckpt, ignore_errors=True)
    saved()
    (ckpt / ppo.PPOLoop.VALUE_HEAD_FILE).write_bytes(b"truncated")
    with pytest.raises(ppo.CheckpointError, match="damaged PPO checkpoint"):
        fresh.load_checkpoint(ckpt)
    assert fresh.step_count == 1  # nothing was half-loaded
    assert len(list(ckpt.parent.glob("ppo_checkpoint.set-aside-*"))) == 3


# ---------------------------------------------------------------- killed, then resumed: the same numbers
SHORT = ["pt.max_steps=12", "pt.logging_steps=1", "checkpoint_steps=3", "sft.max_steps=2", "rm.max_steps=2",
         "eval_question_stride=100", "ppo.max_steps=4", "ppo.batch_size=4", "rl.minibatch_size=2",
         "rl.heldout_prompt_stride=2", "rl.save_every=1", "max_new_tokens=16"]


def _run_to_end(args, env) -> str:
    process = _cli(args, env)
    out, _ = process.communicate(timeout=900)
    assert process.returncode == 0, out
    return out


def _kill_when(args, env, ready) -> str:
    """Start a stage and SIGKILL it once ``ready()`` is true (a checkpoint is on disk)."""
    process = _cli(args, env)
    deadline = time.time() + 600
    while not ready():
        assert process.poll() is None, f"finished before it could be killed:\n{process.communicate()[0]}"
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    out, _ = process.communicate()
    return out


def _ppo_step_saved(folder: Path, at_least: int):
    def ready():
        try:
            return json.loads((folder / "ppo_state.json").read_text())["step"] >= at_least
        except (OSError, ValueError, KeyError):
            return False
    return ready


def _metrics(outputs: Path, stage: str) -> dict:
    return json.loads((outputs / "tiny" / stage / "metrics.json").read_text())


@pytest.mark.slow
def test_a_killed_stage_resumes_from_its_last_checkpoint_to_the_same_metrics(tiny_base, tmp_path, small_validation):
    """PT (a Trainer stage) and PPO, each SIGKILLed after a step checkpoint, then run again: they resume from it and
    end with the metrics of an uninterrupted run. A PPO checkpoint made with another reward weight is not resumed."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for outputs in (whole, killed):
        shutil.copytree(tiny_base, outputs / "tiny" / "base")
    args = [*small_validation] + [arg for pair in SHORT for arg in ("--set", pair)]
    _run_to_end(["pt", "--preset", "tiny", *args], _env(whole))

    pt_checkpoints = killed / "tiny" / "pt_checkpoint"
    _kill_when(["pt", "--preset", "tiny", *args], _env(killed), lambda: any(
        (c / "trainer_state.json").is_file() for c in pt_checkpoints.glob("*/checkpoint-*")))
    assert not (killed / "tiny" / "pt").exists()
    out = _run_to_end(["pt", "--preset", "tiny", *args], _env(killed))
    assert "[pt] training resumes from the step checkpoint" in out
    expected, got = _metrics(whole, "pt"), _metrics(killed, "pt")
    assert got["loss_history"] == expected["loss_history"] and len(got["loss_history"]["step"]) == 12
    for key in ("heldout_loss_after", "heldout_perplexity_after", "train_tokens"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key
    assert got["cloze_after"] == expected["cloze_after"]
    assert not pt_checkpoints.exists()  # the finished stage supersedes its checkpoints

    _run_to_end(["ppo", "--preset", "tiny", *args], _env(whole))  # builds SFT and the reward model first
    for stage in ("pt", "sft", "rm"):  # the same input models, byte for byte
        shutil.rmtree(killed / "tiny" / stage, ignore_errors=True)
        shutil.copytree(whole / "tiny" / stage, killed / "tiny" / stage)
    ppo_checkpoint = killed / "tiny" / "ppo_checkpoint"
    _kill_when(["ppo", "--preset", "tiny", *args, "--set", "rl.urgent_care_reward=0.25"], _env(killed),
               _ppo_step_saved(ppo_checkpoint, 1))
    out = _kill_when(["ppo", "--preset", "tiny", *args], _env(killed), _ppo_step_saved(ppo_checkpoint, 2))
    assert "was made with other settings or inputs" in out and "moved to ppo_checkpoint.set-aside-" in out
    assert "resumed PPO" not in out
    out = _run_to_end(["ppo", "--preset", "tiny", *args], _env(killed))
    assert "resumed PPO from" in out
    expected, got = _metrics(whole, "ppo"), _metrics(killed, "ppo")
    timing = ("time_generate", "time_score", "time_update", "seconds")
    strip = lambda history: [{k: v for k, v in h.items() if not k.startswith(timing)} for h in history]  # noqa: E731
    assert strip(got["history"]) == strip(expected["history"]) and len(got["history"]) == 4
    for key in ("scores_after", "kl_to_reference", "recall_after", "recall_heldout_after", "verdict"):
        assert got[key] == expected[key], key
    assert len(list((killed / "tiny").glob("ppo_checkpoint.set-aside-*"))) == 1
