"""Pieces the alignment stages share, and the GRPO rule reward."""

import time

import pytest

from medgpt_utils.presets import PRESETS
from medgpt_utils.stages import alignment, grpo
from medgpt_utils.stages.common import peak_memory


def test_urgent_care_rule_rewards_red_flag_answers_that_send_to_urgent_care():
    completions = [[{"role": "assistant", "content": "Go to the emergency department now."}],
                   [{"role": "assistant", "content": "Rest at home and drink fluids."}],
                   [{"role": "assistant", "content": "请立即去急诊。"}],
                   [{"role": "assistant", "content": "多喝水。"}]]
    rewards = grpo.urgent_care_rule(prompts=[None] * 5, completions=completions + [completions[1]],
                                    red_flag=[True, True, True, True, False], lang=["en", "en", "zh", "zh", "en"])
    assert rewards == [1.0, -1.0, 1.0, -1.0, 0.0]


def test_win_rate_counts_ties_as_half():
    assert alignment.win_rate([2.0, 1.0, 3.0, 0.0], [1.0, 1.0, 4.0, 0.0]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)


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
