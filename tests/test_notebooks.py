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
    assert "assert" in _check_code(cells), "the check cells must assert"


def _check_code(cells) -> str:
    """The code cells of the "Check" section (from its heading to the next markdown cell)."""
    sources = ["".join(c["source"]) for c in cells]
    start = next(i for i, s in enumerate(sources) if s.startswith("## ") and "Check" in s.split("\n")[0])
    code = []
    for cell in cells[start + 1 :]:
        if cell["cell_type"] != "code":
            break
        code.append("".join(cell["source"]))
    return "\n".join(code)


def _asserts_outside_preset_branches(node) -> int:
    """Assert statements that run whatever the preset, a dry run's stand-ins included: those under an ``if`` on
    ``preset.name`` or ``preset.dry_run`` do not count."""
    import ast

    if isinstance(node, ast.If) and any(name in ast.unparse(node.test) for name in ("preset.name", "preset.dry_run")):
        return 0
    own = 1 if isinstance(node, ast.Assert) else 0
    return own + sum(_asserts_outside_preset_branches(child) for child in ast.iter_child_nodes(node))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_check_asserts_on_every_preset(path):
    """A GPU preset's check cell must not print 'check passed' (or a verdict) having asserted nothing: each check
    holds assertions outside the tiny-only thresholds and outside what only a real (not a dry) run can show."""
    import ast

    code = _check_code(json.loads(path.read_text(encoding="utf-8"))["cells"])
    assert _asserts_outside_preset_branches(ast.parse(code)) >= 1, f"{path.name}: the check asserts only on tiny"


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _code(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code"]


def _markdown(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in _cells(path) if c["cell_type"] == "markdown"]


def _notebook(stem: str) -> Path:
    return next(p for p in NOTEBOOKS if p.stem == stem)


# The stage(s) each training notebook teaches, and the trainer it must build in view.
TAUGHT = {"01_continued_pretraining": {"pretrain": "Trainer("}, "01b_vocabulary_expansion": {"vocab": "Trainer("},
          "02_supervised_finetuning": {"sft": "SFTTrainer("}, "03_reward_modeling": {"reward": "RewardTrainer("},
          "04_ppo_rlhf": {"ppo": "ppo.PPOLoop("},
          "05_preference_optimization": {"dpo": "DPOTrainer(", "orpo": "ORPOTrainer(", "grpo": "GRPOTrainer("}}


def _stage_run_calls(source: str) -> set[str]:
    """The stages whose whole ``run`` a cell calls: ``<module>.run(...)`` on a name imported from
    ``medgpt_utils.stages`` (any alias), and ``run_stage("<name>", ...)``."""
    import ast

    tree = ast.parse(source)
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "medgpt_utils.stages":
            aliases.update({a.asname or a.name: a.name for a in node.names})
    called = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "run" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id in aliases:
            called.add(aliases[node.func.value.id])
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run_stage" and node.args \
                and isinstance(node.args[0], ast.Constant):
            called.add(node.args[0].value)
    return called


def test_the_stage_run_detector_sees_aliases():
    assert _stage_run_calls("from medgpt_utils.stages import ppo as ppo_stage\nppo_stage.run(preset)") == {"ppo"}
    assert _stage_run_calls("from medgpt_utils.stages import run_stage\nrun_stage('sft', preset)") == {"sft"}
    assert _stage_run_calls("from medgpt_utils.stages import sft\nsft.prepare(preset)") == set()


@pytest.mark.parametrize("stem", sorted(TAUGHT))
def test_trainers_are_built_in_view(stem):
    """A training notebook builds its trainer and calls ``.train()`` (PPO: builds the loop and runs a step piece by
    piece) in its own cells, and never calls the whole ``run`` of a stage it teaches (the modules of
    ``medgpt_utils.stages`` are imported in the notebook by their stage names, so ``reward`` is module ``reward``)."""
    modules = {"pretrain": "pretrain", "vocab": "vocab", "sft": "sft", "reward": "reward", "ppo": "ppo", "dpo": "dpo",
               "orpo": "orpo", "grpo": "grpo"}
    code = _code(_notebook(stem))
    called = set().union(*(_stage_run_calls("\n".join(code[: i + 1])) - _stage_run_calls("\n".join(code[:i]))
                           for i in range(len(code))))
    taught = {modules[s] for s in TAUGHT[stem]}
    assert not called & taught, f"{stem} calls the whole run of {sorted(called & taught)}: build the trainer in view"
    for stage, trainer in TAUGHT[stem].items():
        assert any(trainer in c for c in code), f"{stem}: no cell builds {trainer}"
    if stem == "04_ppo_rlhf":
        assert any("loop.learn(" in c for c in code) and any("ppo.gae(" in c for c in code)
    else:
        assert sum("trainer.train(" in c for c in code) >= len(TAUGHT[stem]), f"{stem}: trainer.train() is not called in view"


# Each objective computed by hand and asserted against the library: what the asserting cell must call.
BY_HAND = {"01_continued_pretraining": [["by_hand", "labels=ids).loss"]],
           "01b_vocabulary_expansion": [["by_hand", "vocab.add_terms("]],
           "02_supervised_finetuning": [["by_hand", "-100", "labels=labels).loss"]],
           "03_reward_modeling": [["by_hand", "logsigmoid", "trainer.compute_loss("]],
           "04_ppo_rlhf": [["by_hand", "ppo.policy_loss("], ["vf_by_hand", "ppo.value_loss("],
                           ["advantage_by_hand", "ppo.gae("], ["reward_by_hand", "ppo.kl_penalized_rewards("]],
           "05_preference_optimization": [["by_hand", "logsigmoid", "trainer.compute_loss("],
                                          ["by_hand", "trainer.odds_ratio_loss("], ["by_hand", "nanstd("]]}


@pytest.mark.parametrize("stem", sorted(BY_HAND))
def test_objectives_are_computed_by_hand_and_asserted(stem):
    code = _code(_notebook(stem))
    for needed in BY_HAND[stem]:
        assert any(all(n in c for n in needed) and "assert" in c for c in code), f"{stem}: no asserting cell with {needed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_exercises_have_a_level_a_hint_and_a_solution(path):
    """Every exercise is marked with a level (★ to ★★★) and a hint, and has its own solution cell, which nbmake
    executes with the rest of the notebook; each notebook asks the learner to predict before a run."""
    import re

    cells = _cells(path)
    sources = ["".join(c["source"]) for c in cells]
    start = next(i for i, s in enumerate(sources) if s.startswith("## Exercises"))
    items = re.split(r"\n(?=\d+\. )", sources[start])[1:]
    assert len(items) >= 2, f"{path.name}: fewer than two exercises"
    for number, item in enumerate(items, 1):
        assert re.match(rf"{number}\. ★{{1,3}} ", item), f"{path.name}: exercise {number} has no level"
        assert "*Hint:*" in item, f"{path.name}: exercise {number} has no hint"
    solutions = [c for c in cells[start + 1 :] if c["cell_type"] == "code"]
    titles = ["".join(c["source"]).split("\n")[0] for c in solutions]
    assert titles == [f"# @title Solution {n}" for n in range(1, len(items) + 1)], titles
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") for c in solutions), "solutions start collapsed"
    assert any("Predict before you run" in s for s in _markdown(path)), f"{path.name}: no prediction question"


def _has_chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_chinese_text(path):
    """A Chinese summary under the title, a Chinese line in every section, and an exercise in or about Chinese."""
    markdown = _markdown(path)
    assert "中文摘要" in markdown[0] and _has_chinese(markdown[0])
    sections = [m for m in markdown if m.startswith("## ")]
    missing = [m.split("\n")[0] for m in sections if not _has_chinese(m)]
    assert not missing, f"{path.name}: sections without Chinese text: {missing}"
    exercises = next(m for m in markdown if m.startswith("## Exercises"))
    assert _has_chinese(exercises), f"{path.name}: no exercise in or about Chinese"


def result_numbers(markdown: str) -> list[str]:
    """Numbers in prose that look like results: decimals and percentages (outside code, math and links; a
    "95% interval" names a kind of interval, not a result)."""
    import re

    prose = re.sub(r"\$\$.*?\$\$|\$[^$]*\$|`[^`]*`|\]\([^)]*\)", " ", markdown, flags=re.S)
    prose = prose.replace("95% interval", "interval")
    return re.findall(r"(?<![\w.])\d+\.\d+|\d+\s?%", prose)


def test_the_result_number_detector():
    assert result_numbers("recall rose to 0.64 (12%) with `lr=0.001` and $\\beta=0.1$, a 95% interval") == ["0.64", "12%"]
    assert result_numbers("Qwen2.5 on [docs](https://x.org/v1.2)") == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_carries_no_hand_written_result_numbers(path):
    """The notebooks' prose quotes no measured number: the values a learner reads come from cells that compute
    or load them (their own metrics, or the committed seed study), so text and numbers cannot disagree."""
    found = {i: result_numbers(m) for i, m in enumerate(_markdown(path))}
    found = {i: hits for i, hits in found.items() if hits}
    assert not found, f"{path.name}: markdown cells with result numbers: {found}"


def test_the_readme_quotes_the_committed_seed_study():
    """The README's seed-study table is the one notebooks 04 and 05 print from notebooks/seed_study.jsonl."""
    from medgpt_utils import rl_seeds

    readme = (NOTEBOOKS[0].parent.parent / "README.md").read_text(encoding="utf-8")
    table = rl_seeds.summary_markdown(rl_seeds.committed_runs()).strip().splitlines()
    assert len(table) == 2 + 4
    for line in table:
        assert line in readme, f"README.md lacks the seed study's row: {line}"
