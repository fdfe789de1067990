"""Where stages read and write: ``outputs/<preset>/<stage>/``, written atomically.

A stage writes into a temporary sibling folder and renames it into place only when everything
is saved, so a crash never leaves a half-written model that the next stage would load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "MEDGPT_DATA_DIR"
OUTPUT_ENV = "MEDGPT_OUTPUT_DIR"


def find_data_dir() -> Path:
    """``$MEDGPT_DATA_DIR``, else ``data/`` beside the package (a clone), else the copy a wheel installed."""
    import importlib.util

    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    if (PROJECT_ROOT / "data" / "README.md").exists():
        return PROJECT_ROOT / "data"
    spec = importlib.util.find_spec("medgpt_data")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    raise FileNotFoundError(f"the course's bundled data was not found in {PROJECT_ROOT / 'data'} nor installed as "
                            f"medgpt_data: reinstall the package, or set {DATA_ENV} to a copy of the repository's data/")


DATA_DIR = find_data_dir()
METRICS_FILE = "metrics.json"


def output_root() -> Path:
    """``$MEDGPT_OUTPUT_DIR`` if set, else ``outputs/`` at the project root."""
    return Path(os.environ.get(OUTPUT_ENV) or PROJECT_ROOT / "outputs")


def stage_dir(preset_name: str, stage: str) -> Path:
    return output_root() / preset_name / stage


def stage_done(preset_name: str, stage: str) -> bool:
    """A stage is done when its folder holds ``metrics.json`` (written last, then renamed)."""
    return (stage_dir(preset_name, stage) / METRICS_FILE).is_file()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``final`` only if the block finishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=_jsonable) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_metrics(preset_name: str, stage: str) -> dict:
    path = stage_dir(preset_name, stage) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `medgpt {stage} --preset {preset_name}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
