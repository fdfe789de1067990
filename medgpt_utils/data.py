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
``return_report=True``) counts what was read, kept and skipped by reason: read == kept + skipped.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .artifacts import DATA_DIR

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".txt", ".json", ".jsonl", ".parquet")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# ShareGPT tool-call turns (LLaMA-Factory's layout). The course's chat templates have no tool roles, so a
# dialogue holding them is skipped with this reason counted, never silently cut.
TOOL_ROLES = ("function_call", "observation", "tool")
MESSAGE_ROLES = ("system", "user", "assistant")


class DataFormatError(ValueError):
    """A record that cannot be used; the message names the file, the line and the problem."""

    def __init__(self, path: Path | str, line: int | None, problem: str, unit: str = "line"):
        self.path, self.line, self.problem = str(path), line, problem
        # A line of a text file reads "file:12"; a row of a table or dataset reads "source row 12".
        where = str(path) if not line else f"{path}:{line}" if unit == "line" else f"{path} {unit} {line}"
        super().__init__(f"{where}: {problem}")


class _Bad(Exception):
    """Raised inside converters; turned into DataFormatError with the file and line."""


@dataclass
class LoadReport:
    """How many records were read, kept and skipped (by reason). read == kept + skipped."""

    files: list[str] = field(default_factory=list)
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    # Usable records about conditions outside the preset's list (``Preset.conditions``): left out of
    # this run on purpose, counted here so nothing disappears unreported. Not part of read == kept + skipped.
    outside_conditions: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        scope = f"; {self.outside_conditions} kept records left out (conditions outside the preset)" if self.outside_conditions else ""
        return f"{len(self.files)} file(s): read {self.read}, kept {self.kept}, skipped {self.skipped_total} ({reasons}){scope}"


# ---------------------------------------------------------------- bundled data
def bundled(*parts: str) -> Path:
    """Path of a bundled data file, e.g. ``bundled("sft", "train_single.jsonl")``."""
    return DATA_DIR.joinpath(*parts)


# ---------------------------------------------------------------- reading files
def _files(paths) -> list[Path]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix in DATA_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)  # .ipynb_checkpoints
            )
            if not inside:
                raise DataFormatError(path, None, f"folder has no data files ({', '.join(DATA_SUFFIXES)})")
            found.extend(inside)
        elif path.is_file():
            if path.suffix not in DATA_SUFFIXES:
                raise DataFormatError(path, None, f"unsupported file type {path.suffix!r}; use {', '.join(DATA_SUFFIXES)}")
            found.append(path)
        else:
            raise DataFormatError(path, None, "no such file or folder")
    if not found:
        raise ValueError("no data paths given")
    return found


def _decode(path: Path, raw: bytes, line_offset: int = 0) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = line_offset + raw[: err.start].count(b"\n") + 1
        raise DataFormatError(path, line, f"invalid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})") from None


def _records(path: Path, text_field: str | None) -> Iterator[tuple[int, Any]]:
    """Yield (line, record) for every record in a file; a bad one yields (line, DataFormatError)."""
    raw = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Windows editors) is not data
    if not raw.strip():
        raise DataFormatError(path, None, "file is empty")
    if path.suffix in (".txt", ".jsonl"):
        for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
            if not line_bytes.strip():
                continue  # blank lines separate nothing and are not records
            try:
                line = _decode(path, line_bytes, number - 1)
                if path.suffix == ".txt":
                    if text_field is None:
                        raise DataFormatError(path, number, "plain-text files are only accepted for pretraining text and prompts")
                    yield number, {text_field: line.rstrip("\r")}
                else:
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as err:
                        raise DataFormatError(path, number, f"broken JSON: {err.msg} (column {err.colno})") from None
            except DataFormatError as err:
                yield number, err
        return
    yield from _json_array_records(path, _decode(path, raw))


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(row number from 1, row) for every row of a parquet file (``text`` tables for pretraining, or any layout)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow's errors have no common base worth naming
        raise DataFormatError(path, None, f"not a readable parquet file ({type(err).__name__}: {err})") from None
    if table.num_rows == 0:
        raise DataFormatError(path, None, "file is empty")
    yield from enumerate(table.to_pylist(), start=1)


def _json_array_records(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """Records of a ``.json`` file (a list of objects, or one object) with their line numbers."""
    decoder = json.JSONDecoder()
    i = _skip_ws(text, 0)
    if not text.startswith("[", i):
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, err.lineno, f"broken JSON: {err.msg} (column {err.colno})") from None
        yield text.count("\n", 0, i) + 1, obj
        return
    i = _skip_ws(text, i + 1)
    if text.startswith("]", i):
        raise DataFormatError(path, text.count("\n", 0, i) + 1, "JSON list is empty")
    while True:
        line = text.count("\n", 0, i) + 1
        try:
            obj, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, err.lineno, f"broken JSON: {err.msg} (column {err.colno}){_REST_UNREAD}") from None
        yield line, obj
        i = _skip_ws(text, i)
        if text.startswith(",", i):
            i = _skip_ws(text, i + 1)
        elif text.startswith("]", i):
            return
        else:
            raise DataFormatError(path, text.count("\n", 0, i) + 1, f"broken JSON: expected ',' or ']' between records{_REST_UNREAD}")


_REST_UNREAD = "; the records after it in this file could not be read"


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _load(paths, convert: Callable[[Any], dict], on_error: str, return_report: bool, text_field: str | None = None):
    from datasets import Dataset

    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    report = LoadReport()
    rows: list[dict] = []
    for path in _files(paths):
        report.files.append(str(path))
        records = _parquet_records(path) if path.suffix == ".parquet" else _records(path, text_field)
        rows += _convert_all(records, convert, path, "row" if path.suffix == ".parquet" else "line", on_error, report)
    if not rows:
        raise ValueError(f"no usable records in {', '.join(report.files)} ({report})")
    log.info("loaded %s", report)
    dataset = Dataset.from_list(fill_missing_columns(rows))
    return (dataset, report) if return_report else dataset


def _convert_all(records, convert, source, unit: str, on_error: str, report: LoadReport) -> list[dict]:
    """Convert (number, record) pairs from one source; bad ones raise or are skipped and counted."""
    rows = []
    try:
        for number, record in records:
            report.read += 1
            try:
                if isinstance(record, DataFormatError):
                    raise record
                try:
                    rows.append(convert(record))
                except _Bad as bad:
                    raise DataFormatError(source, number, str(bad), unit) from None
                report.kept += 1
            except DataFormatError as err:
                _skip_or_raise(err, report, on_error)
    except DataFormatError as err:  # the whole file is unusable (empty, not decodable JSON)
        report.read += 1
        _skip_or_raise(err, report, on_error)
    return rows


CONVERTERS = {}  # kind -> converter, filled below: "pretraining", "sft", "preference", "prompts"


def load_rows(rows: Iterable[dict], kind: str, source: str, on_error: str = "raise") -> tuple[list[dict], LoadReport]:
    """Convert the rows of a ``datasets`` dataset (hub or ``save_to_disk``) as the file loaders convert records;
    errors name ``source`` and the row number (from 1)."""
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip'")
    report = LoadReport(files=[source])
    converted = _convert_all(enumerate(rows, start=1), CONVERTERS[kind], source, "row", on_error, report)
    return converted, report


def _skip_or_raise(err: DataFormatError, report: LoadReport, on_error: str) -> None:
    if on_error == "raise":
        raise err
    reason = err.problem.split(":")[0].split(" (")[0]
    report.skipped[reason] += 1
    report.errors.append(str(err))
    log.warning("skipped %s", err)


def fill_missing_columns(rows: list[dict]) -> list[dict]:
    """Extra columns may appear in some files only; give the others None so rows align."""
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return [{k: row.get(k) for k in keys} for row in rows]


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
    return {"prompt": _check_order(prompt, field_name, last="user"), **_extras(record, used)}


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
