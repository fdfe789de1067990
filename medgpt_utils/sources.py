"""Where a stage's data comes from: the bundled files, the user's files and folders, or a hub dataset.

A stage reads one *kind* of data (``pretraining`` text, ``sft`` dialogues, ``preference`` pairs, RL
``prompts``) from a list of sources written as one string, sources separated by commas::

    bundled                                           the course's files (the default)
    data/my_dialogues/                                a file or a folder (recursive *.jsonl, *.json, *.txt, *.parquet,
                                                      any case; linked folders followed; other files listed as ignored)
    data/my_set_saved/                                a folder written by ``Dataset.save_to_disk``
    hub:shibing624/medical?config=finetune&max_samples=20000
    bundled,general_chat.jsonl?weight=0.3             sources mixed: 30% of the general records

Options after ``?`` (joined by ``&``): ``weight`` (records taken x weight: 0.3 keeps a seeded 30%, 2 repeats
each twice; above 0, at most 100), ``max_samples`` (the first N records read), and for hub datasets ``config``, ``split``
(default train), ``revision``, ``streaming`` (true: read only the records taken, without downloading the set) and
``data_files`` (files of a repository read by a packaged builder, for sets that still ship a loading script, which
``datasets`` no longer runs: ``hub:json?data_files=hf://datasets/shibing624/medical/finetune/train_en_1.json``).

Validation data is given as sources too, or carved from each non-bundled training source with a fixed seed
(``validation_percent``); the bundled sources bring their own held-out files. Every source reports how many
records it read, kept, skipped (by reason) and could not read, what its folders held besides data files, and how
many records it gave to training and to validation. ``check_sources`` reads the local sources in full before any
stage builds its inputs, so a bad file fails in seconds, not after the stages it would have waited for.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from . import data

KINDS = ("pretraining", "sft", "preference", "prompts")
# The bundled files of each kind: (training files, held-out file), by their data-card names.
BUNDLED = {
    "pretraining": (("pretrain/train.jsonl",), "pretrain/heldout.jsonl"),
    "sft": (("sft/train_single.jsonl", "sft/train_multi.jsonl"), "sft/valid.jsonl"),
    "preference": (("preference/train.jsonl",), "preference/heldout.jsonl"),
    "prompts": (("prompts/train.jsonl",), "prompts/heldout.jsonl"),
}
# The preset's ``data.*`` settings and the kind of data each holds (``data.pt`` and ``data.pt_validation``: text).
SETTING_KINDS = {"pt": "pretraining", "sft": "sft", "preference": "preference", "prompts": "prompts"}
HUB_PREFIX = "hub:"
_OPTIONS = {"weight": float, "max_samples": int, "config": str, "split": str, "revision": str, "streaming": bool,
            "data_files": str}
# A weight repeats records (2: each twice). Above 100 it is a typo more likely than a wish: 1e9 would ask for more
# memory than any machine has.
MAX_WEIGHT = 100


class DataSourceError(ValueError):
    """A source that cannot be used at all; the message names the source and the problem."""

    def __init__(self, source: str, problem: str):
        self.source, self.problem = source, problem
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class Source:
    """One data source: ``bundled``, ``hub:<id>`` or a local path, with its options."""

    location: str
    weight: float = 1.0
    max_samples: int | None = None
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    streaming: bool = False
    data_files: str | None = None

    @property
    def kind(self) -> str:
        """'bundled', 'hub', 'disk' (a ``save_to_disk`` folder) or 'files'."""
        if self.location == "bundled":
            return "bundled"
        if self.location.startswith(HUB_PREFIX):
            return "hub"
        return "disk" if is_saved_dataset(Path(self.location)) else "files"

    @property
    def name(self) -> str:
        """How reports and errors name the source."""
        if self.kind != "hub":
            return self.location
        extra = "/".join(x for x in (self.data_files, self.config, self.split) if x)
        return f"{self.location}[{extra}]"


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


def _option(item: str, key: str, value: str):
    if key not in _OPTIONS:
        raise DataSourceError(item, f"unknown option {key!r} (known: {', '.join(_OPTIONS)})")
    kind = _OPTIONS[key]
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        return kind(value)
    except ValueError:
        raise DataSourceError(item, f"option {key} wants a {kind.__name__}, got {value!r}") from None


def parse_sources(spec: str, setting: str = "data") -> list[Source]:
    """``"bundled,my.jsonl?weight=0.5"`` -> two ``Source``; ``setting`` names the preset field in errors."""
    items = [item.strip() for item in (spec or "").split(",") if item.strip()]
    if not items:
        raise DataSourceError(setting, "no data source given (use 'bundled', a path or hub:<dataset id>)")
    sources = []
    for item in items:
        location, _, query = item.partition("?")
        options = {key: _option(item, key, value) for key, value in parse_qsl(query, keep_blank_values=True)}
        source = Source(location.strip(), **options)
        if not (math.isfinite(source.weight) and 0 < source.weight <= MAX_WEIGHT):
            raise DataSourceError(item, f"weight must be above 0 and at most {MAX_WEIGHT} (the times each record is "
                                        f"taken), got {source.weight}")
        if source.max_samples is not None and source.max_samples <= 0:
            raise DataSourceError(item, f"max_samples must be above 0, got {source.max_samples}")
        if source.kind == "hub" and not source.location[len(HUB_PREFIX):].strip("/"):
            raise DataSourceError(item, "hub source without a dataset id (write hub:<owner>/<name>)")
        sources.append(source)
    return sources


@dataclass
class SourceReport:
    """What one source gave: records read, kept, skipped (by reason) and unread (parts of files that could not be
    split into records), then used for training and validation; what its folders held besides data files; notes
    (columns kept as text)."""

    source: str
    read: int = 0
    kept: int = 0
    skipped: dict = field(default_factory=dict)
    train: int = 0
    validation: int = 0
    files: int = 0
    outside_conditions: int = 0
    unread: int = 0
    ignored: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def line(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        skipped = sum(self.skipped.values())
        text = f"{self.source}: read {self.read}, kept {self.kept}, skipped {skipped}{f' ({reasons})' if reasons else ''}"
        if self.unread:
            text += f", unread {self.unread} (parts of files that could not be split into records)"
        text += f" -> train {self.train}, validation {self.validation}"
        if self.outside_conditions:
            text += f" ({self.outside_conditions} records outside the preset's conditions left out)"
        return text + data.ignored_text(self.ignored)


@dataclass
class StageData:
    """A stage's training and validation records and how each source contributed.

    ``train`` and ``validation`` are ``datasets.Dataset`` objects (Arrow memory: a 1 GB data set is not copied into
    Python objects); iterating one yields records. ``notes``: columns kept as text."""

    train: Any
    validation: Any
    reports: list[SourceReport]
    uses_bundled: bool
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([r.line() for r in self.reports] + [f"note: {note}" for note in self.notes])


def _rows(table, indices, fingerprint: str):
    """A dataset over an Arrow table, in the order of ``indices`` (positions, repeats allowed): an index map, not a copy."""
    import numpy as np
    import pyarrow as pa

    indices = np.asarray(indices, dtype=np.uint64)
    whole = len(indices) == table.num_rows and bool((indices == np.arange(table.num_rows, dtype=np.uint64)).all())
    index_table = None if whole else pa.table({"indices": pa.array(indices, pa.uint64())})
    from datasets import Dataset

    return Dataset(table, indices_table=index_table, fingerprint=fingerprint)


def _read_files(source: Source, kind: str, on_error: str):
    try:
        return data.LOADERS[kind](source.location, on_error=on_error, return_report=True)
    except ValueError as err:
        if isinstance(err, data.DataFormatError):
            raise
        raise DataSourceError(source.name, str(err)) from None


def _hub_rows(source: Source):
    """Rows of a hub dataset. Only this function touches the network; its errors say so."""
    import datasets

    dataset_id = source.location[len(HUB_PREFIX):]
    try:
        rows = datasets.load_dataset(dataset_id, name=source.config, split=source.split, revision=source.revision,
                                     streaming=source.streaming, data_files=source.data_files)
    except Exception as err:  # offline, unknown id, unknown config: datasets raises many types
        raise DataSourceError(source.name, f"could not load from the Hugging Face Hub ({type(err).__name__}: {err}). "
                                           "Without network, download it where there is network, save it with "
                                           "save_to_disk or as files, and give that folder instead") from None
    return rows


def _disk_rows(source: Source):
    import datasets

    loaded = datasets.load_from_disk(source.location)
    if isinstance(loaded, datasets.DatasetDict):
        if source.split not in loaded:
            raise DataSourceError(source.name, f"no split {source.split!r} (splits: {', '.join(loaded)})")
        loaded = loaded[source.split]
    return loaded


def _read_rows(source: Source, kind: str, on_error: str):
    rows = _hub_rows(source) if source.kind == "hub" else _disk_rows(source)
    if source.max_samples is not None:
        rows = rows.take(source.max_samples) if source.streaming else rows.select(range(min(source.max_samples, len(rows))))
    converted, report = data.load_rows(rows, kind, source.name, on_error)
    if not report.kept:
        raise DataSourceError(source.name, f"no usable records ({report}){data.first_error(report)}")
    return converted, report


def _read_bundled(kind: str, conditions, part: str):
    """The bundled training files (``part="train"``) or held-out file of a kind, restricted to ``conditions``."""
    train_files, heldout_file = BUNDLED[kind]
    names = train_files if part == "train" else (heldout_file,)
    parts, total = [], data.LoadReport()
    for name in names:
        dataset, report = data.load_bundled(name, conditions=conditions, return_report=True)
        parts.append((name, data.arrow_table(dataset)))
        total.merge(report)
    fingerprint = data.fingerprint_of("bundled", kind, part, sorted(conditions))
    return data.dataset_from_tables(parts, total.notes, fingerprint), total


def read_source(source: Source, kind: str, on_error: str = "skip", conditions=()):
    """Every usable record of one source (``max_samples`` applied, ``weight`` not yet) as a ``datasets.Dataset``,
    and its report."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; kinds: {', '.join(KINDS)}")
    if source.kind == "bundled":
        rows, loaded = _read_bundled(kind, conditions, "train")
    elif source.kind == "files":
        rows, loaded = _read_files(source, kind, on_error)
    else:
        rows, loaded = _read_rows(source, kind, on_error)
    if source.max_samples is not None and len(rows) > source.max_samples:
        rows = rows.select(range(source.max_samples))
    report = SourceReport(source.name, read=loaded.read, kept=loaded.kept, skipped=dict(loaded.skipped),
                          files=len(loaded.files), outside_conditions=loaded.outside_conditions, unread=loaded.unread,
                          ignored=list(loaded.ignored), notes=list(loaded.notes))
    return rows, report


def _take(rows, indices):
    """The records at ``indices`` of a list or a dataset (a dataset gets an index map, not a copy)."""
    return rows.select(indices) if hasattr(rows, "select") else [rows[i] for i in indices]


def weighted_indices(count: int, weight: float, seed: int):
    """Positions of ``count`` records taken ``weight`` times: whole repeats, then a seeded share of the rest
    (0.3 keeps 30%). A numpy array: a weight of 100 on a million records is 100 million positions."""
    import numpy as np

    whole, share = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(range(count), round(share * count)) if share else []
    return np.concatenate([np.tile(np.arange(count, dtype=np.int64), whole), np.asarray(extra, dtype=np.int64)])


def weighted(rows, weight: float, seed: int):
    """``rows`` (a list or a dataset) taken ``weight`` times (``weighted_indices``)."""
    return _take(rows, weighted_indices(len(rows), weight, seed))


def carve_indices(count: int, percent: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) positions: a seeded ``percent`` of ``count`` held out, at least one when there are two or more."""
    if percent <= 0 or count < 2:
        return list(range(count)), []
    n_val = min(count - 1, max(1, math.ceil(count * percent / 100)))
    order = list(range(count))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_val])
    kept = set(held)
    return [i for i in range(count) if i not in kept], held


def carve_validation(rows, percent: float, seed: int):
    """(train, validation) records of a list or a dataset (``carve_indices``)."""
    train, held = carve_indices(len(rows), percent, seed)
    return _take(rows, train), _take(rows, held)


def load_stage_data(kind: str, spec: str, validation_spec: str = "", validation_percent: float = 5.0,
                    seed: int = 42, on_error: str = "skip", conditions=(), setting: str = "data") -> StageData:
    """Training and validation records of ``kind`` from the sources in ``spec`` (see the module's docstring).

    Validation: the sources of ``validation_spec`` when given; else each bundled source's held-out file and a
    seeded ``validation_percent`` carved from every other source (before weights, so no record is in both).
    The records stay in the Arrow tables the loaders made: carving, weights and mixing only pick positions.
    """
    import numpy as np

    sources = parse_sources(spec, setting)
    explicit = parse_sources(validation_spec, f"{setting} (validation)") if validation_spec.strip() else None
    parts, train_picks, held_picks, reports = [], [], [], []  # picks: (part, positions in it)

    def add(name: str, dataset) -> int:
        parts.append((name, data.arrow_table(dataset)))
        return len(parts) - 1

    for index, source in enumerate(sources):
        rows, report = read_source(source, kind, on_error, conditions)
        part, kept, held = add(source.name, rows), list(range(len(rows))), []
        if explicit is None and source.kind == "bundled":
            heldout, _ = _read_bundled(kind, conditions, "heldout")
            held = list(range(len(heldout)))
            held_picks.append((add(f"{source.name} (held out)", heldout), held))
        elif explicit is None:
            kept, held = carve_indices(len(rows), validation_percent, seed + index)
            held_picks.append((part, held))
        taken = np.asarray(kept, dtype=np.int64)[weighted_indices(len(kept), source.weight, seed + index)]
        train_picks.append((part, taken))
        report.train, report.validation = len(taken), len(held)
        reports.append(report)
    for source in explicit or []:
        rows, report = read_source(source, kind, on_error, conditions)
        held_picks.append((add(source.name, rows), range(len(rows))))
        report.source, report.validation = f"{report.source} (validation)", len(rows)
        reports.append(report)
    notes = list(dict.fromkeys(note for report in reports for note in report.notes))
    parts = data.harmonize(parts, notes)  # the same column types in training and validation
    fingerprint = data.fingerprint_of(kind, spec, validation_spec, validation_percent, seed, on_error, sorted(conditions),
                                    local_files_signature(spec), local_files_signature(validation_spec) if explicit else [])
    return StageData(_gather(parts, train_picks, fingerprint + "t"), _gather(parts, held_picks, fingerprint + "v"),
                     reports, uses_bundled=any(s.kind == "bundled" for s in sources), notes=notes)


def _gather(parts, picks, fingerprint: str):
    """A dataset of the picked positions of the parts, in order: the parts' tables stacked (no copy) plus an index map."""
    import numpy as np
    import pyarrow as pa

    used = list(dict.fromkeys(part for part, _ in picks))
    offsets = dict(zip(used, np.cumsum([0] + [parts[part][1].num_rows for part in used])))
    table = data.concat_tables([parts[part] for part in used], []) if used else pa.table({})
    positions = [offsets[part] + np.asarray(chosen, dtype=np.int64) for part, chosen in picks]
    return _rows(table, np.concatenate(positions) if positions else np.zeros(0, np.int64), fingerprint)


def check_sources(spec: str, setting: str, kind: str | None = None, on_error: str = "skip") -> None:
    """Fail before any training when a source cannot be used: the spec is malformed, a local path is missing, or a
    local file or ``save_to_disk`` folder cannot be read, has no usable record, or (``on_error="raise"``) has a bad
    one; errors name the file and line. ``kind`` defaults to the one ``setting`` holds (``data.sft`` -> sft); a
    setting of no known kind is only checked for paths. Hub sources are read when their stage runs (checking would
    download them); the bundled files are tested with the course. A source whose files have not changed since it
    passed is not parsed again (``training.stage_data`` checks every source before each stage)."""
    sources = parse_sources(spec, setting)
    for source in sources:
        if source.kind == "files" and not Path(source.location).exists():
            raise DataSourceError(setting, f"{source.location}: no such file or folder")
    kind = kind or _setting_kind(setting)
    if kind is None:
        return
    for source in sources:
        if source.kind in ("files", "disk"):
            _parse_once(source, kind, on_error, tuple(map(tuple, _files_signature(Path(source.location)))))


def _setting_kind(setting: str) -> str | None:
    name = setting.removeprefix("data.").removesuffix("_validation")
    return SETTING_KINDS.get(name) or (name if name in KINDS else None)


@functools.lru_cache(maxsize=32)
def _parse_once(source: Source, kind: str, on_error: str, signature: tuple) -> None:
    """Read a source in full and forget the records (raises as ``read_source`` does); remembered only when it passed,
    and only for these files in this state (``signature``). The records are not kept: holding every kind's data
    from the check until its stage runs would cost the memory streaming saves."""
    read_source(source, kind, on_error)


def local_files_signature(spec: str) -> list:
    """(path, size, modification time) of every local file a spec reads: a changed file makes the stage stale."""
    signature = []
    for source in parse_sources(spec):
        if source.kind not in ("bundled", "hub"):
            signature += _files_signature(Path(source.location))
    return signature


def _files_signature(path: Path) -> list:
    files = _all_files(path) if path.is_dir() else [path] if path.exists() else []
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _all_files(folder: Path) -> list[Path]:
    """Every file under a folder, linked folders followed as the loaders follow them (each real folder once)."""
    import os

    files, entered = [], {folder.resolve()}
    for here, subfolders, names in os.walk(folder, followlinks=True):
        subfolders[:] = [name for name in sorted(subfolders) if _first_visit(Path(here, name), entered)]
        files += [Path(here, name) for name in names if Path(here, name).is_file()]
    return sorted(files)


def _first_visit(folder: Path, entered: set) -> bool:
    real = folder.resolve()
    if real in entered:
        return False
    entered.add(real)
    return True
