"""Stage 5c, group relative policy optimisation (GRPO): PPO without a value function.

Recipe: for each prompt sample G answers, score them (the course's reward model, plus rule
rewards: a red-flag case must be answered with advice to seek urgent care, in zh and en, and an answer
must not name another condition than the one asked about), and use
each answer's score relative to its group as its advantage,  A_i = (r_i - mean(r)) / std(r)
(Shao et al. 2024). The clipped surrogate and a KL penalty to the reference (adapter off) are as in
PPO. The group replaces the critic, so there is no value head to train.
"""

from __future__ import annotations

from pathlib import Path

from ..evaluation import (key_fact_rule_scores, non_word_rule_scores, training_vocabulary, urgent_care_rule_scores,
                          wrong_condition_rule_scores)
from ..presets import Preset
from ..scoring import ImplicitReward, reward_scores
from ..training import StageRun, measuring, prepared, trainer_arguments
from . import alignment
from .alignment import training_prompts

STAGE = "grpo"


def completion_texts(completions) -> list[str]:
    """The answers' text, from TRL's conversational (list of messages) or plain completions."""
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


def urgent_care_rule(prompts, completions, red_flag, lang, **_) -> list[float]:
    """``scoring.urgent_care_rule_scores`` in TRL's reward-function signature."""
    texts = completion_texts(completions)
    return urgent_care_rule_scores(texts, red_flag, lang)


def wrong_condition_rule(prompts, completions, condition, lang, **_) -> list[float]:
    """``evaluation.wrong_condition_rule_scores`` in TRL's reward-function signature."""
    texts = completion_texts(completions)
    return wrong_condition_rule_scores(texts, condition, lang)


def key_fact_rule(prompts, completions, key_facts, red_flag, **_) -> list[float]:
    """``evaluation.key_fact_rule_scores`` in TRL's reward-function signature."""
    texts = completion_texts(completions)
    return key_fact_rule_scores(texts, key_facts, red_flag)


def non_word_rule(preset: Preset):
    """``evaluation.non_word_rule_scores`` in TRL's reward-function signature, with the preset's training vocabulary."""
    vocabulary = training_vocabulary(preset.conditions)

    def non_word_rule(prompts, completions, **_) -> list[float]:
        return non_word_rule_scores(completion_texts(completions), vocabulary)

    return non_word_rule


# The prompt columns each rule reads (TRL passes a dataset's extra columns to reward functions by name).
RULE_COLUMNS = {"urgent_care_rule": ("red_flag", "lang"), "wrong_condition_rule": ("condition", "lang"),
                "key_fact_rule": ("key_facts", "red_flag"), "non_word_rule": ()}


def rule_functions(preset: Preset, columns=None) -> list[tuple]:
    """(reward function, weight) for each rule switched on (``rl.urgent_care_reward``, ``rl.wrong_condition_penalty``,
    ``rl.key_fact_reward``, ``rl.non_word_penalty``: the knobs of ``evaluation.rule_weights``) whose columns the prompts
    have (``columns``; None: the bundled prompts, which have all)."""
    rules = [(urgent_care_rule, preset.rl.urgent_care_reward), (wrong_condition_rule, preset.rl.wrong_condition_penalty),
             (key_fact_rule, preset.rl.key_fact_reward)]
    if preset.rl.non_word_penalty > 0:
        rules.append((non_word_rule(preset), preset.rl.non_word_penalty))
    return [(f, w) for f, w in rules
            if w > 0 and (columns is None or set(RULE_COLUMNS[f.__name__]) <= set(columns))]


def grpo_config(preset: Preset, output_dir, columns=None):
    from trl import GRPOConfig

    knobs = preset.preference
    return trainer_arguments(
        GRPOConfig, preset, preset.grpo, output_dir,
        num_generations=knobs.grpo_num_generations, beta=knobs.grpo_beta, num_iterations=knobs.grpo_num_iterations,
        max_completion_length=preset.max_new_tokens,
        temperature=knobs.grpo_temperature, top_k=0, top_p=1.0,  # no top-k / top-p: the ratio needs the policy's own samples
        reward_weights=[1.0] + [w for _, w in rule_functions(preset, columns)],
        log_completions=False,
    )


def prepare(preset: Preset) -> StageRun:
    """GRPO's inputs (``alignment.prepare``) plus its training prompts, with the columns its rules read."""
    run = alignment.prepare(preset, STAGE)
    prompts = training_prompts(preset)
    rule_columns = sorted({c for cols in RULE_COLUMNS.values() for c in cols} & set(prompts.column_names))
    run.train_set = prompts.select_columns(["prompt"] + rule_columns)
    return run


def implicit_reward_function(reward_model, reward_tokenizer):
    """A reward model trained the DPO way in TRL's reward-function signature (TRL itself scores only models with a
    head: it reads ``logits[:, 0]``)."""

    def reward_model_score(prompts, completions, **_) -> list[float]:
        answers = [[{"role": "assistant", "content": text}] for text in completion_texts(completions)]
        return reward_scores(reward_model, reward_tokenizer, [p + a for p, a in zip(prompts, answers)])

    return reward_model_score


def reward_functions(run: StageRun) -> list:
    """The reward model first, then each rule switched on (``rule_functions``) that the prompts can feed."""
    reward_model = run.extras["reward_model"]
    if isinstance(reward_model, ImplicitReward):
        reward_model = implicit_reward_function(reward_model, run.extras["reward_tokenizer"])
    return [reward_model] + [f for f, _ in rule_functions(run.preset, run.train_set.column_names)]


def run(preset: Preset) -> Path:
    """The whole stage, as ``medgpt grpo`` runs it (notebook 05 takes the same steps one cell at a time)."""
    from trl import GRPOTrainer

    run = prepare(preset)
    funcs = reward_functions(run)
    trainer = prepared(GRPOTrainer(model=run.model, reward_funcs=funcs, args=grpo_config(preset, run.workdir, run.train_set.column_names),
                                   train_dataset=run.train_set, processing_class=run.tokenizer,
                                   reward_processing_classes=[run.extras["reward_tokenizer"]] + [None] * (len(funcs) - 1)),
                       preset, STAGE)
    with measuring(run):
        trainer.train(resume_from_checkpoint=run.resume_from)  # None: from the start
    return alignment.finish(run, trainer)
