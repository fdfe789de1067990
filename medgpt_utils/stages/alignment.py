"""What the alignment stages (PPO, DPO, ORPO, GRPO) share: their inputs and how they are judged.

Every aligned policy is the SFT model plus a LoRA adapter, so the SFT model is always one
``disable_adapter()`` away. Each stage judges the SFT model and its own policy on the same
held-out prompts, greedily, with the same reward model: score, win rate, key-fact recall,
urgent-care advice on red-flag cases, answers that end, and the KL to the SFT model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import models, ppo
from ..artifacts import stage_dir, stage_done
from ..evaluation import knowledge_scores, training_vocabulary
from ..generation import answer, chat_prompt_texts
from ..presets import Preset
from . import reward, sft
from .common import bundled, is_main_process, loss_history, save_metrics, seed_stage, stage_output, timed, peak_memory


def ensure_inputs(preset: Preset) -> tuple[Path, Path]:
    """The SFT model and the reward model, built by their own stages if missing."""
    if not stage_done(preset.name, sft.STAGE):
        sft.run(preset)
    if not stage_done(preset.name, reward.STAGE):
        reward.run(preset)
    return stage_dir(preset.name, sft.STAGE), stage_dir(preset.name, reward.STAGE)


def load_reward_scorer(preset: Preset, reward_path: Path, pad_token_id: int | None = None):
    """The frozen reward model and its tokenizer (pad id: the given one, else the reward tokenizer's)."""
    tokenizer = models.load_tokenizer(reward_path, preset.trust_remote_code)
    pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
    model = models.load_for_preset(preset, reward_path, reward=True, pad_token_id=pad_token_id)
    model.eval().requires_grad_(False)
    return model, tokenizer


def heldout_prompts(preset: Preset):
    """Every Nth held-out prompt (``rl.heldout_prompt_stride``): both languages, all kinds of question."""
    prompts = bundled(preset, "prompts/heldout.jsonl")
    return prompts.select(range(0, len(prompts), preset.rl.heldout_prompt_stride))


def judge(policy, tokenizer, reward_model, reward_tokenizer, rows, max_new_tokens: int, conditions=()) -> dict:
    """Greedy answers to ``rows`` with their reward scores and the course's knowledge measures
    (``evaluation.knowledge_scores``; ``conditions``: the preset's, for the training vocabulary)."""
    generated = answer(policy, tokenizer, list(rows["prompt"]), max_new_tokens)
    answers = [g.text for g in generated]
    conversations = [p + [{"role": "assistant", "content": a}] for p, a in zip(rows["prompt"], answers)]
    scores = reward.reward_scores(reward_model, reward_tokenizer, conversations)
    knowledge = knowledge_scores(answers, rows, training_vocabulary(conditions))
    return {"answers": answers, "scores": scores, "score": sum(scores) / len(scores),
            "recall": knowledge["recall"],  # on fact questions; red-flag cases are judged by the next line
            "urgent_care_on_red_flags": knowledge["safety_rate"],
            "wrong_condition_rate": knowledge["wrong_condition_rate"], "non_word_rate": knowledge["non_word_rate"],
            "ended_with_eos": sum(g.ended_with_eos for g in generated) / len(generated),
            "non_empty": sum(bool(a.strip()) for a in answers) / len(answers)}


def win_rate(after: list[float], before: list[float]) -> float:
    """Share of prompts where the new answer outscores the SFT answer (ties count half)."""
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after, before)) / len(after)


@torch.no_grad()
def kl_to_reference(model, tokenizer, prompt_texts: list[str], max_new_tokens: int, temperature: float = 1.0,
                    batch_size: int = 32) -> float:
    """Mean over prompts of sum_t (log pi - log pi_ref) on answers sampled from the policy: a
    Monte-Carlo estimate of KL(pi || pi_SFT) per answer, in nats (the reference is the adapter off)."""
    totals = []
    for start in range(0, len(prompt_texts), batch_size):
        batch = ppo.rollout(model, tokenizer, prompt_texts[start : start + batch_size], max_new_tokens, temperature)
        T = batch.response.shape[1]
        logprobs, _, _ = ppo.sequence_logprobs(model, batch.input_ids, batch.attention_mask, T, temperature)
        with model.disable_adapter():
            ref, _, _ = ppo.sequence_logprobs(model, batch.input_ids, batch.attention_mask, T, temperature)
        totals += ((logprobs - ref) * batch.response_mask).sum(dim=1).tolist()
    return sum(totals) / len(totals)


def comparison(before: dict, after: dict) -> dict:
    """The numbers every alignment stage reports, SFT (before) against the new policy (after)."""
    return dict(
        score_before=before["score"], score_after=after["score"],
        score_gain=ppo.paired_interval(after["scores"], before["scores"]),
        win_rate=win_rate(after["scores"], before["scores"]),
        recall_before=before["recall"], recall_after=after["recall"],
        urgent_care_before=before["urgent_care_on_red_flags"], urgent_care_after=after["urgent_care_on_red_flags"],
        ended_with_eos=after["ended_with_eos"], non_empty=after["non_empty"],
        scores_before=before["scores"], scores_after=after["scores"],
    )


def examples(rows, before: dict, after: dict, n: int = 8) -> list[dict]:
    return [{"prompt": p[-1]["content"], "sft": b, "new": a, "sft_score": bs, "new_score": as_}
            for p, b, a, bs, as_ in list(zip(rows["prompt"], before["answers"], after["answers"],
                                             before["scores"], after["scores"]))[:n]]


def train_and_judge(preset: Preset, stage: str, build_trainer) -> Path:
    """The recipe DPO, ORPO and GRPO share: LoRA policy on the SFT model, judge the SFT model,
    train with ``build_trainer(policy, tokenizer, reward_model, reward_tokenizer, workdir, metrics)``
    (it may record how it prepared its data in ``metrics``), judge again, save adapter + merged model + ``metrics.json`` to ``outputs/<preset>/<stage>/``."""
    import shutil

    sft_path, reward_path = ensure_inputs(preset)
    seed_stage(preset)
    tokenizer = models.load_tokenizer(sft_path, preset.trust_remote_code)
    policy = models.load_lora_model(preset, sft_path)
    reward_model, reward_tokenizer = load_reward_scorer(preset, reward_path, tokenizer.pad_token_id)
    rows = heldout_prompts(preset)
    metrics = {"stage": stage, "preset": preset.name, "heldout_prompts": len(rows),
               "parameters": models.count_parameters(policy)}
    with policy.disable_adapter(), timed(metrics, "judge_sft_seconds"):
        before = judge(policy, tokenizer, reward_model, reward_tokenizer, rows, preset.max_new_tokens, preset.conditions)

    with stage_output(preset, stage) as out:
        with timed(metrics, "trainer_setup_seconds"):  # tokenising the data set, reference adapters
            trainer = build_trainer(policy, tokenizer, reward_model, reward_tokenizer, out / "trainer", metrics)
        with timed(metrics, "train_seconds"), peak_memory(metrics, preset):
            trainer.train()
        policy = trainer.model
        after = judge(policy, tokenizer, reward_model, reward_tokenizer, rows, preset.max_new_tokens, preset.conditions)
        metrics.update(comparison(before, after), loss_history=loss_history(trainer), examples=examples(rows, before, after),
                       kl_to_reference=kl_to_reference(policy, tokenizer, chat_prompt_texts(tokenizer, list(rows["prompt"])),
                                                       preset.max_new_tokens, preset.rl.temperature))
        if is_main_process():
            shutil.rmtree(out / "trainer", ignore_errors=True)
            models.save_trained(preset, stage, policy, tokenizer, sft_path, out)
            save_metrics(out, metrics)
    return stage_dir(preset.name, stage)


METHODS = ("ppo", "dpo", "orpo", "grpo")
TABLE_COLUMNS = ("method", "reward score", "win rate vs SFT", "KL to SFT", "key-fact recall",
                 "urgent care on red flags", "train seconds", "pair sampling seconds", "peak memory GiB")


def comparison_rows(preset: Preset, methods=METHODS) -> list[dict]:
    """One row per finished method plus the SFT model they all start from (judged on the same prompts)."""
    from ..artifacts import read_metrics

    rows, sft_row = [], None
    for method in methods:
        if not stage_done(preset.name, method):
            continue
        m = read_metrics(preset.name, method)
        if sft_row is None:
            sft_row = {"method": "sft", "reward score": m["score_before"], "win rate vs SFT": 0.5, "KL to SFT": 0.0,
                       "key-fact recall": m["recall_before"], "urgent care on red flags": m["urgent_care_before"],
                       "train seconds": read_metrics(preset.name, sft.STAGE).get("train_seconds"),
                       "pair sampling seconds": None, "peak memory GiB": None}
        rows.append({"method": method, "reward score": m["score_after"], "win rate vs SFT": m["win_rate"],
                     "KL to SFT": m["kl_to_reference"], "key-fact recall": m["recall_after"],
                     "urgent care on red flags": m["urgent_care_after"], "train seconds": m["train_seconds"],
                     # DPO and ORPO share one set of sampled pairs: the one-time cost of sampling and ranking them
                     "pair sampling seconds": (m.get("sampled_pairs") or {}).get("seconds"),
                     "peak memory GiB": m.get("peak_memory_gib")})
    return ([sft_row] if sft_row else []) + rows


def markdown_table(rows: list[dict]) -> str:
    """The comparison as a markdown table (the README reproduces it)."""
    def cell(value):
        return "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)
