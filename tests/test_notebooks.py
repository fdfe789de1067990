"""Notebook hygiene (nbmake executes them; this checks how they are committed)."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


# A code cell that prints, displays or draws: a reader must see what it showed.
SHOWS = re.compile(r"\bprint\(|\bdisplay\(|\bplt\.|\bplot_\w*\(|\.show\(")
REFRESH = "refresh them with `python -m medgpt_utils.notebook --execute {}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_the_outputs_of_one_tiny_run(path):
    """The reader's view on GitHub: every notebook carries the outputs of one run on the tiny preset, executed in
    order from empty outputs by the project's command, for exactly the cells it has now."""
    from medgpt_utils.notebook import RUN_METADATA, sources_digest

    book = json.loads(path.read_text(encoding="utf-8"))
    run = book["metadata"].get(RUN_METADATA)
    assert run, f"{path.name}: no outputs of a run; " + REFRESH.format(path.name)
    assert run["preset"] == "tiny" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", run["date"]) and run["hardware"]
    assert run["cells"] == sources_digest(book), f"{path.name}: cells changed since the outputs were made; " + REFRESH.format(path.name)
    code = [c for c in book["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), f"{path.name}: not run in order from empty"
    silent = [i for i, c in enumerate(code) if SHOWS.search("".join(c["source"])) and not c["outputs"]]
    assert not silent, f"{path.name}: code cells {silent} print or plot but carry no output"
    failed = [i for i, c in enumerate(code) if any(o["output_type"] == "error" for o in c["outputs"])]
    assert not failed, f"{path.name}: code cells {failed} ended in an error"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_uses_no_private_library_api(path):
    """Private helpers of TRL and transformers change without notice (``trainer._prepare_inputs``, ``trl.trainer.utils``)."""
    code = "\n".join(_code(path))
    assert not re.search(r"trainer\._\w|trl\.trainer\.utils", code), f"{path.name} uses a private API"


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
BY_HAND = {"00_setup_and_data": [["by_hand", "library_merges", "learn_merges("]],  # BPE's merge loop, minbpe-style
           "01_continued_pretraining": [["by_hand", "labels=ids).loss"]],
           "01b_vocabulary_expansion": [["by_hand", "vocab.add_terms("]],
           "02_supervised_finetuning": [["by_hand", "-100", "labels=labels).loss"]],
           "03_reward_modeling": [["by_hand", "logsigmoid", "trainer.compute_loss("]],
           "04_ppo_rlhf": [["by_hand", "ppo.policy_loss("], ["vf_by_hand", "ppo.value_loss("],
                           ["advantage_by_hand", "ppo.gae("], ["reward_by_hand", "ppo.kl_penalized_rewards("]],
           "05_preference_optimization": [["by_hand", "logsigmoid", "trainer.compute_loss("],
                                          ["by_hand", "trainer.odds_ratio_loss("], ["by_hand", "config.num_generations", "r.std("]]}


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
    end = next(i for i, s in enumerate(sources) if s.startswith(SUMMARY))
    solutions = [c for c in cells[start + 1 : end] if c["cell_type"] == "code"]
    titles = ["".join(c["source"]).split("\n")[0] for c in solutions]
    assert titles == [f"# @title Solution {n}" for n in range(1, len(items) + 1)], titles
    assert all(c["metadata"].get("jupyter", {}).get("source_hidden") for c in solutions), "solutions start collapsed"
    assert any("Predict before you run" in s for s in _markdown(path)), f"{path.name}: no prediction question"


SUMMARY = "## Summary and takeaways / 小结"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_ends_with_a_summary_that_answers_the_prediction(path):
    """The last cells: the takeaways (English and Chinese), a code cell that answers the notebook's "Predict before
    you run" question with the numbers of the run, and where to go next."""
    cells = _cells(path)
    summary, answer, after = cells[-3:]
    text = "".join(summary["source"])
    assert summary["cell_type"] == "markdown" and text.startswith(SUMMARY) and _has_chinese(text) and text.count("\n- ") >= 3
    assert answer["cell_type"] == "code" and "".join(answer["source"]).startswith("# The prediction of section")
    assert after["cell_type"] == "markdown" and ("**Next:**" in "".join(after["source"]) or path.name.startswith("07"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_chinese_teaches_beside_the_english(path):
    """Chinese is not a summary layer: the markdown's Chinese characters are at least 40% of its English words
    (objectives, the "why" paragraphs, every exercise and hint)."""
    markdown = "\n".join(_markdown(path))
    chinese = len(re.findall(r"[\u4e00-\u9fff]", markdown))
    english = len(re.findall(r"[A-Za-z]+(?:'[a-z]+)?", markdown))
    assert chinese >= 0.4 * english, f"{path.name}: {chinese} Chinese characters for {english} English words"


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
    prose = prose.replace("95% interval", "interval").replace("95% 置信区间", "置信区间")
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


def test_the_results_quote_the_committed_seed_study():
    """The seed-study table of notebooks/RESULTS.md is the one notebooks 04 and 05 print from notebooks/seed_study.jsonl."""
    from medgpt_utils import rl_seeds

    results = (NOTEBOOKS[0].parent / "RESULTS.md").read_text(encoding="utf-8")
    table = rl_seeds.summary_markdown(rl_seeds.committed_runs()).strip().splitlines()
    assert len(table) == 2 + 4
    for line in table:
        assert line in results, f"notebooks/RESULTS.md lacks the seed study's row: {line}"


LEARNER_DOCS = ("README.md", "notebooks/RESULTS.md", "notebooks/GUIDE.md")


def test_the_readme_is_a_landing_page_with_the_pipeline_figure():
    root = NOTEBOOKS[0].parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200, "README.md: at most 200 lines; details go to notebooks/GUIDE.md and RESULTS.md"
    assert "](notebooks/figures/pipeline.png)" in readme and (root / "notebooks/figures/pipeline.png").is_file()
    for name in ("notebooks/GUIDE.md", "notebooks/RESULTS.md", "data/README.md"):
        assert f"]({name}" in readme, f"README.md does not link {name}"


@pytest.mark.parametrize("name", LEARNER_DOCS + tuple(f"notebooks/{p.name}" for p in NOTEBOOKS))
def test_learner_facing_text_names_no_issue_numbers(name):
    """Project history stays in the experiment log (notebooks/EXPERIMENTS.md), not in what a learner reads."""
    path = NOTEBOOKS[0].parent.parent / name
    text = "\n".join(_markdown(path)) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    assert not re.findall(r"\b[Ii]ssues? #?\d+", text), f"{name} names issue numbers"


STAGE_STRIP = "**You are here / 当前位置：** "


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_header_says_where_you_are(path):
    """Under the title, one strip of every notebook in order: this one marked, the others linked."""
    header = _markdown(path)[0]
    strip = next((line for line in header.split("\n") if line.startswith(STAGE_STRIP)), None)
    assert strip, f"{path.name}: no 'You are here' strip in the header"
    links = re.findall(r"\]\(([^)]+\.ipynb)\)", strip)
    assert links == [p.name for p in NOTEBOOKS if p != path], (path.name, links)
    marked = re.findall(r"\*\*▶ ([0-9b]+) ", strip)
    assert marked == [path.name.split("_")[0]], (path.name, marked)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_and_hint_is_also_in_chinese(path):
    """Each exercise's text and hint have a Chinese version beside them (a line starting with 中文：)."""
    exercises = next(m for m in _markdown(path) if m.startswith("## Exercises"))
    for number, item in enumerate(re.split(r"\n(?=\d+\. )", exercises)[1:], 1):
        assert "中文：" in item, f"{path.name}: exercise {number} has no Chinese text"


def _solutions() -> dict[str, str]:
    found = {}
    for path in NOTEBOOKS:
        for source in _code(path):
            if source.startswith("# @title Solution"):
                found[f"{path.stem}: {source.split(chr(10))[0][9:]}"] = source
    return found


def test_at_least_four_exercises_retrain_and_interpret_their_numbers():
    """Exercises that retrain (a trainer's .train() in the solution, executed in CI with the notebook), each
    ending with a comment that reads its numbers ("# Read: ...")."""
    retraining = {name: s for name, s in _solutions().items() if re.search(r"\.train\(\)", s)}
    assert len(retraining) >= 4, sorted(retraining)
    for name, source in retraining.items():
        assert "# Read:" in source, f"{name}: no sentence interpreting the numbers"


def test_text_progress_bars_leave_the_committed_outputs_and_messages_stay():
    from medgpt_utils.notebook import drop_progress_bars

    bar = {"output_type": "stream", "name": "stderr",
           "text": ["\rRunning loglikelihood requests:  42%|████▏     | 241/576 [00:00<00:00, 558.60it/s]"]}
    newline = {"output_type": "stream", "name": "stderr", "text": ["\n"]}
    message = {"output_type": "stream", "name": "stderr", "text": ["skipped mine.jsonl:2: empty field 'output'\n"]}
    printed = {"output_type": "stream", "name": "stdout", "text": ["50%|#####| 1/2 [00:01<00:01]\n"]}
    book = {"metadata": {}, "cells": [{"cell_type": "code", "outputs": [bar, newline, message, printed]}]}
    assert drop_progress_bars(book) == 2
    assert book["cells"][0]["outputs"] == [message, printed]
