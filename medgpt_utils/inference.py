"""Talk to a trained model: load (with or without a LoRA adapter), stream, chat, batch-predict.

One generation path serves ``medgpt infer``, ``medgpt web``, notebook 07's widget chat and the
tests: a conversation (optional system prompt, then the turns so far) goes through the chat
template, and tokens stream out as they are generated.
"""

from __future__ import annotations

import json
import logging
import os
import threading
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


# ---------------------------------------------------------------- one reply
def build_messages(question: str, history: list[dict] | None = None, system_prompt: str | None = None) -> list[dict]:
    """System prompt (if any), earlier turns, then the new question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + list(history or []) + [{"role": "user", "content": question}]


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of the chat-templated prompt, generation header included."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_to_context(tokenizer, messages: list[dict], max_prompt_tokens: int) -> tuple[list[dict], bool]:
    """Drop the oldest turns, then shorten the question, until the prompt fits; returns (messages, shortened)."""
    def length(msgs):
        return prompt_tokens(tokenizer, msgs)

    messages, shortened = list(messages), False
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    while len(turns) > 1 and length(system + turns) > max_prompt_tokens:
        turns, shortened = turns[2:] if len(turns) > 2 else turns[1:], True  # oldest question and its answer
    over = length(system + turns) - max_prompt_tokens
    if over > 0:  # a single question longer than the context: keep its beginning
        ids = tokenizer(turns[-1]["content"], add_special_tokens=False)["input_ids"]
        keep = max(len(ids) - over - 8, 1)
        turns[-1] = {"role": "user", "content": tokenizer.decode(ids[:keep], skip_special_tokens=True)}
        shortened = True
    return system + turns, shortened


def stream_reply(model, tokenizer, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.7,
                 seed: int | None = None) -> Iterator[str]:
    """Yield the reply's text piece by piece as the model generates it (greedy when temperature is 0)."""
    from transformers import TextIteratorStreamer

    messages, _ = fit_to_context(tokenizer, messages, context_length(model) - max_new_tokens)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    errors: list[BaseException] = []

    def work():
        try:
            with seeded(seed if temperature > 0 else None):
                generate_tokens(model, tokenizer, [text], max_new_tokens, temperature, streamer=streamer)
        except BaseException as err:  # surfaced in the caller's thread below
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if errors:
        raise errors[0]


@dataclass
class ChatSession:
    """A multi-turn conversation with one model: history, system prompt and sampling settings."""

    model: object
    tokenizer: object
    system_prompt: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.7
    history: list[dict] = field(default_factory=list)

    def stream(self, question: str) -> Iterator[str]:
        """Stream the reply to ``question``; the turn joins the history once the reply is complete."""
        reply = ""
        for piece in stream_reply(self.model, self.tokenizer, build_messages(question, self.history, self.system_prompt),
                                  self.max_new_tokens, self.temperature):
            reply += piece
            yield piece
        self.history += [{"role": "user", "content": question}, {"role": "assistant", "content": reply.strip()}]

    def ask(self, question: str) -> str:
        return "".join(self.stream(question)).strip()

    def clear(self) -> None:
        self.history = []


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
                 max_new_tokens: int = 128, temperature: float = 0.0, batch_size: int = 16) -> int:
    """Answer every question in ``data_file`` and write one JSON line per question, in order:
    ``{"line", "question", "answer", "ended_with_eos", "shortened"}``. Returns the count."""
    questions = read_questions(data_file)
    budget = context_length(model) - max_new_tokens
    prompts, shortened = [], []
    for _, question in questions:
        messages, cut = fit_to_context(tokenizer, build_messages(question, None, system_prompt), budget)
        prompts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        shortened.append(cut)
    replies = generate(model, tokenizer, prompts, max_new_tokens, batch_size, temperature)
    out = Path(predictions_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        for (line, question), reply, cut in zip(questions, replies, shortened):
            record = {"line": line, "question": question, "answer": reply.text.strip(),
                      "ended_with_eos": reply.ended_with_eos, "shortened": cut}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(questions)
