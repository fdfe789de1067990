"""Metrics shared by the notebooks, the ``medgpt`` report and the tests."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def heldout_loss(model, tokenizer, texts: list[str], block_size: int, batch_size: int = 8) -> float:
    """Mean next-token loss over ``texts`` packed into ``block_size`` blocks (as in training).

    Perplexity is ``exp(loss)``: the number of equally likely tokens the model is choosing
    between, on average. Lower is better.
    """
    from .stages.pretrain import pack_texts

    blocks = pack_texts(texts, tokenizer, block_size)
    if not blocks:
        raise ValueError("held-out texts are shorter than one block")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids = torch.tensor(blocks[start : start + batch_size], device=device)
        loss = model(input_ids=ids, labels=ids).loss
        n = ids.numel() - ids.shape[0]  # one prediction fewer than tokens per block
        total += loss.item() * n
        count += n
    model.train(was_training)
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(min(loss, 50.0))


def tokens_per_char(tokenizer, texts: list[str]) -> float:
    """How many tokens the tokenizer spends per character (lower = more compact)."""
    chars = sum(len(t) for t in texts)
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return tokens / max(chars, 1)
