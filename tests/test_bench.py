"""Pieces of the benchmark (`python -m medgpt_utils.bench`); the benchmark itself is not a timed test."""

from medgpt_utils import bench, models


def test_padded_baseline_trains_on_the_assistant_tokens_only(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    dialogues = {"messages": [[{"role": "user", "content": "What is gout?"},
                               {"role": "assistant", "content": "A form of arthritis."},
                               {"role": "user", "content": "And the cause?"},
                               {"role": "assistant", "content": "Uric acid crystals."}]]}
    rows = bench._assistant_labels(tokenizer, dialogues)
    ids, labels = rows["input_ids"][0], rows["labels"][0]
    kept = tokenizer.decode([t for t in labels if t != -100])
    assert "A form of arthritis." in kept and "Uric acid crystals." in kept
    assert "gout" not in kept and "cause" not in kept
    assert len(ids) == len(labels) and sum(t != -100 for t in labels) < len(ids) / 2


def test_markdown_table_carries_date_machine_and_matmul_rate():
    assert bench.matmul_flops_per_second(n=128, repeats=2) > 1e8
    result = {"date": "2026-11-25", "machine": "x86_64, 2 threads", "torch": "2.13.0", "matmul_gflops": 100.0,
              "rows": [{"stage": "sft (hf_padded, batch 4)", "wall_seconds": 10.0, "real_tokens_per_second": 760.0,
                        "samples_per_second": 40.0, "peak_memory_gib": 1.0, "flops_share_of_matmul": 0.2,
                        "vs_padded_baseline": 1.0},
                       {"stage": "ppo (LoRA)", "episodes_per_second": 9.5, "time_split": {"time_generate": 1.0}}]}
    text = bench.markdown(result)
    assert "2026-11-25" in text and "x86_64" in text and "100.0 GFLOP/s" in text
    assert "| sft (hf_padded, batch 4) | 10.0 | 760.0 |" in text and "PPO: 9.5 episodes/s" in text
