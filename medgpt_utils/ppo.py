"""PPO for RLHF, small enough to read in one sitting (TRL 1.x no longer ships a PPOTrainer).

The pieces, in the order one PPO step uses them:

1. ``rollout``            sample answers from the policy (left padding, KV cache, stop at EOS)
2. ``response_mask``      tokens after the first EOS count nowhere
3. ``sequence_logprobs``  log pi(token) of the answer tokens, values and entropy, in one pass
4. ``PPOLoop.shaped_scores``  each score against its siblings' mean (several answers per prompt), normalised
5. ``kl_penalized_rewards``  r_t = -beta * (log pi - log pi_ref) per token, + score at the last token
6. ``gae``                advantages A_t and returns R_t (generalised advantage estimation)
7. ``policy_loss`` / ``value_loss``  clipped surrogate and clipped value loss
8. ``PPOLoop.step``       ``rollout``, then ``experience`` (steps 3-6), then ``learn``: several epochs over
                          minibatches of the rollout; then the next rollout
9. ``PPOLoop.ptx_loss``   optional (``ptx_coef`` > 0, PPO-ptx): the SFT loss on a batch of SFT dialogues,
                          added to each minibatch's loss

Model layout: the policy is the SFT model with a trainable LoRA adapter; the reference policy is
the same weights with the adapter switched off (``with model.disable_adapter()``), so there is no
second copy in memory. The value function is a linear head on the policy's last hidden state
(``ValueHead``): it reads the same features the policy writes with and costs one matrix. A critic
initialised from the reward model would start closer to the scores but needs a second network
in memory and a second forward pass per minibatch, which a T4 cannot spare for a 7B policy.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .generation import OVERFLOW_ADVICE, generate_tokens


@dataclass
class PPOConfig:
    """Knobs of the PPO loop (defaults follow Ziegler et al. 2019 / Ouyang et al. 2022, scaled down)."""

    prompts_per_step: int = 32  # rollout size: answers sampled per PPO step
    minibatch_size: int = 8  # answers per gradient step inside a PPO epoch
    gradient_accumulation_steps: int = 1  # minibatches summed before one optimizer step
    ppo_epochs: int = 4  # passes over each rollout
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    max_new_tokens: int = 96
    temperature: float = 1.0  # sample from the policy itself: no top-k / top-p truncation
    kl_coef: float = 0.1  # beta: weight of the per-token KL penalty to the reference policy
    adaptive_kl: bool = False  # steer beta so the KL tracks ``target_kl`` (Ziegler et al.)
    target_kl: float = 4.0  # nats per answer, for the adaptive controller
    kl_horizon: int = 10_000  # answers over which the controller corrects the KL error
    gamma: float = 1.0  # discount; 1.0: every token of an answer counts equally
    lam: float = 0.95  # GAE lambda: bias (0) vs variance (1) of the advantage estimate
    cliprange: float = 0.2  # epsilon of the clipped surrogate
    cliprange_value: float = 0.2  # how far a value prediction may move per update
    vf_coef: float = 0.1  # weight of the value loss against the policy loss
    missing_eos_penalty: float | None = None  # subtracted from the score of answers that never end
    score_clip: float | None = None  # clip reward-model scores to [-c, c] (None: no clipping)
    score_norm: bool = False  # scores -> (s - running mean) / running std: beta means the same for any reward model
    lr_schedule: str = "constant"  # "constant", "linear" or "cosine" decay to 0 over ``total_steps``
    total_steps: int = 0  # PPO steps the schedule spans (0: constant rate)
    target_approx_kl: float | None = None  # stop a step's epochs once approx KL(old || new) exceeds it
    whiten_advantages: bool = True  # rescale each batch's advantages to unit variance (False: keep the scores' scale)
    samples_per_prompt: int = 1  # answers per prompt in a rollout (>1: each score minus its siblings' mean)
    value_warmup_steps: int = 0  # first steps train only the value head: advantages start from a fitted baseline
    # PPO-ptx (a variant of Ouyang et al. 2022, eq. 2, whose term is on pretraining text): gamma times the SFT loss
    # on a batch of SFT dialogues beside each minibatch's PPO loss (not during value warm-up), so climbing the
    # reward model does not unlearn what SFT taught (0: plain PPO)
    ptx_coef: float = 0.0
    seed: int = 42


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b on the policy's last hidden state h_t (one number per token)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.summary.weight)  # start at V = 0: no bias before it has seen a return
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden_states.to(self.summary.weight.dtype)).squeeze(-1)


# ---------------------------------------------------------------- rollout
@dataclass
class Rollout:
    """One batch of sampled answers. ``query`` is left-padded, ``response`` right-padded."""

    query: torch.Tensor  # (B, Q) prompt ids, left padding
    query_mask: torch.Tensor  # (B, Q) 1 on real prompt tokens
    response: torch.Tensor  # (B, T) sampled ids; pad after the first EOS
    response_mask: torch.Tensor  # (B, T) 1 up to and including the first EOS
    ended: torch.Tensor  # (B,) True where the answer ended with EOS

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query, self.response], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], dim=1)

    def select(self, rows) -> "Rollout":
        """The answers at ``rows`` (a slice or indices)."""
        return Rollout(self.query[rows], self.query_mask[rows], self.response[rows], self.response_mask[rows], self.ended[rows])


def response_mask(response: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for every token up to and including the first EOS, 0 after it (and 0 nowhere else).

    ``mask_t = 1 if no EOS occurs at a position < t``. Padding ``generate`` writes after EOS and
    anything sampled past it never enters a log-prob, a reward, an advantage or a loss.
    """
    is_eos = (response == eos_token_id).long()
    eos_before = torch.cumsum(is_eos, dim=1) - is_eos  # EOS strictly before position t
    return (eos_before == 0).long()


def rollout(model, tokenizer, prompt_texts: list[str], max_new_tokens: int, temperature: float = 1.0) -> Rollout:
    """Sample one answer per prompt from the policy (``generation.generate_tokens``: KV cache, EOS stop,
    no top-k / top-p truncation, since PPO's ratio needs samples from the policy itself)."""
    batch, response = generate_tokens(model, tokenizer, prompt_texts, max_new_tokens, temperature)
    mask = response_mask(response, tokenizer.eos_token_id)
    response = response.masked_fill(mask == 0, tokenizer.pad_token_id)
    ended = ((response == tokenizer.eos_token_id) & (mask == 1)).any(dim=1)
    return Rollout(batch["input_ids"], batch["attention_mask"], response, mask, ended)


def decode_answers(tokenizer, rollout_: Rollout) -> list[str]:
    """The answer texts (special tokens, EOS included, dropped)."""
    return tokenizer.batch_decode(rollout_.response, skip_special_tokens=True)  # pad already fills after EOS


# ---------------------------------------------------------------- log-probs, values, entropy
def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_len: int,
                      temperature: float = 1.0, value_head: ValueHead | None = None):
    """log pi(a_t | s_t) of each answer token, plus V(s_t) and the entropy H(pi(. | s_t)).

    Positions come from the attention mask (``cumsum - 1``), so a left-padded prompt gets the
    same positions as ``generate`` gave it and the log-probs match the sampling distribution.
    The logits at position t predict token t+1: the answer's T tokens are predicted by the T
    positions ending one before the last.
    """
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                output_hidden_states=value_head is not None, use_cache=False)
    logits = out.logits[:, -response_len - 1 : -1].float() / temperature
    targets = input_ids[:, -response_len:]
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, -response_len - 1 : -1]).float()
    return logprobs, values, entropy


# ---------------------------------------------------------------- rewards and advantages
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


# ---------------------------------------------------------------- data parallel (torchrun / accelerate launch)
# Each process generates, scores and learns from its own share of a step's prompts. What must be the same as one
# process with all of them is computed over all processes: the advantages' whitening, the score statistics, the
# token mean of the losses (each process divides its token sum by the global token count, and the gradients are
# summed), the KL and the logged means. In one process every helper below is the plain computation.
def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a data-parallel run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_data_parallel(device: str) -> tuple[int, int]:
    """Join the process group a launcher set up (``WORLD_SIZE`` > 1: gloo on the CPU, NCCL on GPUs); a no-op
    in one process. Returns (rank, world size)."""
    import os

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return world()


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """``x`` summed over the processes (``x`` itself in one process)."""
    import torch.distributed as dist

    if world()[1] == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` (equal sizes), concatenated in rank order (``x`` itself in one process)."""
    import torch.distributed as dist

    size = world()[1]
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def global_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over every process's entries."""
    if world()[1] == 1:
        return x.mean()
    return all_sum(x.sum()) / all_sum(torch.tensor(float(x.numel()), device=x.device))


def global_masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``masked_mean`` over every process's masked entries."""
    if world()[1] == 1:
        return masked_mean(x, mask)
    mask = mask.to(x.dtype)
    return all_sum((x * mask).sum()) / all_sum(mask.sum()).clamp(min=1)


def local_share(items: list, group_size: int = 1) -> list:
    """This process's contiguous share of ``items``, in whole groups of ``group_size`` (a prompt's k answers stay
    together: each is scored against its siblings)."""
    rank, size = world()
    groups = len(items) // group_size
    if len(items) % group_size or groups % size:
        raise ValueError(f"{len(items)} items in groups of {group_size} cannot be shared equally by {size} processes")
    per_process = groups // size * group_size
    return items[rank * per_process : (rank + 1) * per_process]


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries: advantages on a unit scale for every batch."""
    mean = global_masked_mean(x, mask)  # over every process's tokens in a data-parallel run
    var = global_masked_mean((x - mean) ** 2, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -beta * (log pi(a_t) - log pi_ref(a_t)), plus the score s at the
    answer's last real token. Returns (rewards, kl) with kl_t = log pi - log pi_ref (0 when masked).

    Summed over an answer, E[sum_t kl_t] is KL(pi || pi_ref) for that prompt: the leash that
    keeps the policy near the SFT model, where the reward model's judgement can be trusted.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # index of the last real token (its EOS if it ended)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), right to left over each answer:

        delta_t = r_t + gamma * V_{t+1} - V_t           (V after the last real token is 0)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V_t                              (the value target)

    Masked positions get A = R = 0 and do not leak into earlier tokens.
    """
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = advantage * m
        next_value = values[:, t] * m  # a masked step resets the bootstrap to 0
        next_advantage = advantage * m
    returns = advantages + values
    return advantages, returns * mask


# ---------------------------------------------------------------- losses
def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate (Schulman et al. 2017), as a loss to minimise:

        ratio_t = exp(log pi(a_t) - log pi_old(a_t))
        L = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))

    Clipping removes the incentive to move a token's probability more than eps away from the
    policy that sampled it. Also returns the clip fraction and the approximate KL
    0.5 * mean((log pi - log pi_old)^2) between the updated and the sampling policy.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
             "approx_kl": masked_mean(0.5 * log_ratio.pow(2), mask).item()}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: 0.5 * mean_t max((V_t - R_t)^2, (V_clip_t - R_t)^2), where
    V_clip_t = V_old_t + clip(V_t - V_old_t, -c, c) limits how far one update moves the critic."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    stats = {"value_clipfrac": masked_mean(((clipped_values - returns) ** 2 > (values - returns) ** 2).float(), mask).item()}
    return loss, stats


class RunningMoments:
    """Mean and variance of every score seen so far (Chan et al.'s parallel update), for ``score_norm``."""

    def __init__(self):
        self.mean, self.var, self.count = 0.0, 1.0, 0

    def update(self, x: torch.Tensor) -> None:
        n, batch_mean, batch_var = x.numel(), x.mean().item(), x.var(unbiased=False).item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.var**0.5 + 1e-8)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """Multiplier of the learning rate at PPO step ``step`` (0-based): 1 throughout for "constant",
    falling to 0 at ``total_steps`` for "linear" and "cosine"."""
    if schedule == "constant" or total_steps <= 0:
        return 1.0
    progress = min(step / total_steps, 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown PPO lr_schedule {schedule!r}: use constant, linear or cosine")


class AdaptiveKLController:
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)   (Ziegler et al. 2019).

    KL above target raises beta (a tighter leash), below target loosens it, never by more than
    20% of n / horizon per step.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        error = max(-0.2, min(0.2, current_kl / self.target - 1.0))
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


# ---------------------------------------------------------------- the loop
RewardFn = Callable[[list[str], Rollout, list[str]], torch.Tensor]
"""reward_fn(prompt_texts, rollout, answer_texts) -> one score per answer (shape (B,))."""


def repeat_prompts(prompts: list, samples_per_prompt: int) -> list:
    """Each prompt ``samples_per_prompt`` times in a row: the rollout layout ``shaped_scores`` groups by."""
    return [p for p in prompts for _ in range(samples_per_prompt)]


@dataclass
class Experience:
    """One rollout's training signal (``PPOLoop.experience``): per answer its score, per answer token the old
    policy's and the reference's log-probs, the value estimates, the KL-penalised rewards, the KL, and the
    advantages and returns that the clipped updates learn from."""

    scores: torch.Tensor
    answers: list
    old_logprobs: torch.Tensor
    old_values: torch.Tensor
    ref_logprobs: torch.Tensor
    rewards: torch.Tensor
    kl: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


class PPOLoop:
    """Policy (LoRA model), value head, optimizer and step counter; ``step`` runs one PPO step.

    ``model`` must be a PEFT model: its adapter is the policy and ``disable_adapter`` gives
    the reference policy. ``reward_fn`` scores answers (the reward model in the course,
    anything in tests). ``sft_batch(n)`` gives the n-th batch of SFT dialogues (``input_ids``,
    ``attention_mask``, ``labels`` with -100 outside the answers) for ``ptx_coef`` > 0; numbered, so
    a resumed run draws the same batches.
    """

    CHECKPOINT_STATE = "ppo_state.json"
    VALUE_HEAD_FILE = "value_head.safetensors"
    OPTIMIZER_FILE = "optimizer.pt"
    RNG_FILE = "rng.safetensors"

    def __init__(self, model, tokenizer, reward_fn: RewardFn, config: PPOConfig,
                 sft_batch: Callable[[int], dict] | None = None):
        if config.ptx_coef > 0 and sft_batch is None:
            raise ValueError(f"ptx_coef={config.ptx_coef} needs SFT dialogues to learn from: pass sft_batch")
        self.model, self.tokenizer, self.reward_fn, self.config = model, tokenizer, reward_fn, config
        self.sft_batch = sft_batch
        device = next(model.parameters()).device
        self.value_head = ValueHead(model.config.hidden_size).to(device)
        self.kl_controller = AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
        trainable = [p for p in model.parameters() if p.requires_grad] + list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, eps=1e-5)
        self.score_moments = RunningMoments()
        lr_factor(config.lr_schedule, 0, config.total_steps)  # an unknown schedule fails here, not after a rollout
        self.step_count = 0

    @property
    def kl_coef(self) -> float:
        return self.kl_controller.value

    def score(self, prompt_texts: list[str], batch: Rollout) -> tuple[torch.Tensor, list[str]]:
        """Reward-function scores, with the optional clip and missing-EOS penalty applied."""
        answers = decode_answers(self.tokenizer, batch)
        scores = self.reward_fn(prompt_texts, batch, answers).float().to(batch.response.device)
        if self.config.score_clip is not None:
            scores = scores.clamp(-self.config.score_clip, self.config.score_clip)
        if self.config.missing_eos_penalty is not None:
            scores = scores - self.config.missing_eos_penalty * (~batch.ended).float()
        return scores, answers

    def shaped_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores the loop learns from. With ``samples_per_prompt`` k > 1 (the rollout holds each prompt
        k times in a row) every score is first taken relative to the mean of its k - 1 siblings: how much
        better this answer is than the policy's other answers to the same prompt (leave-one-out baseline,
        as in RLOO). Some prompts simply score higher than others; a critic has to learn that before its
        advantages say anything about the answer, and with one answer per prompt that noise swamps the signal.
        With ``score_norm`` the result is divided by the running std (and centred on the running mean) of
        all scores so far, so beta weighs KL against one standard deviation of score, whatever the scale."""
        k = self.config.samples_per_prompt
        if k > 1:
            groups = scores.view(-1, k)
            scores = (groups - (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)).view(-1)
        if not self.config.score_norm:
            return scores
        self.score_moments.update(all_gather(scores))  # every process's scores: the same moments everywhere
        return self.score_moments.normalize(scores)

    @torch.no_grad()
    def old_policy_and_reference(self, batch: Rollout):
        """log pi_old and V_old (adapter on) and log pi_ref (adapter off), without gradients, ``minibatch_size``
        answers at a time: the log-softmax over Qwen's 152k-token vocabulary for a whole rollout at once ran a
        T4's budget out of memory (colab-t4 dry run on a GPU capped at 15 GiB: 3.5 GiB for one of its tensors)."""
        self.model.eval()
        T, temperature = batch.response.shape[1], self.config.temperature
        old_logprobs, old_values, ref_logprobs = [], [], []
        for start in range(0, batch.response.shape[0], self.config.minibatch_size):
            part = batch.select(slice(start, start + self.config.minibatch_size))
            logprobs, values, _ = sequence_logprobs(self.model, part.input_ids, part.attention_mask, T, temperature,
                                                    self.value_head)
            old_logprobs.append(logprobs)
            old_values.append(values)
            with self.model.disable_adapter():
                ref_logprobs.append(sequence_logprobs(self.model, part.input_ids, part.attention_mask, T, temperature)[0])
        values = None if old_values[0] is None else torch.cat(old_values)
        return torch.cat(old_logprobs), values, torch.cat(ref_logprobs)

    def experience(self, prompt_texts: list[str], batch: Rollout) -> Experience:
        """What a rollout teaches: scores, the old policy's and the reference's log-probs, KL-penalised rewards
        per token, and the advantages and returns GAE makes of them (whitened with ``whiten_advantages``)."""
        cfg = self.config
        scores, answers = self.score(prompt_texts, batch)
        old_logprobs, old_values, ref_logprobs = self.old_policy_and_reference(batch)
        mask = batch.response_mask.float()
        rewards, kl = kl_penalized_rewards(self.shaped_scores(scores), old_logprobs, ref_logprobs, mask, self.kl_coef)
        advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:  # every batch then pushes equally hard, whether its score differences are large or noise
            advantages = whiten(advantages, mask)
        return Experience(scores, answers, old_logprobs, old_values, ref_logprobs, rewards, kl, advantages, returns)

    def learn(self, batch: Rollout, exp: Experience, timings: dict | None = None) -> dict:
        """``ppo_epochs`` passes of clipped minibatch updates on one rollout's experience, at this step's learning
        rate; then the KL controller and the step counter move on. Returns the step's record."""
        cfg, timings = self.config, dict(timings or {})
        t0 = time.perf_counter()
        learning_rate = cfg.learning_rate * lr_factor(cfg.lr_schedule, self.step_count, cfg.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        update_stats = self._update(batch, exp.old_logprobs, exp.old_values, exp.advantages, exp.returns)
        timings["time_update"] = time.perf_counter() - t0

        mask = batch.response_mask.float()
        sequence_kl = global_mean(exp.kl.sum(dim=1)).item()  # means over every process's answers
        if cfg.adaptive_kl:
            self.kl_controller.update(sequence_kl, batch.response.shape[0] * world()[1])
        self.step_count += 1
        return {
            "step": self.step_count,
            "score": global_mean(exp.scores).item(),
            "reward": global_mean(exp.rewards.sum(dim=1)).item(),  # score - beta * KL, per answer
            "kl": sequence_kl,
            "kl_coef": self.kl_coef,
            "learning_rate": learning_rate,
            "answer_tokens": global_mean(mask.sum(dim=1)).item(),
            "ended_with_eos": global_mean(batch.ended.float()).item(),
            **update_stats,
            **{k: round(v, 4) for k, v in timings.items()},
            "sample_answer": exp.answers[0],
        }

    def step(self, prompt_texts: list[str]) -> dict:
        """One PPO step: sample (``rollout``), make the ``experience``, then ``learn`` from it. With
        ``samples_per_prompt`` k, pass each prompt k times in a row (``repeat_prompts``)."""
        cfg, timings = self.config, {}
        if len(prompt_texts) % cfg.samples_per_prompt:
            raise ValueError(f"{len(prompt_texts)} prompts cannot hold groups of samples_per_prompt={cfg.samples_per_prompt}")
        t0 = time.perf_counter()
        batch = rollout(self.model, self.tokenizer, prompt_texts, cfg.max_new_tokens, cfg.temperature)
        timings["time_generate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        exp = self.experience(prompt_texts, batch)
        timings["time_score"] = time.perf_counter() - t0
        return self.learn(batch, exp, timings)

    def _update(self, batch: Rollout, old_logprobs, old_values, advantages, returns) -> dict:
        cfg = self.config
        # Train mode (gradient checkpointing only acts in it) with every dropout off: the old log-probs were
        # computed without dropout, so LoRA dropout here would make the ratio differ from 1 by noise alone.
        self.model.train()
        for module in self.model.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        n = batch.response.shape[0]
        T = batch.response.shape[1]
        sums: dict[str, float] = {}
        count = 0
        generator = torch.Generator().manual_seed(cfg.seed + self.step_count)
        epochs_run, epoch_kl = 0, 0.0
        for epoch in range(cfg.ppo_epochs):
            if cfg.target_approx_kl is not None and epochs_run and epoch_kl > cfg.target_approx_kl:
                break  # the last epoch moved the policy far from the one that sampled: fresh samples are needed
            epochs_run, epoch_kl = epochs_run + 1, 0.0
            order = torch.randperm(n, generator=generator)
            minibatches = [order[i : i + cfg.minibatch_size] for i in range(0, n, cfg.minibatch_size)]
            for index, rows in enumerate(minibatches):
                mask = batch.response_mask[rows].float()
                logprobs, values, entropy = sequence_logprobs(
                    self.model, batch.input_ids[rows], batch.attention_mask[rows], T, cfg.temperature, self.value_head)
                pg_loss, pg_stats = policy_loss(logprobs, old_logprobs[rows], advantages[rows], mask, cfg.cliprange)
                vf_loss, vf_stats = value_loss(values, old_values[rows], returns[rows], mask, cfg.cliprange_value)
                warming_up = self.step_count < cfg.value_warmup_steps  # the policy waits for a critic worth following
                # Data parallel: this process's share of the minibatch's tokens, so that the summed gradients are
                # those of the token mean over all processes' minibatches (1 in one process).
                share = mask.sum() / all_sum(mask.sum()) if world()[1] > 1 else 1.0
                loss = ((0.0 if warming_up else pg_loss) + cfg.vf_coef * vf_loss) * share / cfg.gradient_accumulation_steps
                if not torch.isfinite(loss):  # stop rather than train on NaN (an fp16 overflow, a broken reward)
                    raise FloatingPointError(f"PPO: the loss became {loss.item()} at step {self.step_count + 1} "
                                             f"(policy {pg_loss.item()}, value {vf_loss.item()}); stopped. {OVERFLOW_ADVICE}")
                loss.backward()
                ptx_loss = None
                if cfg.ptx_coef > 0 and not warming_up:  # a backward pass of its own: one graph in memory at a time
                    ptx_loss = self.ptx_loss((self.step_count * cfg.ppo_epochs + epoch) * len(minibatches) + index)
                    if not torch.isfinite(ptx_loss):
                        raise FloatingPointError(f"PPO: the ptx (SFT) loss became {ptx_loss.item()} at step "
                                                 f"{self.step_count + 1}; stopped. {OVERFLOW_ADVICE}")
                    # each process its own SFT batch: the summed gradients are those of their mean
                    (cfg.ptx_coef * ptx_loss / world()[1] / cfg.gradient_accumulation_steps).backward()
                if (index + 1) % cfg.gradient_accumulation_steps == 0 or index + 1 == len(minibatches):
                    params = [p for g in self.optimizer.param_groups for p in g["params"]]
                    for param in params if world()[1] > 1 else ():  # the gradients of all processes' tokens
                        if param.grad is not None:
                            torch.distributed.all_reduce(param.grad)
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                stats = {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(),
                         "entropy": masked_mean(entropy, mask).item(), **pg_stats, **vf_stats}
                if ptx_loss is not None:
                    stats["ptx_loss"] = ptx_loss.item()
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
                epoch_kl += pg_stats["approx_kl"] / len(minibatches)
            if world()[1] > 1:  # every process decides the same about the next epoch
                epoch_kl = global_mean(torch.tensor([epoch_kl])).item()
        return {**{key: value / count for key, value in sums.items()}, "ppo_epochs_run": epochs_run}

    def ptx_loss(self, draw: int) -> torch.Tensor:
        """The SFT loss (mean negative log-likelihood of the answer tokens) of the ``draw``-th SFT batch."""
        from .answer_loss import answer_positions_loss

        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.sft_batch(draw).items()}
        return answer_positions_loss(self.model, inputs)[0]

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str | Path, made_with: str | None = None, extra: dict | None = None) -> Path:
        """Adapter, value head, optimizer, RNG state and step, written atomically to ``folder``; ``made_with`` (the
        caller's key for the settings and inputs, so that a run with other ones does not resume from it) and
        ``extra`` (JSON the caller wants back, e.g. the steps' statistics so far) are kept with them."""
        from safetensors.torch import save_file

        from .artifacts import atomic_dir

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            self.model.save_pretrained(tmp / "adapter", safe_serialization=True)
            save_file(self.value_head.state_dict(), str(tmp / self.VALUE_HEAD_FILE))
            torch.save(self.optimizer.state_dict(), tmp / self.OPTIMIZER_FILE)  # tensors and numbers only
            save_file(rng_states(), str(tmp / self.RNG_FILE))
            state = {"step": self.step_count, "kl_coef": self.kl_coef, "config": asdict(self.config),
                     "score_moments": vars(self.score_moments), "made_with": made_with, "extra": extra or {}}
            (tmp / self.CHECKPOINT_STATE).write_text(json.dumps(state, indent=2))
        return folder

    @classmethod
    def checkpoint_state(cls, folder: str | Path) -> dict:
        """The step, settings and ``made_with`` key a checkpoint recorded; ``CheckpointError`` naming the folder if
        it cannot be read."""
        try:
            state = json.loads((Path(folder) / cls.CHECKPOINT_STATE).read_text(encoding="utf-8"))
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise ValueError(f"{cls.CHECKPOINT_STATE} has no step")
            return state
        except (OSError, ValueError) as err:
            raise CheckpointError(folder, f"{type(err).__name__}: {err}") from None

    def load_checkpoint(self, folder: str | Path) -> int:
        """Restore what ``save_checkpoint`` wrote; returns the step to continue from. Every file is read before
        anything changes, so a damaged checkpoint (``CheckpointError``) leaves the loop as it was."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        state = self.checkpoint_state(folder)
        try:
            adapter = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
            value_head = load_file(str(folder / self.VALUE_HEAD_FILE))
            # weights_only=True: the loader refuses anything but tensors and plain containers
            optimizer = torch.load(folder / self.OPTIMIZER_FILE, weights_only=True)
            rng = load_file(str(folder / self.RNG_FILE))
        except Exception as err:  # missing or truncated files: safetensors, torch and the OS raise many kinds
            raise CheckpointError(folder, f"{type(err).__name__}: {err}") from None
        set_peft_model_state_dict(self.model, adapter)
        self.value_head.load_state_dict(value_head)
        self.optimizer.load_state_dict(optimizer)
        set_rng_states(rng)
        self.step_count, self.kl_controller.value = state["step"], state["kl_coef"]
        vars(self.score_moments).update(state.get("score_moments", {}))
        return self.step_count


class CheckpointError(RuntimeError):
    """A PPO checkpoint that cannot be read; the message names the folder."""

    def __init__(self, folder, problem: str):
        self.folder, self.problem = Path(folder), problem
        super().__init__(f"{folder}: damaged PPO checkpoint ({problem})")


def rng_states() -> dict[str, torch.Tensor]:
    """Every random state a resumed run needs: torch's CPU generator, each CUDA device's, Python's."""
    states = {"torch": torch.get_rng_state(),
              "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch"])
    if "python" in states:
        internal = tuple(int(v) for v in states["python"].tolist())
        random.setstate((3, internal, None))
    cuda = [states[k] for k in sorted((k for k in states if k.startswith("cuda")), key=lambda k: int(k[4:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
