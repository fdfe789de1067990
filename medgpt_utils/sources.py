"""Where a stage's data comes from: the bundled files, the user's files and folders, or a hub dataset.

A stage reads one *kind* of data (``pretraining`` text, ``sft`` dialogues, ``preference`` pairs, RL
``prompts``) from a list of sources written as one string, sources separated by commas::

    bundled                                           the course's files (the default)
    data/my_dialogues/                                a file or a folder (recursive *.jsonl, *.json, *.txt, *.parquet)
    data/my_set_saved/                                a folder written by ``Dataset.save_to_disk``
    hub:shibing624/medical?config=finetune&max_samples=20000
    bundled,general_chat.jsonl?weight=0.3             sources mixed: 30% of the general records

Options after ``?`` (joined by ``&``): ``weight`` (records taken x weight: 0.3 keeps a seeded 30%, 2 repeats
each twice), ``max_samples`` (the first N records read), and for hub datasets ``config``, ``split``
(default train), ``revision``, ``streaming`` (true: read only the records taken, without downloading the set) and
``data_files`` (files of a repository read by a packaged builder, for sets that still ship a loading script, which
``datasets`` no longer runs: ``hub:json?data_files=hf://datasets/shibing624/medical/finetune/train_en_1.json``).

Validation data is given as sources too, or carved from each non-bundled training source with a fixed seed
(``validation_percent``); the bundled sources bring their own held-out files. Every source reports how many
records it read, kept and skipped (by reason), and how many it gave to training and to validation.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
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
HUB_PREFIX = "hub:"
_OPTIONS = {"weight": float, "max_samples": int, "config": str, "split": str, "revision": str, "streaming": bool,
            "data_files": str}


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
        if source.weight <= 0:
            raise DataSourceError(item, f"weight must be above 0, got {source.weight}")
        if source.max_samples is not None and source.max_samples <= 0:
            raise DataSourceError(item, f"max_samples must be above 0, got {source.max_samples}")
        if source.kind == "hub" and not source.location[len(HUB_PREFIX):].strip("/"):
            raise DataSourceError(item, "hub source without a dataset id (write hub:<owner>/<name>)")
        sources.append(source)
    return sources


@dataclass
class SourceReport:
    """What one source gave: records read, kept, skipped (by reason), then used for training and validation."""

    source: str
    read: int = 0
    kept: int = 0
    skipped: dict = field(default_factory=dict)
    train: int = 0
    validation: int = 0
    files: int = 0
    outside_conditions: int = 0

    def line(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
        skipped = sum(self.skipped.values())
        text = (f"{self.source}: read {self.read}, kept {self.kept}, skipped {skipped}"
                f"{f' ({reasons})' if reasons else ''} -> train {self.train}, validation {self.validation}")
        if self.outside_conditions:
            text += f" ({self.outside_conditions} records outside the preset's conditions left out)"
        return text


@dataclass
class StageData:
    """A stage's training and validation records (lists of dicts) and how each source contributed."""

    train: list[dict]
    validation: list[dict]
    reports: list[SourceReport]
    uses_bundled: bool

    def summary(self) -> str:
        return "\n".join(r.line() for r in self.reports)


def _read_files(source: Source, kind: str, on_error: str) -> tuple[list[dict], data.LoadReport]:
    try:
        dataset, report = data.LOADERS[kind](source.location, on_error=on_error, return_report=True)
    except ValueError as err:
        if isinstance(err, data.DataFormatError):
            raise
        raise DataSourceError(source.name, str(err)) from None
    return list(dataset), report


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


def _read_rows(source: Source, kind: str, on_error: str) -> tuple[list[dict], data.LoadReport]:
    rows = _hub_rows(source) if source.kind == "hub" else _disk_rows(source)
    if source.max_samples is not None:
        rows = rows.take(source.max_samples) if source.streaming else rows.select(range(min(source.max_samples, len(rows))))
    converted, report = data.load_rows(rows, kind, source.name, on_error)
    if not converted:
        raise DataSourceError(source.name, f"no usable records ({report})")
    return converted, report


def _read_bundled(kind: str, conditions, part: str) -> tuple[list[dict], data.LoadReport]:
    """The bundled training files (``part="train"``) or held-out file of a kind, restricted to ``conditions``."""
    train_files, heldout_file = BUNDLED[kind]
    names = train_files if part == "train" else (heldout_file,)
    rows, total = [], data.LoadReport()
    for name in names:
        dataset, report = data.load_bundled(name, conditions=conditions, return_report=True)
        rows += list(dataset)
        total.files += report.files
        total.read, total.kept = total.read + report.read, total.kept + report.kept
        total.outside_conditions += report.outside_conditions
    return rows, total


def read_source(source: Source, kind: str, on_error: str = "skip", conditions=()) -> tuple[list[dict], SourceReport]:
    """Every usable record of one source (``max_samples`` applied, ``weight`` not yet) and its report."""
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; kinds: {', '.join(KINDS)}")
    if source.kind == "bundled":
        rows, loaded = _read_bundled(kind, conditions, "train")
    elif source.kind == "files":
        rows, loaded = _read_files(source, kind, on_error)
    else:
        rows, loaded = _read_rows(source, kind, on_error)
    if source.max_samples is not None:
        rows = rows[: source.max_samples]
    report = SourceReport(source.name, read=loaded.read, kept=loaded.kept, skipped=dict(loaded.skipped),
                          files=len(loaded.files), outside_conditions=loaded.outside_conditions)
    return rows, report


def weighted(rows: list[dict], weight: float, seed: int) -> list[dict]:
    """``rows`` taken ``weight`` times: whole repeats, then a seeded share of the rest (0.3 keeps 30%)."""
    whole, share = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(rows, round(share * len(rows))) if share else []
    return rows * whole + extra


def carve_validation(rows: list[dict], percent: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded ``percent`` of the rows held out, at least one when there are two or more."""
    if percent <= 0 or len(rows) < 2:
        return rows, []
    n_val = min(len(rows) - 1, max(1, math.ceil(len(rows) * percent / 100)))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def load_stage_data(kind: str, spec: str, validation_spec: str = "", validation_percent: float = 5.0,
                    seed: int = 42, on_error: str = "skip", conditions=(), setting: str = "data") -> StageData:
    """Training and validation records of ``kind`` from the sources in ``spec`` (see the module's docstring).

    Validation: the sources of ``validation_spec`` when given; else each bundled source's held-out file and a
    seeded ``validation_percent`` carved from every other source (before weights, so no record is in both).
    """
    sources = parse_sources(spec, setting)
    explicit = parse_sources(validation_spec, f"{setting} (validation)") if validation_spec.strip() else None
    train, validation, reports = [], [], []
    for index, source in enumerate(sources):
        rows, report = read_source(source, kind, on_error, conditions)
        if explicit is None and source.kind == "bundled":
            held, _ = _read_bundled(kind, conditions, "heldout")
        elif explicit is None:
            rows, held = carve_validation(rows, validation_percent, seed + index)
        else:
            held = []
        taken = weighted(rows, source.weight, seed + index)
        report.train, report.validation = len(taken), len(held)
        train += taken
        validation += held
        reports.append(report)
    for source in explicit or []:
        rows, report = read_source(source, kind, on_error, conditions)
        report.source, report.validation = f"{report.source} (validation)", len(rows)
        validation += rows
        reports.append(report)
    # sources with other extra columns line up: a column one source lacks is None in its rows
    return StageData(data.fill_missing_columns(train), data.fill_missing_columns(validation), reports,
                     uses_bundled=any(s.kind == "bundled" for s in sources))


def check_sources(spec: str, setting: str) -> None:
    """Fail before any training when a source cannot be found: its spec is malformed or a local path is missing."""
    for source in parse_sources(spec, setting):
        if source.kind == "files" and not Path(source.location).exists():
            raise DataSourceError(setting, f"{source.location}: no such file or folder")


def local_files_signature(spec: str) -> list:
    """(path, size, modification time) of every local file a spec reads: a changed file makes the stage stale."""
    signature = []
    for source in parse_sources(spec):
        if source.kind in ("bundled", "hub"):
            continue
        path = Path(source.location)
        files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path] if path.exists() else []
        signature += [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return signature
