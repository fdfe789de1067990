"""``python -m medgpt_utils.bench``: every training stage on the tiny preset, a fixed amount of work each.

For each stage: real (non-padding) tokens per second, samples per second, peak resident memory,
wall time, and training FLOP/s as a share of this machine's dense matmul rate (measured in the
same run). For PPO also episodes per second and the split between generation, scoring and update.
SFT runs three ways on the same dialogues, so batching strategies compare in one run:

- ``hf_padded``: a plain Hugging Face ``Trainer``, dialogues in random order padded per batch
  (what a script-based pipeline does);
- ``trl_grouped``: the course's SFT trainer (``answer_loss.AnswerLossSFTTrainer``, TRL's ``SFTTrainer``) and
  setting, batches of similar length (little padding);
- ``trl_padding_free``: the same trainer with packing ("bfd") and padding-free batches.

Every stage starts from the tiny base model: throughput does not depend on what the weights know,
so the benchmark needs no trained stage and runs in a few minutes. The FLOP count is the usual
estimate, 6 x parameters x tokens for full training and 4 x for a frozen base with LoRA (no
weight gradients for the base), over real tokens only: padding is counted as waste.

Writes ``outputs/bench/bench.json`` and ``outputs/bench/bench.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import data, models
from .artifacts import output_root, write_json
from .presets import Preset, get_preset, override, parse_overrides
from .training import peak_memory, trainer_arguments

SFT_DIALOGUES = 400


def matmul_flops_per_second(n: int = 1024, repeats: int = 30) -> float:
    """This machine's dense fp32 matmul rate (FLOP/s), measured now with torch's threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _row(name, seconds, real_tokens, samples, model, full_training, matmul_rate, memory, **extra) -> dict:
    flops = (6 if full_training else 4) * models.count_parameters(model)["total"] * real_tokens
    return {"stage": name, "wall_seconds": round(seconds, 2), "real_tokens": real_tokens,
            "real_tokens_per_second": round(real_tokens / seconds, 1), "samples_per_second": round(samples / seconds, 2),
            "peak_memory_gib": memory, "flops_share_of_matmul": round(flops / seconds / matmul_rate, 4), **extra}


def _timed_train(trainer, preset) -> tuple[float, float]:
    record = {}
    with peak_memory(record, preset):
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return seconds, record["peak_memory_gib"]


def _real_tokens(dataset, key="input_ids") -> int:
    return sum(len(ids) for ids in dataset[key])


def bench_pretraining(preset: Preset, base_path: Path, steps: int, matmul_rate: float) -> dict:
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments, default_data_collator

    from .data import pack_texts

    tokenizer = models.load_tokenizer(base_path)
    blocks = pack_texts(data.load_bundled("pretrain/train.jsonl", conditions=preset.conditions)["text"], tokenizer, preset.block_size)
    knobs = preset.pt
    blocks = blocks[: steps * knobs.batch_size]
    model = models.load_causal_lm(base_path)
    args = trainer_arguments(TrainingArguments, preset, knobs, output_root() / "bench" / "trainer", max_steps=steps)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": blocks, "labels": blocks}),
                      data_collator=default_data_collator)
    seconds, memory = _timed_train(trainer, preset)
    return _row("pt", seconds, len(blocks) * preset.block_size, len(blocks), model, True, matmul_rate, memory)


def _sft_dialogues(preset: Preset):
    from .stages.sft import load_datasets

    train, _ = load_datasets(preset)
    return train.shuffle(seed=0).select(range(SFT_DIALOGUES))


def bench_sft(preset: Preset, base_path: Path, variant: str, matmul_rate: float, batch_size: int | None = None) -> dict:
    """One epoch over the same 400 dialogues, full-parameter as on the tiny preset."""
    from datasets import Dataset

    tokenizer = models.load_tokenizer(base_path)
    dialogues = _sft_dialogues(preset)
    model = models.load_causal_lm(base_path)
    workdir = output_root() / "bench" / "trainer"
    knobs = preset.sft
    batch_size = batch_size or knobs.batch_size
    one_epoch = dict(num_train_epochs=1, max_steps=-1, logging_steps=10, per_device_train_batch_size=batch_size,
                     save_strategy="no")  # a benchmark has nothing to resume
    if variant == "hf_padded":
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        train = Dataset.from_dict(models.assistant_labels(tokenizer, dialogues["messages"]))
        args = trainer_arguments(TrainingArguments, preset, knobs, workdir, **one_epoch)
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
        real = _real_tokens(train)
    else:
        from trl import SFTConfig

        from .answer_loss import AnswerLossSFTTrainer

        settings = dict(max_length=preset.max_length, assistant_only_loss=True)
        if variant == "trl_grouped":
            settings.update(packing=False, train_sampling_strategy="group_by_length")
        elif variant == "trl_padding_free":
            settings.update(packing=True, packing_strategy="bfd", padding_free=True)
        else:
            raise ValueError(f"unknown SFT variant {variant!r}")
        args = trainer_arguments(SFTConfig, preset, knobs, workdir, **one_epoch, **settings)
        trainer = AnswerLossSFTTrainer(model=model, args=args, train_dataset=dialogues, processing_class=tokenizer)
        real = _real_tokens(trainer.train_dataset)
    seconds, memory = _timed_train(trainer, preset)
    return _row(f"sft ({variant}, batch {batch_size})", seconds, real, len(dialogues), model, True, matmul_rate, memory,
                batch_size=batch_size, variant=variant)


def bench_reward_model(preset: Preset, base_path: Path, steps: int, matmul_rate: float) -> dict:
    from trl import RewardConfig, RewardTrainer

    from .stages.reward import training_pairs

    tokenizer = models.load_tokenizer(base_path)
    pairs = training_pairs(preset).select(range(steps * preset.rm.batch_size))
    model = models.load_lora_model(preset, base_path, task_type="SEQ_CLS", pad_token_id=tokenizer.pad_token_id)
    args = trainer_arguments(RewardConfig, preset, preset.rm, output_root() / "bench" / "trainer",
                             max_length=preset.max_length, max_steps=steps)
    trainer = RewardTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer)
    real = _real_tokens(trainer.train_dataset, "chosen_ids") + _real_tokens(trainer.train_dataset, "rejected_ids")
    seconds, memory = _timed_train(trainer, preset)
    return _row("rm (LoRA)", seconds, real, len(pairs), model, False, matmul_rate, memory)


def bench_dpo(preset: Preset, base_path: Path, steps: int, matmul_rate: float) -> dict:
    from trl import DPOTrainer

    from .stages.dpo import dpo_config
    from .stages.reward import training_pairs

    tokenizer = models.load_tokenizer(base_path)
    pairs = training_pairs(preset).select(range(steps * preset.dpo.batch_size))
    policy = models.load_lora_model(preset, base_path)
    args = dpo_config(override(preset, {"dpo.max_steps": steps}), output_root() / "bench" / "trainer")
    trainer = DPOTrainer(model=policy, ref_model=None, args=args, train_dataset=pairs, processing_class=tokenizer)
    # each pair runs as prompt + chosen and prompt + rejected
    columns = trainer.train_dataset
    real = 2 * _real_tokens(columns, "prompt_ids") + _real_tokens(columns, "chosen_ids") + _real_tokens(columns, "rejected_ids")
    seconds, memory = _timed_train(trainer, preset)
    # the reference pass (adapter off) is a forward only: counted in the time, not in the FLOPs
    return _row("dpo (LoRA)", seconds, real, len(pairs), policy, False, matmul_rate, memory)


def bench_ppo(preset: Preset, base_path: Path, steps: int, matmul_rate: float) -> dict:
    from . import ppo
    from .generation import chat_prompt_texts
    from .stages.ppo import ppo_config, sft_batches

    tokenizer = models.load_tokenizer(base_path)
    policy = models.load_lora_model(preset, base_path)
    prompts = chat_prompt_texts(tokenizer, data.load_bundled("prompts/train.jsonl", conditions=preset.conditions)["prompt"])
    reward = lambda texts, batch, answers: torch.tensor([float(len(a)) / 100 for a in answers])  # noqa: E731
    loop = ppo.PPOLoop(policy, tokenizer, reward, ppo_config(preset), sft_batches(preset, tokenizer))
    record, history = {}, []
    with peak_memory(record, preset):
        start = time.perf_counter()
        for step in range(steps):
            history.append(loop.step(prompts[step * loop.config.prompts_per_step:(step + 1) * loop.config.prompts_per_step]))
        seconds = time.perf_counter() - start
    episodes = steps * loop.config.prompts_per_step
    answer_tokens = sum(h["answer_tokens"] * loop.config.prompts_per_step for h in history)
    split = {k: round(sum(h[k] for h in history), 2) for k in ("time_generate", "time_score", "time_update")}
    row = _row("ppo (LoRA)", seconds, int(answer_tokens), episodes, policy, False, matmul_rate,
               record["peak_memory_gib"], episodes_per_second=round(episodes / seconds, 2), time_split=split)
    row["flops_share_of_matmul"] = None  # generation dominates; a 6N/4N estimate does not describe it
    return row


def run(steps: int = 40, out_dir: Path | None = None) -> dict:
    from .stages import base

    preset = get_preset("tiny", verbose=False)
    base_path = base.run(preset) if not (base.model_path(preset) / "metrics.json").is_file() else base.model_path(preset)
    rate = matmul_flops_per_second()
    rows = [bench_pretraining(preset, base_path, steps, rate)]
    rows += [bench_sft(preset, base_path, v, rate) for v in ("hf_padded", "trl_grouped", "trl_padding_free")]
    rows += [bench_sft(preset, base_path, v, rate, batch_size=8) for v in ("hf_padded", "trl_grouped")]
    rows += [bench_reward_model(preset, base_path, steps // 2, rate), bench_dpo(preset, base_path, steps // 2, rate),
             bench_ppo(preset, base_path, 4, rate)]
    for row in rows:  # each SFT variant against the padded baseline at the same batch size
        if row["stage"].startswith("sft"):
            baseline = next(r for r in rows if r.get("variant") == "hf_padded" and r["batch_size"] == row["batch_size"])
            row["vs_padded_baseline"] = round(row["real_tokens_per_second"] / baseline["real_tokens_per_second"], 2)
    result = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "matmul_gflops": round(rate / 1e9, 1), "rows": rows}
    out_dir = Path(out_dir or output_root() / "bench")
    write_json(out_dir / "bench.json", result)
    (out_dir / "bench.md").write_text(markdown(result), encoding="utf-8")
    return result


COLUMNS = ("stage", "wall_seconds", "real_tokens_per_second", "samples_per_second", "peak_memory_gib",
           "flops_share_of_matmul", "vs_padded_baseline")


def markdown(result: dict) -> str:
    def cell(v):
        return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)

    lines = [f"Measured {result['date']} on {result['machine']}, torch {result['torch']}; "
             f"dense fp32 matmul {result['matmul_gflops']} GFLOP/s.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in COLUMNS) + " |" for r in result["rows"]]
    ppo_row = next((r for r in result["rows"] if r["stage"].startswith("ppo")), None)
    if ppo_row:
        lines += ["", f"PPO: {ppo_row['episodes_per_second']} episodes/s; time split (s): "
                  + ", ".join(f"{k.removeprefix('time_')} {v}" for k, v in ppo_row["time_split"].items())]
    return "\n".join(lines) + "\n"


# --- The course's SFT against MedicalGPT's own script, same data, model and settings -------------------------------
# MedicalGPT (github.com/shibing624/MedicalGPT) is run from a checkout the user gives, as its README runs it;
# nothing of it is copied here. Each side runs in its own process, alternated, so neither warms the other's caches.
VS_SETTINGS = {"max_length": 384, "batch_size": 4, "epochs": 1}


def medicalgpt_command(checkout: Path, model: Path, data_dir: Path, out_dir: Path) -> list[str]:
    """MedicalGPT's ``training/supervised_finetuning.py`` with full fine-tuning on the CPU in fp32."""
    return [sys.executable, str(checkout / "training" / "supervised_finetuning.py"),
            "--model_name_or_path", str(model), "--tokenizer_name_or_path", str(model), "--train_file_dir", str(data_dir),
            "--template_name", "chatml", "--do_train", "--use_peft", "False", "--torch_dtype", "float32", "--use_cpu", "True",
            "--model_max_length", str(VS_SETTINGS["max_length"]), "--per_device_train_batch_size", str(VS_SETTINGS["batch_size"]),
            "--num_train_epochs", str(VS_SETTINGS["epochs"]), "--output_dir", str(out_dir), "--save_strategy", "no",
            "--report_to", "none", "--logging_steps", "50", "--trust_remote_code", "False", "--device_map", "None",
            "--validation_split_percentage", "1", "--seed", "42"]


def course_sft_samples_per_second(model: Path, data_file: Path, overrides: dict[str, str] | None = None) -> dict:
    """One epoch of the course's SFT path (its loader, chat template, assistant-only loss, grouped batches) on
    ``data_file``, full fine-tuning of ``model``; run in its own process by ``vs_medicalgpt``. ``overrides``: preset
    fields to try a lever with (``{"optim": "adamw_torch_fused"}``); the shared settings stay."""
    from .answer_loss import AnswerLossSFTTrainer
    from .stages.sft import load_datasets, sft_config

    shared = {"data.sft": str(data_file), "data.validation_percent": "1", "max_length": str(VS_SETTINGS["max_length"]),
              "sft.batch_size": str(VS_SETTINGS["batch_size"]), "sft.epochs": str(VS_SETTINGS["epochs"])}
    preset = override(get_preset("tiny", verbose=False), {**(overrides or {}), **shared})
    train, _ = load_datasets(preset)
    args = sft_config(preset, output_root() / "bench" / "trainer", save_strategy="no", logging_steps=50)
    trainer = AnswerLossSFTTrainer(model=models.load_causal_lm(model), args=args, train_dataset=train,
                                   processing_class=models.load_tokenizer(model))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {"samples": len(train), "seconds": round(seconds, 2), "samples_per_second": round(len(train) / seconds, 2)}


def vs_medicalgpt(checkout: Path, data_file: Path, rounds: int = 3, out_dir: Path | None = None, sets: list[str] = ()) -> dict:
    """Alternate MedicalGPT's script and the course's SFT ``rounds`` times on the same data and tiny PT model."""
    from .stages.sft import start_model_path

    model = start_model_path(get_preset("tiny", verbose=False))  # the PT model SFT starts from, built if missing or stale
    result = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "data": str(data_file), "settings": VS_SETTINGS, "course_overrides": list(sets),
              "medicalgpt": [], "course": []}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        (data_dir / data_file.name).write_bytes(data_file.read_bytes())
        for round_ in range(rounds):
            out = Path(tmp) / f"medicalgpt-{round_}"
            subprocess.run(medicalgpt_command(checkout, model, data_dir, out), cwd=checkout, check=True,
                           env={**os.environ, "PYTHONPATH": str(checkout)}, stdout=subprocess.DEVNULL)
            train = json.loads((out / "train_results.json").read_text(encoding="utf-8"))
            result["medicalgpt"].append({"samples": train.get("train_samples"), "seconds": round(train["train_runtime"], 2),
                                         "samples_per_second": round(train["train_samples_per_second"], 2)})
            course = [sys.executable, "-m", "medgpt_utils.bench", "--course-sft", str(data_file), "--model", str(model)]
            line = subprocess.run(course + [f"--set={pair}" for pair in sets],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            result["course"].append(json.loads(line))
            print(f"round {round_ + 1}: MedicalGPT {result['medicalgpt'][-1]['samples_per_second']} samples/s, "
                  f"course {result['course'][-1]['samples_per_second']} samples/s", flush=True)
    medians = {side: sorted(r["samples_per_second"] for r in result[side])[rounds // 2] for side in ("medicalgpt", "course")}
    result["median_samples_per_second"] = medians
    result["speedup_by_medians"] = round(medians["course"] / medians["medicalgpt"], 2)
    write_json(Path(out_dir or output_root() / "bench") / "vs_medicalgpt.json", result)
    return result


# --- Where a run's time goes: py-spy samples split by stage and activity ------------------------------------------
#   py-spy record --rate 25 --format raw -o run.txt -- medgpt run --preset tiny
#   python -m medgpt_utils.bench --split-profile run.txt --rate 25
# Each sample is a Python stack (root first). Its stage is the deepest medgpt_utils/stages/<name>.py frame ("report"
# when none: the evaluation of every stage after them); its activity the first of ACTIVITIES any frame matches, in
# this order, so a forward pass inside generation counts as generation and one inside evaluate() as evaluation.
ACTIVITIES = (
    ("generation", (r"^generate \(", r"generation/utils\.py", r"medgpt_utils/generation\.py")),
    ("evaluation forward", (r"^evaluate \(", r"prediction_step", r"evaluation_loop", r"medgpt_utils/(evaluation|scoring|judging)\.py")),
    ("backward", (r"^backward \(torch", r"_engine_run_backward")),
    ("optimizer", (r"torch/optim/", r"optimizer_step", r"clip_grad_norm")),
    ("forward", (r"compute_loss", r"training_step", r"forward \(transformers/models")),
    ("data", (r"dataloader\.py", r"datasets/", r"apply_chat_template", r"tokenization", r"medgpt_utils/(data|sources)\.py", r"collat")),
    ("load/save", (r"from_pretrained", r"save_pretrained", r"safetensors", r"_save_checkpoint", r"save_trained")),
    ("import", (r"importlib",)),  # not "<module>": every stack starts in the script's own module frame
)


def _activity(frames: list[str]) -> str:
    for name, patterns in ACTIVITIES:
        if any(re.search(p, f) for p in patterns for f in frames):
            return name
    return "other"


def _stage(frames: list[str]) -> str:
    stage = "report"
    for frame in frames:
        match = re.search(r"medgpt_utils/stages/(\w+)\.py", frame)
        if match and match.group(1) != "__init__":
            stage = match.group(1)
    return stage


def split_profile(raw_file: Path, rate: float) -> dict[str, dict[str, float]]:
    """Seconds per stage and activity from py-spy's raw (collapsed) output sampled at ``rate`` per second.
    Lines that are not ``frame;frame;... count`` (py-spy writes a stray one now and then) are counted under
    ``table["unparsed"]["lines"]``, not dropped silently."""
    table: dict[str, dict[str, float]] = {}
    for line in raw_file.read_text(encoding="utf-8").split("\n"):
        stack, _, count = line.rpartition(" ")
        if not line.strip():
            continue
        if not stack.strip() or not count.isdigit():
            unparsed = table.setdefault("unparsed", {"lines": 0})
            unparsed["lines"] += 1
            continue
        frames = stack.split(";")
        row = table.setdefault(_stage(frames), {})
        activity = _activity(frames)
        row[activity] = row.get(activity, 0.0) + int(count) / rate
    if len(table) == (1 if "unparsed" in table else 0):
        raise ValueError(f"{raw_file}: no line of py-spy raw output ('frame;frame;... count'); record with --format raw")
    return table


def profile_markdown(table: dict[str, dict[str, float]]) -> str:
    columns = [name for name, _ in ACTIVITIES] + ["other"]
    lines = ["| stage | seconds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    unparsed = table.get("unparsed", {}).get("lines", 0)
    table = {stage: row for stage, row in table.items() if stage != "unparsed"}
    for stage, row in sorted(table.items(), key=lambda item: -sum(item[1].values())):
        lines.append(f"| {stage} | {sum(row.values()):.0f} | " + " | ".join(f"{row.get(c, 0):.0f}" for c in columns) + " |")
    total = sum(sum(row.values()) for row in table.values())
    return "\n".join(lines) + f"\n\nSampled: {total:.0f} s; lines not in py-spy's raw format, skipped: {unparsed}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medgpt_utils.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps for PT (RM and DPO run half)")
    parser.add_argument("--vs-medicalgpt", type=Path, metavar="CHECKOUT",
                        help="a MedicalGPT checkout: alternate its training/supervised_finetuning.py and the course's SFT "
                             "on --data, three rounds each (writes outputs/bench/vs_medicalgpt.json)")
    parser.add_argument("--data", type=Path, help="with --vs-medicalgpt: the dialogues (default: the checkout's "
                                                   "data/sft/medical_sft_1K_format.jsonl)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="with --vs-medicalgpt: a preset field for the course's side (a lever to compare), repeatable")
    parser.add_argument("--split-profile", type=Path, metavar="RAW", help="py-spy raw output: seconds per stage and activity")
    parser.add_argument("--rate", type=float, default=100, help="with --split-profile: py-spy's --rate (samples per second)")
    parser.add_argument("--course-sft", type=Path, help=argparse.SUPPRESS)  # one course round, in its own process
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.split_profile:
        print(profile_markdown(split_profile(args.split_profile, args.rate)))
        return 0
    if args.course_sft:
        print(json.dumps(course_sft_samples_per_second(args.model, args.course_sft, parse_overrides(args.set))))
        return 0
    if args.vs_medicalgpt:
        data_file = args.data or args.vs_medicalgpt / "data" / "sft" / "medical_sft_1K_format.jsonl"
        result = vs_medicalgpt(args.vs_medicalgpt, data_file, sets=args.set)
        print(f"median samples/s: MedicalGPT {result['median_samples_per_second']['medicalgpt']}, "
              f"course {result['median_samples_per_second']['course']}: {result['speedup_by_medians']}x")
        return 0
    result = run(args.steps)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
