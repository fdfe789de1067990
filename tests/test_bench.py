"""Pieces of the benchmark (`python -m medgpt_utils.bench`); the benchmark itself is not a timed test."""

from medgpt_utils import bench, models


def test_assistant_labels_keep_the_assistant_tokens_only(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    dialogues = [[{"role": "user", "content": "What is gout?"},
                  {"role": "assistant", "content": "A form of arthritis."},
                  {"role": "user", "content": "And the cause?"},
                  {"role": "assistant", "content": "Uric acid crystals."}]]
    rows = models.assistant_labels(tokenizer, dialogues)
    ids, labels = rows["input_ids"][0], rows["labels"][0]
    kept = tokenizer.decode([t for t in labels if t != -100])
    assert "A form of arthritis." in kept and "Uric acid crystals." in kept
    assert "gout" not in kept and "cause" not in kept
    assert len(ids) == len(labels) and sum(t != -100 for t in labels) < len(ids) / 2
    cut = models.assistant_labels(tokenizer, dialogues, max_length=10)  # PPO-ptx cuts dialogues to max_length
    assert cut["input_ids"][0] == ids[:10] and cut["labels"][0] == labels[:10]


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


def test_profile_split_puts_each_sample_under_its_stage_and_activity(tmp_path):
    cli = "<module> (medgpt:6);main (medgpt_utils/cli.py:163);run (medgpt_utils/stages/sft.py:131)"
    train = f"{cli};train (transformers/trainer.py:1);training_step (transformers/trainer.py:2)"
    raw = tmp_path / "run.txt"
    raw.write_text("\n".join([
        f"{train};backward (torch/_tensor.py:625) 50",
        f"{train};step (torch/optim/adamw.py:10) 20",
        f"{train};forward (transformers/models/llama/modeling_llama.py:9) 20",
        # knowledge after training: generation wins over the forward pass it runs
        f"{cli};knowledge (medgpt_utils/stages/sft.py:60);generate (transformers/generation/utils.py:1);"
        "forward (transformers/models/llama/modeling_llama.py:9) 10",
        # no stage frame: the report after the stages
        "<module> (medgpt:6);main (medgpt_utils/cli.py:163);evaluate_stages (medgpt_utils/compare.py:45) 5",
        " 38",  # a stray line as py-spy sometimes writes: counted, not guessed at
    ]) + "\n", encoding="utf-8")
    table = bench.split_profile(raw, rate=10)
    assert table["sft"] == {"backward": 5.0, "optimizer": 2.0, "forward": 2.0, "generation": 1.0}
    assert table["report"] == {"other": 0.5} and table["unparsed"] == {"lines": 1}
    text = bench.profile_markdown(table)
    assert "| sft | 10 | 1 | 0 | 5 | 2 | 2 |" in text and "skipped: 1" in text

    empty = tmp_path / "flame.svg"
    empty.write_text("<svg>\n</svg>\n", encoding="utf-8")
    try:
        bench.split_profile(empty, rate=10)
    except ValueError as error:
        assert "flame.svg" in str(error) and "--format raw" in str(error)
    else:
        raise AssertionError("a file without a raw line was read as a profile")


def test_medicalgpt_runs_full_fine_tuning_in_fp32_on_the_cpu_with_the_shared_settings(tmp_path):
    command = bench.medicalgpt_command(tmp_path / "MedicalGPT", tmp_path / "pt", tmp_path / "data", tmp_path / "out")
    flags, words = {}, command[2:]
    for at, word in enumerate(words):
        if word.startswith("--"):
            flags[word] = words[at + 1] if at + 1 < len(words) and not words[at + 1].startswith("--") else True
    assert command[1].endswith("training/supervised_finetuning.py") and flags["--do_train"] is True
    assert flags["--use_peft"] == "False" and flags["--torch_dtype"] == "float32" and flags["--use_cpu"] == "True"
    assert flags["--trust_remote_code"] == "False"  # its default is True
    assert (int(flags["--model_max_length"]), int(flags["--per_device_train_batch_size"]), int(flags["--num_train_epochs"])) == (
        bench.VS_SETTINGS["max_length"], bench.VS_SETTINGS["batch_size"], bench.VS_SETTINGS["epochs"])


def test_course_side_of_the_comparison_trains_one_epoch_on_the_given_dialogues(tiny_base, tmp_path, outputs):
    import json

    dialogues = tmp_path / "medical_sft.jsonl"
    with dialogues.open("w", encoding="utf-8") as out:
        for i in range(200):
            conversation = [{"from": "human", "value": f"问题 {i}：感冒了怎么办？"}, {"from": "gpt", "value": "多休息，多喝水。" * 3}]
            out.write(json.dumps({"conversations": conversation}, ensure_ascii=False) + "\n")
    result = bench.course_sft_samples_per_second(tiny_base, dialogues)
    # 1% of the 200 held out, as MedicalGPT's script holds out 1%; the rest trains once
    assert result["samples"] == 198 and result["seconds"] > 0
    assert abs(result["samples_per_second"] - result["samples"] / result["seconds"]) < 0.01 * result["samples_per_second"]
