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
def test_two_processes_reach_the_single_process_loss(tmp_path, stage, per_device):
    outputs = tmp_path / "outputs"
    # inputs once, in one process (sft needs pt; rm needs sft)
    _medgpt(["sft" if stage == "rm" else "pt", "--preset", "tiny", *COMMON], outputs)
    knobs = ["--set", f"{stage}.max_steps={STEPS}", "--set", f"{stage}.warmup_ratio=0"]
    _medgpt([stage, "--preset", "tiny", *COMMON, *knobs, "--set", f"{stage}.batch_size={2 * per_device}"], outputs)
    single = _metrics(outputs, stage)
    _medgpt([stage, "--preset", "tiny", *COMMON, *knobs, "--set", f"{stage}.batch_size={per_device}"], outputs, nproc=2)
    double = _metrics(outputs, stage)
    assert (single["world_size"], double["world_size"]) == (1, 2)
    one, two = single["loss_history"]["loss"], double["loss_history"]["loss"]
    assert len(one) == len(two) == STEPS
    # the same global batches: the first step's loss matches closely, the last few within 5%
    assert two[0] == pytest.approx(one[0], rel=0.02), (one, two)
    tail_one, tail_two = sum(one[-4:]) / 4, sum(two[-4:]) / 4
    assert tail_two == pytest.approx(tail_one, rel=0.05), (one, two)
    assert tail_one < one[0]  # and both runs learned
