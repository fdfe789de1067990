"""Pieces the alignment stages share, and the GRPO rule reward."""

import time

import pytest

from medgpt_utils import data, judging, scoring

from medgpt_utils.presets import PRESETS
from medgpt_utils.stages import alignment, grpo
from medgpt_utils.training import peak_memory


def test_urgent_care_rule_rewards_red_flag_answers_that_send_to_urgent_care():
    completions = [[{"role": "assistant", "content": "Go to the emergency department now."}],
                   [{"role": "assistant", "content": "Rest at home and drink fluids."}],
                   [{"role": "assistant", "content": "请立即去急诊。"}],
                   [{"role": "assistant", "content": "多喝水。"}]]
    rewards = grpo.urgent_care_rule(prompts=[None] * 5, completions=completions + [completions[1]],
                                    red_flag=[True, True, True, True, False], lang=["en", "en", "zh", "zh", "en"])
    assert rewards == [1.0, -1.0, 1.0, -1.0, 0.0]


def test_win_rate_counts_ties_as_half():
    assert judging.win_rate([2.0, 1.0, 3.0, 0.0], [1.0, 1.0, 4.0, 0.0]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


def test_peak_memory_sees_an_allocation_inside_the_block():
    record = {}
    with peak_memory(record, PRESETS["tiny"]):
        block = bytearray(300 * 2**20)  # 300 MiB, touched so it is resident
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(0.3)  # held for a few sampling periods, as training holds its memory
        del block
    baseline = {}
    with peak_memory(baseline, PRESETS["tiny"]):
        pass
    assert record["peak_memory_gib"] >= baseline["peak_memory_gib"] + 0.25


def test_heldout_prompts_include_red_flag_cases_in_both_languages():
    rows = alignment.heldout_prompts(PRESETS["tiny"])
    flagged = [lang for lang, flag in zip(rows["lang"], rows["red_flag"]) if flag]
    assert 0.3 < len(flagged) / len(rows) < 0.7
    assert set(flagged) == {"en", "zh"}


def _policy_and_prompts(tiny_base, n):
    from medgpt_utils import models

    tokenizer = models.load_tokenizer(tiny_base)
    policy = models.add_lora(models.load_causal_lm(tiny_base), r=4, alpha=8, target_modules="all-linear")
    prompts = [[{"role": "user", "content": q}] for q in ["What causes gout?", "头痛怎么办？", "How is flu treated?"][:n]]
    return policy, tokenizer, prompts


def test_sampled_dpo_pairs_push_the_greedy_answer_towards_the_best_one(tiny_base, monkeypatch):
    """Reward = answer length. Chosen is the longest answer of its group; rejected is the greedy
    answer when a sample beat it, else the shortest sample."""
    import torch

    from medgpt_utils.stages import pairs as pair_module

    calls = []

    def length_score(model, tokenizer, conversations, batch_size=32):
        calls.append([(c[0]["content"], c[-1]["content"]) for c in conversations])
        return [float(len(c[-1]["content"])) for c in conversations]

    monkeypatch.setattr(scoring, "reward_scores", length_score)
    policy, tokenizer, prompts = _policy_and_prompts(tiny_base, 3)
    torch.manual_seed(0)
    pairs, summary = pair_module.sampled_pairs(policy, tokenizer, None, None, prompts, samples=4, max_new_tokens=10,
                                       missing_eos_penalty=None)
    greedy = dict(calls[0])  # the greedy answers are scored first, one per prompt
    sampled = [qa for call in calls[1:] for qa in call]
    assert len(greedy) == 3 and len(sampled) == 12
    assert summary["pairs"] + summary["left_out_all_equal"] == 3 and summary["pairs"] >= 1
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        question = prompt[0]["content"]
        samples = [len(a) for q, a in sampled if q == question]
        assert len(samples) == 4
        assert len(chosen[0]["content"]) == max(samples + [len(greedy[question])])
        expected_rejected = greedy[question] if max(samples) > len(greedy[question]) else None
        if expected_rejected is not None:
            assert rejected[0]["content"] == expected_rejected
        else:
            assert len(rejected[0]["content"]) == min(samples)
        assert chosen[0]["role"] == "assistant" and len(chosen[0]["content"]) > len(rejected[0]["content"])


def test_sampled_dpo_pairs_leave_out_and_count_prompts_whose_answers_all_score_the_same(tiny_base, monkeypatch):
    from medgpt_utils.stages import pairs as pair_module

    monkeypatch.setattr(scoring, "reward_scores", lambda model, tokenizer, conversations, batch_size=32: [1.0] * len(conversations))
    policy, tokenizer, prompts = _policy_and_prompts(tiny_base, 2)
    pairs, summary = pair_module.sampled_pairs(policy, tokenizer, None, None, prompts, samples=2, max_new_tokens=4,
                                       missing_eos_penalty=None)
    assert len(pairs) == 0 and summary["left_out_all_equal"] == 2
    with pytest.raises(ValueError, match="at least 1 sampled answer"):
        pair_module.sampled_pairs(policy, tokenizer, None, None, prompts, samples=0, max_new_tokens=4)


def test_sampled_pairs_are_built_once_and_rebuilt_when_the_sft_model_changes(outputs, monkeypatch):
    """DPO and ORPO share one set of sampled pairs; a new SFT model (or knob) makes new pairs."""
    import os

    from datasets import Dataset

    from medgpt_utils.artifacts import stage_dir, write_json
    from medgpt_utils.presets import override
    from medgpt_utils.stages import pairs as pair_module

    for stage in ("sft", "rm"):
        write_json(stage_dir("tiny", stage) / "metrics.json", {"stage": stage})
    calls = []

    def fake_sampled_pairs(*args, **kwargs):
        calls.append(args[5])  # samples per prompt
        rows = {"prompt": [[{"role": "user", "content": f"q{len(calls)}"}]],
                "chosen": [[{"role": "assistant", "content": "good"}]], "rejected": [[{"role": "assistant", "content": "bad"}]]}
        return Dataset.from_dict(rows), {"pairs": 1}

    monkeypatch.setattr(pair_module, "sampled_pairs", fake_sampled_pairs)
    tiny = PRESETS["tiny"]
    first = pair_module.load_pairs(tiny, "sampled", None, None, None, None, {})
    metrics = {}
    again = pair_module.load_pairs(tiny, "sampled", None, None, None, None, metrics)
    assert len(calls) == 1 and again[0] == first[0] and metrics["pair_sampling_seconds"] == 0.0
    sft_metrics = stage_dir("tiny", "sft") / "metrics.json"
    os.utime(sft_metrics, ns=(sft_metrics.stat().st_atime_ns, sft_metrics.stat().st_mtime_ns + 10**9))
    rebuilt = pair_module.load_pairs(tiny, "sampled", None, None, None, None, {})
    assert len(calls) == 2 and rebuilt[0]["prompt"][0]["content"] == "q2"
    pair_module.load_pairs(override(tiny, {"preference.pair_samples_per_prompt": 5}), "sampled", None, None, None, None, {})
    assert calls[-1] == 5
    written = data.load_bundled("preference/train.jsonl", conditions=tiny.conditions)
    assert len(pair_module.load_pairs(tiny, "data", None, None, None, None, {})) == len(written) < 1176
    with pytest.raises(ValueError, match="one of"):
        pair_module.load_pairs(tiny, "written", None, None, None, None, {})
