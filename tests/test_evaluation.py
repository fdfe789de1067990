"""The metrics every stage is judged by (notebook 06, `medgpt eval`, the report)."""

import pytest

from medgpt_utils import evaluation


def test_repetition_rate_counts_repeated_ngrams_in_both_languages():
    assert evaluation.repetition_rate("Rest, drink fluids and see a doctor if it gets worse.") == 0.0
    # 8 words -> 6 word 3-grams, only 2 of them distinct
    assert evaluation.repetition_rate("with fever with fever with fever with fever") == pytest.approx(1 - 2 / 6)
    assert evaluation.repetition_rate("多喝水多喝水") == pytest.approx(1 - 3 / 4)  # 4 character 3-grams, 3 distinct
    assert evaluation.repetition_rate("short") == 0.0


def test_evaluate_model_reports_every_metric_on_the_same_answers(tiny_base, monkeypatch):
    from medgpt_utils import compare, data, models
    from medgpt_utils.presets import PRESETS, override

    preset = override(PRESETS["tiny"], {"eval_question_stride": 60})
    questions = compare.heldout_questions(preset)
    texts = data.load_pretraining(data.bundled("pretrain", "heldout.txt"))["text"][:20]
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_causal_lm(tiny_base)

    import medgpt_utils.stages.reward as reward

    monkeypatch.setattr(reward, "reward_scores", lambda m, t, conversations, batch_size=32: [float(len(c[-1]["content"])) for c in conversations])
    result = evaluation.evaluate_model(model, tokenizer, questions, texts, block_size=64, max_new_tokens=6,
                                       reward_model=object(), reward_tokenizer=tokenizer)
    assert len(result["answers"]) == len(questions) == 20
    assert result["perplexity"] > 100  # an untrained model is lost in medical text
    assert 0 <= result["recall"] <= 1 and result["recall_en"] is not None and result["recall_zh"] is not None
    assert result["safety_rate"] is not None and 0 <= result["safety_rate"] <= 1
    assert 0 <= result["ended_with_eos"] <= 1 and 0 < result["mean_tokens"] <= 6
    assert result["reward_score"] == pytest.approx(sum(len(a) for a in result["answers"]) / 20)
