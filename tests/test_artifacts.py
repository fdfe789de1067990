import pytest

from medgpt_utils.artifacts import atomic_dir, stage_done, write_json


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "stage"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise RuntimeError("crash mid-save")
    assert (final / "a.txt").read_text() == "one"  # the old result survives a crash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no temporary folder left


def test_stage_done_needs_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGPT_OUTPUT_DIR", str(tmp_path))
    assert not stage_done("tiny", "pt")
    (tmp_path / "tiny" / "pt").mkdir(parents=True)
    assert not stage_done("tiny", "pt")
    write_json(tmp_path / "tiny" / "pt" / "metrics.json", {"x": 1})
    assert stage_done("tiny", "pt")
