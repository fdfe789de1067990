"""Where stages read and write: ``outputs/<preset>/<stage>/``, written atomically.

A stage writes into a temporary sibling folder and renames it into place only when everything
is saved, so a crash never leaves a half-written model that the next stage would load.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

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
    """Yield a temporary folder that replaces ``final`` only if the block finishes.

    The files are flushed to disk (fsync) before the rename, so a power cut cannot publish empty files; the
    previous ``final`` is moved to a backup name no other run can hold (pid and a random part) and removed
    only once the new one is in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if final.exists():
            final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            if old.exists() and not final.exists():
                old.rename(final)  # put the previous output back rather than leave none
            raise
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms that cannot open folders
        return
    try:
        os.fsync(handle)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(handle)


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folders themselves) to disk."""
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


# ---------------------------------------------------------------- one writer per output folder
class OutputLockedError(RuntimeError):
    """Another process is writing the same output folder; the message names it."""


_HELD_LOCKS: dict[Path, Any] = {}


def lock_path(final: Path) -> Path:
    """``outputs/<preset>/.<stage>.lock``: beside the folder it guards, so it survives the folder's replacement."""
    final = Path(final)
    return final.with_name(f".{final.name}.lock")


def hold_lock(final: Path, doing: str) -> bool:
    """Take the lock of output folder ``final`` for this process until ``release_lock`` (or the process ends: the
    operating system drops a dead process's lock, so a killed run never blocks the next one). Taking a lock this
    process already holds does nothing; returns whether it was taken now. Another holder -> ``OutputLockedError``
    naming it (pid, host, what it runs, since when)."""
    path = lock_path(final)
    if path in _HELD_LOCKS or fcntl is None:  # no fcntl (Windows): no lock, as before
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "a process that has not written its name yet"
        handle.close()
        raise OutputLockedError(f"{final} is being written by another process: {holder}. Wait for it to finish "
                                f"(or stop it), then run again; the lock is {path}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, {doing}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _HELD_LOCKS[path] = handle
    return True


def release_lock(final: Path) -> None:
    handle = _HELD_LOCKS.pop(lock_path(final), None)
    if handle is not None:
        handle.seek(0)
        handle.truncate()  # the file stays (another process may be waiting on it); its holder line goes
        handle.flush()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


def clean_leftovers(final: Path) -> list[str]:
    """Remove what killed writers of ``final`` left beside it (``.<name>.tmp-*``, ``.<name>.old-*``); call it while
    holding the folder's lock. A backup left by a crash between the two renames of ``atomic_dir`` is the last good
    output: when ``final`` is missing, the newest one is put back instead of removed. Returns what was done."""
    final = Path(final)
    done = []
    backups = sorted((p for p in final.parent.glob(f".{final.name}.old-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if backups and not final.exists():
        backups.pop().rename(final)
        done.append(f"restored {final} from the backup a killed run left")
    for debris in list(final.parent.glob(f".{final.name}.tmp-*")) + backups:
        shutil.rmtree(debris, ignore_errors=True) if debris.is_dir() else debris.unlink(missing_ok=True)
        done.append(f"removed {debris.name}")
    return done


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
