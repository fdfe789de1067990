"""Versions live in pyproject.toml; environment.yml, the Colab cell and CI must agree with it."""

import json
import re
import tomllib
from pathlib import Path

import yaml

from medgpt_utils.notebook import COLAB_SETUP_CELL

ROOT = Path(__file__).resolve().parents[1]


def pyproject_dependencies(extras=("course",)) -> set[str]:
    """The core dependencies and those of ``extras`` (``course``: what a local course environment adds)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]).union(*(project["optional-dependencies"][e] for e in extras))


def test_environment_yml_pins_exactly_the_pyproject_versions():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip_section) - {"-e .[course]"} == pyproject_dependencies()
    assert "-e .[course]" in pip_section  # the environment installs the course package itself


def test_dependencies_are_the_design_cards_packages():
    names = {re.split(r"[<>=!~\[]", d)[0] for d in pyproject_dependencies()}
    assert {"torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "jupyterlab",
            "ipywidgets", "matplotlib", "nbmake", "tqdm"} <= names
    pins = {re.split(r"==", d)[0]: d.split("==")[1] for d in pyproject_dependencies() if "==" in d}
    assert pins["transformers"].startswith("5.") and pins["trl"].startswith("1.")
    # Colab installs the core only: no JupyterLab, test tools or widgets to re-pin over Colab's own
    core = {re.split(r"[<>=!~\[]", d)[0] for d in pyproject_dependencies(extras=())}
    assert not core & {"jupyterlab", "pytest", "nbmake", "ipywidgets", "matplotlib"}, core


def test_every_notebook_starts_with_the_one_colab_setup_cell():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
        assert "".join(cells[0]["source"]) == COLAB_SETUP_CELL, f"{path.name}: first code cell is not the setup cell"
    # it installs the project itself, so no version is written down twice
    assert '"pip", "install", "-q", "-e", HOME]' in COLAB_SETUP_CELL and "==" not in COLAB_SETUP_CELL


def test_ci_installs_cpu_torch_first_and_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    torch_at, project_at = ci.index("pip install torch==2.13.0"), re.search(r'pip install -e "?\.\[course', ci).start()
    assert torch_at < project_at
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(?!#)(\S.*)$", quickstart.split("```bash", 1)[1].split("```", 1)[0], re.M)
    assert len(commands) == 2, commands
    assert commands[1] == "pytest"
    assert re.search(r"^\s*pytest\s*(\|\||;|$)", ci, re.M), "CI must run exactly `pytest`"
