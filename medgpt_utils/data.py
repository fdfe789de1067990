"""Load training data in the formats the field uses, into TRL's conversational formats.

Public API (``paths`` may be a file, a folder of ``.txt``/``.json``/``.jsonl``/``.parquet`` files, or a list):

- ``load_pretraining(paths)`` -> column ``text``
- ``load_sft(paths)`` -> column ``messages`` (Alpaca, ShareGPT, OpenAI ``messages``, ``question``/``answer``)
- ``load_preference(paths)`` -> ``prompt`` (messages), ``chosen``, ``rejected`` (assistant
  messages), extra columns kept (MedicalGPT, question/response_chosen/response_rejected, TRL)
- ``load_prompts(paths)`` -> column ``prompt`` (messages)
- ``load_rows(rows, kind, source)``: the same conversion for rows of a ``datasets`` dataset (a hub id, a
  ``save_to_disk`` folder); ``medgpt_utils.sources`` reads each stage's sources with these.

A malformed record raises ``DataFormatError`` naming the file, the line and the problem. With
``on_error="skip"`` it is skipped, its reason logged, and the ``LoadReport`` (returned with
``return_report=True``) adds up: read == kept + skipped + unread, where *unread* counts the parts of files that
could not be split into records (a ``.json`` list cut short); what a folder holds besides data files is listed in
``LoadReport.ignored``. Files are streamed a line at a time and records become Arrow tables a batch at a time, so
loading costs about twice the file's size in memory, not a Python object per record for the whole file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .artifacts import DATA_DIR

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")  # matched whatever their case (DATA.JSONL is read too)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# ShareGPT tool-call turns (LLaMA-Factory's layout). The course's chat templates have no tool roles, so a
# dialogue holding them is skipped with this reason counted, never silently cut.
TOOL_ROLES = ("function_call", "observation", "tool")
MESSAGE_ROLES = ("system", "user", "assistant")
# Deeper JSON is refused record by record: Python's parser and the datasets library recurse once per level and
# fail with a RecursionError (no file, no line) near 1000; chat records nest 3 to 6 levels.
MAX_NESTING = 64
# Records become Arrow tables in batches of this many rows (or bytes of source text): only one batch is ever held
# as Python objects.
BATCH_ROWS = 1000
BATCH_BYTES = 16 * 2**20
_BOM = b"\xef\xbb\xbf"  # a UTF-8 BOM (Windows editors) is not data


class DataFormatError(ValueError):
    """A record that cannot be used; the message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int | None, problem: str, unit: str = "line"):
        self.path, self.line, self.problem = str(path), line, problem
        # A line of a text file reads "file:12"; a row of a table or dataset reads "source row 12".
        where = str(path) if not line else f"{path}:{line}" if unit == "line" else f"{path} {unit} {line}"
        super().__init__(f"{where}: {problem}")


class UnreadPart(DataFormatError):
    """A part of a file that could not be split into records (a ``.json`` list whose brackets never close, text
    after its end, a parquet file unreadable from some row on). How many records it held is unknown: the report
    counts it once, as *unread*."""


class _Bad(Exception):
    """Raised inside converters; turned into DataFormatError with the file and line."""


@dataclass
class LoadReport:
    """What a load found. read == kept + skipped (by reason) + unread (parts of files that could not be split into
    records); ``ignored``: what folders held besides data files ("path (why)"); ``notes``: columns kept as text."""

    files: list[str] = field(default_factory=list)
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    unread: int = 0
    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Usable records about conditions outside the preset's list (``Preset.conditions``): left out of
    # this run on purpose, counted here so nothing disappears unreported. Not part of read == kept + skipped.
    outside_conditions: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        text = f"{len(self.files)} file(s): read {self.read}, kept {self.kept}, skipped {self.skipped_total} ({reasons})"
        if self.unread:
            text += f", unread {self.unread} (parts of files that could not be split into records)"
        if self.outside_conditions:
            text += f"; {self.outside_conditions} kept records left out (conditions outside the preset)"
        return text + ignored_text(self.ignored)

    def merge(self, other: "LoadReport") -> None:
        """Add another load's counts (the bundled kinds read several files)."""
        self.files += other.files
        self.read, self.kept, self.unread = self.read + other.read, self.kept + other.kept, self.unread + other.unread
        self.skipped.update(other.skipped)
        self.errors += other.errors
        self.ignored += other.ignored
        self.notes += other.notes
        self.outside_conditions += other.outside_conditions


def ignored_text(ignored: list[str], shown: int = 5) -> str:
    """"; ignored 2: a.csv (why), ..." for a report line; empty when nothing was ignored."""
    if not ignored:
        return ""
    more = f", and {len(ignored) - shown} more" if len(ignored) > shown else ""
    return f"; ignored {len(ignored)}: {', '.join(ignored[:shown])}{more}"


# ---------------------------------------------------------------- bundled data
def bundled(*parts: str) -> Path:
    """Path of a bundled data file, e.g. ``bundled("sft", "train_single.jsonl")``."""
    return DATA_DIR.joinpath(*parts)


# ---------------------------------------------------------------- finding files
def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _files(paths) -> tuple[list[Path], list[str]]:
    """The data files ``paths`` name, in order (a folder's sorted), and what folders held besides them."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    ignored: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside, left_out = _folder_files(path)
            ignored += left_out
            if not inside:
                raise DataFormatError(path, None, f"folder has no data files ({', '.join(DATA_SUFFIXES)})"
                                                  f"{ignored_text(left_out)}")
            found.extend(inside)
        elif path.is_file():
            if _suffix(path) not in DATA_SUFFIXES:
                raise DataFormatError(path, None, f"unsupported file type {path.suffix!r}; use {', '.join(DATA_SUFFIXES)}")
            found.append(path)
        else:
            raise DataFormatError(path, None, "no such file or folder")
    if not found:
        raise ValueError("no data paths given")
    return found, ignored


def _folder_files(root: Path) -> tuple[list[Path], list[str]]:
    """Every data file under ``root``, linked folders followed (each real folder read once), and what was left out,
    each as "path (why)": hidden files and folders (``.ipynb_checkpoints`` holds copies of files edited in Jupyter,
    read twice they would double records), other file types, broken links, unreadable folders."""
    files: list[Path] = []
    ignored: list[str] = []
    entered = {root.resolve()}
    for folder, subfolders, names in os.walk(root, followlinks=True,
                                             onerror=lambda err: ignored.append(f"{err.filename} (unreadable: {err.strerror})")):
        here = Path(folder)
        # real folders claim their place before links to them, so a link to a folder read anyway is the one left out
        order = sorted(subfolders, key=lambda name: ((here / name).is_symlink(), name))
        subfolders[:] = [name for name in order if _enter(root, here / name, entered, ignored)]
        for name in names:
            why = _not_data(here / name)
            if why:
                ignored.append(f"{here / name} ({why})")
            else:
                files.append(here / name)
    return sorted(files), sorted(ignored)


def _enter(root: Path, folder: Path, entered: set, ignored: list[str]) -> bool:
    """Whether to read a subfolder: not hidden, and not a link to a folder read already or to one above ``root``."""
    if folder.name.startswith("."):
        ignored.append(f"{folder}{os.sep} (hidden folder)")
        return False
    real = folder.resolve()
    if real in entered or real in root.resolve().parents:
        ignored.append(f"{folder}{os.sep} (a link to a folder read already)")
        return False
    entered.add(real)
    return True


def _not_data(path: Path) -> str | None:
    """Why a file in a folder is not read, or None when it is a data file."""
    if path.name.startswith("."):
        return "hidden file"
    if not path.is_file():
        return "broken link" if path.is_symlink() else "not a regular file"
    if _suffix(path) not in DATA_SUFFIXES:
        return f"not a data file: {', '.join(DATA_SUFFIXES)} are read"
    return None


# ---------------------------------------------------------------- reading records
# Every reader yields (number, record, size): the line (or row) a record starts on, the record (or the
# DataFormatError that makes it unusable) and its size in bytes (how batches are cut; 0 when unknown).
def _records(path: Path, text_field: str | None) -> Iterator[tuple[int, Any, int]]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        return _parquet_records(path)
    if suffix == ".json":
        return _json_file_records(path)
    return _line_records(path, text_field)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(number, line) for each line of a file, read one at a time. Lines end at "\\n" only: U+2028 and U+0085,
    which ``json.dumps(ensure_ascii=False)`` writes unescaped, are text inside a record (``str.splitlines`` cuts there)."""
    with open(path, "rb") as file:
        for number, line in enumerate(file, start=1):
            yield number, line.removeprefix(_BOM) if number == 1 else line


def _decode(path: Path, raw: bytes, line_offset: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = line_offset + raw[: err.start].count(b"\n") + 1
        raise DataFormatError(path, line, f"invalid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})") from None


def _line_records(path: Path, text_field: str | None) -> Iterator[tuple[int, Any, int]]:
    """A ``.jsonl`` file (a JSON record a line) or ``.txt`` file (a text a line); blank lines are not records."""
    empty = True
    for number, raw in _lines(path):
        if not raw.strip():
            continue
        empty = False
        try:
            yield number, _line_record(path, number, raw, text_field), len(raw)
        except DataFormatError as err:
            yield number, err, len(raw)
    if empty:
        raise DataFormatError(path, None, "file is empty")


def _line_record(path: Path, number: int, raw: bytes, text_field: str | None) -> Any:
    line = _decode(path, raw.removesuffix(b"\n"), number - 1)
    if _suffix(path) != ".txt":
        return _parse_json(path, number, line)
    if text_field is None:
        raise DataFormatError(path, number, "plain-text files are only accepted for pretraining text and prompts")
    return {text_field: line.rstrip("\r")}


_NESTING_TOKENS = re.compile(r'\\.|["\[\]{}]', re.S)


def _too_deep(text: str) -> bool:
    """Whether JSON text nests more than MAX_NESTING levels (brackets inside strings do not count)."""
    if text.count("[") + text.count("{") <= MAX_NESTING:  # the common case, at C speed
        return False
    depth, in_string = 0, False
    for token in _NESTING_TOKENS.finditer(text):
        mark = token.group()
        if mark == '"':
            in_string = not in_string
        elif in_string or len(mark) == 2:  # text, or an escape
            continue
        elif mark in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return True
        else:
            depth -= 1
    return False


def _parse_json(path: Path, line: int, text: str, column: int = 0) -> Any:
    """One record's JSON. ``line`` and ``column`` (0-based) say where ``text`` starts in the file, so errors point there."""
    if _too_deep(text):
        raise DataFormatError(path, line, f"JSON nested too deeply (more than {MAX_NESTING} levels)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        colno = err.colno + (column if err.lineno == 1 else 0)
        raise DataFormatError(path, line + err.lineno - 1, f"broken JSON: {err.msg} (column {colno})") from None
    except RecursionError:
        raise DataFormatError(path, line, "JSON nested too deeply") from None
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise DataFormatError(path, line, f"unreadable JSON value: {err}") from None


def _parquet_records(path: Path) -> Iterator[tuple[int, Any, int]]:
    """(row number from 1, row, size) for every row of a parquet file, read a batch of rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise DataFormatError(path, None, f"not a readable parquet file ({type(err).__name__}: {err})") from None
    with file:
        if file.metadata.num_rows == 0:
            raise DataFormatError(path, None, "file is empty")
        number = 0
        try:
            for batch in file.iter_batches(batch_size=BATCH_ROWS):
                size = batch.nbytes // max(batch.num_rows, 1)
                for row in batch.to_pylist():
                    number += 1
                    yield number, row, size
        except (OSError, pa.ArrowException) as err:
            raise UnreadPart(path, number + 1, f"unreadable from here on ({type(err).__name__}: {err})", "row") from None


def _json_file_records(path: Path) -> Iterator[tuple[int, Any, int]]:
    """A ``.json`` file: a list of records, split one element at a time (``_ListSplitter``), or a single record."""
    lines = _lines(path)
    for number, raw in lines:
        start = len(raw) - len(raw.lstrip())
        if start < len(raw):
            break
    else:
        raise DataFormatError(path, None, "file is empty")
    if raw[start : start + 1] != b"[":  # one record: the file is its text
        raw += b"".join(line for _, line in lines)
        try:
            yield number, _parse_json(path, number, _decode(path, raw, number - 1)), len(raw)
        except DataFormatError as err:
            yield number, err, len(raw)
        return
    splitter = _ListSplitter(path)
    yield from splitter.feed(number, raw)
    for number, raw in lines:
        yield from splitter.feed(number, raw)
    yield from splitter.finish(number)


_OUTSIDE = re.compile(rb'["\[\]{},]')  # what matters outside strings
_INSIDE = re.compile(rb'\\.|"', re.S)  # inside a string: an escape, or its end
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_OPENS = {b"]": b"[", b"}": b"{"}


class _ListSplitter:
    """The elements of a ``.json`` list, cut out of its lines one at a time, so a broken record costs that record.

    Strings are tracked (a bracket or comma inside one is text) and brackets counted; an element ends at a comma or
    at the list's ``]`` outside them, and is parsed alone. A string still open at the end of its line (JSON strings
    hold no line breaks) or a bracket closed by the other kind leaves the element's end unknown: the next record is
    then looked for at the next line that starts with ``{`` at the indentation records started at before (or a line
    holding only the list's ``]``). What cannot be split into records is yielded as an ``UnreadPart``.
    """

    def __init__(self, path: Path):
        self.path = path
        self.opened = False  # the list's "[" seen
        self.closed = False  # its "]" seen
        self.told_trailing = False  # text after the "]" reported
        self.after_comma = False  # between elements, after a comma (an element must follow)
        self.elements = 0
        self.record_indent: int | None = None  # where records start on their lines, for finding one again
        self._new_element(None)

    def _new_element(self, start: tuple[int, int] | None, problem: str | None = None) -> None:
        self.start = start  # (line, column in characters) of the element's first byte; None between elements
        self.pieces: list[bytes] = []
        self.stack: list[bytes] = []
        self.in_string = False
        self.complete = False  # its value ended: a comma or "]" is due
        self.problem = problem  # why it is unusable (reported at self.problem_line)
        self.problem_line = start[0] if start else None
        self.lost = False  # its end is unknown

    def _break(self, line: int, problem: str, lost: bool = True) -> None:
        if self.problem is None:
            self.problem, self.problem_line = problem, line
        self.lost = self.lost or lost

    def _end(self) -> tuple[int, Any, int]:
        """The current element as a (line, record or error, size) item; then none is open."""
        (line, column), problem, problem_line = self.start, self.problem, self.problem_line
        raw = b"".join(self.pieces).rstrip()  # the blank after a record is not part of it (errors would point past it)
        self.elements += 1
        self._new_element(None)
        if problem:
            return problem_line, DataFormatError(self.path, problem_line, f"broken JSON: {problem}"), len(raw)
        try:
            return line, _parse_json(self.path, line, _decode(self.path, raw, line - 1), column), len(raw)
        except DataFormatError as err:
            return line, err, len(raw)

    def _error(self, line: int, problem: str) -> tuple[int, Any, int]:
        return line, DataFormatError(self.path, line, f"broken JSON: {problem}"), 0

    def _starts_record(self, line: bytes) -> bool:
        indent = len(line) - len(line.lstrip(b" \t"))
        return indent == self.record_indent and line[indent : indent + 1] == b"{"

    def feed(self, number: int, line: bytes) -> Iterator[tuple[int, Any, int]]:
        if self.closed:
            yield from self._after_list(number, line, 0)
            return
        if self.start is not None and self.lost:
            if self._starts_record(line):
                yield self._end()
            elif line.strip() == b"]":
                yield self._end()
                self.closed = True
                return
            else:
                return  # still inside the broken element
        yield from self._scan(number, line)

    def _scan(self, number: int, line: bytes) -> Iterator[tuple[int, Any, int]]:
        pos, mark = 0, 0  # mark: where the open element's bytes on this line begin
        while pos < len(line):
            if self.start is None:  # between elements: the next non-blank byte starts one
                pos = _WHITESPACE.match(line, pos).end()
                if pos == len(line):
                    break
                byte = line[pos : pos + 1]
                if byte == b"[" and not self.opened:
                    self.opened, pos = True, pos + 1
                elif byte in (b"]", b","):
                    yield from self._separator_between_elements(number, byte)
                    pos += 1
                    if self.closed:
                        yield from self._after_list(number, line, pos)
                        return
                else:
                    self._begin(number, line, pos)
                    mark = pos
                continue
            if self.in_string:
                found = _INSIDE.search(line, pos)
                if not found:
                    break
                pos = found.end()
                if found.group() == b'"':
                    self.in_string = False
                    self.complete = not self.stack
                continue
            found = _OUTSIDE.search(line, pos)
            if not found:
                break
            token, at, pos = found.group(), found.start(), found.end()
            if not self.stack and token in (b",", b"]"):
                self.pieces.append(line[mark:at])
                yield self._end()
                if token == b"]":
                    self.closed = True
                    yield from self._after_list(number, line, pos)
                    return
                self.after_comma = True
                continue
            if self.complete and not self.stack and token in (b'"', b"[", b"{"):  # a record with no comma before it
                self.pieces.append(line[mark:at])
                yield self._end()
                self._begin(number, line, at, problem="no ',' between this record and the one before")
                mark = at
            self._track(number, token)
            if self.lost:
                break  # the rest of the line belongs to the broken element; _ListSplitter.feed looks for the next record
        if self.in_string:
            self.in_string = False
            self._break(number, "a string is not closed on its line (JSON strings cannot hold line breaks)")
        if self.start is not None and not self.problem:  # a broken element's bytes are never parsed
            self.pieces.append(line[mark:])

    def _begin(self, number: int, line: bytes, at: int, problem: str | None = None) -> None:
        column = len(line[:at].decode("utf-8", "replace"))  # in characters, as json reports columns
        self._new_element((number, column), problem)
        self.after_comma = False
        if self.record_indent is None and not line[:at].strip() and line[at : at + 1] == b"{":
            self.record_indent = at

    def _track(self, number: int, token: bytes) -> None:
        """A quote, bracket or comma outside strings, inside the current element (a comma there separates nothing)."""
        if token == b",":
            return
        if token == b'"':
            self.in_string = True
        elif token in (b"[", b"{"):
            self.stack.append(token)
            self.complete = False
        else:
            opener = self.stack.pop() if self.stack else None
            if opener != _OPENS[token]:
                found = f"a {opener.decode()!r}" if opener else "nothing"
                self._break(number, f"{token.decode()!r} closes {found}")
            self.complete = not self.stack

    def _separator_between_elements(self, number: int, byte: bytes) -> Iterator[tuple[int, Any, int]]:
        if byte == b"]":
            if self.elements == 0 and not self.after_comma:
                yield number, DataFormatError(self.path, number, "JSON list is empty"), 0
            elif self.after_comma:
                yield self._error(number, "a ',' before the list's ']' (no record follows it)")
            self.closed = True
        else:
            yield self._error(number, "an empty record (two ',' in a row)")
            self.after_comma = True

    def _after_list(self, number: int, line: bytes, pos: int) -> Iterator[tuple[int, Any, int]]:
        if line[pos:].strip() and not self.told_trailing:
            self.told_trailing = True
            yield number, UnreadPart(self.path, number, "text after the end of the JSON list"), 0

    def finish(self, last: int) -> Iterator[tuple[int, Any, int]]:
        """At the end of the file: what is left open could not be read."""
        if self.closed:
            return
        if self.start is not None and not (self.lost or self.stack or self.in_string):
            yield self._end()  # a whole record, but the list's "]" never came
        if self.start is not None:
            line = self.problem_line or self.start[0]
            why = self.problem or "brackets not closed"
            yield line, UnreadPart(self.path, line, f"broken JSON: {why}; lines {line} to {last} could not be split "
                                                    "into records (is the file cut short?)"), 0
        else:
            yield last, UnreadPart(self.path, last, "the JSON list is not closed with ']' (is the file cut short?)"), 0


# ---------------------------------------------------------------- converting and counting
def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")


def _load(paths, convert: Callable[[Any], dict], on_error: str, return_report: bool, text_field: str | None = None):
    _check_on_error(on_error)
    report = LoadReport()
    files, report.ignored = _files(paths)
    for entry in report.ignored:
        log.warning("ignored %s", entry)
    parts = []
    for path in files:
        report.files.append(str(path))
        unit = "row" if _suffix(path) == ".parquet" else "line"
        rows = _convert_all(_records(path, text_field), convert, path, unit, on_error, report)
        parts += [(str(path), table) for table in _tables(rows, str(path), report)]
    if not report.kept:
        raise ValueError(f"no usable records in {', '.join(report.files)} ({report}){first_error(report)}")
    log.info("loaded %s", report)
    signature = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    dataset = dataset_from_tables(parts, report.notes, fingerprint=fingerprint_of(convert.__name__, on_error, signature))
    return (dataset, report) if return_report else dataset


def first_error(report: LoadReport) -> str:
    """"; the first: <file:line: problem>" for an error message about a whole source, so it names a line too."""
    return f"; the first: {report.errors[0]}" if report.errors else ""


def _convert_all(records, convert, source, unit: str, on_error: str, report: LoadReport) -> Iterator[tuple[int, dict, int]]:
    """Convert the (number, record, size) items of one source, yielding the usable ones; a bad one raises or is
    skipped and counted. A reader that fails (an empty file, an unreadable one) counts as one record read."""
    items, number = iter(records), 0
    while True:
        try:
            item = next(items, None)
        except DataFormatError as err:
            report.read += 1
            _skip_or_raise(err, report, on_error)
            return
        except OSError as err:  # no permission, a disk or network drive failing: the rest of the file is unknown
            report.read += 1
            problem = f"cannot be read ({type(err).__name__}: {err.strerror or err})"
            _skip_or_raise(UnreadPart(source, number + 1 if number else None, problem, unit), report, on_error)
            return
        if item is None:
            return
        number, record, size = item
        report.read += 1
        row = _convert_one(number, record, convert, source, unit, on_error, report)
        if row is not None:
            report.kept += 1
            yield number, row, size


def _convert_one(number: int, record: Any, convert, source, unit: str, on_error: str, report: LoadReport) -> dict | None:
    try:
        if isinstance(record, DataFormatError):
            raise record
        try:
            return convert(record)
        except _Bad as bad:
            raise DataFormatError(source, number, str(bad), unit) from None
    except DataFormatError as err:
        _skip_or_raise(err, report, on_error)
        return None


def _skip_or_raise(err: DataFormatError, report: LoadReport, on_error: str) -> None:
    if on_error == "raise":
        raise err
    if isinstance(err, UnreadPart):
        report.unread += 1
    else:
        report.skipped[err.problem.split(":")[0].split(" (")[0]] += 1
    report.errors.append(str(err))
    log.warning("skipped %s", err)


CONVERTERS = {}  # kind -> converter, filled below: "pretraining", "sft", "preference", "prompts"


def load_rows(rows: Iterable[dict], kind: str, source: str, on_error: str = "raise"):
    """Convert the rows of a ``datasets`` dataset (hub or ``save_to_disk``) as the file loaders convert records;
    errors name ``source`` and the row number (from 1). Returns (``datasets.Dataset``, ``LoadReport``); the dataset
    is empty (no columns) when no row was usable."""
    import pyarrow as pa

    _check_on_error(on_error)
    report = LoadReport(files=[source])
    numbered = ((number, row, 0) for number, row in enumerate(rows, start=1))
    tables = _tables(_convert_all(numbered, CONVERTERS[kind], source, "row", on_error, report), source, report)
    parts = [(source, table) for table in tables] or [(source, pa.table({}))]
    return dataset_from_tables(parts, report.notes), report


# ---------------------------------------------------------------- records as Arrow tables
def _tables(rows: Iterable[tuple[int, dict, int]], source: str, report: LoadReport) -> list:
    """Converted rows as Arrow tables of BATCH_ROWS rows (or BATCH_BYTES of source text): the Python objects of one
    batch at a time are alive, the rest is Arrow memory (about the size of the text)."""
    tables, batch, size = [], [], 0
    for _, row, nbytes in rows:
        batch.append(row)
        size += nbytes
        if len(batch) >= BATCH_ROWS or size >= BATCH_BYTES:
            tables.append(_batch_table(batch, source, report))
            batch, size = [], 0
    if batch:
        tables.append(_batch_table(batch, source, report))
    return tables


def _batch_table(rows: list[dict], source: str, report: LoadReport):
    """One batch of rows as a table; a column missing from a row is None there (extra columns may come and go)."""
    import pyarrow as pa

    names = dict.fromkeys(key for row in rows for key in row)
    return pa.table({name: _column([row.get(name) for row in rows], name, source, report) for name in names})


def _column(values: list, name: str, source: str, report: LoadReport):
    import pyarrow as pa

    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError):  # e.g. 1 and "a" in one column, or an integer above 2**63
        kinds = sorted({type(v).__name__ for v in values if v is not None})
        _note(report.notes, f"{source}: column {name!r} holds {' and '.join(kinds)} values; kept as text")
        return pa.array([_as_text(v) for v in values], pa.string())


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)
        log.warning("%s", note)


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def harmonize(parts: list[tuple[str, Any]], notes: list[str]) -> list[tuple[str, Any]]:
    """(source, table) pairs whose columns can be stacked: an extra column whose types cannot meet (``id`` an int
    in one source, text in another; Arrow widens what it can: a column of None takes the other's type, int meets
    float as float) becomes text in every table, with a note naming the column and the sources.

    Text rather than an error: extra columns are carried along for the user and never trained on (the columns the
    RL rules read are checked record by record in ``convert_prompt``), so stopping a run, or sending the user to
    edit a hub data set, over an ``id`` column would cost more than the note."""
    for name, by_type in _type_conflicts(parts).items():
        sources = {source for names in by_type.values() for source in names}
        where = "; ".join(f"{kind} in {', '.join(names)}" for kind, names in by_type.items())
        _note(notes, f"column {name!r} has different types ({where}); kept as text" if len(sources) > 1 else
              f"{next(iter(sources))}: column {name!r} holds {' and '.join(by_type)} values; kept as text")
        parts = [(source, _text_column(table, name)) for source, table in parts]
    return parts


def _type_conflicts(parts) -> dict[str, dict[str, list[str]]]:
    """{column: {type: [sources]}} for the columns whose types Arrow cannot unify."""
    import pyarrow as pa

    types: dict[str, dict] = {}
    for source, table in parts:
        for column in table.schema:
            if column.type != pa.null():
                names = types.setdefault(column.name, {}).setdefault(column.type, [])
                if source not in names:
                    names.append(source)
    conflicts = {}
    for name, by_type in types.items():
        try:
            pa.unify_schemas([pa.schema([pa.field(name, kind)]) for kind in by_type], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid):
            conflicts[name] = {str(kind): names for kind, names in by_type.items()}
    return conflicts


def _text_column(table, name: str):
    import pyarrow as pa

    if name not in table.column_names or pa.types.is_string(table.schema.field(name).type):
        return table
    text = pa.array([_as_text(v) for v in table.column(name).to_pylist()], pa.string())
    return table.set_column(table.schema.get_field_index(name), name, text)


def concat_tables(parts: list[tuple[str, Any]], notes: list[str]):
    """(source, table) pairs as one table, without copying the data (``harmonize`` first)."""
    import pyarrow as pa

    return pa.concat_tables([table for _, table in harmonize(parts, notes)], promote_options="permissive")


def dataset_from_tables(parts: list[tuple[str, Any]], notes: list[str], fingerprint: str | None = None):
    """A ``datasets.Dataset`` over (source, table) pairs. ``fingerprint``: what identifies the data (the files'
    sizes and times), so ``datasets`` does not hash every byte to make one."""
    from datasets import Dataset
    from datasets.fingerprint import generate_random_fingerprint

    return Dataset(concat_tables(parts, notes), fingerprint=fingerprint or generate_random_fingerprint())


def arrow_table(dataset):
    """The rows of a ``datasets.Dataset`` (a filtered one too) as an Arrow table; no copy when unfiltered."""
    return dataset.with_format("arrow")[:]


def fingerprint_of(*parts) -> str:
    """A ``datasets`` fingerprint from what identifies the data (paths, sizes, times, options)."""
    return hashlib.sha256(repr(parts).encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- field checks
def _need_str(record: dict, key: str, where: str = "") -> str:
    if key not in record or record[key] is None:
        raise _Bad(f"missing field '{where}{key}'")
    value = record[key]
    if not isinstance(value, str):
        raise _Bad(f"field '{where}{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(f"empty field '{where}{key}'")
    return value


def _need_object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise _Bad(f"record must be a JSON object, got {type(record).__name__}")
    return record


def _check_order(messages: list[dict], field_name: str, last: str | None) -> list[dict]:
    """System first (optional), then user/assistant alternating from the user; ``last`` role."""
    if not messages:
        raise _Bad(f"empty field '{field_name}'")
    expected = "user"
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if i != 0:
                raise _Bad(f"turns out of order: system message at {field_name}[{i}] (only the first turn may be system)")
            continue
        if role != expected:
            raise _Bad(f"turns out of order: {field_name}[{i}] is {role}, expected {expected}")
        expected = "assistant" if role == "user" else "user"
    if messages[-1]["role"] == "system":
        raise _Bad(f"'{field_name}' has only a system message")
    if last and messages[-1]["role"] != last:
        raise _Bad(f"turns out of order: '{field_name}' must end with {'an' if last == 'assistant' else 'a'} {last} turn, ends with {messages[-1]['role']}")
    return messages


def _messages(items: Any, field_name: str, role_key: str, content_key: str, roles: dict) -> list[dict]:
    if not isinstance(items, list):
        raise _Bad(f"field '{field_name}' must be a list of turns, got {type(items).__name__}")
    result = []
    for i, turn in enumerate(items):
        where = f"{field_name}[{i}]."
        if not isinstance(turn, dict):
            raise _Bad(f"{field_name}[{i}] must be an object with '{role_key}' and '{content_key}'")
        role = _need_str(turn, role_key, where)
        if role in TOOL_ROLES and role not in roles:
            raise _Bad(f"tool-call turns are not supported (the chat template has no tool roles): {where}{role_key} is {role!r}")
        if role not in roles:
            raise _Bad(f"unknown role {role!r} in {where}{role_key} (accepted: {', '.join(roles)})")
        result.append({"role": roles[role], "content": _need_str(turn, content_key, where)})
    return result


def _sharegpt(items: Any, field_name: str = "conversations") -> list[dict]:
    return _messages(items, field_name, "from", "value", SHAREGPT_ROLES)


def _openai(items: Any, field_name: str = "messages") -> list[dict]:
    return _messages(items, field_name, "role", "content", {r: r for r in MESSAGE_ROLES})


def _history(record: dict) -> list[dict]:
    """Alpaca/MedicalGPT ``history``: a list of [question, answer] pairs."""
    history = record.get("history") or []
    if not isinstance(history, list):
        raise _Bad("field 'history' must be a list of [question, answer] pairs")
    turns = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) and x.strip() for x in pair)):
            raise _Bad(f"history[{i}] must be a [question, answer] pair of non-empty strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _system(record: dict) -> list[dict]:
    if record.get("system") in (None, ""):
        return []
    return [{"role": "system", "content": _need_str(record, "system")}]


def _extras(record: dict, used: Iterable[str]) -> dict:
    used = set(used)
    return {k: v for k, v in record.items() if k not in used}


# ---------------------------------------------------------------- SFT
def _alpaca_messages(record: dict) -> list[dict]:
    question = _need_str(record, "instruction")
    extra_input = record.get("input")
    if extra_input is not None and not isinstance(extra_input, str):
        raise _Bad("field 'input' must be a string")
    if extra_input and extra_input.strip():
        question = f"{question}\n{extra_input}"
    return _system(record) + _history(record) + [{"role": "user", "content": question}]


def convert_sft(record: Any) -> dict:
    """One SFT record (Alpaca, ShareGPT or OpenAI messages) -> ``{"messages": [...]}``."""
    record = _need_object(record)
    if "messages" in record:
        messages, used = _openai(record["messages"]), {"messages"}
    elif "conversations" in record:
        messages, used = _sharegpt(record["conversations"]), {"conversations"}
    elif "instruction" in record:
        messages = _alpaca_messages(record) + [{"role": "assistant", "content": _need_str(record, "output")}]
        used = {"instruction", "input", "output", "system", "history"}
    elif "question" in record and "answer" in record:  # MedicalGPT's QA and GRPO files
        messages = _system(record) + [{"role": "user", "content": _need_str(record, "question")},
                                      {"role": "assistant", "content": _need_str(record, "answer")}]
        used = {"question", "answer", "system"}
    else:
        raise _Bad(f"unknown SFT format: expected 'instruction'/'output' (Alpaca), 'conversations' (ShareGPT), 'messages' "
                   f"or 'question'/'answer', found keys {sorted(record)}")
    field_name = next((k for k in ("messages", "conversations", "instruction") if k in record), "question")
    return {"messages": _check_order(messages, field_name, last="assistant"), **_extras(record, used)}


def load_sft(paths, on_error: str = "raise", return_report: bool = False):
    """SFT data -> ``datasets.Dataset`` with column ``messages`` (plus any extra columns)."""
    return _load(paths, convert_sft, on_error, return_report)


# ---------------------------------------------------------------- preference
def _answer(value: Any, field_name: str) -> list[dict]:
    """A chosen/rejected answer as a one-turn assistant message list."""
    if isinstance(value, str):
        if not value.strip():
            raise _Bad(f"empty field '{field_name}'")
        return [{"role": "assistant", "content": value}]
    if isinstance(value, list):
        turns = _openai(value, field_name)
        if [t["role"] for t in turns] != ["assistant"] * len(turns):
            raise _Bad(f"field '{field_name}' must hold assistant messages only")
        return turns
    if value is None:
        raise _Bad(f"missing field '{field_name}'")
    raise _Bad(f"field '{field_name}' must be a string or a list of messages, got {type(value).__name__}")


def convert_preference(record: Any) -> dict:
    """One preference record -> ``{"prompt", "chosen", "rejected", ...extras}``."""
    record = _need_object(record)
    if "conversations" in record:
        prompt = _sharegpt(record["conversations"])
        used = {"conversations", "chosen", "rejected"}
        keys = ("chosen", "rejected")
    elif "question" in record:
        prompt = _system(record) + _history(record) + [{"role": "user", "content": _need_str(record, "question")}]
        used = {"question", "response_chosen", "response_rejected", "system", "history"}
        keys = ("response_chosen", "response_rejected")
    elif "prompt" in record:
        value = record["prompt"]
        if isinstance(value, str):
            prompt = [{"role": "user", "content": _need_str(record, "prompt")}]
        else:
            prompt = _openai(value, "prompt")
        used = {"prompt", "chosen", "rejected"}
        keys = ("chosen", "rejected")
    else:
        raise _Bad(f"unknown preference format: expected 'conversations'+'chosen'+'rejected', 'question'+'response_chosen'+'response_rejected' or 'prompt'+'chosen'+'rejected', found keys {sorted(record)}")
    field_name = "conversations" if "conversations" in record else "prompt"
    prompt = _check_order(prompt, field_name, last="user")
    chosen, rejected = (_answer(record.get(k), k) for k in keys)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **_extras(record, used)}


def load_preference(paths, on_error: str = "raise", return_report: bool = False):
    """Preference pairs -> columns ``prompt`` (messages), ``chosen``, ``rejected`` (+ extras)."""
    return _load(paths, convert_preference, on_error, return_report)


# ---------------------------------------------------------------- pretraining text and prompts
def convert_pretraining(record: Any) -> dict:
    record = _need_object(record)
    return {"text": _need_str(record, "text"), **_extras(record, {"text"})}


def load_pretraining(paths, on_error: str = "raise", return_report: bool = False):
    """Plain text (one document per line) or JSON/JSONL with ``text`` -> column ``text``."""
    return _load(paths, convert_pretraining, on_error, return_report, text_field="text")


def convert_prompt(record: Any) -> dict:
    """A prompt as messages ending with a user turn (from ``prompt``, ShareGPT, messages, Alpaca)."""
    record = _need_object(record)
    if "prompt" in record:
        value = record["prompt"]
        prompt = [{"role": "user", "content": _need_str(record, "prompt")}] if isinstance(value, str) or value is None else _openai(value, "prompt")
        used, field_name = {"prompt"}, "prompt"
    elif "conversations" in record:
        prompt, used, field_name = _sharegpt(record["conversations"]), {"conversations"}, "conversations"
    elif "messages" in record:
        prompt, used, field_name = _openai(record["messages"]), {"messages"}, "messages"
    elif "instruction" in record:
        prompt, used, field_name = _alpaca_messages(record), {"instruction", "input", "system", "history"}, "instruction"
    elif "question" in record:  # MedicalGPT's GRPO files; an "answer" stays as a column (a reference for rule rewards)
        prompt, used, field_name = _system(record) + [{"role": "user", "content": _need_str(record, "question")}], {"question", "system"}, "question"
    else:
        raise _Bad(f"unknown prompt format: expected 'prompt', 'conversations', 'messages', 'instruction' or 'question', found keys {sorted(record)}")
    _check_rule_fields(record)
    return {"prompt": _check_order(prompt, field_name, last="user"), **_extras(record, used)}


# The columns of a prompt the RL rules read (``evaluation.rule_rewards``, GRPO's rule rewards), with the type they
# read: a value of another type would change a reward without a word (the text "false" is true), so they are checked
# like any field. Other extra columns are only carried along, and may even change type between sources (``harmonize``).
RULE_FIELDS = {"condition": (str, "a string"), "lang": (str, "a string"), "red_flag": (bool, "true or false"),
               "key_facts": (list, "a list of strings")}


def _check_rule_fields(record: dict) -> None:
    for key, (kind, words) in RULE_FIELDS.items():
        value = record.get(key)
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is list and not all(isinstance(item, str) for item in value)):
            raise _Bad(f"field '{key}' must be {words} (the RL rule rewards read it), got {json.dumps(value, ensure_ascii=False)[:40]}")


def load_prompts(paths, on_error: str = "raise", return_report: bool = False):
    """RL prompts -> column ``prompt`` (messages ending with the user's turn)."""
    return _load(paths, convert_prompt, on_error, return_report, text_field="prompt")


def convert_multiple_choice(record: Any) -> dict:
    """A multiple-choice question: ``question``, a list of ``choices`` (strings) and ``answer``, the right one's index."""
    record = _need_object(record)
    question = _need_str(record, "question")
    choices = record.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise _Bad("field 'choices' must be a list of at least two non-empty strings")
    answer = record.get("answer")
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise _Bad(f"field 'answer' must be the index of the right choice (0 to {len(choices) - 1}), got {answer!r}")
    return {"question": question, "choices": choices, "answer": answer, **_extras(record, {"question", "choices", "answer"})}


def load_multiple_choice(paths, on_error: str = "raise", return_report: bool = False):
    """Multiple-choice questions (``question``, ``choices``, ``answer``), as the lm-eval tasks read them."""
    return _load(paths, convert_multiple_choice, on_error, return_report)


CONVERTERS.update(pretraining=convert_pretraining, sft=convert_sft, preference=convert_preference, prompts=convert_prompt,
                  multiple_choice=convert_multiple_choice)
LOADERS = {"pretraining": load_pretraining, "sft": load_sft, "preference": load_preference, "prompts": load_prompts,
           "multiple_choice": load_multiple_choice}


# ---------------------------------------------------------------- the knowledge base and data card
def load_knowledge_base() -> list[dict]:
    """The conditions of ``data/source/conditions_*.json`` (zh + en), sorted by id."""
    conditions = []
    for path in sorted((DATA_DIR / "source").glob("conditions_*.json")):
        conditions.extend(json.loads(path.read_text(encoding="utf-8")))
    ids = [c["id"] for c in conditions]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"duplicate condition ids in {DATA_DIR / 'source'}: {duplicates}")
    return sorted(conditions, key=lambda c: c["id"])


def card_counts() -> dict[str, int]:
    """Record counts per file as the data card (``data/README.md``) states them."""
    import re

    text = (DATA_DIR / "README.md").read_text(encoding="utf-8")
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `([^`]+)` \| (\d+) \|$", text, re.M)}


def load_bundled(name: str, conditions: Iterable[str] = (), return_report: bool = False, **kwargs):
    """Load a bundled file by its card name (``"sft/train_single.jsonl"``) with the right loader.

    ``conditions`` (knowledge-base ids, e.g. a preset's ``conditions``) keeps only the records about
    them; empty keeps all. How many were left out is logged and counted in the report.
    """
    if name.startswith("pretrain/") or name == "eval/cloze.jsonl":
        kind = "pretraining"
    elif name == "eval/multiple_choice.jsonl":
        kind = "multiple_choice"
    else:
        kind = {"sft": "sft", "preference": "preference"}.get(name.split("/")[0], "prompts")
    dataset, report = LOADERS[kind](bundled(*name.split("/")), return_report=True, **kwargs)
    wanted = set(conditions)
    if wanted:
        unknown = wanted - {c["id"] for c in load_knowledge_base()}
        if unknown:
            raise ValueError(f"unknown condition ids {sorted(unknown)}: the knowledge base in {DATA_DIR / 'source'} has no such condition")
        before = len(dataset)
        dataset = dataset.filter(lambda row: row["condition"] in wanted)
        report.outside_conditions = before - len(dataset)
        log.info("%s: %d of %d records are about the preset's %d conditions", name, len(dataset), before, len(wanted))
    return (dataset, report) if return_report else dataset


def split_by_language(texts: list[str]) -> dict[str, list[str]]:
    """Split bilingual texts: a text is Chinese if it holds a CJK character, else English."""
    is_zh = [any("\u4e00" <= ch <= "\u9fff" for ch in t) for t in texts]
    return {"en": [t for t, zh in zip(texts, is_zh) if not zh], "zh": [t for t, zh in zip(texts, is_zh) if zh]}


def pack_texts(texts: list[str], tokenizer, block_size: int) -> list[list[int]]:
    """Join documents with EOS and cut the token stream into full ``block_size`` blocks.

    The final partial block (fewer than ``block_size`` tokens) is left out and logged.
    """
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    n_blocks = len(stream) // block_size
    tail = len(stream) - n_blocks * block_size
    if tail:
        log.info("packing: %d tokens in %d blocks, last %d tokens (under one block) left out", len(stream), n_blocks, tail)
    return [stream[i * block_size : (i + 1) * block_size] for i in range(n_blocks)]
