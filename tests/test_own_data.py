"""Training on the user's own data (``medgpt_utils.sources``, ``Preset.data``, ``--data``): every format and
kind of source, what each source reports, the errors a user may meet, and the stages trained on such data."""

import json
import os
import subprocess
import sys

import pytest

from medgpt_utils import cli, data
from medgpt_utils.presets import get_preset
from medgpt_utils.sources import DataSourceError, carve_validation, load_stage_data, parse_sources, weighted

TINY = get_preset("tiny", verbose=False)


def _write_jsonl(path, rows, bad_line: str | None = None):
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    if bad_line is not None:
        lines.insert(1, bad_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _bundled(name):
    return list(data.load_bundled(name, conditions=TINY.conditions))


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """The bundled data rewritten in the layouts users bring: a folder per stage, mixed formats, bad records."""
    root = tmp_path_factory.mktemp("user_data")
    pt = root / "pt"
    pt.mkdir()
    texts = [r["text"] for r in _bundled("pretrain/train.jsonl")]
    _write_parquet(pt / "corpus.parquet", [{"text": t} for t in texts[:-20]])  # `text` parquet, as hub corpora come
    (pt / "notes.txt").write_text("\n".join(texts[-20:]) + "\n", encoding="utf-8")  # plain text, one document a line

    sft = root / "sft"
    (sft / "more").mkdir(parents=True)
    single = [r["messages"] for r in _bundled("sft/train_single.jsonl")]
    single = [m for m in single if [t["role"] for t in m] == ["user", "assistant"]]
    third = len(single) // 3
    _write_jsonl(sft / "alpaca.jsonl", [{"instruction": m[0]["content"], "input": "", "output": m[1]["content"]}
                                        for m in single[:third]], bad_line='{"instruction": "broken')
    _write_parquet(sft / "more" / "qa.parquet", [{"question": m[0]["content"], "answer": m[1]["content"]}
                                                 for m in single[third : 2 * third]])
    sharegpt = [{"conversations": [{"from": "human" if t["role"] == "user" else "gpt", "value": t["content"]} for t in m]}
                for m in single[2 * third :]]
    sharegpt.append({"conversations": [{"from": "human", "value": "What is the weather?"},
                                       {"from": "function_call", "value": '{"name": "weather"}'},
                                       {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]})
    (sft / "more" / "sharegpt.json").write_text(json.dumps(sharegpt, ensure_ascii=False), encoding="utf-8")

    from datasets import Dataset

    pairs = [{"question": p["prompt"][-1]["content"], "response_chosen": p["chosen"][0]["content"],
              "response_rejected": p["rejected"][0]["content"]} for p in _bundled("preference/train.jsonl")[:200]]
    Dataset.from_list(pairs).save_to_disk(str(root / "pairs_saved"))  # a `save_to_disk` folder

    prompts = [{"prompt": r["prompt"][-1]["content"]} for r in _bundled("prompts/train.jsonl")]
    _write_jsonl(root / "prompts.jsonl", prompts)  # TRL's prompt-only format
    return root


# ------------------------------------------------------------------ sources, reports, validation
def test_a_source_spec_reads_locations_and_options():
    bundled, folder, hub = parse_sources("bundled, my/folder?weight=0.3&max_samples=50 ,"
                                         "hub:shibing624/medical?config=finetune&split=train&streaming=true&revision=v1")
    assert bundled.kind == "bundled" and (folder.location, folder.weight, folder.max_samples) == ("my/folder", 0.3, 50)
    assert (hub.kind, hub.config, hub.revision, hub.streaming) == ("hub", "finetune", "v1", True)
    assert hub.name == "hub:shibing624/medical[finetune/train]"
    for spec, problem in [("x.jsonl?wieght=2", "unknown option 'wieght'"), ("x.jsonl?weight=0", "weight must be above 0"),
                          ("x.jsonl?max_samples=lots", "option max_samples wants a int"), ("hub:", "without a dataset id"),
                          (" , ", "no data source given")]:
        with pytest.raises(DataSourceError, match=problem):
            parse_sources(spec)


def test_weights_and_validation_carving_are_seeded_and_disjoint():
    rows = [{"i": i} for i in range(100)]
    assert len(weighted(rows, 0.3, seed=1)) == 30 and weighted(rows, 0.3, seed=1) == weighted(rows, 0.3, seed=1)
    assert weighted(rows, 2.0, seed=1) == rows + rows and len(weighted(rows, 1.5, seed=1)) == 150
    train, held = carve_validation(rows, 5, seed=3)
    assert len(held) == 5 and len(train) == 95 and not {r["i"] for r in held} & {r["i"] for r in train}
    assert carve_validation(rows, 5, seed=3) == (train, held) and carve_validation(rows[:1], 5, seed=3) == (rows[:1], [])


def test_a_mixed_folder_reads_every_format_and_reports_what_it_skipped(user_files):
    loaded = load_stage_data("sft", str(user_files / "sft"), validation_percent=10, seed=7)
    (report,) = loaded.reports
    assert report.files == 3
    assert report.skipped == {"broken JSON": 1, "tool-call turns are not supported": 1}
    assert report.read == report.kept + 2 and report.train + report.validation == report.kept
    assert report.validation == -(-report.kept * 10 // 100)  # 10%, rounded up
    assert all([t["role"] for t in r["messages"]][-1] == "assistant" for r in list(loaded.train) + list(loaded.validation))
    assert not loaded.uses_bundled
    assert "skipped 2 (broken JSON: 1, tool-call turns are not supported: 1)" in report.line()
    with pytest.raises(data.DataFormatError, match=r"alpaca\.jsonl:2: broken JSON"):
        load_stage_data("sft", str(user_files / "sft"), on_error="raise")


def test_sources_mix_with_weights_and_explicit_validation(user_files):
    mixed = load_stage_data("sft", f"bundled,{user_files / 'sft' / 'alpaca.jsonl'}?weight=0.5",
                            validation_spec=str(user_files / "sft" / "more"), conditions=TINY.conditions)
    bundled, alpaca, validation = mixed.reports
    assert bundled.train == len(_bundled("sft/train_single.jsonl")) + len(_bundled("sft/train_multi.jsonl"))
    assert alpaca.train == round(alpaca.kept * 0.5) and alpaca.validation == 0  # explicit validation: nothing carved
    assert validation.source.endswith("(validation)") and validation.validation == len(mixed.validation)
    assert len(mixed.train) == bundled.train + alpaca.train and mixed.uses_bundled


def test_a_save_to_disk_folder_and_a_dataset_dict_are_read(user_files, tmp_path):
    from datasets import Dataset, DatasetDict

    loaded = load_stage_data("preference", str(user_files / "pairs_saved"), validation_percent=5)
    assert loaded.reports[0].kept == 200 and set(loaded.train[0]) >= {"prompt", "chosen", "rejected"}
    splits = DatasetDict(train=Dataset.from_list([{"text": "a b c"}] * 4), test=Dataset.from_list([{"text": "d"}]))
    splits.save_to_disk(str(tmp_path / "dict"))
    assert len(load_stage_data("pretraining", f"{tmp_path / 'dict'}?split=test", validation_percent=0).train) == 1
    with pytest.raises(DataSourceError, match=r"no split 'dev' \(splits: train, test\)"):
        load_stage_data("pretraining", f"{tmp_path / 'dict'}?split=dev")


def test_a_hub_source_reaches_load_dataset_with_its_options(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        rows = datasets.Dataset.from_list([{"question": f"q{i}?", "answer": f"a{i}."} for i in range(30)])
        return rows.to_iterable_dataset() if kwargs["streaming"] else rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    loaded = load_stage_data("sft", "hub:shibing624/medical?config=finetune&max_samples=20&revision=r1", validation_percent=10)
    assert calls == [("shibing624/medical", {"name": "finetune", "split": "train", "revision": "r1", "streaming": False,
                                              "data_files": None})]
    assert (loaded.reports[0].read, len(loaded.train), len(loaded.validation)) == (20, 18, 2)
    streamed = load_stage_data("prompts", "hub:org/grpo-set?split=validation&streaming=1&max_samples=5", validation_percent=0)
    assert calls[-1][1]["streaming"] is True and calls[-1][1]["split"] == "validation" and len(streamed.train) == 5
    assert streamed.train[0]["answer"] == "a0."  # a reference answer stays a column (for a rule reward)
    # a set that still ships a loading script: its files, read by the packaged json builder
    files = "hf://datasets/shibing624/medical/finetune/train_en_1.json"
    load_stage_data("sft", f"hub:json?data_files={files}&max_samples=3", validation_percent=0)
    assert calls[-1] == ("json", {"name": None, "split": "train", "revision": None, "streaming": False, "data_files": files})


def test_a_hub_source_without_network_is_one_clear_error():
    """The real ``datasets`` call, offline: the error names the dataset and says what to do."""
    code = ("from medgpt_utils.sources import load_stage_data\n"
            "load_stage_data('sft', 'hub:shibing624/medical?config=finetune')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("medgpt_utils.sources.DataSourceError: hub:shibing624/medical[finetune/train]: could not load")
    assert "save_to_disk" in last


def _file(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("make, problem", [
    (lambda d: d / "missing.jsonl", "no such file or folder"),
    (lambda d: _write_jsonl(d / "odd.jsonl", [{"foo": 1}, {"bar": 2}]), "no usable records.*unknown SFT format: 2"),
    (lambda d: _file(d / "empty.jsonl", ""), "no usable records.*file is empty: 1"),
    (lambda d: _file(d / "data.csv", "instruction,output\n"), "unsupported file type '.csv'"),
])
def test_a_source_that_cannot_be_used_is_one_error_naming_it(tmp_path, make, problem):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=problem) as info:
        load_stage_data("sft", str(path))
    assert str(path) in str(info.value)


def test_the_command_line_reports_a_bad_source_before_any_training(outputs, tmp_path, capsys):
    assert cli.main(["sft", "--preset", "tiny", "--data", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medgpt: error: data.sft: {tmp_path / 'nope'}: no such file or folder"
    assert not (outputs / "tiny" / "base").exists()  # failed before building the stages SFT starts from


def test_bundled_default_is_unchanged():
    """The default reads exactly the bundled files, with their own held-out files."""
    files = {"sft": (("sft/train_single.jsonl", "sft/train_multi.jsonl"), "sft/valid.jsonl", "messages"),
             "prompts": (("prompts/train.jsonl",), "prompts/heldout.jsonl", "prompt")}
    for kind, (train_files, heldout, column) in files.items():
        loaded = load_stage_data(kind, "bundled", conditions=TINY.conditions)
        assert [r[column] for r in loaded.train] == [r[column] for name in train_files for r in _bundled(name)]
        assert list(loaded.validation) == _bundled(heldout) and loaded.uses_bundled


# ------------------------------------------------------------------ the stages on the user's data
def test_every_stage_trains_on_the_users_files(user_files, outputs, capsys):
    """PT, SFT, RM, DPO and PPO for a few steps on the user's folders (through ``medgpt``, as a user runs them)."""
    short = ["pt.max_steps=4", "pt.logging_steps=1", "sft.max_steps=2", "rm.max_steps=2", "dpo.max_steps=2",
             "ppo.max_steps=1", "ppo.batch_size=4", "rl.minibatch_size=2", "rl.heldout_prompt_stride=5", "max_new_tokens=16",
             f"data.pt={user_files / 'pt'}", f"data.sft={user_files / 'sft'}", f"data.preference={user_files / 'pairs_saved'}",
             f"data.prompts={user_files / 'prompts.jsonl'}"]
    sets = [arg for pair in short for arg in ("--set", pair)]
    data_flags = {"sft": ["--data", str(user_files / "sft")],  # the same as --set data.sft=...
                  "dpo": ["--data", str(user_files / "pairs_saved")]}  # the user's pairs, not sampled ones
    for stage in ("pt", "sft", "rm", "dpo", "ppo"):
        assert cli.main([stage, "--preset", "tiny"] + sets + data_flags.get(stage, [])) == 0, stage
    out = capsys.readouterr().out
    assert "skipped 2 (broken JSON: 1, tool-call turns are not supported: 1)" in out  # the report, printed

    def metrics(stage):
        return json.loads((outputs / "tiny" / stage / "metrics.json").read_text())

    pt = metrics("pt")
    assert [r["files"] for r in pt["data"]] == [2] and pt["heldout_loss_after"] < pt["heldout_loss_before"]
    assert "cloze_before" not in pt  # the knowledge base's cloze only measures its own text
    sft = metrics("sft")
    assert sft["data"][0]["skipped"] == {"broken JSON": 1, "tool-call turns are not supported": 1}
    assert "recall_before" not in sft and sft["eval_loss_after"] > 0
    rm = metrics("rm")
    assert rm["accuracy_by_kind"] == {} and 0 <= rm["accuracy_after"] <= 1 and rm["data"][0]["kept"] == 200
    assert 0 <= rm["degenerate_accuracy"] <= 1  # the user's own chosen answers, each against itself repeating a piece
    for stage in ("dpo", "ppo"):
        aligned = metrics(stage)
        (prompts,) = aligned["data"]  # judged on every 5th of the prompts carved from the user's file
        assert prompts["validation"] == -(-prompts["kept"] * 5 // 100) and aligned["heldout_prompts"] == len(range(0, prompts["validation"], 5))
        assert aligned["recall_before"] is None and aligned["urgent_care_before"] is None  # no knowledge-base prompts
        assert aligned["verdict"]["recall_kept"] is None and aligned["verdict"]["score_gain_interval_above_0"] in (True, False)
        assert 0 <= aligned["win_rate"] <= 1
    assert metrics("dpo")["pair_source"] == "data"
    assert len(metrics("ppo")["history"]) == 1


def test_a_changed_data_file_changes_the_fingerprint_of_the_stages_that_read_it(tmp_path):
    from medgpt_utils.fingerprints import stage_fingerprint, stage_settings
    from medgpt_utils.presets import override

    mine = _write_jsonl(tmp_path / "mine.jsonl", [{"question": "q?", "answer": "a."}])
    preset = override(TINY, {"data.sft": str(mine)})
    before = {stage: stage_fingerprint(preset, stage) for stage in ("pt", "sft", "rm")}
    assert stage_settings(preset, "sft")["data.sft"]["files"][0][0] == str(mine)
    assert stage_settings(preset, "sft")["data.on_error"] == "skip"  # an option, not a source
    _write_jsonl(mine, [{"question": "q?", "answer": "a longer answer."}])
    after = {stage: stage_fingerprint(preset, stage) for stage in ("pt", "sft", "rm")}
    assert after["pt"] == before["pt"] and after["sft"] != before["sft"] and after["rm"] != before["rm"]


def test_an_edited_prompt_file_is_read_again_in_the_same_session(tmp_path):
    from medgpt_utils.presets import override
    from medgpt_utils.stages import alignment

    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"question {i}?"} for i in range(20)])
    preset = override(TINY, {"data.prompts": str(prompts)})
    assert len(alignment.training_prompts(preset)) + len(alignment.heldout_prompts(preset)) == 20
    _write_jsonl(prompts, [{"prompt": f"question {i}?"} for i in range(40)])  # a notebook user adds prompts
    assert len(alignment.training_prompts(preset)) == 38  # 5% of 40 held out
