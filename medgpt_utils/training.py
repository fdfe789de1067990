"""What every training stage uses: trainer arguments from the preset, seeding, timing, memory, saving."""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import data
from .artifacts import METRICS_FILE, atomic_dir, stage_dir, write_json
from .fingerprints import stage_record, stale_reason
from .presets import Preset, TrainKnobs


def trainer_arguments(config_class, preset: Preset, knobs: TrainKnobs, output_dir: Path, **extra):
    """A ``TrainingArguments`` (or TRL config) filled from the preset.

    Precision is always set explicitly: TRL configs default to bf16, which on a CPU without
    native bf16 made a tiny SFT run 10-16x slower, so CPU presets train in fp32.
    """
    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=knobs.batch_size,
        per_device_eval_batch_size=knobs.batch_size,
        gradient_accumulation_steps=knobs.gradient_accumulation_steps,
        num_train_epochs=knobs.epochs,
        max_steps=knobs.max_steps,
        learning_rate=knobs.learning_rate,
        warmup_steps=knobs.warmup_ratio,  # a value below 1 is a fraction of all steps
        lr_scheduler_type=knobs.lr_scheduler_type,
        logging_steps=knobs.logging_steps,
        logging_first_step=True,
        bf16=preset.bf16,
        fp16=preset.fp16,
        use_cpu=preset.device == "cpu",
        optim=preset.optim,
        activation_checkpointing=preset.gradient_checkpointing,  # transformers 5's name (the old one warns)
        # Step checkpoints (model, optimizer, scheduler, RNG) into the stage's checkpoint folder, the newest kept:
        # a killed run resumes from it (``StageRun.resume_from``). The finished model is still saved once, atomically.
        save_strategy="steps" if preset.checkpoint_steps > 0 else "no",
        save_steps=max(preset.checkpoint_steps, 1),
        save_total_limit=1,
        report_to="none",
        seed=preset.seed,
        data_seed=preset.seed,
    )
    if knobs in (preset.dpo, preset.orpo, preset.grpo):  # alignment stages: rl.seed may differ from the SFT model's
        args.update(seed=preset.alignment_seed, data_seed=preset.alignment_seed)
    args.update(extra)
    if knobs.sampling:  # the user's order wins over the stage's own (group_by_length groups by the per-device batch,
        args["train_sampling_strategy"] = knobs.sampling  # so one and two processes see other global batches)
    return config_class(**args)


@dataclass
class StageRun:
    """What a training stage has ready before its trainer is built (``<stage>.prepare(preset)``): the model to
    train, its tokenizer, the data, the metrics measured so far, and the stage's own extras. The notebook
    builds the trainer from these in view and hands it back to ``<stage>.finish``; ``<stage>.run`` does the
    same three steps in one call."""

    preset: Preset
    stage: str
    model: Any
    tokenizer: Any
    start_path: Any  # the model it starts from (a folder, or a hub id)
    metrics: dict
    train_set: Any = None
    eval_set: Any = None
    extras: dict = field(default_factory=dict)
    # The trainer's output_dir: ``outputs/<preset>/<stage>_checkpoint/<key>/``, where its step checkpoints go. The key
    # (``checkpoint_key``) changes with the stage's settings and with every rebuild of its inputs, so a checkpoint
    # made for other settings or another SFT model is never resumed from.
    workdir: Path = None
    checkpoints: Path = None  # ``<stage>_checkpoint/``: every key's checkpoints, removed once the stage is saved

    def __post_init__(self):
        if self.checkpoints is None:
            self.checkpoints = checkpoint_root(self.preset, self.stage)
        if self.workdir is None:
            self.workdir = self.checkpoints / checkpoint_key(self.preset, self.stage)
        if self.resume_from:
            print(f"[{self.stage}] training resumes from the step checkpoint {self.resume_from}", flush=True)

    @property
    def resume_from(self) -> str | None:
        """The newest complete step checkpoint saved with these settings and inputs, for
        ``trainer.train(resume_from_checkpoint=run.resume_from)``; None: start afresh."""
        return last_checkpoint(self.workdir)

    def clean_up(self) -> None:
        """Remove the step checkpoints: called once the finished stage is saved, which supersedes them."""
        import shutil

        if is_main_process():
            shutil.rmtree(self.checkpoints, ignore_errors=True)


def checkpoint_root(preset: Preset, name: str) -> Path:
    """``outputs/<preset>/<name>_checkpoint/``: where a stage's unfinished training is kept."""
    return stage_dir(preset.name, name).with_name(f"{name}_checkpoint")


def checkpoint_key(preset: Preset, stage: str) -> str:
    """The stage's fingerprint (its settings, its inputs' settings, the bundled data) joined with the exact build
    of each input stage (a hash of its ``metrics.json``, which a rebuild rewrites): what a checkpoint must match."""
    import hashlib

    from .fingerprints import stage_fingerprint
    from .pipeline import info

    digest = hashlib.sha256(stage_fingerprint(preset, stage).encode())
    for name in info(stage).inputs:
        metrics = stage_dir(preset.name, name) / METRICS_FILE
        digest.update(name.encode() + (metrics.read_bytes() if metrics.is_file() else b"missing"))
    return digest.hexdigest()[:16]


def last_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that a Trainer finished writing (it writes ``trainer_state.json``
    last: a run killed while saving leaves a folder without it, and the one before is used)."""
    folder = Path(folder)
    steps = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        number = path.name.removeprefix("checkpoint-")
        if number.isdigit() and (path / "trainer_state.json").is_file():
            steps.append((int(number), path))
    return str(max(steps)[1]) if steps else None


def begin_stage(preset: Preset, name: str) -> None:
    """Before a stage builds anything: check every data source (``check_data_sources``), take the lock of its output folder (``artifacts.hold_lock``; a second process
    writing the same stage fails now, naming the holder, instead of after training) and clean what killed runs left
    beside it. The lock is held until the stage is saved (``stage_output``). Only the main process writes."""
    from .artifacts import clean_leftovers, hold_lock

    check_data_sources(preset)  # the user's data read through once: a bad record fails now, not after the inputs are built
    if not is_main_process():
        return
    final = stage_dir(preset.name, name)
    command = " ".join([Path(sys.argv[0]).name] + sys.argv[1:3]) if sys.argv and sys.argv[0] else "python"
    if hold_lock(final, f"stage {name} of preset {preset.name} ({command})"):
        for note in clean_leftovers(final):
            print(f"[{name}] {note}", flush=True)


@contextmanager
def measuring(run: StageRun, peak: bool = True):
    """Time the block (``train_seconds``) and, with ``peak``, record its peak memory (``peak_memory``)."""
    with ExitStack() as stack:
        stack.enter_context(timed(run.metrics, "train_seconds"))
        if peak:
            stack.enter_context(peak_memory(run.metrics, run.preset))
        yield


def bundled(preset: Preset, name: str):
    """A bundled data file by its card name, restricted to the preset's conditions (``Preset.conditions``)."""
    return data.load_bundled(name, conditions=preset.conditions)


def finite_loss_guard(stage: str):
    """A Trainer callback that stops a run at the first logged loss that is not finite, with a clear message
    (fp16 runs that overflow otherwise go on with loss 0 or NaN, as MedicalGPT's users report)."""
    import math

    from transformers import TrainerCallback

    from .generation import OVERFLOW_ADVICE

    class FiniteLossGuard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise FloatingPointError(f"{stage}: the training loss became {loss} at step {state.global_step}; stopped. "
                                         f"{OVERFLOW_ADVICE}")

    return FiniteLossGuard()


def keep_trainable_fp32(model, preset: Preset) -> int:
    """TRL casts the trainable (LoRA) weights of a 4-bit model to bf16. A T4 has no bf16 hardware and fp16
    mixed precision keeps fp32 master weights; on a CPU bf16 weights meet fp32 activations and fail. So unless
    the preset computes in bf16, they go back to fp32 (what PEFT itself does). Returns how many were cast."""
    import torch

    if not preset.quantization or preset.compute_dtype == "bfloat16":
        return 0
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def finite_logits_guard(stage: str):
    """A Trainer callback that watches the model's logits while it trains (``generation.watch_logits``: GRPO samples
    its groups from them inside TRL) and stops watching when training ends."""
    from transformers import TrainerCallback

    from .generation import watch_logits

    class FiniteLogitsGuard(TrainerCallback):
        handle = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.handle = watch_logits(model, stage)

        def on_train_end(self, args, state, control, **kwargs):
            if self.handle is not None:
                self.handle.remove()
                self.handle = None

    return FiniteLogitsGuard()


def prepared(trainer, preset: Preset, stage: str):
    """Every stage's trainer before ``.train()``: trainable weights in the precision the preset needs, and guards
    against non-finite losses and logits while it trains."""
    keep_trainable_fp32(trainer.model, preset)
    trainer.add_callback(finite_loss_guard(stage))
    trainer.add_callback(finite_logits_guard(stage))
    return trainer


def stage_data(preset: Preset, kind: str):
    """The training and validation records of ``kind`` (``pt``, ``sft``, ``preference``, ``prompts``) from the
    sources in ``preset.data`` (``medgpt_utils.sources``); prints what each source gave."""
    from .sources import load_stage_data

    knobs = preset.data
    check_data_sources(preset)
    loaded = load_stage_data({"pt": "pretraining"}.get(kind, kind), getattr(knobs, kind), getattr(knobs, f"{kind}_validation"),
                             knobs.validation_percent, preset.seed, knobs.on_error, preset.conditions, setting=f"data.{kind}")
    if not loaded.uses_bundled or len(loaded.reports) > 1:  # the default says nothing new; the user's data always reports
        print(f"data.{kind}:\n  " + loaded.summary().replace("\n", "\n  "))
    return loaded


def check_data_sources(preset: Preset) -> None:
    """Every ``data.*`` source of the preset can be found (``sources.check_sources``): checked before a stage
    builds the stages it starts from, so a mistyped path costs seconds, not a pretraining run."""
    from .sources import check_sources

    for kind in ("pt", "sft", "preference", "prompts"):
        for setting in (kind, f"{kind}_validation"):
            spec = getattr(preset.data, setting)
            if setting == kind or spec.strip():
                check_sources(spec, f"data.{setting}", on_error=preset.data.on_error)


def data_report(loaded) -> list[dict]:
    """What each source gave (``sources.SourceReport``), for a stage's ``metrics.json``."""
    import dataclasses

    return [dataclasses.asdict(r) for r in loaded.reports]


def as_dataset(rows, columns: list[str] | None = None):
    """Records (a list of dicts, or already a ``datasets.Dataset``) as a ``datasets.Dataset`` (``columns``: only these,
    in this order)."""
    from datasets import Dataset

    dataset = rows if isinstance(rows, Dataset) else Dataset.from_list(list(rows))
    return dataset.select_columns(columns) if columns else dataset


def seed_stage(preset: Preset, seed: int | None = None) -> None:
    """Seed Python, NumPy and torch before a stage builds anything random (LoRA and head init,
    data order), so a stage gives the same numbers in a notebook, in ``medgpt`` and in CI
    (``seed``: another than the preset's, as the alignment stages' ``Preset.alignment_seed``)."""
    from transformers import set_seed

    set_seed(preset.seed if seed is None else seed)


def loss_history(trainer) -> dict[str, list]:
    """Training-loss curve from the trainer's log (steps and values)."""
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return {"step": [e["step"] for e in logs], "loss": [e["loss"] for e in logs]}


@contextmanager
def timed(record: dict, key: str):
    start = time.perf_counter()
    yield
    record[key] = round(time.perf_counter() - start, 2)


def _resident_bytes() -> int:
    """This process's resident memory (Linux /proc; elsewhere the peak so far from ``resource``)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - macOS and others
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@contextmanager
def peak_memory(record: dict, preset: Preset, key: str = "peak_memory_gib"):
    """Peak memory while the block runs: GPU memory allocated by torch on CUDA presets; on the
    CPU, the process's peak resident memory (sampled every 50 ms), which includes the models
    already loaded, so compare it between methods run the same way."""
    import threading

    import torch

    if preset.device == "cuda" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        yield
        record[key] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        record[key + "_reserved"] = round(torch.cuda.max_memory_reserved() / 2**30, 3)
        record[key + "_kind"] = "cuda max allocated"
        return
    peak = [_resident_bytes()]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], _resident_bytes())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], _resident_bytes())
        record[key] = round(peak[0] / 2**30, 3)
        record[key + "_kind"] = "process resident (CPU)"


@contextmanager
def stage_output(preset: Preset, stage: str):
    """Yield a temporary folder that becomes ``outputs/<preset>/<stage>/`` when complete.

    In a multi-process run only rank 0 publishes; the other ranks get a scratch folder that is
    thrown away (else their empty folder could replace rank 0's finished one).
    """
    if not is_main_process():
        import tempfile

        with tempfile.TemporaryDirectory(prefix=f"medgpt-{stage}-rank-") as scratch:
            yield Path(scratch)
        return
    from .artifacts import release_lock

    begin_stage(preset, stage)  # held since the stage began; taken here if a notebook skipped that
    try:
        with atomic_dir(stage_dir(preset.name, stage)) as tmp:
            yield tmp
    finally:
        release_lock(stage_dir(preset.name, stage))


def save_metrics(folder: Path, metrics: dict, preset: Preset, stage: str) -> None:
    """Write ``metrics.json`` with how the outputs were made (``fingerprints.stage_record``) and how many
    processes trained (``torchrun`` / ``accelerate`` set WORLD_SIZE)."""
    write_json(Path(folder) / METRICS_FILE, {**metrics, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                                             "made_with": stage_record(preset, stage)})


REUSE_STALE_ENV = "MEDGPT_REUSE_STALE"  # set by `medgpt run --reuse-stale`: keep stale inputs, with a warning


def _expected_cost(preset: Preset, stage: str) -> str:
    """What building ``stage`` cost: its last build here, else the preset's measured time, else that it is unknown."""
    from .presets import MEASURED_TRAIN_SECONDS

    saved = stage_dir(preset.name, stage) / METRICS_FILE
    seconds = json.loads(saved.read_text(encoding="utf-8")).get("train_seconds") if saved.is_file() else None
    if seconds is not None:
        return f"; its last build trained for {seconds} s"
    measured = MEASURED_TRAIN_SECONDS.get(preset.name, {}).get(stage)
    if measured is not None:
        return (f"; its training took about {measured / 60:.1f} min on the {preset.name} preset "
                "(as last measured on a 2-core CPU: presets.MEASURED_TRAIN_SECONDS), plus evaluation")
    return f"; its time on {preset.name} has not been measured"


def build_if_stale(preset: Preset, stage_module) -> None:
    """Build an input stage first when it is missing or was made with other settings, saying why and
    what it cost last time; a current one is reused as it is."""
    reason = stale_reason(preset, stage_module.STAGE)
    if reason is None:
        return
    if os.environ.get(REUSE_STALE_ENV) and reason != "not built yet":  # medgpt run --reuse-stale
        print(f"[{stage_module.STAGE}] WARNING: reusing outputs {reason}", flush=True)
        return
    print(f"[{stage_module.STAGE}] {reason}: building it first{_expected_cost(preset, stage_module.STAGE)}", flush=True)
    stage_module.run(preset)


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 inside them (only it writes files).

    Before the trainer sets up the process group, the launcher's RANK variable tells (torchrun
    and accelerate set it): a stage opens its output folder before it builds its trainer.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
