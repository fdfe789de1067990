"""Colab: the badges, the GPU runtime metadata, one repository address, and the setup cell run in a stand-in Colab."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from medgpt_utils import notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
COLAB_URL = re.compile(r"\]\((https://colab\.research\.google\.com/[^)]*)\)")


def test_every_badge_has_colabs_url_form_and_every_notebook_asks_for_a_t4():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        book = json.loads(path.read_text(encoding="utf-8"))
        first = "".join(next(c for c in book["cells"] if c["cell_type"] == "markdown")["source"])
        (url,) = [u for u in COLAB_URL.findall(first) if "/assets/" not in u]
        owner_repo = notebook.REPO_URL.removeprefix("https://github.com/")
        assert url == f"https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{path.name}", path.name
        assert book["metadata"]["accelerator"] == "GPU" and book["metadata"]["colab"]["gpuType"] == "T4", path.name


def test_the_repository_address_lives_in_one_place():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["urls"]["Repository"] == notebook.REPO_URL
    assert f'"{notebook.REPO_URL}"' in notebook.COLAB_SETUP_CELL
    fork = "https://github.com/someone/their-fork"
    assert notebook.colab_badge_url("04_ppo_rlhf.ipynb", fork) == \
        "https://colab.research.google.com/github/someone/their-fork/blob/main/notebooks/04_ppo_rlhf.ipynb"


def test_a_fork_rewrites_badges_and_setup_cells_in_one_command(tmp_path):
    import shutil

    for path in NOTEBOOKS[:2]:
        shutil.copy(path, tmp_path / path.name)
    fork = "https://github.com/someone/their-fork"
    assert notebook.write_colab_parts(tmp_path, fork) == [p.name for p in NOTEBOOKS[:2]]
    text = (tmp_path / NOTEBOOKS[0].name).read_text(encoding="utf-8")
    assert "github/someone/their-fork/blob/main" in text and notebook.REPO_URL not in text
    assert notebook.write_colab_parts(tmp_path, fork) == []  # a second run changes nothing
    assert notebook.write_colab_parts(ROOT / "notebooks") == []  # the committed notebooks are written from REPO_URL


def _venv_sharing_this_ones_packages(folder: Path) -> Path:
    """A fresh interpreter environment that sees this environment's installed packages (no download of torch)
    but not this checkout's own editable install: what Colab is, a Python with torch and friends."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "colab_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
def test_the_setup_cell_clones_installs_and_lands_in_the_notebooks_folder(tmp_path):
    """The first cell, run as Colab runs it: ``google.colab`` imported, the repository address pointed at a
    local clone of this one. It must clone, install into that interpreter's environment, import
    ``medgpt_utils`` from the clone and leave the notebook in its ``notebooks/`` folder."""
    python = _venv_sharing_this_ones_packages(tmp_path / "colab_env")
    home = tmp_path / "content" / "medgpt-course"
    script = (
        "import json, os, sys, types\n"
        "sys.modules['google.colab'] = types.ModuleType('google.colab')  # the stand-in\n"
        f"exec({notebook.COLAB_SETUP_CELL!r})\n"
        "import medgpt_utils\n"
        "print(json.dumps({'module': medgpt_utils.__file__, 'cwd': os.getcwd()}))\n"
    )
    env = {**os.environ, notebook.REPO_ENV: str(ROOT), notebook.COLAB_HOME_ENV: str(home)}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert (home / ".git").is_dir() and (home / "notebooks" / NOTEBOOKS[0].name).is_file()
    assert seen["module"] == str(home / "medgpt_utils" / "__init__.py") and seen["cwd"] == str(home / "notebooks")
    installed = subprocess.run([str(python), "-m", "pip", "show", "-f", "medgpt-course"], capture_output=True, text=True, env=env)
    assert "Editable project location: " + str(home) in installed.stdout, installed.stdout
    # the stand-in's install went into its own environment, not this one
    import medgpt_utils

    assert Path(medgpt_utils.__file__).resolve().is_relative_to(ROOT)


def test_a_clone_that_fails_says_what_to_set(tmp_path):
    python = _venv_sharing_this_ones_packages(tmp_path / "colab_env")
    script = ("import sys, types\nsys.modules['google.colab'] = types.ModuleType('google.colab')\n"
              f"exec({notebook.COLAB_SETUP_CELL!r})\n")
    env = {**os.environ, notebook.REPO_ENV: str(tmp_path / "no-such-repo"), notebook.COLAB_HOME_ENV: str(tmp_path / "home")}
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode != 0
    assert f"Could not clone {tmp_path / 'no-such-repo'}. Set os.environ['MEDGPT_REPO_URL']" in result.stderr
