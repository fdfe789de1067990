"""Batched generation shared by evaluation, notebooks and chat: left padding, KV cache, EOS stop."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Generated:
    text: str
    n_tokens: int
    ended_with_eos: bool


def chat_prompt_texts(tokenizer, conversations: list[list[dict]]) -> list[str]:
    """Each conversation rendered through the chat template, ending with the assistant header."""
    return [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]


@torch.no_grad()
def generate(model, tokenizer, texts: list[str], max_new_tokens: int = 64, batch_size: int = 32,
             temperature: float = 0.0, seed: int | None = None) -> list[Generated]:
    """Continue each text; greedy when ``temperature`` is 0. Stops at EOS (tokens after it dropped).

    Sampling draws from torch's global generator, so a stage seeded once samples differently at every
    step; with ``seed`` it draws from a forked generator and leaves the global state as it was.
    """
    if seed is not None and temperature > 0:
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            return generate(model, tokenizer, texts, max_new_tokens, batch_size, temperature)
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # new tokens must follow the prompt directly in every row
    device = next(model.parameters()).device
    results: list[Generated] = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id, use_cache=True, **sampling)
            for row in output[:, batch["input_ids"].shape[1]:].tolist():
                ended = tokenizer.eos_token_id in row
                row = row[: row.index(tokenizer.eos_token_id)] if ended else row
                results.append(Generated(tokenizer.decode(row, skip_special_tokens=True), len(row), ended))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return results


def answer(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 96, batch_size: int = 32,
           temperature: float = 0.0) -> list[Generated]:
    """The model's reply to each conversation (a list of messages ending with the user's turn)."""
    return generate(model, tokenizer, chat_prompt_texts(tokenizer, conversations), max_new_tokens, batch_size, temperature)
