"""Compute threads: how many a process uses, and how to share the cores with a second process.

PyTorch's CPU build runs its parallel loops on GNU OpenMP, whose idle threads spin for a while before they sleep.
Alone that is fastest; with a second process on the same cores (two notebooks in JupyterLab, a test beside a
run) the spinning threads take the cores the other process's work needs, and both slow down several times.
A shorter spin (``GOMP_SPINCOUNT``, set before Python starts) shares the cores far better but makes a process
alone slower, generation most (measured in notebooks/EXPERIMENTS.md), so the course leaves the default alone and
says how to choose it (notebooks/GUIDE.md).
"""

from __future__ import annotations

import os
import sys

SPIN_ENV = "GOMP_SPINCOUNT"
# 150 PT steps of the tiny model, 2-core Intel Xeon (2026-12-06): one alone / each of two at once, seconds:
# libgomp's default 16.3 / 111.4, 10000 16.4 / 54.2, 3000 18.7 / 37.6, 1000 20.8 / 31.5, 0 22.8 / 28.8.
# The test's 100 steps on a 2-core AMD EPYC, together / alone: 3000 3.0x (2.7x in CI), 1000 2.2x and 1.7x, 500 1.7x,
# 0 1.4x: a spin count is a number of loop turns, so how long it lasts depends on the CPU; 500 shares well on both.
SHARED_CORES_SPIN = "500"  # what GUIDE.md advises for two runs at once


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def planned_threads(env=None) -> tuple[int, str]:
    """How many compute threads to use, and why: ``OMP_NUM_THREADS`` if set, else the usable cores shared by the
    processes a launcher started on this machine (``LOCAL_WORLD_SIZE``)."""
    env = os.environ if env is None else env
    asked = env.get("OMP_NUM_THREADS", "").strip()
    if asked.isdigit() and int(asked) > 0:
        return int(asked), "OMP_NUM_THREADS"
    cores = usable_cores()
    local = env.get("LOCAL_WORLD_SIZE", "").strip()
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, cores // processes), f"{cores} usable cores / {processes} process{'es' if processes > 1 else ''} here"


_said = False


def configure(verbose: bool = True) -> int:
    """Set torch's compute threads to ``planned_threads()`` and say so once per process; returns the count."""
    global _said
    import torch

    threads, why = planned_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if verbose and not _said:
        print(f"compute threads: {threads} ({why}; OpenMP spin-wait {os.environ.get(SPIN_ENV, 'library default')})", file=sys.stderr)
        _said = True
    return threads
