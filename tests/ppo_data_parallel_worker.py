"""One PPO step's experience and update on a fixed rollout, in one process or in each process of a data-parallel
run (``torchrun --nproc_per_node 2 tests/ppo_data_parallel_worker.py BASE OUT``). Every process samples the same
rollout of 8 answers (the same model and seed), takes its share (``ppo.local_share``) and learns from it; rank 0
saves the gradients of each optimizer step and the updated weights, which tests/test_distributed.py compares."""

import sys

import torch

from medgpt_utils import models, ppo
from medgpt_utils.generation import chat_prompt_texts

QUESTIONS = ["What causes gout?", "How is influenza treated?", "头痛怎么办？", "When should I see a doctor for a cough?"]


def low_id_share(prompts, batch, answers):
    """A synthetic reward: the share of answer tokens with an id below 300, weighted by the question (so the two
    processes' halves differ in scale, and statistics taken over one half would differ from the whole's)."""
    share = ((batch.response < 300) & (batch.response_mask == 1)).float().sum(1) / batch.response_mask.sum(1).clamp(min=1)
    weights = torch.tensor([1.0 + 3 * next(i for i, q in enumerate(QUESTIONS) if q in p) for p in prompts])
    return share * weights


def main(base: str, out: str) -> None:
    rank, _ = ppo.init_data_parallel("cpu")
    torch.manual_seed(0)  # the same adapter and value head in every process
    tokenizer = models.load_tokenizer(base)
    model = models.add_lora(models.load_causal_lm(base), r=8, alpha=16, target_modules="all-linear")
    # Two epochs over one minibatch holding the whole rollout (one process) or each process's half of it: both
    # optimizer steps must then see the same gradient. Score normalisation and whitening use every answer.
    config = ppo.PPOConfig(prompts_per_step=8, samples_per_prompt=2, minibatch_size=8, ppo_epochs=2, learning_rate=1e-3,
                           max_new_tokens=10, score_norm=True, whiten_advantages=True, kl_coef=0.05, seed=0)
    loop = ppo.PPOLoop(model, tokenizer, low_id_share, config)
    prompts = ppo.repeat_prompts(chat_prompt_texts(tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS]), 2)
    torch.manual_seed(1)
    batch = ppo.rollout(model, tokenizer, prompts, config.max_new_tokens, config.temperature)
    rows = ppo.local_share(list(range(len(prompts))), config.samples_per_prompt)
    local, local_prompts = batch.select(rows), [prompts[i] for i in rows]
    params = [p for group in loop.optimizer.param_groups for p in group["params"]]
    grads = []
    loop.optimizer.register_step_pre_hook(lambda *_: grads.append([p.grad.detach().clone() for p in params]))
    record = loop.learn(local, loop.experience(local_prompts, local))
    if rank == 0:
        torch.save({"grads": grads, "weights": [p.detach().clone() for p in params], "rows": rows,
                    "record": {k: v for k, v in record.items() if isinstance(v, float) and not k.startswith("time_")}}, out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
