"""What every notebook does first: the Colab install cell, then versions, hardware and preset; the
repository address that the cells, the badges and pyproject.toml share."""

from __future__ import annotations

import platform
import re
import time
from contextlib import contextmanager

from . import threads
from .presets import Preset, get_preset
from .threads import usable_cores

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
    info["cpu_threads"] = f"{torch.get_num_threads()} of {usable_cores()} usable cores"
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


def quiet_library_notices() -> None:
    """Silence two notices a learner can do nothing about, so the outputs show the course's own messages:
    peft reads transformers' deprecated ``is_gradient_checkpointing`` (a FutureWarning on every LoRA model), and
    bitsandbytes on AVX-512 CPUs says that an optional kernel from the Hugging Face Hub is not installed."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def setup(preset_name: str | None = None, overrides: dict | None = None) -> Preset:
    """Print versions, hardware and the preset in use; return the preset (its stand-ins under ``$MEDGPT_DRY_RUN``)."""
    quiet_library_notices()
    threads.configure(verbose=False)  # the count is in the environment lines below
    for key, value in environment().items():
        print(f"{key:>14}: {value}")
    from .dryrun import from_environment

    preset = from_environment(get_preset(preset_name, overrides))  # MEDGPT_DRY_RUN: the preset's stand-ins
    print(f"{'settings':>14}: {preset.describe()}")
    return preset


def write_colab_parts(notebooks_dir, repo_url: str = REPO_URL) -> list[str]:
    """Rewrite every notebook's badge, setup cell and Colab metadata for ``repo_url`` (a fork); returns the
    notebooks changed. Only those three parts are touched (run ``--execute`` afterwards to refresh the outputs)."""
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


# ---------------------------------------------------------------- the reader's view: notebooks with their outputs
RUN_METADATA = "medgpt_run"  # a notebook's metadata key for the run whose outputs it carries
QUIET_RUN_ENV = {"TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # progress bars are widgets GitHub cannot show
                 "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def sources_digest(book: dict) -> str:
    """A hash of every cell's source: the committed outputs belong to exactly these cells."""
    import hashlib

    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in book["cells"]]
    return hashlib.sha256("\x00".join(sources).encode("utf-8")).hexdigest()[:16]


def execute_notebooks(names: list[str] | None = None, preset_name: str = "tiny", output_dir=None,
                      timeout: int = 1800) -> list[str]:
    """Run the notebooks in order from empty outputs and write them back with their outputs (figures included),
    so that a reader on GitHub sees every number of one run. The notebooks of one call share one fresh outputs
    folder, as a learner's run does; each one's metadata records the preset, the date, the hardware, the package
    versions and a digest of its cells (``tests/test_notebooks.py`` checks that the outputs belong to the cells)."""
    import datetime
    import os
    import tempfile
    from pathlib import Path

    import nbformat
    from nbclient import NotebookClient

    folder = Path(__file__).resolve().parents[1] / "notebooks"
    paths = [folder / n for n in names] if names else sorted(folder.glob("*.ipynb"))
    out = Path(output_dir or tempfile.mkdtemp(prefix="medgpt-reader-run-"))
    os.environ.update({"MEDGPT_PRESET": preset_name, "MEDGPT_OUTPUT_DIR": str(out), **QUIET_RUN_ENV})
    os.environ.pop("MEDGPT_DRY_RUN", None)  # the reader's view is the tiny model really trained
    info = environment()
    done = []
    for path in paths:
        book = nbformat.read(path, as_version=4)
        for cell in book.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        start = time.perf_counter()
        print(f"executing {path.name} ...", flush=True)
        NotebookClient(book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
        drop_progress_bars(book)
        book.metadata[RUN_METADATA] = {
            "preset": preset_name, "date": datetime.date.today().isoformat(),
            "hardware": f"{os.cpu_count()}-core CPU, GPU: {info['gpu']}",
            "versions": {k: v for k, v in info.items() if k not in ("gpu", "cpu_threads", "bf16_supported")},
            "seconds": round(time.perf_counter() - start), "cells": sources_digest(book),
            "command": "python -m medgpt_utils.notebook --execute",
        }
        nbformat.write(book, path)
        print(f"  {path.name}: {book.metadata[RUN_METADATA]['seconds']} s", flush=True)
        done.append(path.name)
    if not names:  # the whole course ran: its headline numbers go into the README's figure
        print("pipeline figure:", draw_pipeline_figure(preset_name))
    return done


TEXT_PROGRESS_BAR = re.compile(r"^\s*(?:[^|\r\n]*:\s*)?\d+%\|[^|]*\|\s*\d+/\d+\s*\[[^\]]*\]\s*$")


def is_text_progress_bar(output) -> bool:
    """A stderr output that holds only tqdm bars drawn as text (lm-eval draws them whatever TQDM_DISABLE says)."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    pieces = [p for p in re.split(r"[\r\n]", "".join(output.get("text", ""))) if p.strip()]
    return all(TEXT_PROGRESS_BAR.match(p) for p in pieces)


def drop_progress_bars(book) -> int:
    """Remove the progress-bar widgets some libraries draw whatever the environment says (GitHub cannot render a
    widget, and a bar says nothing once the run is over); returns how many outputs went."""
    widget = "application/vnd.jupyter.widget-view+json"
    dropped = 0
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            kept = [o for o in cell["outputs"] if widget not in o.get("data", {}) and not is_text_progress_bar(o)]
            dropped += len(cell["outputs"]) - len(kept)
            cell["outputs"] = kept
    book["metadata"].pop("widgets", None)  # the widgets' saved state, now unused
    return dropped


PIPELINE_FIGURE = "figures/pipeline.png"  # beside the notebooks; README.md and notebook 00 show it


def draw_pipeline_figure(preset_name: str = "tiny"):
    """The pipeline with each stage's headline number from the finished stages under ``$MEDGPT_OUTPUT_DIR``."""
    import datetime
    import os
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    from .plotting import plot_pipeline
    from .report import stage_headlines

    path = Path(__file__).resolve().parents[1] / "notebooks" / PIPELINE_FIGURE
    path.parent.mkdir(parents=True, exist_ok=True)
    title = (f"What you will build: the {preset_name} preset's run of {datetime.date.today().isoformat()} "
             f"({os.cpu_count()}-core CPU)")
    plot_pipeline(headlines=stage_headlines(preset_name), title=title).savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Write the Colab badge, setup cell and GPU metadata into every notebook "
                                                 "(--repo), or run the notebooks and commit their outputs (--execute).")
    parser.add_argument("--repo", default=REPO_URL, help="the repository's GitHub address (a fork's)")
    parser.add_argument("--execute", nargs="*", metavar="NOTEBOOK",
                        help="run these notebooks (default: all, in order) on the tiny preset from empty outputs and "
                             "write them back with their outputs")
    args = parser.parse_args()
    folder = Path(__file__).resolve().parents[1] / "notebooks"
    if args.execute is not None:
        print("executed:", ", ".join(execute_notebooks(args.execute or None)))
    else:
        print("changed:", ", ".join(write_colab_parts(folder, args.repo)) or "nothing")
