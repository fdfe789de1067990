"""Scale-out: SFT and reward modeling as two data-parallel processes on the CPU (gloo, via torchrun).

The same global batch (2 processes x 2 dialogues against 1 process x 4) on the same data must
reach nearly the same loss. Both runs go through `medgpt`, so this is what a multi-GPU user runs.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

STEPS = 12
# The same settings in every call: a stage's inputs are reused only when they were made with these settings.
COMMON = ["--set", "pt.max_steps=4", "--set", "eval_question_stride=300", "--set", "max_new_tokens=8",
          "--set", "sft.logging_steps=1", "--set", "rm.logging_steps=1", "--set", "sft.max_steps=2"]


def _free_port() -> int:
    with socket.socket() as s:  # port 0 is not passed on to the workers' rendezvous: it hangs
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _medgpt(args, outputs, nproc=1):
    env = {**os.environ, "MEDGPT_OUTPUT_DIR": str(outputs), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(_free_port())] if nproc > 1 else [sys.executable]
    result = subprocess.run(launcher + ["-m", "medgpt_utils.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metrics(outputs, stage):
    return json.loads((outputs / "tiny" / stage / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("stage,per_device", [("sft", 2), ("rm", 4)])
def test_two_processes_reach_the_single_process_loss(tmp_path, stage, per_device, small_validation):
    outputs = tmp_path / "outputs"
    common = [*COMMON, *small_validation]  # the reward model's accuracy on a few held-out pairs: this test reads losses
    # inputs once, in one process (sft needs pt; rm needs sft)
    _medgpt(["sft" if stage == "rm" else "pt", "--preset", "tiny", *common], outputs)
    # Shuffled, not grouped by length: SFT's length groups are cut by the per-device batch size, so one process
    # with 4 and two with 2 would see other global batches after the first (measured: tails 6.68 / 7.19).
    knobs = ["--set", f"{stage}.max_steps={STEPS}", "--set", f"{stage}.warmup_ratio=0", "--set", f"{stage}.sampling=random"]
    _medgpt([stage, "--preset", "tiny", *common, *knobs, "--set", f"{stage}.batch_size={2 * per_device}"], outputs)
    single = _metrics(outputs, stage)
    _medgpt([stage, "--preset", "tiny", *common, *knobs, "--set", f"{stage}.batch_size={per_device}"], outputs, nproc=2)
    double = _metrics(outputs, stage)
    assert (single["world_size"], double["world_size"]) == (1, 2)
    one, two = single["loss_history"]["loss"], double["loss_history"]["loss"]
    assert len(one) == len(two) == STEPS
    # the same global batches: the first step's loss matches closely, the last few within 5%
    assert two[0] == pytest.approx(one[0], rel=0.02), (one, two)
    tail_one, tail_two = sum(one[-4:]) / 4, sum(two[-4:]) / 4
    assert tail_two == pytest.approx(tail_one, rel=0.05), (one, two)
    if stage == "sft":  # and both runs learned. Not asserted for the reward model: on issue 26's pairs (two thirds of
        # the hard knowledge kinds) one on a 2-step SFT model stays at chance (ln 2) for 12 steps: measured tails
        # 0.698 / 0.703 against first losses 0.690 / 0.689 (LoRA, lr 5e-4 / 2e-3)
        assert tail_one < one[0]


WORKER = __file__.replace("test_distributed.py", "ppo_data_parallel_worker.py")


def _ppo_worker(base, out, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                str(_free_port())] if nproc > 1 else [sys.executable]
    result = subprocess.run(launcher + [WORKER, str(base), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    import torch

    return torch.load(out)


@pytest.mark.slow
def test_two_ppo_processes_make_the_single_process_update(tiny_base, tmp_path):
    """Two processes with half the answers each take the same optimizer steps as one process with all of them:
    the same (all-reduced) gradients at both steps and the same weights after, and the same logged means."""
    import torch

    single = _ppo_worker(tiny_base, tmp_path / "one.pt", 1)
    double = _ppo_worker(tiny_base, tmp_path / "two.pt", 2)
    assert single["rows"] == list(range(8)) and double["rows"] == list(range(4))  # rank 0 held half the answers
    assert len(single["grads"]) == len(double["grads"]) == 2
    for step, (one, two) in enumerate(zip(single["grads"], double["grads"])):
        assert any(g.abs().sum() > 0 for g in one), "no gradient at all"
        for a, b in zip(one, two):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-6), (step, (a - b).abs().max())
    for a, b in zip(single["weights"], double["weights"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    for key in ("score", "kl", "reward", "answer_tokens", "ended_with_eos"):
        assert double["record"][key] == pytest.approx(single["record"][key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_the_ppo_stage_runs_under_a_launcher_and_only_rank_0_writes(tmp_path, small_validation):
    """`torchrun --nproc_per_node 2 -m medgpt_utils.cli ppo`: every process takes part, rank 0 writes the stage."""
    outputs = tmp_path / "outputs"
    small = [*COMMON, *small_validation, "--set", "rm.max_steps=2", "--set", "rl.heldout_prompt_stride=1", "--set", "ppo.max_steps=2",
             "--set", "ppo.batch_size=8", "--set", "rl.samples_per_prompt=2", "--set", "rl.minibatch_size=4"]
    _medgpt(["rm", "--preset", "tiny", *small], outputs)
    result = _medgpt(["ppo", "--preset", "tiny", *small], outputs, nproc=2)
    metrics = _metrics(outputs, "ppo")
    assert metrics["world_size"] == 2 and len(metrics["history"]) == 2, result.stdout[-2000:]
    assert (outputs / "tiny" / "ppo" / "model.safetensors").exists() or any((outputs / "tiny" / "ppo").glob("*.safetensors"))
    assert not list((outputs / "tiny").glob("ppo.tmp*")), "a process left a partial stage folder"
