"""Notebook hygiene (nbmake executes them; this checks how they are committed)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_outputs_cleared(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_teaches_in_the_course_shape(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    first = "".join(cells[0]["source"])
    assert first.startswith("# ") and "colab-badge.svg" in first and path.name in first
    assert "Educational use only" in first and "You will learn" in first
    sources = ["".join(c["source"]) for c in cells]
    assert any(s.startswith("## Exercises") for s in sources)
    check = next(i for i, s in enumerate(sources) if s.startswith("## ") and "Check" in s.split("\n")[0])
    assert "assert" in sources[check + 1], "the check cell must assert"
