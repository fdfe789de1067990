"""Reward-model scores: r(prompt, answer) for conversations, and pairwise accuracy on preference pairs.

Used by the reward-model stage, the alignment stages' judge, pair sampling and the evaluation of every stage.
"""

from __future__ import annotations

from collections import defaultdict

import torch


class ImplicitReward(torch.nn.Module):
    """A reward model trained the DPO way (``reward_kind="implicit"``): the SFT model trained with DPO's loss on the
    preference pairs (``policy``) and the SFT model itself (``reference``). Its score is DPO's implicit reward
    (Rafailov et al. 2023),  r(q, a) = beta * (log pi(a | q) - log pi_ref(a | q)),  each log-probability summed over
    the answer's tokens.

    ``reference=None``: ``policy`` is a LoRA adapter on its start model and the reference is that model with the
    adapter switched off. One model in memory instead of two, and on a 4-bit model the score is exactly what the
    adapter adds: a merged, re-quantized copy would put its rounding into every score."""

    def __init__(self, policy, reference, beta: float):
        super().__init__()
        if reference is None and not hasattr(policy, "disable_adapter"):
            raise ValueError("ImplicitReward: without a reference model the policy must be a LoRA (peft) model")
        self.policy, self.reference, self.beta = policy, reference, beta

    def reference_logprob_sums(self, sequences: list[tuple[list[int], int]], pad_token_id: int) -> torch.Tensor:
        """log pi_ref(answer | prompt) of each sequence: the reference model's, or the policy's with its adapter off."""
        if self.reference is not None:
            return answer_logprob_sums(self.reference, sequences, pad_token_id)
        with self.policy.disable_adapter():
            return answer_logprob_sums(self.policy, sequences, pad_token_id)


def answer_token_ids(tokenizer, conversation: list[dict]) -> tuple[list[int], int]:
    """The conversation's token ids and where its answer (the last turn) starts: where the tokenized prompt (with the
    generation prompt) and the tokenized conversation diverge, as TRL's DPO trainer splits them."""
    def ids(messages, **kwargs):
        return tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, **kwargs), add_special_tokens=False)["input_ids"]

    prompt, full = ids(conversation[:-1], add_generation_prompt=True), ids(conversation)
    start = next((i for i, (a, b) in enumerate(zip(prompt, full)) if a != b), min(len(prompt), len(full)))
    return full, start


def answer_logprob_sums(model, sequences: list[tuple[list[int], int]], pad_token_id: int) -> torch.Tensor:
    """log p(answer | prompt), summed over the answer's tokens, for each (token ids, answer start) (right-padded batch)."""
    device = next(model.parameters()).device
    width = max(len(ids) for ids, _ in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    answer = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, (ids, start) in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        answer[row, start : len(ids)] = True
    attention_mask = (torch.arange(width) < torch.tensor([len(ids) for ids, _ in sequences])[:, None]).long()
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None].to(device)).squeeze(-1)
    return (logprobs * answer[:, 1:].to(device)).sum(-1).cpu()


def implicit_reward_scores(model: ImplicitReward, tokenizer, conversations: list[list[dict]], batch_size: int) -> list[float]:
    """beta * (log pi(a|q) - log pi_ref(a|q)) for each conversation, in batches of ``batch_size``."""
    was_training = model.policy.training  # the reference stays in eval mode; the policy may be in training
    model.policy.eval()
    if model.reference is not None:
        model.reference.eval()
    scores: list[float] = []
    for start in range(0, len(conversations), batch_size):
        sequences = [answer_token_ids(tokenizer, c) for c in conversations[start : start + batch_size]]
        ratio = (answer_logprob_sums(model.policy, sequences, tokenizer.pad_token_id)
                 - model.reference_logprob_sums(sequences, tokenizer.pad_token_id))
        scores += (model.beta * ratio).tolist()
    model.policy.train(was_training)
    return scores


@torch.no_grad()
def reward_scores(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32) -> list[float]:
    """r(prompt, answer) for each full conversation (the last turn is the answer): the scalar head's output, or, for
    a reward model trained the DPO way, its implicit reward."""
    if isinstance(model, ImplicitReward):
        return implicit_reward_scores(model, tokenizer, conversations, batch_size)
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

