"""Reward-model scores: r(prompt, answer) for conversations, and pairwise accuracy on preference pairs.

Used by the reward-model stage, the alignment stages' judge, pair sampling and the evaluation of every stage.
"""

from __future__ import annotations

from collections import defaultdict

import torch


@torch.no_grad()
def reward_scores(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """r(prompt, answer) for each full conversation (the last turn is the answer)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[start : start + batch_size]]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        scores += model(**batch).logits[:, 0].float().tolist()
    model.train(was_training)
    return scores


def pairwise_accuracy(model, tokenizer, pairs) -> dict:
    """Share of pairs where r(chosen) > r(rejected), overall and by ``rejected_kind`` (when the pairs have one)."""
    chosen = reward_scores(model, tokenizer, [p + c for p, c in zip(pairs["prompt"], pairs["chosen"])])
    rejected = reward_scores(model, tokenizer, [p + r for p, r in zip(pairs["prompt"], pairs["rejected"])])
    wins = [c > r for c, r in zip(chosen, rejected)]
    by_kind = defaultdict(list)
    kinds = pairs["rejected_kind"] if "rejected_kind" in pairs.column_names else [None] * len(wins)
    for kind, win in zip(kinds, wins):
        if kind is not None:
            by_kind[kind].append(win)
    return {"accuracy": sum(wins) / len(wins), "by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
            "chosen_scores": chosen, "rejected_scores": rejected}

