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
import shutil
from pathlib import Path

import torch

from .. import models, ppo, scoring
from ..artifacts import output_root, stage_dir
from ..evaluation import rule_rewards
from ..generation import chat_prompt_texts
from ..judging import comparison, examples, judge, kl_to_reference, verdict
from ..presets import Preset, field_value
from ..training import is_main_process, peak_memory, save_metrics, seed_stage, stage_output, timed
from .alignment import ensure_inputs, heldout_prompts, load_reward_scorer, prompt_data_report, training_prompts

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
                                       "samples_per_prompt", "whiten_advantages")},
}


def ppo_config(preset: Preset) -> ppo.PPOConfig:
    """The loop's knobs, every one from the preset."""
    return ppo.PPOConfig(**{name: field_value(preset, path) for name, path in PPO_FIELDS_FROM_PRESET.items()})


def checkpoint_dir(preset: Preset, name: str = STAGE) -> Path:
    return output_root() / preset.name / f"{name}_checkpoint"


def train(preset: Preset, loop: ppo.PPOLoop, prompt_texts: list[str], steps: int, checkpoint: Path | None = None,
          progress: bool = True) -> list[dict]:
    """Run PPO steps on shuffled training prompts; resumes from ``checkpoint`` if one is there."""
    from tqdm.auto import tqdm

    if checkpoint is not None and checkpoint.exists():
        saved = json.loads((checkpoint / loop.CHECKPOINT_STATE).read_text())["config"]
        if saved == json.loads(json.dumps(dataclasses.asdict(loop.config))):
            loop.load_checkpoint(checkpoint)
            print(f"resumed PPO from {checkpoint} at step {loop.step_count}")
        else:  # made with other settings: resuming would mix two runs under one record
            print(f"{checkpoint} was made with other PPO settings: starting afresh")
            shutil.rmtree(checkpoint)
    history = []
    k = loop.config.samples_per_prompt
    if loop.config.prompts_per_step % k:
        raise ValueError(f"ppo.batch_size={loop.config.prompts_per_step} answers per step must be a multiple of "
                         f"rl.samples_per_prompt={k}")
    prompts_per_step = loop.config.prompts_per_step // k  # distinct prompts; each answered k times
    for step in tqdm(range(loop.step_count, steps), desc="PPO", disable=not progress, initial=loop.step_count, total=steps):
        rng = random.Random(preset.alignment_seed * 100_003 + step)  # the same prompts for a step, resumed or not
        history.append(loop.step(ppo.repeat_prompts(rng.sample(prompt_texts, prompts_per_step), k)))
        if checkpoint is not None and (step + 1) % preset.rl.save_every == 0 and is_main_process():
            loop.save_checkpoint(checkpoint)
    return history


def run(preset: Preset, name: str = STAGE, resume: bool = True) -> Path:
    """The PPO stage: saves to ``outputs/<preset>/<name>/`` (``name`` keeps a lesson's variant, made with
    ``override(preset, …)``, beside the main run)."""
    steps = preset.ppo.max_steps
    if steps <= 0:  # PPO samples its own data: there are no epochs to fall back on
        raise ValueError(f"PPO needs ppo.max_steps > 0 (got {steps}); set it with --set ppo.max_steps=N")
    sft_path, reward_path = ensure_inputs(preset)
    seed_stage(preset, preset.alignment_seed)
    tokenizer = models.load_tokenizer(sft_path, preset.trust_remote_code)
    policy = models.load_lora_model(preset, sft_path)
    reward_model, reward_tokenizer = load_reward_scorer(preset, reward_path, tokenizer.pad_token_id)
    config = ppo_config(preset)

    train_rows = training_prompts(preset)
    row_by_text = dict(zip(chat_prompt_texts(tokenizer, list(train_rows["prompt"])), train_rows))

    def reward_fn(prompt_texts, batch, answers):
        """The reward model's score plus the rules (``evaluation.rule_rewards``: urgent care, wrong condition)."""
        rows_ = [row_by_text[t] for t in prompt_texts]
        conversations = [r["prompt"] + [{"role": "assistant", "content": a}] for r, a in zip(rows_, answers)]
        scores = torch.tensor(scoring.reward_scores(reward_model, reward_tokenizer, conversations))
        return scores + torch.tensor(rule_rewards(answers, rows_, preset.rl.urgent_care_reward, preset.rl.wrong_condition_penalty,
                                                         preset.rl.key_fact_reward))

    loop = ppo.PPOLoop(policy, tokenizer, reward_fn, config)
    rows = heldout_prompts(preset)
    metrics = {"stage": name, "preset": preset.name, "config": dataclasses.asdict(config), "steps": steps,
               "heldout_prompts": len(rows), "parameters": models.count_parameters(policy),
               "data": prompt_data_report(preset)}
    with policy.disable_adapter():
        before = judge(policy, tokenizer, reward_model, reward_tokenizer, rows, preset.max_new_tokens, preset.conditions)

    checkpoint = checkpoint_dir(preset, name) if resume else None
    with timed(metrics, "train_seconds"), peak_memory(metrics, preset):
        history = train(preset, loop, list(row_by_text), steps, checkpoint)
    after = judge(policy, tokenizer, reward_model, reward_tokenizer, rows, preset.max_new_tokens, preset.conditions)
    kl = kl_to_reference(policy, tokenizer, chat_prompt_texts(tokenizer, list(rows["prompt"])),
                         config.max_new_tokens, config.temperature)

    metrics.update(
        comparison(before, after),
        kl_to_reference=kl,
        time_split={k: sum(h[k] for h in history) for k in ("time_generate", "time_score", "time_update")},
        history=[{k: v for k, v in h.items() if k != "sample_answer"} for h in history],
        sample_answers=[h["sample_answer"] for h in history[-3:]],
        examples=examples(rows, before, after),
    )
    metrics["verdict"] = verdict(metrics, preset.rl.kl_bound, preset.rl.recall_tolerance)
    with stage_output(preset, name) as out:
        if is_main_process():
            loop.save_checkpoint(out / "checkpoint")  # adapter, value head, optimizer: resumable
            models.merge_adapter(sft_path, out / "checkpoint" / "adapter", out, dtype=preset.torch_dtype,
                                 trust_remote_code=preset.trust_remote_code, atomic=False)
            save_metrics(out, metrics, preset, STAGE)
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)  # the finished stage folder supersedes it
    return stage_dir(preset.name, name)
