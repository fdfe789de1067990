"""Talk to a trained model: load (with or without a LoRA adapter), stream, chat, batch-predict.

One generation path serves ``medgpt infer``, ``medgpt web``, notebook 07's widget chat and the
tests: a conversation (optional system prompt, then the turns so far) is fitted to the model's
context by ``fit_prompt`` (bounded work whatever the input's size, control tokens typed by a user
neutralised, notes saying what was cut), goes through the chat template, and tokens stream out as
they are generated; a reply nobody reads any more stops generating.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import weakref
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from . import models
from .artifacts import METRICS_FILE, stage_dir, stage_done
from .generation import generate, generate_tokens, seeded
from .pipeline import stage_names

log = logging.getLogger(__name__)

CHAT_STAGES = stage_names(causal_lm=True)  # stages that save a model that chats
QUESTION_KEYS = ("question", "instruction", "prompt", "input")  # what a JSONL line may call its question
PARTIAL_SUFFIX = ".partial"  # batch predictions finished so far, appended batch by batch until the run completes


# ---------------------------------------------------------------- loading
def newest_stage(preset_name: str) -> str:
    """The most recently finished stage of a preset whose model can chat (e.g. ``grpo`` after ``medgpt run``)."""
    done = [s for s in CHAT_STAGES if stage_done(preset_name, s)]
    if not done:
        raise FileNotFoundError(f"no finished stage in outputs/{preset_name}/: run `medgpt run --preset {preset_name}` first")
    return max(done, key=lambda s: (stage_dir(preset_name, s) / METRICS_FILE).stat().st_mtime)


def load_model(base_model: str | Path, lora_model: str | Path | None = None, tokenizer_path: str | Path | None = None,
               quantization: str | None = None, device: str | None = None, dtype: torch.dtype | None = None,
               trust_remote_code: bool = False, merge: bool = True):
    """A causal LM and its tokenizer, ready to generate: ``base_model`` plus an optional LoRA
    adapter (merged in memory unless ``merge=False`` or the base is quantized), 4/8 bit when asked."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    if tokenizer_path is None:  # an adapter folder may carry its own tokenizer (e.g. after vocabulary expansion)
        has_own = lora_model and (Path(lora_model) / "tokenizer_config.json").exists()
        tokenizer_path = lora_model if has_own else base_model
    tokenizer = models.load_tokenizer(tokenizer_path, trust_remote_code)
    model = models.load_causal_lm(base_model, quantization, dtype, device, trust_remote_code)
    if lora_model:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(lora_model))
        if merge and quantization in (None, "none"):
            model = model.merge_and_unload()  # plain weights: faster generation, nothing else changes
    model.eval()
    return model, tokenizer


def context_length(model, default: int = 2048) -> int:
    return int(getattr(model.config, "max_position_embeddings", None) or default)


# ---------------------------------------------------------------- limits
# Caps in characters, applied before anything is tokenized: the web demo takes the whole history from the browser, and
# tokenizing is the expensive part (a 9.5M-character message took 33 s and 2.9 GB). They are generous: 32,000
# characters are about 8,000 English or 32,000 Chinese tokens, more than any preset's prompt budget, so for an
# ordinary conversation only the token budget decides what is kept.
MAX_MESSAGE_CHARS = 32_000  # the question, and each earlier message
MAX_SYSTEM_CHARS = 8_000  # the system prompt: instructions, not documents
MAX_HISTORY_MESSAGES = 100  # earlier messages kept at most (50 question-answer pairs); older ones are left out
MAX_HISTORY_CHARS = 100_000  # earlier messages together
JOIN_TIMEOUT_S = 30.0  # an abandoned reply waits this long for its generation step to finish (one token, normally ms)
ZERO_WIDTH_SPACE = "\u200b"  # put inside a control token written by a user, so it stays text


@dataclass(frozen=True)
class ChatLimits:
    """How much of a conversation is even looked at; see the MAX_* constants for why."""

    message_chars: int = MAX_MESSAGE_CHARS
    system_chars: int = MAX_SYSTEM_CHARS
    history_messages: int = MAX_HISTORY_MESSAGES
    history_chars: int = MAX_HISTORY_CHARS


DEFAULT_LIMITS = ChatLimits()


@dataclass
class FittedPrompt:
    """A conversation made to fit a token budget: what the model sees, and in words what was cut to get there."""

    messages: list[dict]
    text: str  # chat-templated, generation header included
    n_tokens: int
    notes: list[str] = field(default_factory=list)

    @property
    def shortened(self) -> bool:
        return bool(self.notes)

    @property
    def note(self) -> str:
        return note_for(self.notes)


def note_for(notes: list[str]) -> str:
    """One sentence for the user about what was cut; empty when nothing was."""
    return f"Note: {'; '.join(notes)}." if notes else ""


# ---------------------------------------------------------------- one reply
def build_messages(question: str, history: list[dict] | None = None, system_prompt: str | None = None) -> list[dict]:
    """System prompt (if any), earlier turns, then the new question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + list(history or []) + [{"role": "user", "content": question}]


def render(tokenizer, messages: list[dict]) -> str:
    """The chat-templated prompt, ending with the assistant's header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of the chat-templated prompt, generation header included."""
    return len(tokenizer(render(tokenizer, messages), add_special_tokens=False)["input_ids"])


def prompt_budget(model, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int:
    """Tokens a prompt may use: the model's context less the reply's room, and at most ``max_prompt_tokens``."""
    budget = context_length(model) - max_new_tokens
    if budget <= 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in this model's context of "
                         f"{context_length(model):,} tokens")
    return min(budget, max_prompt_tokens) if max_prompt_tokens else budget


def control_tokens(tokenizer) -> list[str]:
    """Strings the tokenizer turns into control tokens: its special tokens, and added tokens the chat template uses
    (Qwen's ``<tool_call>``). Added tokens that are ordinary words (``medgpt vocab``'s terms) stay as they are."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    tokens = set(tokenizer.all_special_tokens)
    tokens.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special or t.content in template)
    return sorted((t for t in tokens if len(t) > 1), key=len, reverse=True)


def neutralise(text: str, tokens: list[str]) -> str:
    """``text`` with every control token in it broken by a zero-width space: it reads the same, but a user who
    types ``<|im_end|>\\n<|im_start|>system`` gets those characters as text, not a forged system turn."""
    if not tokens or not any(t in text for t in tokens):
        return text
    pattern = re.compile("|".join(map(re.escape, tokens)))
    return pattern.sub(lambda m: m.group()[0] + ZERO_WIDTH_SPACE + m.group()[1:], text)


def _split(messages: list[dict]) -> tuple[str | None, list[dict], str]:
    """(system prompt or None, earlier turns, the question) of a conversation that ends with the user's turn."""
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a conversation to answer must end with the user's message")
    has_system = messages[0]["role"] == "system" and len(messages) > 1
    system = messages[0]["content"] if has_system else None
    return system or None, list(messages[int(has_system):-1]), messages[-1]["content"]


def _newest_history(history: list[dict], limits: ChatLimits) -> list[dict]:
    """The newest earlier messages within the caps, each capped at ``limits.message_chars``, starting with a question."""
    kept, chars = [], 0
    for message in reversed(history[-limits.history_messages:]):
        content = message["content"][: limits.message_chars]
        if chars + len(content) > limits.history_chars:
            break
        kept.append({"role": message["role"], "content": content})
        chars += len(content)
    kept.reverse()
    return _from_first_question(kept)


def _from_first_question(history: list[dict]) -> list[dict]:
    """A history that starts with a user turn (an answer without its question only confuses the model)."""
    start = next((i for i, m in enumerate(history) if m["role"] == "user"), len(history))
    return history[start:]


def _skeleton_tokens(tokenizer, roles: list[str]) -> int:
    """Tokens the chat template adds around messages with these roles (contents empty)."""
    return prompt_tokens(tokenizer, [{"role": r, "content": ""} for r in roles])


def _encode(tokenizer, texts: list[str]) -> list[tuple[list[int], list | None]]:
    """(token ids, character offsets or None) of each text, in one call."""
    batch = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    return list(zip(batch["input_ids"], batch.get("offset_mapping") or [None] * len(texts)))


def _prefix(tokenizer, text: str, encoded: tuple[list[int], list | None], keep: int) -> str:
    """The beginning of ``text`` up to where its token ``keep`` starts (a character split over several byte tokens
    goes whole: what is left is at most ``keep`` tokens, give or take a merge at the new end)."""
    ids, offsets = encoded
    if keep <= 0:
        return ""
    if keep >= len(ids):
        return text
    if offsets:
        return text[: offsets[keep][0]]
    return tokenizer.decode(ids[:keep], skip_special_tokens=True)  # a tokenizer without offsets


def fit_prompt(tokenizer, messages: list[dict], max_prompt_tokens: int, limits: ChatLimits = DEFAULT_LIMITS,
               history_chunk: int = 16) -> FittedPrompt:
    """Make a conversation fit ``max_prompt_tokens`` with the work bounded whatever its size: characters are capped
    first (``limits``), each kept message is tokenized once, then the oldest turns are dropped and the question and the
    system prompt shortened by arithmetic on those counts. Control tokens in any content are neutralised. Every front
    end (``medgpt infer``, the web demo, the widget) goes through here; ``notes`` says what was cut."""
    system, history, question = _split(messages)
    tokens = control_tokens(tokenizer)
    head = [] if system is None else [neutralise(system[: limits.system_chars], tokens)]
    texts = head + [neutralise(question[: limits.message_chars], tokens)]  # system prompt (if any), question
    roles = ["system"] * len(head) + ["user"]
    template = _skeleton_tokens(tokenizer, roles)
    room = max_prompt_tokens - template
    if room < 1:
        raise ValueError(f"a prompt budget of {max_prompt_tokens} tokens leaves no room for a question: the chat "
                         f"template alone takes {template}")
    encoded = _encode(tokenizer, texts)
    lengths = [len(ids) for ids, _ in encoded]
    system_keep, question_keep = _share(room, lengths[0] if head else 0, lengths[-1])
    keep = [system_keep] * len(head) + [question_keep]
    pair_cost = _skeleton_tokens(tokenizer, roles[:-1] + ["user", "assistant", "user"]) - template if history else 0
    kept = _history_that_fits(tokenizer, _newest_history(history, limits), room - sum(keep), pair_cost, tokens,
                              history_chunk)
    cut = [text if k == n else _prefix(tokenizer, text, e, k) for text, e, k, n in zip(texts, encoded, keep, lengths)]
    fitted = _within_budget(tokenizer, build_messages(cut[-1], kept, cut[0] if head else None), max_prompt_tokens)
    fitted.notes = _cut_notes(fitted.messages, messages, texts, limits)
    return fitted


def _share(room: int, system: int, question: int) -> tuple[int, int]:
    """Tokens kept of the system prompt and of the question: both whole when they fit, else the system prompt
    keeps at least half the room (it says how to answer) and the question the rest (its beginning)."""
    if system + question <= room:
        return system, question
    system_keep = min(system, max(room // 2, room - question))
    return system_keep, min(question, room - system_keep)


def _history_that_fits(tokenizer, history: list[dict], room: int, pair_cost: int, tokens: list[str],
                       chunk: int) -> list[dict]:
    """The newest earlier messages whose tokens, and the template's around each question-answer pair, fit ``room``;
    neutralised. Tokenized newest first, ``chunk`` messages at a time, and no further back than the room reaches."""
    kept: list[dict] = []
    newest_first = [{"role": m["role"], "content": neutralise(m["content"], tokens)} for m in reversed(history)]
    for start in range(0, len(newest_first), chunk):
        batch = newest_first[start:start + chunk]
        for message, ids in zip(batch, tokenizer([m["content"] for m in batch], add_special_tokens=False)["input_ids"]):
            room -= len(ids) + (pair_cost if message["role"] == "user" else 0)  # a pair is kept from its question on
            if room < 0:
                return _from_first_question(kept[::-1])
            kept.append(message)
    return _from_first_question(kept[::-1])


def _within_budget(tokenizer, messages: list[dict], max_prompt_tokens: int, attempts: int = 4) -> FittedPrompt:
    """Render the fitted conversation and check it against the budget: counts of separate messages can differ by a
    few tokens from the whole prompt's, so an overshoot drops the oldest turn or trims the question (bounded retries)."""
    for _ in range(attempts):
        text = render(tokenizer, messages)
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        over = n_tokens - max_prompt_tokens
        if over <= 0:
            return FittedPrompt(messages, text, n_tokens)
        system, history, question = _split(messages)
        if history:
            history = _from_first_question(history[1:])
        else:
            (encoded,) = _encode(tokenizer, [question])
            if len(encoded[0]) > over:
                question = _prefix(tokenizer, question, encoded, len(encoded[0]) - over)
            elif system:
                (encoded,) = _encode(tokenizer, [system])
                system = _prefix(tokenizer, system, encoded, len(encoded[0]) - over)
        messages = build_messages(question, history, system)
    raise ValueError(f"could not fit the conversation into {max_prompt_tokens} tokens")


def _cut_notes(fitted: list[dict], original: list[dict], before_tokens: list[str], limits: ChatLimits) -> list[str]:
    """What was cut, in words for the user: the ``fitted`` conversation against the ``original`` one
    (``before_tokens``: its system prompt and question as capped and neutralised; any change after that is a cut)."""
    (system, history, question), (fitted_system, fitted_history, fitted_question) = _split(original), _split(fitted)
    notes = []
    if len(question) > limits.message_chars or fitted_question != before_tokens[-1]:
        notes.append(f"your message was cut to its first {len(_visible(fitted_question)):,} of {len(question):,} characters")
    if system is not None and (len(system) > limits.system_chars or fitted_system != before_tokens[0]):
        notes.append(f"the system prompt was cut to its first {len(_visible(fitted_system or '')):,} of "
                     f"{len(system):,} characters")
    left_out = len(history) - len(fitted_history)
    if left_out:
        notes.append(f"the {left_out:,} oldest message{'s' if left_out > 1 else ''} of the conversation "
                     f"{'were' if left_out > 1 else 'was'} left out")
    return notes


def _visible(text: str) -> str:
    return text.replace(ZERO_WIDTH_SPACE, "")


def fit_to_context(tokenizer, messages: list[dict], max_prompt_tokens: int,
                   limits: ChatLimits = DEFAULT_LIMITS) -> tuple[list[dict], bool]:
    """``fit_prompt``'s messages and whether anything was cut (the older interface)."""
    fitted = fit_prompt(tokenizer, messages, max_prompt_tokens, limits)
    return fitted.messages, fitted.shortened


def _stop_when_set(event: threading.Event):
    """Stopping criteria that end generation once ``event`` is set: the reader of the reply went away."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhenSet(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopWhenSet()])


_generation_locks: "weakref.WeakKeyDictionary[object, threading.Lock]" = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def generation_lock(model) -> threading.Lock:
    """One generation at a time per model: a reply still finishing never runs beside the next one."""
    with _locks_guard:
        return _generation_locks.setdefault(model, threading.Lock())


def stream_prompt(model, tokenizer, text: str, max_new_tokens: int = 128, temperature: float = 0.7,
                  seed: int | None = None) -> Iterator[str]:
    """Yield the reply to a chat-templated prompt piece by piece as the model generates it (greedy at temperature 0).
    Closing the iterator (or dropping it: gradio on Stop or a disconnect) stops the generation and waits for it."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work():
        try:
            with generation_lock(model), seeded(seed if temperature > 0 else None):
                if stop.is_set():  # abandoned while the previous reply was finishing
                    return
                generate_tokens(model, tokenizer, [text], max_new_tokens, temperature, streamer=streamer,
                                stopping_criteria=_stop_when_set(stop))
        except BaseException as err:  # surfaced in the caller's thread below
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, name="medgpt-generate", daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece:
                yield piece
    finally:  # also when the reader stops early: no generation left running for nobody
        stop.set()
        thread.join(JOIN_TIMEOUT_S)
    if errors:
        raise errors[0]


def stream_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.7,
                 seed: int | None = None, limits: ChatLimits = DEFAULT_LIMITS) -> Iterator[str]:
    """Yield the reply to a conversation piece by piece: fitted to the context (``fit_prompt``), then streamed."""
    fitted = fit_prompt(tokenizer, messages, prompt_budget(model, max_new_tokens), limits)
    yield from stream_prompt(model, tokenizer, fitted.text, max_new_tokens, temperature, seed)


@dataclass
class ChatSession:
    """A multi-turn conversation with one model: history, system prompt and sampling settings."""

    model: object
    tokenizer: object
    system_prompt: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.7
    history: list[dict] = field(default_factory=list)
    limits: ChatLimits = DEFAULT_LIMITS
    notes: list[str] = field(default_factory=list)  # what the last question's prompt cut, in words

    def stream(self, question: str) -> Iterator[str]:
        """Stream the reply to ``question``; the turn (as the model saw it) joins the history when the reply is done."""
        fitted = fit_prompt(self.tokenizer, build_messages(question, self.history, self.system_prompt),
                            prompt_budget(self.model, self.max_new_tokens), self.limits)
        self.notes = fitted.notes
        reply = ""
        with closing(stream_prompt(self.model, self.tokenizer, fitted.text, self.max_new_tokens, self.temperature)) as pieces:
            for piece in pieces:
                reply += piece
                yield piece
        turn = [fitted.messages[-1], {"role": "assistant", "content": reply.strip()}]
        self.history = (self.history + turn)[-self.limits.history_messages:]

    @property
    def note(self) -> str:
        return note_for(self.notes)

    def ask(self, question: str) -> str:
        return "".join(self.stream(question)).strip()

    def clear(self) -> None:
        self.history, self.notes = [], []


# ---------------------------------------------------------------- batch predictions
def read_questions(path: str | Path) -> list[tuple[int, str]]:
    """(line number, question) from a text file (one question per line) or a JSONL file (an object
    with one of ``QUESTION_KEYS``, or a plain JSON string). Empty lines are skipped and reported;
    a malformed line is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    questions, empty = [], []
    is_jsonl = path.suffix in (".jsonl", ".json")
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            empty.append(number)
            continue
        if is_jsonl:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if isinstance(record, dict):
                key = next((k for k in QUESTION_KEYS if isinstance(record.get(k), str)), None)
                if key is None:
                    raise ValueError(f"{path}:{number}: no question field; expected one of {', '.join(QUESTION_KEYS)}")
                line = record[key].strip()
            elif isinstance(record, str):
                line = record.strip()
            else:
                raise ValueError(f"{path}:{number}: expected a JSON object or string, got {type(record).__name__}")
            if not line:
                empty.append(number)
                continue
        questions.append((number, line))
    if empty:
        log.warning("%s: skipped %d empty line(s): %s", path, len(empty), ", ".join(map(str, empty[:20])))
    return questions


def predict_file(model, tokenizer, data_file: str | Path, predictions_file: str | Path, system_prompt: str | None = None,
                 max_new_tokens: int = 128, temperature: float = 0.0, batch_size: int = 16,
                 max_prompt_tokens: int | None = None, limits: ChatLimits = DEFAULT_LIMITS) -> int:
    """Answer every question in ``data_file`` and write one JSON line per question, in the file's order:
    ``{"line", "question", "answer", "ended_with_eos", "shortened"}``. Returns the count.

    Prompts are fitted to ``max_prompt_tokens`` (``medgpt infer`` passes the preset's ``max_length``, the length the
    model was trained on; the context alone is 32,768 for Qwen2.5, and one such prompt on a 7B model needs ~29 GB of
    KV cache). Questions are answered longest first, in batches of similar length: little padding, and running out of
    memory shows on the first batch. Each finished batch is appended to ``<predictions_file>.partial``, so a crash
    keeps what was done; when all are done, ``predictions_file`` is written in input order and the partial file removed.
    """
    questions = read_questions(data_file)
    budget = prompt_budget(model, max_new_tokens, max_prompt_tokens)
    fitted = [fit_prompt(tokenizer, build_messages(question, None, system_prompt), budget, limits)
              for _, question in questions]
    order = sorted(range(len(questions)), key=lambda i: -fitted[i].n_tokens)
    out = Path(predictions_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    records: dict[int, dict] = {}
    with partial.open("w", encoding="utf-8") as handle:
        try:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                replies = generate(model, tokenizer, [fitted[i].text for i in batch], max_new_tokens, len(batch), temperature)
                for i, reply in zip(batch, replies):
                    records[i] = _prediction(questions[i], reply, fitted[i])
                    handle.write(json.dumps(records[i], ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the next batch can fail
        except BaseException:
            log.error("stopped after %d of %d answers; the finished ones are in %s (%s is unchanged)",
                      len(records), len(questions), partial, out)
            raise
    _write_lines(out, [records[i] for i in range(len(questions))])
    partial.unlink()
    return len(questions)


def _prediction(numbered_question: tuple[int, str], reply, fitted: FittedPrompt) -> dict:
    line, question = numbered_question
    return {"line": line, "question": question, "answer": reply.text.strip(), "ended_with_eos": reply.ended_with_eos,
            "shortened": fitted.shortened}


def _write_lines(path: Path, records: list[dict]) -> None:
    """JSON lines written whole or not at all (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
