"""The package's layers, read from its source: a library that knows no stage, stages on top of it, and the
command line and pipeline-wide tools on top of both. Nothing imports upward; no import circle."""

import ast
from pathlib import Path

import medgpt_utils

PACKAGE = Path(medgpt_utils.__file__).parent
# On top of the stages: the command line, the whole-pipeline evaluation and report, benchmarks (ours and lm-eval's),
# the hand-off to verl, notebook setup.
TOP = {"medgpt_utils.cli", "medgpt_utils.compare", "medgpt_utils.report", "medgpt_utils.bench", "medgpt_utils.notebook",
       "medgpt_utils.rl_seeds", "medgpt_utils.harness", "medgpt_utils.verl_export"}


def module_name(path: Path) -> str:
    parts = ("medgpt_utils",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """Every package module ``name`` imports, at the top or inside a function."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> str:
    if name in TOP:
        return "top"
    if name.startswith("medgpt_utils.stages"):
        return "stages"
    return "library"


def test_the_reader_finds_the_imports_it_should():
    assert "medgpt_utils.scoring" in GRAPH["medgpt_utils.evaluation"]  # inside a function
    assert "medgpt_utils.stages.sft" in GRAPH["medgpt_utils.stages.reward"]  # from . import sft
    assert "medgpt_utils.models" in GRAPH["medgpt_utils.stages.sft"]  # from .. import models


def test_nothing_imports_a_layer_above_it():
    rank = {"library": 0, "stages": 1, "top": 2}
    upward = sorted((a, b) for a, targets in GRAPH.items() for b in targets if rank[layer(b)] > rank[layer(a)])
    assert not upward, upward


def test_there_is_no_import_circle():
    state, circles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not circles, circles


def test_every_stage_list_comes_from_the_one_pipeline():
    from medgpt_utils import compare, inference, memory, pipeline
    from medgpt_utils.stages import ALL_STAGES, STAGES, alignment

    order = [s.name for s in pipeline.PIPELINE]
    assert list(ALL_STAGES) == order
    assert all(module.STAGE == name for name, (module, _) in ALL_STAGES.items())
    for derived in (STAGES, compare.EVALUATED_STAGES, compare.ALIGNED_STAGES, inference.CHAT_STAGES,
                    memory.TRAINING_STAGES, alignment.METHODS):
        assert list(derived) == [n for n in order if n in derived]  # pipeline order, nothing outside it
    assert "rm" not in inference.CHAT_STAGES and "base" not in memory.TRAINING_STAGES
