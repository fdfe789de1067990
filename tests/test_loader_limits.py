"""The loaders at their limits (issue: loaders, user data checked late): deep nesting, broken ``.json`` lists,
columns whose type changes, what folders hold besides data files, weights, memory, line separators inside records,
and the user's data read in full before any stage builds its inputs."""

import json
import os
import subprocess
import sys

import pytest

from medgpt_utils import cli, data
from medgpt_utils.data import DataFormatError, load_prompts, load_sft
from medgpt_utils.presets import get_preset, override
from medgpt_utils.sources import DataSourceError, check_sources, load_stage_data, parse_sources
from medgpt_utils.training import as_dataset

TINY = get_preset("tiny", verbose=False)


def U(content):
    return {"role": "user", "content": content}


def A(content):
    return {"role": "assistant", "content": content}


def alpaca(i, **extra):
    return json.dumps({"instruction": f"question {i}?", "output": f"answer {i}.", **extra}, ensure_ascii=False)


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def questions(dataset):
    return [row["messages"][0]["content"] for row in dataset]


def adds_up(report):
    return report.read == report.kept + report.skipped_total + report.unread


@pytest.fixture
def no_stage_is_built(monkeypatch):
    """Fail the test the moment a stage would build the stages it starts from (all go through ``stale_reason``)."""
    from medgpt_utils import training

    def refuse(preset, stage):
        raise AssertionError(f"stage {stage} was about to be built before the data was checked")

    monkeypatch.setattr(training, "stale_reason", refuse)


# ------------------------------------------------------------------ deep nesting
DEEP = '{"instruction": "q?", "output": "a.", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"


@pytest.mark.parametrize("layout, line", [("jsonl", 2), ("json", 3)])
def test_a_deeply_nested_record_is_one_counted_error_naming_file_and_line(tmp_path, layout, line):
    lines = [alpaca(0), DEEP, alpaca(1)]
    path = write(tmp_path / f"data.{layout}", lines if layout == "jsonl" else ["[", ",\n".join(lines), "]"])
    dataset, report = load_sft(path, on_error="skip", return_report=True)
    assert questions(dataset) == ["question 0?", "question 1?"]
    assert report.skipped == {"JSON nested too deeply": 1} and adds_up(report)
    with pytest.raises(DataFormatError) as info:
        load_sft(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert str(info.value) == f"{path}:{line}: JSON nested too deeply (more than {data.MAX_NESTING} levels)"


def test_brackets_inside_strings_are_not_nesting(tmp_path):
    path = write(tmp_path / "data.jsonl", [alpaca(0, note="[" * 500 + "{" * 500)])
    assert load_sft(path)["note"] == ["[" * 500 + "{" * 500]


def test_the_command_line_reports_a_deeply_nested_file_without_a_traceback(outputs, tmp_path, capsys, no_stage_is_built):
    path = write(tmp_path / "deep.jsonl", [DEEP])
    assert cli.main(["sft", "--preset", "tiny", "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medgpt: error: {path}: no usable records") and "Traceback" not in err
    assert err.endswith(f"the first: {path}:1: JSON nested too deeply (more than {data.MAX_NESTING} levels)")


# ------------------------------------------------------------------ .json lists
def test_a_json_list_reads_on_past_a_broken_record(tmp_path):
    records = [alpaca(i) for i in range(4)]
    records[1] = '{"instruction": "question 1?", "output": }'
    path = write(tmp_path / "data.json", ["[", ",\n".join(records), "]"])
    dataset, report = load_sft(path, on_error="skip", return_report=True)
    assert questions(dataset) == ["question 0?", "question 2?", "question 3?"]
    assert (report.read, report.kept, report.skipped_total, report.unread) == (4, 3, 1, 0)
    assert report.errors == [f"{path}:3: broken JSON: Expecting value (column {records[1].index('}') + 1})"]


@pytest.mark.parametrize("indent", [None, 2], ids=["a-record-a-line", "pretty-printed"])
def test_a_string_left_open_costs_only_its_record(tmp_path, indent):
    text = json.dumps([json.loads(alpaca(i)) for i in range(4)], indent=indent, ensure_ascii=False)
    if indent is None:  # one record a line, as many tools write lists
        text = "[\n" + ",\n".join(alpaca(i) for i in range(4)) + "\n]\n"
    path = tmp_path / "data.json"
    path.write_text(text.replace('"question 1?"', '"question 1?'), encoding="utf-8")  # its closing quote lost
    dataset, report = load_sft(path, on_error="skip", return_report=True)
    assert questions(dataset) == ["question 0?", "question 2?", "question 3?"]
    assert report.skipped == {"broken JSON": 1} and adds_up(report)
    assert "a string is not closed on its line" in report.errors[0]


def test_a_json_list_cut_short_counts_what_could_not_be_read(tmp_path):
    text = "[\n" + ",\n".join(alpaca(i) for i in range(4)) + "\n]\n"
    path = tmp_path / "data.json"
    path.write_text(text[: text.index("answer 3")], encoding="utf-8")  # the download stopped inside record 4
    dataset, report = load_sft(path, on_error="skip", return_report=True)
    assert questions(dataset) == ["question 0?", "question 1?", "question 2?"]
    assert (report.read, report.kept, report.skipped_total, report.unread) == (4, 3, 0, 1)
    assert report.errors[0].startswith(f"{path}:5: broken JSON: a string is not closed on its line")
    assert "unread 1" in str(report)
    with pytest.raises(DataFormatError, match="could not be split into records"):
        load_sft(path)


# ------------------------------------------------------------------ columns whose type changes
def test_an_extra_column_of_two_types_across_sources_is_kept_as_text_with_a_note(tmp_path):
    first = write(tmp_path / "a.jsonl", [alpaca(0, id=1), alpaca(1, id=2)])
    second = write(tmp_path / "b.jsonl", [alpaca(2, id="x-3")])
    loaded = load_stage_data("sft", f"{first},{second}", validation_percent=0)
    assert [row["id"] for row in loaded.train] == ["1", "2", "x-3"]
    assert as_dataset(loaded.train, ["messages", "id"])["id"] == ["1", "2", "x-3"]  # what a stage's trainer gets
    assert loaded.notes == [f"column 'id' has different types (int64 in {first}; string in {second}); kept as text"]
    assert f"note: {loaded.notes[0]}" in loaded.summary()


def test_an_extra_column_of_two_types_in_one_file_is_kept_as_text_with_a_note(tmp_path):
    path = write(tmp_path / "a.jsonl", [alpaca(0, id=1), alpaca(1, id="x-2"), alpaca(2)])
    dataset, report = load_sft(path, return_report=True)
    assert dataset["id"] == ["1", "x-2", None]
    assert report.notes == [f"{path}: column 'id' holds int and str values; kept as text"]


def test_a_prompt_column_the_rl_rules_read_must_have_their_type(tmp_path):
    """A ``red_flag`` of "no" would be true for the urgent-care reward: such a record is refused, never converted."""
    path = write(tmp_path / "prompts.jsonl", [json.dumps({"prompt": "Chest pain?", "red_flag": True}),
                                              json.dumps({"prompt": "A cold?", "red_flag": "no"}),
                                              json.dumps({"prompt": "A rash?", "key_facts": "itching"})])
    dataset, report = load_prompts(path, on_error="skip", return_report=True)
    assert dataset["red_flag"] == [True]
    assert report.skipped == {"field 'red_flag' must be true or false": 1, "field 'key_facts' must be a list of strings": 1}
    assert report.errors[0] == f'{path}:2: field \'red_flag\' must be true or false (the RL rule rewards read it), got "no"'


# ------------------------------------------------------------------ folders
def test_a_folder_reads_any_case_and_linked_folders_and_names_what_it_ignores(tmp_path):
    root = tmp_path / "mine"
    write(root / "UPPER.JSONL", [alpaca(0)])
    write(root / "notes.csv", ["instruction,output"])
    write(root / ".ipynb_checkpoints" / "UPPER-checkpoint.jsonl", [alpaca(0)])  # Jupyter's copy: read twice, doubled
    write(root / ".DS_Store", ["x"])
    write(tmp_path / "elsewhere" / "more.jsonl", [alpaca(1)])
    os.symlink(tmp_path / "elsewhere", root / "linked")
    os.symlink(root, root / "loop")  # a link back up: read once, no endless walk
    dataset, report = load_sft(root, return_report=True)
    assert report.files == [str(root / "UPPER.JSONL"), str(root / "linked" / "more.jsonl")]
    assert questions(dataset) == ["question 0?", "question 1?"]
    assert report.ignored == [f"{root / '.DS_Store'} (hidden file)", f"{root / '.ipynb_checkpoints'}{os.sep} (hidden folder)",
                              f"{root / 'loop'}{os.sep} (a link to a folder read already)",
                              f"{root / 'notes.csv'} (not a data file: .txt, .json, .jsonl, .parquet are read)"]
    assert str(report).endswith("; ignored 4: " + ", ".join(report.ignored))
    summary = load_stage_data("sft", str(root), validation_percent=0).summary()
    assert "ignored 4: " in summary and str(root / "notes.csv") in summary


def test_a_file_named_with_an_upper_case_suffix_is_read(tmp_path):
    path = write(tmp_path / "DATA.JSON", ["[" + alpaca(0) + "]"])
    assert questions(load_sft(path)) == ["question 0?"]


def test_a_folder_of_other_files_names_them_in_its_error(tmp_path):
    write(tmp_path / "data.csv", ["instruction,output"])
    with pytest.raises(DataFormatError, match=r"folder has no data files .*; ignored 1: .*data\.csv \(not a data file"):
        load_sft(tmp_path)


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "1e9", "100.5", "0", "-1"])
def test_a_weight_must_be_finite_above_0_and_at_most_100(weight):
    item = f"my.jsonl?weight={weight}"
    with pytest.raises(DataSourceError, match=r"weight must be above 0 and at most 100 \(the times each record is taken\)") as info:
        parse_sources(f"bundled,{item}")
    assert info.value.source == item


def test_a_weight_of_100_repeats_positions_not_records(tmp_path):
    path = write(tmp_path / "a.jsonl", [alpaca(i) for i in range(20)])
    loaded = load_stage_data("sft", f"{path}?weight=100", validation_percent=0)
    assert len(loaded.train) == 2000 and questions(loaded.train)[::20] == ["question 0?"] * 100
    assert loaded.train.data.num_rows == 20  # the table holds each record once; the rest is an index map


# ------------------------------------------------------------------ the stage's records
def test_a_stages_records_are_datasets(tmp_path):
    import datasets

    path = write(tmp_path / "prompts.jsonl", [json.dumps({"prompt": f"question {i}?"}) for i in range(40)])
    loaded = load_stage_data("prompts", f"{path}?weight=2.5", validation_percent=10)
    assert isinstance(loaded.train, datasets.Dataset) and isinstance(loaded.validation, datasets.Dataset)
    assert (len(loaded.train), len(loaded.validation)) == (90, 4)
    held = [row["prompt"][0]["content"] for row in loaded.validation]
    assert not set(held) & {row["prompt"][0]["content"] for row in loaded.train}
    every_other = loaded.validation.select(range(0, len(loaded.validation), 2))  # as alignment.heldout_prompts takes every Nth
    assert [row["prompt"][0]["content"] for row in every_other] == held[::2]
    assert loaded.validation[1] == {"prompt": [U(held[1])]}


# ------------------------------------------------------------------ memory
# Resident memory now (VmRSS) and at its peak (VmHWM) in a fresh process. Not getrusage's ru_maxrss: Linux carries
# the forking process's peak (here pytest's, with torch loaded) across exec into the child's.
MEASURE = """
import sys
import datasets, pyarrow  # imported before the baseline: the measure is what loading adds
from medgpt_utils.sources import load_stage_data

def resident(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

before = resident("VmRSS:")
loaded = load_stage_data("sft", sys.argv[1], validation_percent=5)
print(len(loaded.train) + len(loaded.validation), resident("VmHWM:") - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="measures resident memory through Linux /proc")
def test_a_30_mb_sft_file_loads_within_4_times_its_size_in_extra_memory(tmp_path, capsys):
    records = b"".join(data.bundled("sft", name).read_bytes() for name in ("train_single.jsonl", "train_multi.jsonl"))
    copies = 30 * 2**20 // len(records) + 1
    path = tmp_path / "sft.jsonl"
    path.write_bytes(records * copies)
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows, extra = map(int, result.stdout.split())
    size = path.stat().st_size
    with capsys.disabled():
        print(f"\n{size / 2**20:.1f} MiB SFT file ({rows} records): +{extra / 2**20:.0f} MiB peak resident memory "
              f"= {extra / size:.2f}x its size")
    assert rows == records.count(b"\n") * copies
    assert extra <= 4 * size


# ------------------------------------------------------------------ line separators inside records
def test_cached_pairs_holding_unicode_line_separators_read_back_whole(outputs):
    from medgpt_utils.artifacts import output_root, stage_dir
    from medgpt_utils.stages import pairs, reward, sft

    for stage in (sft.STAGE, reward.STAGE):
        stage_dir(TINY.name, stage).mkdir(parents=True)
        (stage_dir(TINY.name, stage) / "metrics.json").write_text("{}")
    rows = [{"prompt": [U("Is this normal?")], "chosen": [A("Yes.\u0085Rest\u2028and drink\u2029water.")],
             "rejected": [A("No.\x1c\x1d\x1e")]}]
    pairs.write_cache(output_root() / TINY.name / pairs.CACHE, rows, pairs._cache_key(TINY), {"pairs": 1})
    metrics = {}
    assert pairs.load_pairs(TINY, "sampled", None, None, None, None, metrics).to_list() == rows
    assert metrics["sampled_pairs"] == {"pairs": 1}  # read from the cache, nothing sampled
    # pairs ranked without a rule are not reused once it is switched on (they would be sampled again)
    assert pairs._cache_key(TINY) != pairs._cache_key(override(TINY, {"rl.non_word_penalty": 1.0}))


# ------------------------------------------------------------------ checked before any stage is built
def test_the_check_reads_every_record_and_names_file_and_line(tmp_path):
    path = write(tmp_path / "mine.jsonl", [alpaca(0), '{"instruction": "q?"', alpaca(1)])
    check_sources(str(path), "data.sft")  # on_error="skip": the bad record is skipped when the stage reads it
    with pytest.raises(DataFormatError) as info:
        check_sources(str(path), "data.sft", on_error="raise")
    assert str(info.value).startswith(f"{path}:2: broken JSON")


@pytest.mark.parametrize("name, content, problem", [
    ("empty.jsonl", b"", "file is empty: 1"),
    ("odd.jsonl", b'{"foo": 1}\n', "unknown SFT format: 1"),
    ("broken.parquet", b"PAR1 not really", "not a readable parquet file: 1"),
])
def test_the_check_fails_on_a_source_with_no_usable_record(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match="no usable records") as info:
        check_sources(f"bundled,{path}", "data.sft_validation")
    assert problem in str(info.value) and str(path) in str(info.value)


def test_the_check_parses_an_unchanged_source_once(tmp_path, monkeypatch):
    from medgpt_utils import sources

    path = write(tmp_path / "mine.jsonl", [alpaca(0)])
    reads = []
    real = sources.read_source
    monkeypatch.setattr(sources, "read_source", lambda source, *args, **kwargs: reads.append(source) or real(source, *args, **kwargs))
    for _ in range(3):
        check_sources(str(path), "data.sft")
    assert len(reads) == 1
    write(path, [alpaca(0), alpaca(1)])  # edited: read again
    check_sources(str(path), "data.sft")
    assert len(reads) == 2


def test_every_data_setting_is_parsed_by_check_data_sources(tmp_path):
    from medgpt_utils.training import check_data_sources

    bad = write(tmp_path / "prompts.jsonl", ['{"prompt": ""}'])
    with pytest.raises(DataSourceError, match=r"no usable records.*empty field 'prompt'"):
        check_data_sources(override(TINY, {"data.prompts_validation": str(bad)}))


def test_dpo_on_unusable_pairs_fails_before_building_sft_and_the_reward_model(outputs, tmp_path, capsys, no_stage_is_built):
    path = write(tmp_path / "pairs.jsonl", ['{"question": "q?", "response_chosen": "a."}'])
    assert cli.main(["dpo", "--preset", "tiny", "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"medgpt: error: {path}: no usable records")
    assert err.endswith(f"the first: {path}:1: missing field 'response_rejected'")


def test_a_file_that_cannot_be_read_is_one_counted_error_naming_it(tmp_path, monkeypatch):
    good, locked = write(tmp_path / "a.jsonl", [alpaca(0)]), write(tmp_path / "b.jsonl", [alpaca(1)])
    real_open = open

    def refuse(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(data, "open", refuse, raising=False)  # the loaders' open(); root reads any file, so no chmod
    dataset, report = load_sft(tmp_path, on_error="skip", return_report=True)
    assert questions(dataset) == ["question 0?"] and report.files == [str(good), str(locked)]
    assert (report.read, report.kept, report.unread) == (2, 1, 1)
    assert report.errors == [f"{locked}: cannot be read (PermissionError: Permission denied)"]
    with pytest.raises(DataFormatError, match="cannot be read"):
        load_sft(locked)
