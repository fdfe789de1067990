"""Preference pairs for DPO and ORPO: the written pairs, or the SFT model's own answers ranked by the reward model.

- ``"data"``: the pairs of ``data.preference`` (the bundled written pairs unless the user gives theirs; offline pairs). Its answers are not the SFT model's
  own, so a direct method pushes up texts the policy would rarely say (off-policy). Measured on the
  tiny preset, one epoch of DPO on them left the greedy answers almost unchanged (win rate 0.51).
- ``"sampled"`` (the course default): for each RL training prompt the SFT model gives its greedy
  answer and a few sampled ones; the reward model, plus the rule rewards PPO and GRPO learn from
  (``evaluation.rule_rewards``), ranks them, and the pair is (best sample, greedy answer) when a
  sample beat the greedy one, else (greedy answer, worst sample). On-policy pairs,
  as in iterative / online DPO: every pair moves the model's own answer towards a better one.

Sampled pairs are built once per SFT model and reward model and kept in
``outputs/<preset>/sampled_pairs/`` (DPO and ORPO share them); they are rebuilt when either model or
a sampling knob changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import ppo, scoring
from ..artifacts import output_root, stage_dir, write_json
from ..evaluation import rule_rewards, rule_weights
from ..generation import chat_prompt_texts, generate
from ..presets import Preset
from ..sources import local_files_signature
from ..training import StageRun, is_main_process, timed
from . import reward, sft
from . import alignment
from .alignment import training_prompts

SOURCES = ("sampled", "data")
CACHE = "sampled_pairs"


def _scored(prompts, answers: list[str], ended: list[bool], reward_model, reward_tokenizer,
            missing_eos_penalty: float | None) -> list[float]:
    """Reward-model scores of (prompt, answer), minus the penalty for an answer that never ended."""
    conversations = [p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, answers)]
    scores = scoring.reward_scores(reward_model, reward_tokenizer, conversations)
    return [s - (missing_eos_penalty or 0.0) * (not e) for s, e in zip(scores, ended)]


def sampled_pairs(policy, tokenizer, reward_model, reward_tokenizer, prompts: list[list[dict]], samples: int,
                  max_new_tokens: int, temperature: float = 1.0, missing_eos_penalty: float | None = 1.0,
                  batch_size: int = 32, rules=None):
    """On-policy pairs from the SFT model (adapter off), ranked by the reward model.

    For each prompt: the greedy answer (what the model says today, and what is judged later) and
    ``samples`` sampled answers are scored (minus ``missing_eos_penalty`` for an answer that never
    ends, plus ``rules(prompt_indices, answers)`` when given: the rule rewards PPO and GRPO learn from too).
    Chosen is the best of them; rejected is the greedy answer when something beat it, else
    the worst sample. So every pair pushes the model's own answer towards a better one of its own.
    Returns the pairs in TRL's conversational preference format and a summary; a prompt whose
    answers all score the same teaches nothing and is left out, and the summary counts it.
    """
    from datasets import Dataset

    if samples < 1:
        raise ValueError(f"sampled DPO pairs need at least 1 sampled answer per prompt besides the greedy one, got {samples}")
    texts = chat_prompt_texts(tokenizer, prompts)
    with policy.disable_adapter():  # the SFT model answers: the pairs are on-policy at the start
        greedy = generate(policy, tokenizer, texts, max_new_tokens, batch_size)
        greedy_scores = _scored(prompts, [g.text for g in greedy], [g.ended_with_eos for g in greedy],
                                reward_model, reward_tokenizer, missing_eos_penalty)
        if rules is not None:
            greedy_scores = [s + r for s, r in zip(greedy_scores, rules(range(len(prompts)), [g.text for g in greedy]))]
        order = [i for i in range(len(prompts)) for _ in range(samples)]  # each prompt `samples` times
        sampled, sampled_scores = [], []
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = ppo.rollout(policy, tokenizer, [texts[i] for i in rows], max_new_tokens, temperature)
            decoded = ppo.decode_answers(tokenizer, batch)
            sampled += decoded
            scores = _scored([prompts[i] for i in rows], decoded, batch.ended.tolist(),
                             reward_model, reward_tokenizer, missing_eos_penalty)
            if rules is not None:
                scores = [s + r for s, r in zip(scores, rules(rows, decoded))]
            sampled_scores += scores
    pairs = {"prompt": [], "chosen": [], "rejected": []}
    margins, examples, ties, greedy_rejected = [], [], 0, 0
    for i, prompt in enumerate(prompts):
        group = range(i * samples, (i + 1) * samples)
        best = max(group, key=sampled_scores.__getitem__)
        worst = min(group, key=sampled_scores.__getitem__)
        if sampled_scores[best] > greedy_scores[i]:
            chosen, rejected = (sampled[best], sampled_scores[best]), (greedy[i].text, greedy_scores[i])
            greedy_rejected += 1
        else:
            chosen, rejected = (greedy[i].text, greedy_scores[i]), (sampled[worst], sampled_scores[worst])
        if chosen[1] == rejected[1]:
            ties += 1
            continue
        pairs["prompt"].append(prompt)
        pairs["chosen"].append([{"role": "assistant", "content": chosen[0]}])
        pairs["rejected"].append([{"role": "assistant", "content": rejected[0]}])
        margins.append(chosen[1] - rejected[1])
        if len(examples) < 4:
            examples.append({"prompt": prompt[-1]["content"], "chosen": chosen[0], "chosen_score": chosen[1],
                             "rejected": rejected[0], "rejected_score": rejected[1]})
    summary = {"prompts": len(prompts), "samples_per_prompt": samples, "pairs": len(margins),
               "greedy_answer_rejected": greedy_rejected, "left_out_all_equal": ties,
               "mean_score_margin": sum(margins) / max(len(margins), 1), "examples": examples}
    return Dataset.from_dict(pairs), summary


def sampling_rows(preset: Preset) -> list[dict]:
    """``preference.pair_prompts`` RL training prompts (with their condition, language and red flag), evenly
    spread (the file is ordered by condition, so the first N would cover only some conditions); 0 takes all."""
    rows = list(training_prompts(preset))
    limit = preset.preference.pair_prompts
    if limit <= 0 or limit >= len(rows):
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def _cache_key(preset: Preset) -> dict:
    """What the sampled pairs depend on: both models (their metrics files' times) and the sampling knobs."""
    knobs = preset.preference
    return {"sft": (stage_dir(preset.name, sft.STAGE) / "metrics.json").stat().st_mtime_ns,
            "rm": (stage_dir(preset.name, reward.STAGE) / "metrics.json").stat().st_mtime_ns,
            "samples": knobs.pair_samples_per_prompt, "prompts": knobs.pair_prompts,
            "temperature": knobs.pair_sample_temperature, "max_new_tokens": preset.max_new_tokens,
            "missing_eos_penalty": preset.rl.missing_eos_penalty, "seed": preset.alignment_seed,
            "urgent_care_reward": preset.rl.urgent_care_reward, "wrong_condition_penalty": preset.rl.wrong_condition_penalty,
            "key_fact_reward": preset.rl.key_fact_reward,
            # in the key only when on, so that pairs sampled before this knob existed stay reusable
            **({"non_word_penalty": preset.rl.non_word_penalty} if preset.rl.non_word_penalty else {}),
            "prompt_data": [preset.data.prompts, local_files_signature(preset.data.prompts)]}


def load_pairs(preset: Preset, source: str, policy, tokenizer, reward_model, reward_tokenizer, metrics: dict):
    """The training pairs for DPO / ORPO from ``source``; records where they came from in ``metrics``."""
    from datasets import Dataset

    if source not in SOURCES:
        raise ValueError(f"preference pairs must come from one of {SOURCES}, got {source!r}")
    metrics["pair_source"] = source
    if source == "data":
        return reward.training_pairs(preset)
    folder = output_root() / preset.name / CACHE
    key = _cache_key(preset)
    if (folder / "summary.json").is_file():
        saved = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        if saved.get("key") == key:
            metrics["sampled_pairs"] = saved["summary"]
            metrics["pair_sampling_seconds"] = 0.0  # reused; the first run's time is in the summary
            return Dataset.from_list(read_cache(folder))
    knobs, rows = preset.preference, sampling_rows(preset)

    def rules(indices, answers):  # the rule rewards PPO and GRPO add to the reward model's score
        return rule_rewards(answers, [rows[i] for i in indices], **rule_weights(preset))

    with timed(metrics, "pair_sampling_seconds"):
        pairs, summary = sampled_pairs(policy, tokenizer, reward_model, reward_tokenizer, [r["prompt"] for r in rows],
                                       knobs.pair_samples_per_prompt, preset.max_new_tokens,
                                       knobs.pair_sample_temperature, preset.rl.missing_eos_penalty, rules=rules)
    summary["seconds"] = metrics["pair_sampling_seconds"]
    metrics["sampled_pairs"] = summary
    if is_main_process():
        write_cache(folder, list(pairs), key, summary)
    return pairs


def prepare(preset: Preset, stage: str) -> StageRun:
    """DPO's and ORPO's inputs (``alignment.prepare``) plus their training pairs (``preference.pair_source``)
    in ``run.train_set``."""
    run = alignment.prepare(preset, stage)
    run.train_set = load_pairs(preset, preset.preference.pair_source, run.model, run.tokenizer, run.extras["reward_model"],
                               run.extras["reward_tokenizer"], run.metrics)
    return run


def read_cache(folder: Path) -> list[dict]:
    """The cached pairs, a line each. Split on "\\n" only: ``json.dumps(ensure_ascii=False)`` leaves U+0085 and U+2028
    unescaped, and a sampled answer may hold them (``str.splitlines`` would cut the record there)."""
    with open(folder / "pairs.jsonl", "rb") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def write_cache(folder: Path, rows: list[dict], key: dict, summary: dict) -> None:
    """The pairs, then the summary that marks the cache complete; through a file only this process writes."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"pairs.jsonl.tmp-{os.getpid()}"
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(folder / "pairs.jsonl")
    write_json(folder / "summary.json", {"key": key, "summary": summary})
