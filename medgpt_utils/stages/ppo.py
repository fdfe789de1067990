"""Stage 4, RLHF with PPO: raise the reward model's score while a KL leash keeps the SFT model's knowledge.

Recipe: the SFT model gets a trainable LoRA adapter (the policy); with the adapter off it is the
reference policy. Each step samples ``rl.samples_per_prompt`` answers to each of a few training
prompts, scores them with the reward model (the same chat-templated text it was trained on) plus the
rule rewards (``evaluation.rule_rewards``), takes each score against its siblings', subtracts
beta * KL per token, and runs clipped PPO updates (``medgpt_utils.ppo``). Judged on held-out prompts,
greedy answers of the SFT and the PPO policy side by side: reward-model score (paired, with a 95%
interval), key-fact recall, urgent-care advice on red-flag prompts, answers naming another condition,
non-words and the KL to the reference, summed up by ``judging.verdict``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
import uuid
from pathlib import Path

import torch

from .. import models, ppo, scoring
from ..artifacts import output_root, stage_dir
from ..evaluation import rule_rewards, rule_weights
from ..generation import chat_prompt_texts
from ..judging import comparison, examples, judge, kl_to_reference, verdict
from ..presets import Preset, field_value
from ..training import (StageRun, begin_stage, checkpoint_key, is_main_process, measuring, save_metrics, seed_stage,
                        stage_output)
from .alignment import (ensure_inputs, heldout_prompts, judge_question_sets, load_reward_scorer, prompt_data_report,
                        sft_question_set_knowledge, training_prompts)

STAGE = "ppo"


# The library's loop knows no preset; every one of its fields comes from one (tests/test_presets.py checks
# that none is left to the loop's own default), so `--set` and `override` reach all of them.
PPO_FIELDS_FROM_PRESET = {
    "prompts_per_step": "ppo.batch_size", "gradient_accumulation_steps": "ppo.gradient_accumulation_steps",
    "learning_rate": "ppo.learning_rate", "max_new_tokens": "max_new_tokens", "seed": "alignment_seed",
    "lr_schedule": "ppo.lr_scheduler_type", "total_steps": "ppo.max_steps",
    **{name: f"rl.{name}" for name in ("minibatch_size", "ppo_epochs", "max_grad_norm", "temperature", "kl_coef",
                                       "adaptive_kl", "target_kl", "kl_horizon", "gamma", "lam", "cliprange",
                                       "cliprange_value", "vf_coef", "missing_eos_penalty", "score_clip",
                                       "score_norm", "target_approx_kl", "value_warmup_steps",
                                       "samples_per_prompt", "whiten_advantages", "ptx_coef")},
}


def ppo_config(preset: Preset) -> ppo.PPOConfig:
    """The loop's knobs, every one from the preset."""
    return ppo.PPOConfig(**{name: field_value(preset, path) for name, path in PPO_FIELDS_FROM_PRESET.items()})


def sft_batches(preset: Preset, tokenizer):
    """PPO-ptx's SFT data, or None when ``rl.ptx_coef`` is 0: a function giving the n-th batch of
    ``rl.minibatch_size`` dialogues of ``data.sft`` (the SFT stage's own training set), drawn with a seed of
    their own (the same batch for the same n, resumed or not; each process its own), tokenized with the
    assistant-only labels SFT trained on, cut to ``max_length`` and padded on the tokenizer's side (the right, outside
    a rollout): ``models.assistant_labelled_batch``."""
    if preset.rl.ptx_coef <= 0:
        return None
    from .sft import load_datasets

    dialogues = list(load_datasets(preset)[0]["messages"])
    size, (rank, processes) = min(preset.rl.minibatch_size, len(dialogues)), ppo.world()

    def batch(draw: int) -> dict:
        rng = random.Random((preset.alignment_seed * 1_000_003 + draw) * processes + rank)
        picked = [dialogues[i] for i in rng.sample(range(len(dialogues)), size)]
        return models.assistant_labelled_batch(tokenizer, picked, preset.max_length)
    return batch


def checkpoint_dir(preset: Preset, name: str = STAGE) -> Path:
    return output_root() / preset.name / f"{name}_checkpoint"


def step_prompts(preset: Preset, config: ppo.PPOConfig, prompt_texts: list[str], step: int) -> list[str]:
    """The prompts of PPO step ``step`` (from 0): ``ppo.batch_size / rl.samples_per_prompt`` distinct training prompts,
    drawn with a seed of their own (the same prompts for a step, resumed or not), each repeated k times in a row."""
    k = config.samples_per_prompt
    if config.prompts_per_step % k:
        raise ValueError(f"ppo.batch_size={config.prompts_per_step} answers per step must be a multiple of "
                         f"rl.samples_per_prompt={k}")
    rng = random.Random(preset.alignment_seed * 100_003 + step)
    return ppo.repeat_prompts(rng.sample(prompt_texts, config.prompts_per_step // k), k)


def train(preset: Preset, loop: ppo.PPOLoop, prompt_texts: list[str], steps: int, checkpoint: Path | None = None,
          progress: bool = True) -> list[dict]:
    """Run PPO steps on shuffled training prompts, saving ``checkpoint`` every ``rl.save_every`` steps; resumes
    from it when it was made with this stage's settings and inputs (``resume``)."""
    from tqdm.auto import tqdm

    key = checkpoint_key(preset, STAGE)
    history = resume(loop, checkpoint, key) if checkpoint is not None else []  # the steps done before, if resumed
    for step in tqdm(range(loop.step_count, steps), desc="PPO", disable=not progress, initial=loop.step_count, total=steps):
        # In a data-parallel run (torchrun / accelerate launch) each process takes its share of the step's prompts.
        history.append(loop.step(ppo.local_share(step_prompts(preset, loop.config, prompt_texts, step), loop.config.samples_per_prompt)))
        if checkpoint is not None and (step + 1) % preset.rl.save_every == 0 and is_main_process():
            loop.save_checkpoint(checkpoint, made_with=key, extra={"history": history})
    return history


def resume(loop: ppo.PPOLoop, checkpoint: Path, key: str) -> list[dict]:
    """Load ``checkpoint`` if it was made under ``key`` (``training.checkpoint_key``: the stage's settings, the
    rewards, the prompts and the exact SFT and reward models); returns the statistics of the steps it had done.
    One made otherwise, or damaged, would mix two runs under one record: it is moved aside (never deleted) with one
    line saying why, and the run starts afresh."""
    if not checkpoint.exists():
        return []
    try:
        state = loop.checkpoint_state(checkpoint)
        if state.get("made_with") != key or state.get("config") != json.loads(json.dumps(dataclasses.asdict(loop.config))):
            why = "was made with other settings or inputs (PPO or reward knobs, prompts, or another SFT or reward model)"
        else:
            loop.load_checkpoint(checkpoint)
            print(f"resumed PPO from {checkpoint} at step {loop.step_count}")
            return list(state.get("extra", {}).get("history", []))
    except ppo.CheckpointError as err:
        why = f"is damaged ({err.problem})"
    aside = checkpoint.with_name(f"{checkpoint.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}")
    checkpoint.rename(aside)
    print(f"{checkpoint} {why}: moved to {aside.name}, starting afresh (delete it when you no longer need it)")
    return []


def prepare(preset: Preset, name: str = STAGE) -> StageRun:
    """Everything before the PPO loop: the SFT model with a fresh LoRA adapter (the policy; adapter off: the
    reference), the reward model, the training prompts (``run.train_set``, chat-templated texts), the reward
    function, and the SFT model judged on the held-out prompts (``run.eval_set``)."""
    begin_stage(preset, name)  # the output folder's lock, before anything is built
    if preset.ppo.max_steps <= 0:  # PPO samples its own data: there are no epochs to fall back on
        raise ValueError(f"PPO needs ppo.max_steps > 0 (got {preset.ppo.max_steps}); set it with --set ppo.max_steps=N")
    sft_path, reward_path = ensure_inputs(preset)
    _, processes = ppo.init_data_parallel(preset.device)  # under a launcher: one process per device
    if processes > 1 and preset.ppo.batch_size % (processes * preset.rl.samples_per_prompt):
        raise ValueError(f"ppo.batch_size={preset.ppo.batch_size} answers per step cannot be shared by {processes} processes "
                         f"in groups of rl.samples_per_prompt={preset.rl.samples_per_prompt}")
    seed_stage(preset, preset.alignment_seed)  # every process starts from the same adapter and value head
    tokenizer = models.load_tokenizer(sft_path, preset.trust_remote_code)
    policy = models.load_lora_model(preset, sft_path)
    reward_model, reward_tokenizer = load_reward_scorer(preset, reward_path, tokenizer.pad_token_id)
    train_rows = training_prompts(preset)
    row_by_text = dict(zip(chat_prompt_texts(tokenizer, list(train_rows["prompt"])), train_rows))

    def reward_fn(prompt_texts, batch, answers):
        """The reward model's score plus the rules (``evaluation.rule_rewards``: urgent care, wrong condition, key facts,
        made-up words)."""
        rows_ = [row_by_text[t] for t in prompt_texts]
        conversations = [r["prompt"] + [{"role": "assistant", "content": a}] for r, a in zip(rows_, answers)]
        scores = torch.tensor(scoring.reward_scores(reward_model, reward_tokenizer, conversations))
        return scores + torch.tensor(rule_rewards(answers, rows_, **rule_weights(preset)))

    rows = heldout_prompts(preset)
    metrics = {"stage": name, "preset": preset.name, "config": dataclasses.asdict(ppo_config(preset)), "steps": preset.ppo.max_steps,
               "heldout_prompts": len(rows), "parameters": models.count_parameters(policy),
               "data": prompt_data_report(preset)}
    with policy.disable_adapter():
        before = judge(policy, tokenizer, reward_model, reward_tokenizer, rows, preset.max_new_tokens, preset.conditions)
    knowledge_before = sft_question_set_knowledge(preset, policy, tokenizer)
    return StageRun(preset, STAGE, policy, tokenizer, sft_path, metrics, train_set=list(row_by_text), eval_set=rows,
                    workdir=checkpoint_dir(preset, name), checkpoints=checkpoint_dir(preset, name),
                    extras={"reward_model": reward_model, "reward_tokenizer": reward_tokenizer, "reward_fn": reward_fn,
                            "before": before, "knowledge_before": knowledge_before, "name": name})


def finish(run: StageRun, loop: ppo.PPOLoop, history: list[dict]) -> Path:
    """After the PPO steps: the policy judged on the SFT model's prompts, the KL to the reference, the verdict;
    the checkpoint (adapter, value head, optimizer) and the merged model saved to ``outputs/<preset>/<name>/``."""
    preset, policy, tokenizer, metrics, x = run.preset, run.model, run.tokenizer, run.metrics, run.extras
    rows, config, name = run.eval_set, loop.config, x["name"]
    after = judge(policy, tokenizer, x["reward_model"], x["reward_tokenizer"], rows, preset.max_new_tokens, preset.conditions)
    kl = kl_to_reference(policy, tokenizer, chat_prompt_texts(tokenizer, list(rows["prompt"])),
                         config.max_new_tokens, config.temperature)
    metrics.update(comparison(x["before"], after))
    metrics.update(judge_question_sets(preset, policy, tokenizer, x, after))
    metrics.update(
        kl_to_reference=kl,
        time_split={k: sum(h.get(k, 0.0) for h in history) for k in ("time_generate", "time_score", "time_update")},
        history=[{k: v for k, v in h.items() if k != "sample_answer"} for h in history],
        sample_answers=[h["sample_answer"] for h in history[-3:]],
        examples=examples(rows, x["before"], after),
    )
    metrics["verdict"] = verdict(metrics, preset.rl.kl_bound, preset.rl.recall_tolerance)
    with stage_output(preset, name) as out:
        if is_main_process():
            loop.save_checkpoint(out / "checkpoint")  # adapter, value head, optimizer: resumable
            models.merge_adapter(run.start_path, out / "checkpoint" / "adapter", out, dtype=preset.torch_dtype,
                                 trust_remote_code=preset.trust_remote_code, atomic=False)
            save_metrics(out, metrics, preset, STAGE)
    run.clean_up()  # the finished stage folder supersedes the step checkpoint
    return stage_dir(preset.name, name)


def run(preset: Preset, name: str = STAGE, resume: bool = True) -> Path:
    """The whole stage, as ``medgpt ppo`` runs it (notebook 04 takes the same steps one cell at a time): saves to
    ``outputs/<preset>/<name>/`` (``name`` keeps a lesson's variant, made with ``override(preset, …)``, beside
    the main run); ``resume`` picks up an interrupted run's checkpoint."""
    run = prepare(preset, name)
    loop = ppo.PPOLoop(run.model, run.tokenizer, run.extras["reward_fn"], ppo_config(preset), sft_batches(preset, run.tokenizer))
    with measuring(run):
        history = train(preset, loop, run.train_set, preset.ppo.max_steps, checkpoint_dir(preset, name) if resume else None)
    return finish(run, loop, history)
