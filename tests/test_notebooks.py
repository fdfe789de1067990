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


def _asserts_outside_preset_branches(node) -> int:
    """Assert statements that run whatever the preset: those under an ``if`` on ``preset.name`` do not count."""
    import ast

    if isinstance(node, ast.If) and "preset.name" in ast.unparse(node.test):
        return 0
    own = 1 if isinstance(node, ast.Assert) else 0
    return own + sum(_asserts_outside_preset_branches(child) for child in ast.iter_child_nodes(node))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_check_asserts_on_every_preset(path):
    """A GPU preset's check cell must not print 'check passed' (or a verdict) having asserted nothing: each check
    holds assertions outside the tiny-only thresholds."""
    import ast

    sources = ["".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    check = next(i for i, s in enumerate(sources) if s.startswith("## ") and "Check" in s.split("\n")[0])
    assert _asserts_outside_preset_branches(ast.parse(sources[check + 1])) >= 1, f"{path.name}: the check asserts only on tiny"
