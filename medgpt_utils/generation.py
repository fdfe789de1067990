"""Generation and sampling, one way for the whole course: evaluation, PPO rollouts, pair sampling and chat."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

# Greedy answers (evaluation and judging) go in batches of this many prompts. On the tiny preset 112 answered the
# 336 held-out questions 1.3-1.5x faster than 32 with the same answers, token for token (SFT and PT models;
# notebooks/EXPERIMENTS.md). Sampled generation keeps its callers' batch sizes: they decide how the random
# numbers are drawn.
GREEDY_BATCH_SIZE = 112


@dataclass
class Generated:
    text: str
    n_tokens: int
    ended_with_eos: bool


def chat_prompt_texts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Each conversation rendered through the chat template, ending with the assistant header."""
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


def sampling_settings(temperature: float) -> dict:
    """How the whole course samples (evaluation, PPO rollouts, pair sampling, chat): greedy at temperature 0,
    else from the model's own distribution, with no top-k / top-p truncation (``generate`` would otherwise
    take top_k=50 from the model's generation config, and PPO's ratio needs samples from the policy itself)."""
    return dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)


@contextmanager
def seeded(seed: int | None):
    """Sampling inside draws from torch's global generator, seeded with ``seed`` when one is given; the
    global state is restored afterwards, so a seeded call never resets a stage's random stream."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# What a non-finite loss or logit means on the GPU presets, and the fix (MedicalGPT's and Qwen's users report fp16
# runs of Qwen2 models that overflow: NaN losses, "!!!!" answers).
OVERFLOW_ADVICE = ("In fp16 this is an overflow (Qwen2 models are known to overflow in fp16): lower the learning rate, or "
                   "compute in float32 (--set compute_dtype=float32), or in bfloat16 on a GPU that has it (not a T4)")


def watch_logits(model, where: str):
    """Stop at the first forward pass whose logits hold a NaN or an infinity, naming ``where`` and the fix: a policy
    that samples from such logits (PPO rollouts, GRPO's groups, evaluation) would otherwise fail deep inside
    ``torch.multinomial`` or answer with garbage. Returns the hook's handle (``.remove()`` it), or None for a model
    without an output layer (a reward model's score is checked through its loss)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None

    def check(module, inputs, logits):
        low, high = torch.aminmax(logits)  # NaN and inf show in the extremes: no logits-sized mask (152k columns)
        if not (torch.isfinite(low) and torch.isfinite(high)):
            kind = "nan" if torch.isnan(low) or torch.isnan(high) else "inf"
            raise FloatingPointError(f"{where}: the model's logits became {kind}; stopped. {OVERFLOW_ADVICE}")

    return head.register_forward_hook(check)


@contextmanager
def finite_logits(model, where: str):
    """``watch_logits`` for the duration of a block."""
    handle = watch_logits(model, where)
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


@torch.no_grad()
def generate_tokens(model, tokenizer, texts: list[str], max_new_tokens: int, temperature: float = 0.0, **extra):
    """The one sampling call: ``texts`` left-padded (new tokens follow each prompt directly), the model in
    eval mode, EOS as the stop token. Returns the tokenized batch and the generated ids after it."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(next(model.parameters()).device)
        with finite_logits(model, "generation"):
            output = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id, use_cache=True, **sampling_settings(temperature),
                                    **extra)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return batch, output[:, batch["input_ids"].shape[1]:]


def generate(model, tokenizer, texts: list[str], max_new_tokens: int = 64, batch_size: int = 32,
             temperature: float = 0.0, seed: int | None = None) -> list[Generated]:
    """Continue each text; greedy when ``temperature`` is 0. Stops at EOS (tokens after it dropped).

    Sampling draws from torch's global generator, so a stage seeded once samples differently at every
    step; with ``seed`` it draws from a forked generator and leaves the global state as it was.
    """
    results: list[Generated] = []
    with seeded(seed if temperature > 0 else None):
        for start in range(0, len(texts), batch_size):
            _, new = generate_tokens(model, tokenizer, texts[start : start + batch_size], max_new_tokens, temperature)
            for row in new.tolist():
                ended = tokenizer.eos_token_id in row
                row = row[: row.index(tokenizer.eos_token_id)] if ended else row
                results.append(Generated(tokenizer.decode(row, skip_special_tokens=True), len(row), ended))
    return results


def answer(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 96, batch_size: int = GREEDY_BATCH_SIZE,
           temperature: float = 0.0) -> list[Generated]:
    """The model's reply to each conversation (a list of messages ending with the user's turn)."""
    return generate(model, tokenizer, chat_prompt_texts(tokenizer, conversations), max_new_tokens, batch_size, temperature)
