"""``python -m medgpt_utils.bench``: every training stage on the tiny preset, a fixed amount of work each.

For each stage: real (non-padding) tokens per second, samples per second, peak resident memory,
wall time, and training FLOP/s as a share of this machine's dense matmul rate (measured in the
same run). For PPO also episodes per second and the split between generation, scoring and update.
SFT runs three ways on the same dialogues, so batching strategies compare in one run:

- ``hf_padded``: a plain Hugging Face ``Trainer``, dialogues in random order padded per batch
  (what a script-based pipeline does);
- ``trl_grouped``: the course's ``SFTTrainer`` setting, batches of similar length (little padding);
- ``trl_padding_free``: ``SFTTrainer`` with packing ("bfd") and padding-free batches.

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
import platform
import time
from pathlib import Path

import torch

from . import data, models
from .artifacts import output_root, write_json
from .presets import Preset, get_preset, override
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


def _assistant_labels(tokenizer, dialogues):
    """Token ids and labels (-100 outside the assistant's turns), as TRL's assistant-only loss makes them."""
    from .models import training_chat_template

    rows, template = {"input_ids": [], "labels": []}, training_chat_template(tokenizer)
    for messages in dialogues["messages"]:
        out = tokenizer.apply_chat_template(messages, chat_template=template, return_dict=True, return_assistant_tokens_mask=True,
                                            tokenize=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        rows["input_ids"].append(ids)
        rows["labels"].append([t if m else -100 for t, m in zip(ids, mask)])
    return rows


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

        train = Dataset.from_dict(_assistant_labels(tokenizer, dialogues))
        args = trainer_arguments(TrainingArguments, preset, knobs, workdir, **one_epoch)
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
        real = _real_tokens(train)
    else:
        from trl import SFTConfig, SFTTrainer

        settings = dict(max_length=preset.max_length, assistant_only_loss=True)
        if variant == "trl_grouped":
            settings.update(packing=False, train_sampling_strategy="group_by_length")
        elif variant == "trl_padding_free":
            settings.update(packing=True, packing_strategy="bfd", padding_free=True)
        else:
            raise ValueError(f"unknown SFT variant {variant!r}")
        args = trainer_arguments(SFTConfig, preset, knobs, workdir, **one_epoch, **settings)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dialogues, processing_class=tokenizer)
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
    from .stages.ppo import ppo_config

    tokenizer = models.load_tokenizer(base_path)
    policy = models.load_lora_model(preset, base_path)
    prompts = chat_prompt_texts(tokenizer, data.load_bundled("prompts/train.jsonl", conditions=preset.conditions)["prompt"])
    reward = lambda texts, batch, answers: torch.tensor([float(len(a)) / 100 for a in answers])  # noqa: E731
    loop = ppo.PPOLoop(policy, tokenizer, reward, ppo_config(preset))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medgpt_utils.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps for PT (RM and DPO run half)")
    args = parser.parse_args(argv)
    result = run(args.steps)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
