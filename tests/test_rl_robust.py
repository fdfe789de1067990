"""Issue 14: what makes RL robust (score normalisation, LR schedule, early stop on approx KL), the honest
judge (``judging.verdict``), the alignment seed and the seed study's bookkeeping."""

import json

import pytest
import torch

from medgpt_utils import judging, models, ppo, rl_seeds
from medgpt_utils.fingerprints import stage_fingerprint
from medgpt_utils.generation import chat_prompt_texts
from medgpt_utils.presets import get_preset, override


def test_lr_factor_decays_to_zero_only_for_decaying_schedules():
    assert [ppo.lr_factor("constant", s, 10) for s in (0, 5, 10)] == [1.0, 1.0, 1.0]
    assert [ppo.lr_factor("linear", s, 10) for s in (0, 5, 10)] == [1.0, 0.5, 0.0]
    assert ppo.lr_factor("cosine", 0, 10) == 1.0 and ppo.lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert ppo.lr_factor("cosine", 10, 10) == pytest.approx(0.0)
    assert ppo.lr_factor("linear", 3, 0) == 1.0  # no step count: nothing to decay over
    with pytest.raises(ValueError, match="unknown PPO lr_schedule 'warmup'"):
        ppo.lr_factor("warmup", 1, 10)


def test_running_moments_match_the_moments_of_everything_seen():
    torch.manual_seed(0)
    batches = [torch.randn(7) * 3 + 5, torch.randn(5) * 3 + 5, torch.randn(11) * 3 + 5]
    moments = ppo.RunningMoments()
    for b in batches:
        moments.update(b)
    everything = torch.cat(batches)
    assert moments.count == 23
    assert moments.mean == pytest.approx(everything.mean().item(), rel=1e-5)
    assert moments.var == pytest.approx(everything.var(unbiased=False).item(), rel=1e-5)
    normalized = moments.normalize(everything)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-5)


def _loop(tiny_base, **config):
    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.add_lora(models.load_causal_lm(tiny_base), r=8, alpha=16, dropout=0.0)
    texts = chat_prompt_texts(tokenizer, [[{"role": "user", "content": q}] for q in ("What causes gout?", "头痛怎么办？")] * 2)
    scores = iter([torch.tensor([10.0, 12.0, 14.0, 16.0]), torch.tensor([20.0, 22.0, 24.0, 26.0])])
    base = dict(prompts_per_step=4, minibatch_size=2, ppo_epochs=3, max_new_tokens=6, learning_rate=1e-2)
    loop = ppo.PPOLoop(model, tokenizer, lambda p, b, a: next(scores), ppo.PPOConfig(**{**base, **config}))
    return loop, texts


def test_score_norm_puts_scores_on_a_unit_scale_and_survives_a_checkpoint(tiny_base, tmp_path):
    loop, texts = _loop(tiny_base, score_norm=True)
    loop.step(texts)
    assert loop.score_moments.mean == pytest.approx(13.0) and loop.score_moments.count == 4
    shaped = loop.shaped_scores(torch.tensor([0.0]))  # after 5 scores the 0 is far below their mean
    assert shaped.item() < -1.0
    loop.save_checkpoint(tmp_path / "ckpt")
    resumed, _ = _loop(tiny_base, score_norm=True)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert vars(resumed.score_moments) == vars(loop.score_moments)


def test_learning_rate_follows_the_schedule_and_early_stop_cuts_epochs(tiny_base):
    loop, texts = _loop(tiny_base, lr_schedule="linear", total_steps=2, target_approx_kl=0.0)
    first, second = loop.step(texts), loop.step(texts)
    assert first["learning_rate"] == pytest.approx(1e-2) and second["learning_rate"] == pytest.approx(5e-3)
    # approx KL is above 0 once the first epoch has moved the policy: the other two epochs are skipped
    assert first["ppo_epochs_run"] == 1
    no_stop, texts = _loop(tiny_base)
    assert no_stop.step(texts)["ppo_epochs_run"] == 3


def _result(**changes):
    result = dict(score_gain={"mean": 0.5, "low": 0.1, "high": 0.9, "n": 96}, urgent_care_before=0.8,
                  urgent_care_after=0.8, recall_before=0.55, recall_after=0.53, wrong_condition_before=0.01,
                  wrong_condition_after=0.01, non_word_before=0.0, non_word_after=0.0, kl_to_reference=5.0,
                  **judging.question_set_comparison(*[{"heldout": {"recall": 0.6, "wrong_condition_rate": 0.003},
                                                       "handwritten": {"recall": 0.7, "wrong_condition_rate": 0.0}}] * 2))
    result.update(changes)
    return result


@pytest.mark.parametrize("change, failed", [
    ({"score_gain": {"mean": 0.5, "low": -0.1, "high": 1.1, "n": 96}}, "score_gain_interval_above_0"),
    ({"urgent_care_after": 0.75}, "urgent_care_kept"),
    ({"recall_after": 0.51}, "recall_kept"),
    ({"wrong_condition_after": 0.02}, "wrong_condition_not_up"),
    ({"non_word_after": 0.01}, "non_words_not_up"),
    ({"kl_to_reference": 25.0}, "kl_within_bound"),
    # recall kept on the RL prompts is not enough: it must hold on the questions a learner asks (issue 26)
    ({"recall_heldout_after": 0.56}, "recall_kept_on_question_sets"),
    ({"recall_handwritten_after": 0.66}, "recall_kept_on_question_sets"),
    ({"wrong_condition_heldout_after": 0.006}, "wrong_condition_not_up_on_question_sets"),
    ({"wrong_condition_handwritten_after": 0.01}, "wrong_condition_not_up_on_question_sets"),
])
def test_a_win_needs_every_knowledge_measure_to_hold(change, failed):
    assert judging.verdict(_result(), kl_bound=20.0, recall_tolerance=0.03)["wins"]
    verdict = judging.verdict(_result(**change), kl_bound=20.0, recall_tolerance=0.03)
    assert not verdict["wins"] and [k for k in judging.WIN_CRITERIA if not verdict[k]] == [failed]


def test_the_gain_is_judged_over_the_rl_prompts_and_the_question_sets_together():
    """96 RL prompts alone give an interval as wide as the gains (issue 26): where the question sets were scored,
    the verdict judges the gain over all of them; without them, on the RL prompts."""
    before = {"scores": [0.0, 0.0, 0.0, 0.0]}
    after = {"scores": [1.0, -1.0, 1.0, -1.0]}  # no gain on the RL prompts
    sets_before = {"heldout": [0.0] * 6, "handwritten": [0.0, 0.0]}
    sets_after = {"heldout": [1.0, 1.0, 2.0, 1.0, 1.0, 2.0], "handwritten": [1.0, 1.0]}
    gains = judging.question_set_gains(before, after, sets_before, sets_after)
    assert gains["score_gain_question_sets"]["n"] == 8 and gains["score_gain_question_sets"]["mean"] == pytest.approx(1.25)
    assert gains["score_gain_all_prompts"]["n"] == 12 and gains["score_gain_all_prompts"]["mean"] == pytest.approx(10 / 12)
    rl_only = judging.paired_interval(after["scores"], before["scores"])
    assert not judging.verdict(_result(score_gain=rl_only), 20.0, 0.03)["score_gain_interval_above_0"]
    assert judging.verdict(_result(score_gain=rl_only, **gains), 20.0, 0.03)["score_gain_interval_above_0"]
    # the other way round: a gain on the RL prompts that the question sets take back is not a win
    lost = judging.question_set_gains(after, before, sets_after, sets_before)
    assert not judging.verdict(_result(**lost), 20.0, 0.03)["score_gain_interval_above_0"]


def test_an_sft_model_saved_without_its_answers_is_asked_again_with_the_adapter_off(outputs, monkeypatch):
    """The gain on the question sets needs SFT's own answers; an SFT stage saved before they were kept still
    counts as current (its settings did not change), so the alignment stage asks the SFT model itself."""
    import contextlib

    from medgpt_utils.artifacts import stage_dir
    from medgpt_utils.stages import alignment, sft

    preset = get_preset("tiny", verbose=False)
    folder = stage_dir(preset.name, sft.STAGE)
    folder.mkdir(parents=True)
    measured = {name: {"recall": 0.5, "wrong_condition_rate": 0.0} for name in judging.QUESTION_SETS}
    (folder / "metrics.json").write_text(json.dumps({"knowledge": measured}))
    adapter_off = []

    class Policy:
        @contextlib.contextmanager
        def disable_adapter(self):
            adapter_off.append(True)
            yield

    asked_again = {name: {**m, "answers": ["an answer"]} for name, m in measured.items()}
    monkeypatch.setattr(sft, "knowledge", lambda model, tokenizer, preset: asked_again if adapter_off else pytest.fail("adapter on"))
    assert alignment.sft_question_set_knowledge(preset, Policy(), None) == asked_again
    (folder / "metrics.json").write_text(json.dumps({"knowledge": asked_again}))  # kept answers: read, not asked again
    adapter_off.clear()
    assert alignment.sft_question_set_knowledge(preset, Policy(), None) == asked_again and not adapter_off
    (folder / "metrics.json").write_text(json.dumps({}))  # the user's own SFT data: no question sets
    assert alignment.sft_question_set_knowledge(preset, Policy(), None) is None


def test_a_criterion_the_judged_prompts_cannot_measure_is_none_and_does_not_decide():
    """With a large stride the judged prompts may hold no red-flag case: urgent care is then None, not a crash."""
    verdict = judging.verdict(_result(urgent_care_before=None, urgent_care_after=None), kl_bound=20.0, recall_tolerance=0.03)
    assert verdict["urgent_care_kept"] is None and verdict["wins"]
    verdict = judging.verdict(_result(recall_before=None, recall_after=None, kl_to_reference=30.0), 20.0, 0.03)
    assert verdict["recall_kept"] is None and not verdict["wins"]


def test_question_sets_that_were_not_measured_do_not_decide_the_verdict():
    """On the user's own SFT data there are no key facts: the question-set rules are None, and the rest decides."""
    flat = judging.question_set_comparison(None, None)
    assert set(flat) == {f"{m}_{q}_{w}" for m in ("recall", "wrong_condition") for q in judging.QUESTION_SETS
                         for w in ("before", "after")} and set(flat.values()) == {None}
    verdict = judging.verdict(_result(**flat), kl_bound=20.0, recall_tolerance=0.03)
    assert verdict["recall_kept_on_question_sets"] is None and verdict["wins"]
    one_set = _result(recall_handwritten_before=None, recall_handwritten_after=None, recall_heldout_after=0.5)
    assert judging.verdict(one_set, 20.0, 0.03)["recall_kept_on_question_sets"] is False  # the measured set decides


def test_the_alignment_seed_reruns_rl_without_making_sft_or_the_reward_model_stale():
    preset = get_preset("tiny", verbose=False)
    other = override(preset, {"rl.seed": 7})
    assert preset.alignment_seed == preset.seed and other.alignment_seed == 7
    for stage in ("pt", "sft", "rm"):
        assert stage_fingerprint(other, stage) == stage_fingerprint(preset, stage)
    for stage in ("ppo", "dpo", "orpo", "grpo"):
        assert stage_fingerprint(other, stage) != stage_fingerprint(preset, stage)
    from medgpt_utils.stages.ppo import ppo_config
    from medgpt_utils.training import trainer_arguments
    from trl import DPOConfig

    assert ppo_config(other).seed == 7
    assert trainer_arguments(DPOConfig, other, other.dpo, "/tmp/unused").seed == 7
    assert trainer_arguments(DPOConfig, other, other.sft, "/tmp/unused").seed == preset.seed


def _record(method, pair, seed, gain_low, wins):
    r = _result(score_gain={"mean": gain_low + 0.4, "low": gain_low, "high": gain_low + 0.8, "n": 96})
    return {"method": method, "pair_seed": pair, "rl_seed": seed, "fingerprint": "f", "score_before": 1.0,
            "score_after": 1.5, "win_rate": 0.6, "train_seconds": 60.0,
            "verdict": {**{k: True for k in judging.WIN_CRITERIA}, "score_gain_interval_above_0": gain_low > 0, "wins": wins}, **r}


def test_seed_study_table_counts_wins_and_spreads_over_runs():
    records = [_record("ppo", 42, 42, 0.2, True), _record("ppo", 43, 42, -0.1, False), _record("dpo", 42, 42, 0.3, True)]
    text = rl_seeds.markdown(records, get_preset("tiny", verbose=False))
    ppo_row = next(line for line in text.splitlines() if line.startswith("| ppo | 2 |"))
    assert "| 1/2 |" in ppo_row and "+0.45 (+0.30 .. +0.60)" in ppo_row  # wins, and the mean gain (min .. max)
    assert "no: score_gain_interval_above_0" in text  # every run's own verdict, with what failed


def test_seed_study_rejects_unknown_methods(capsys):
    with pytest.raises(SystemExit):
        rl_seeds.main(["--methods", "ppo,sft"])
    assert "sft is not an alignment stage" in capsys.readouterr().err


def test_seed_study_reuses_measured_runs(outputs, monkeypatch):
    """A rerun with the same settings trains nothing; it reads the runs already in runs.jsonl."""
    preset = override(get_preset("tiny", verbose=False), {"ppo.max_steps": 1})
    folder = outputs / "tiny" / "rl_seeds"
    folder.mkdir(parents=True)
    run_preset = override(preset, {"seed": preset.seed, "rl.seed": preset.seed})
    saved = {**_record("ppo", preset.seed, preset.seed, 0.2, True), "fingerprint": stage_fingerprint(run_preset, "ppo")}
    (folder / "runs.jsonl").write_text(json.dumps(saved) + "\n")
    monkeypatch.setattr(rl_seeds, "run_one", lambda *a: pytest.fail("a measured run was trained again"))
    records = rl_seeds.study(preset, ["ppo"], seeds=1, pair_seeds=[preset.seed], log=lambda *_: None)
    assert records == [saved] and "| ppo | 1 | 1/1 |" in (folder / "table.md").read_text()


def test_samples_per_prompt_scores_each_answer_against_its_siblings(tiny_base):
    loop, texts = _loop(tiny_base, samples_per_prompt=2)
    shaped = loop.shaped_scores(torch.tensor([1.0, 3.0, 10.0, 10.0]))  # two prompts, two answers each
    assert shaped.tolist() == [-2.0, 2.0, 0.0, 0.0]  # a prompt that scores high for every answer teaches nothing
    assert ppo.repeat_prompts(["a", "b"], 3) == ["a", "a", "a", "b", "b", "b"]
    with pytest.raises(ValueError, match="samples_per_prompt=2"):
        loop.step(texts[:3])


def test_rule_rewards_score_red_flags_and_wrong_conditions_only():
    from medgpt_utils.evaluation import rule_rewards

    rows = [{"red_flag": True, "lang": "en", "condition": "heart_attack"},
            {"red_flag": True, "lang": "zh", "condition": "stroke"},
            {"red_flag": False, "lang": "en", "condition": "gout"},
            {"red_flag": False, "lang": "en", "condition": "gout"},
            {"red_flag": False, "lang": "en", "condition": "gout"}]
    answers = ["Call your local emergency number now.", "多休息。", "Gout is caused by uric acid crystals.",
               "Influenza causes fever.", "Rest and drink water."]
    assert rule_rewards(answers, rows, urgent_care_weight=1.0, wrong_condition_weight=2.0) == [1.0, -1.0, 0.0, -2.0, 0.0]
    assert rule_rewards(answers, rows, urgent_care_weight=0.0, wrong_condition_weight=0.0) == [0.0] * 5


def test_key_fact_rule_rewards_the_share_of_the_asked_about_facts_and_skips_red_flags():
    from medgpt_utils.evaluation import key_fact_rule_scores, rule_rewards

    rows = [{"red_flag": False, "lang": "en", "condition": "gout", "key_facts": ["big toe", "uric acid"]},
            {"red_flag": True, "lang": "en", "condition": "stroke", "key_facts": ["emergency"]},
            {"red_flag": False, "lang": "en", "condition": "gout", "key_facts": []}]
    answers = ["Gout pain starts in the BIG TOE.", "Rest.", "Gout."]
    assert key_fact_rule_scores(answers, [r["key_facts"] for r in rows], [r["red_flag"] for r in rows]) == [0.5, 0.0, 0.0]
    assert rule_rewards(answers, rows, 1.0, 0.0, key_fact_weight=2.0) == [1.0, -1.0, 0.0]


def test_non_word_rule_penalises_answers_with_a_word_absent_from_the_training_data():
    from medgpt_utils.evaluation import non_words, rule_rewards, rule_weights, training_vocabulary

    preset = get_preset("tiny", verbose=False)
    rows = [{"red_flag": False, "lang": "en", "condition": "gout"}] * 3 + [{"red_flag": False, "lang": "zh", "condition": "gout"}]
    answers = ["Gout is caused by uric acid crystals.", "Gout is caused by uric tonsmques.", "Rest and drink water.", "多休息。"]
    assert non_words(answers[1], training_vocabulary(preset.conditions)) == ["tonsmques"]
    weights = rule_weights(override(preset, {"rl.non_word_penalty": 0.5}))
    assert weights["non_word_weight"] == 0.5 and weights["vocabulary_conditions"] == list(preset.conditions)
    assert rule_rewards(answers, rows, **weights) == [0.0, -0.5, 0.0, 0.0]
    assert rule_rewards(answers, rows, **rule_weights(preset)) == [0.0] * 4  # off on every preset


def test_grpo_learns_from_the_reward_model_and_each_rule_switched_on():
    from medgpt_utils.stages import grpo

    both = override(get_preset("tiny", verbose=False), {"rl.urgent_care_reward": 1.0, "rl.wrong_condition_penalty": 2.0})
    assert [f.__name__ for f, _ in grpo.rule_functions(both)] == ["urgent_care_rule", "wrong_condition_rule"]
    assert grpo.grpo_config(both, "/tmp/unused").reward_weights == [1.0, 1.0, 2.0]
    off = override(both, {"rl.wrong_condition_penalty": 0.0})
    assert grpo.grpo_config(off, "/tmp/unused").reward_weights == [1.0, 1.0]
    completions = [[{"role": "assistant", "content": "Influenza causes fever."}]]
    assert grpo.wrong_condition_rule(None, completions, condition=["gout"], lang=["en"]) == [-1.0]
    facts = override(off, {"rl.key_fact_reward": 0.5})
    assert [f.__name__ for f, _ in grpo.rule_functions(facts)] == ["urgent_care_rule", "key_fact_rule"]
    assert grpo.grpo_config(facts, "/tmp/unused").reward_weights == [1.0, 1.0, 0.5]
    assert grpo.key_fact_rule(None, completions, key_facts=[["fever", "cough"]], red_flag=[False]) == [0.5]
    made_up = override(off, {"rl.non_word_penalty": 1.5})
    rules = grpo.rule_functions(made_up)
    assert [f.__name__ for f, _ in rules] == ["urgent_care_rule", "non_word_rule"]
    assert grpo.grpo_config(made_up, "/tmp/unused").reward_weights == [1.0, 1.0, 1.5]
    garbled = [[{"role": "assistant", "content": "Gout is caused by uric tonsmques."}]] + completions
    assert rules[1][0](None, garbled) == [-1.0, 0.0]


def test_whitening_can_be_switched_off(tiny_base, monkeypatch):
    loop, texts = _loop(tiny_base, whiten_advantages=False)
    monkeypatch.setattr(ppo, "whiten", lambda *a, **k: pytest.fail("advantages were whitened"))
    assert loop.step(texts)["step"] == 1
    on, texts = _loop(tiny_base)
    seen = []
    monkeypatch.setattr(ppo, "whiten", lambda x, mask, shift_mean=True: seen.append(1) or x)
    on.step(texts)
    assert seen == [1]


def test_seed_study_sweeps_a_methods_beta_and_records_it(outputs, monkeypatch):
    """``--betas ppo=...`` trains once per beta with that KL coefficient; each run records its beta and the
    summary gets a row per beta."""
    preset = get_preset("tiny", verbose=False)
    trained = []

    def fake_run(run_preset, method):
        trained.append(run_preset.rl.kl_coef)
        record = _record(method, 42, 42, 0.1 * len(trained), True)
        return {**record, "made_with": {"fingerprint": stage_fingerprint(run_preset, method)}}

    monkeypatch.setattr(rl_seeds, "run_one", fake_run)
    records = rl_seeds.study(preset, ["ppo"], seeds=1, pair_seeds=[preset.seed], log=lambda *_: None,
                             betas={"ppo": [0.05, 0.2]})
    assert trained == [0.05, 0.2] and [r["beta"] for r in records] == [0.05, 0.2]
    rows = [line.split(" | ")[0] for line in rl_seeds.summary_markdown(records).splitlines()[2:]]
    assert rows == ["| ppo (beta 0.05)", "| ppo (beta 0.2)"]
    with pytest.raises(SystemExit):
        rl_seeds.main(["--methods", "ppo", "--betas", "sft=0.1"])


def test_the_committed_study_proper_is_the_presets_beta_and_the_sweep_the_rest():
    preset = get_preset("tiny", verbose=False)
    for method, field in rl_seeds.BETA_FIELDS.items():
        proper = rl_seeds.committed_runs(method)
        assert len(proper) == 6, (method, len(proper))  # two pairs x three RL seeds
        assert all(r.get("beta") in (None, rl_seeds.field_value(preset, field)) for r in proper)
    assert len(rl_seeds.committed_runs("ppo", sweep=True)) > len(rl_seeds.committed_runs("ppo"))


def test_the_beta_figure_draws_one_column_per_beta():
    import matplotlib

    matplotlib.use("Agg")
    from medgpt_utils.plotting import plot_beta_tradeoff

    runs = [{**_record("ppo", 42, s, 0.1, True), "beta": b} for b in (0.05, 0.2) for s in (42, 43)]
    fig = plot_beta_tradeoff(runs)
    assert len(fig.axes) == 4 and [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.05", "0.2"]


def test_ppo_stage_draws_its_ptx_batches_from_the_sft_data_by_number(tiny_base):
    """PPO-ptx's SFT batches: none when the coefficient is 0; otherwise ``rl.minibatch_size`` dialogues of data.sft,
    the same for the same number (a resumed run draws what the first one would have), answers-only labels."""
    from medgpt_utils.stages import ppo as ppo_stage
    from medgpt_utils.stages.sft import load_datasets

    tiny = get_preset("tiny", verbose=False)
    tokenizer = models.load_tokenizer(tiny_base)
    assert ppo_stage.sft_batches(override(tiny, {"rl.ptx_coef": 0.0}), tokenizer) is None
    draw = ppo_stage.sft_batches(override(tiny, {"rl.ptx_coef": 1.0, "rl.minibatch_size": 4}), tokenizer)
    first, again, other = draw(3), draw(3), draw(4)
    assert first["input_ids"].shape[0] == 4
    assert all(torch.equal(first[k], again[k]) for k in first) and not torch.equal(first["input_ids"], other["input_ids"])
    answers = {m["content"] for d in load_datasets(tiny)[0]["messages"] for m in d if m["role"] == "assistant"}
    for ids, labels in zip(first["input_ids"], first["labels"]):
        learned = tokenizer.decode(labels[labels != -100]).replace(tokenizer.eos_token, "\n")
        assert all(part.strip() in answers for part in learned.split("\n") if part.strip()), learned
        assert tokenizer.decode(ids).count("<|im_start|>user") >= 1


def test_the_pipeline_figure_headlines_the_gain_the_verdict_judges():
    from medgpt_utils.report import _HEADLINES

    rl_prompts_only = {"score_gain": {"mean": -0.08, "low": -0.5, "high": 0.3, "n": 96}, "recall_heldout_after": 0.673}
    both = {**rl_prompts_only, "score_gain_all_prompts": {"mean": 0.13, "low": 0.004, "high": 0.25, "n": 480}}
    assert _HEADLINES["dpo"](both) == "score +0.13\nrecall 0.67"  # what the verdict reads, not the RL prompts alone
    assert _HEADLINES["ppo"](rl_prompts_only) == "score -0.08\nrecall 0.67"  # a run recorded before the question sets
