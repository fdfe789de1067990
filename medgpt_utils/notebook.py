"""What every notebook does first: the Colab install cell, then versions, hardware and preset; the
repository address that the cells, the badges and pyproject.toml share."""

from __future__ import annotations

import platform
import time
from contextlib import contextmanager

from .presets import Preset, get_preset

# The one place that holds the repository's address: the setup cells, the badges and pyproject.toml's
# Repository URL are written from it (tests/test_colab.py checks each). A fork sets MEDGPT_REPO_URL in Colab
# before running the setup cell, or rewrites the notebooks with ``python -m medgpt_utils.notebook --repo URL``.
REPO_URL = "https://github.com/medgpt-course/medgpt-course"
BRANCH = "main"
REPO_ENV = "MEDGPT_REPO_URL"
COLAB_HOME_ENV = "MEDGPT_COLAB_HOME"  # where Colab keeps the clone (a test points it at a temporary folder)


def colab_setup_cell(repo_url: str = REPO_URL) -> str:
    """The first code cell of every notebook, character for character (tests/test_colab.py runs it in a
    stand-in Colab). It installs only inside Colab: the project itself with its core dependencies, so the
    pinned versions come from pyproject.toml alone and Colab keeps its own torch, ipywidgets and matplotlib."""
    return f'''# Setup: runs only in Colab (locally, install once with the README's command).
import os, subprocess, sys
REPO = os.environ.get("{REPO_ENV}", "{repo_url}")  # your fork: set {REPO_ENV} first
HOME = os.environ.get("{COLAB_HOME_ENV}", "/content/medgpt-course")
if "google.colab" in sys.modules and not os.path.exists(HOME):
    if subprocess.run(["git", "clone", "--depth", "1", REPO, HOME]).returncode != 0:
        raise SystemExit(f"Could not clone {{REPO}}. Set os.environ['{REPO_ENV}'] to the course's repository and rerun.")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", HOME], check=True)
if "google.colab" in sys.modules:
    sys.path.insert(0, HOME)
    os.chdir(os.path.join(HOME, "notebooks"))
    # Keep outputs/ across sessions on Google Drive (optional):
    # from google.colab import drive; drive.mount("/content/drive")
    # os.environ["MEDGPT_OUTPUT_DIR"] = "/content/drive/MyDrive/medgpt-outputs"'''


COLAB_SETUP_CELL = colab_setup_cell()


def colab_badge_url(notebook: str, repo_url: str = REPO_URL, branch: str = BRANCH) -> str:
    """Colab's address for a notebook on GitHub: colab.research.google.com/github/<owner>/<repo>/blob/<branch>/<path>."""
    owner_repo = repo_url.removeprefix("https://github.com/").strip("/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/notebooks/{notebook}"


def colab_badge(notebook: str, repo_url: str = REPO_URL) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_badge_url(notebook, repo_url)})"


# Notebook metadata that makes Colab open a notebook on a T4 GPU runtime instead of a CPU one.
COLAB_METADATA = {"accelerator": "GPU", "colab": {"provenance": [], "gpuType": "T4"}}


PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes")


def environment() -> dict:
    """Versions of the packages the course uses and the hardware it runs on."""
    import importlib.metadata as md

    import torch

    info = {name: md.version(name) for name in PACKAGES}
    info["python"] = platform.python_version()
    info["cpu_threads"] = torch.get_num_threads()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 2**30:.1f} GiB"
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    else:
        info["gpu"] = "none (CPU only)"
    return info


@contextmanager
def measured(label: str, preset: Preset):
    """Print a notebook step's wall time and peak memory after it (GPU memory allocated by torch on a GPU
    preset; the process's peak resident memory on the CPU), as unsloth's notebooks do."""
    from .training import peak_memory

    record: dict = {}
    start = time.perf_counter()
    with peak_memory(record, preset):
        yield record
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(f"[{label}] wall time {record['wall_seconds']:.0f} s | peak memory {record['peak_memory_gib']:.2f} GiB "
          f"({record['peak_memory_gib_kind']})")


def setup(preset_name: str | None = None, overrides: dict | None = None) -> Preset:
    """Print versions, hardware and the preset in use; return the preset (its stand-ins under ``$MEDGPT_DRY_RUN``)."""
    for key, value in environment().items():
        print(f"{key:>14}: {value}")
    from .dryrun import from_environment

    preset = from_environment(get_preset(preset_name, overrides))  # MEDGPT_DRY_RUN: the preset's stand-ins
    print(f"{'settings':>14}: {preset.describe()}")
    return preset


def write_colab_parts(notebooks_dir, repo_url: str = REPO_URL) -> list[str]:
    """Rewrite every notebook's badge, setup cell and Colab metadata for ``repo_url`` (a fork); returns the
    notebooks changed. Outputs stay cleared: only those three parts are touched."""
    import json
    import re
    from pathlib import Path

    changed = []
    for path in sorted(Path(notebooks_dir).glob("*.ipynb")):
        book = json.loads(path.read_text(encoding="utf-8"))
        before = json.dumps(book, sort_keys=True)
        first_md = next(c for c in book["cells"] if c["cell_type"] == "markdown")
        text = re.sub(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)", colab_badge(path.name, repo_url).replace("\\", "\\\\"),
                      "".join(first_md["source"]))
        first_md["source"] = text.splitlines(True)
        first_code = next(c for c in book["cells"] if c["cell_type"] == "code")
        first_code["source"] = colab_setup_cell(repo_url).splitlines(True)
        book["metadata"].update(json.loads(json.dumps(COLAB_METADATA)))
        if json.dumps(book, sort_keys=True) != before:
            path.write_text(json.dumps(book, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path.name)
    return changed


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Write the Colab badge, setup cell and GPU metadata into every notebook.")
    parser.add_argument("--repo", default=REPO_URL, help="the repository's GitHub address (a fork's)")
    args = parser.parse_args()
    folder = Path(__file__).resolve().parents[1] / "notebooks"
    print("changed:", ", ".join(write_colab_parts(folder, args.repo)) or "nothing")
