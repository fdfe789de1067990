"""The metrics every stage is judged by (notebook 06, `medgpt eval`, the report)."""

import pytest

from medgpt_utils import evaluation, scoring


def test_repetition_rate_counts_repeated_ngrams_in_both_languages():
    assert evaluation.repetition_rate("Rest, drink fluids and see a doctor if it gets worse.") == 0.0
    # 8 words -> 6 word 3-grams, only 2 of them distinct
    assert evaluation.repetition_rate("with fever with fever with fever with fever") == pytest.approx(1 - 2 / 6)
    assert evaluation.repetition_rate("多喝水多喝水") == pytest.approx(1 - 3 / 4)  # 4 character 3-grams, 3 distinct
    assert evaluation.repetition_rate("short") == 0.0


def test_evaluate_model_reports_every_metric_on_the_same_answers(tiny_base, monkeypatch):
    from medgpt_utils import compare, data, models
    from medgpt_utils.presets import PRESETS, override

    preset = override(PRESETS["tiny"], {"eval_question_stride": 17})  # 20 of the 336 questions
    questions = compare.heldout_questions(preset)
    texts = data.load_bundled("pretrain/heldout.jsonl")["text"][:20]
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_causal_lm(tiny_base)


    monkeypatch.setattr(scoring, "reward_scores", lambda m, t, conversations, batch_size=32: [float(len(c[-1]["content"])) for c in conversations])
    result = evaluation.evaluate_model(model, tokenizer, questions, texts, block_size=64, max_new_tokens=6,
                                       reward_model=object(), reward_tokenizer=tokenizer)
    assert len(result["answers"]) == len(questions) == 20
    assert result["perplexity"] > 100  # an untrained model is lost in medical text
    assert 0 <= result["recall"] <= 1 and result["recall_en"] is not None and result["recall_zh"] is not None
    assert 0 <= result["wrong_condition_rate"] <= 1 and 0 <= result["non_word_rate"] <= 1
    assert result["safety_rate"] is not None and 0 <= result["safety_rate"] <= 1
    assert 0 <= result["ended_with_eos"] <= 1 and 0 < result["mean_tokens"] <= 6
    assert result["reward_score"] == pytest.approx(sum(len(a) for a in result["answers"]) / 20)


def test_wrong_condition_means_another_condition_named_and_not_the_asked_one():
    wrong = evaluation.names_wrong_condition
    assert wrong("For ankle sprain, see a doctor in gastroenterology.", "asthma", "en")
    assert not wrong("For asthma, see a doctor in respiratory medicine.", "asthma", "en")
    assert not wrong("Asthma is not the same as pneumonia.", "asthma", "en")  # the asked one is named too
    assert not wrong("Rest and drink fluids.", "asthma", "en")  # no condition named at all
    assert wrong("高脂血症的常见症状包括发热。", "type2_diabetes", "zh")
    assert not wrong("2型糖尿病的常见症状包括口渴。", "type2_diabetes", "zh")
    # Longest names first: "heat stroke" is not also a mention of "stroke"; whole words in English.
    assert evaluation.named_conditions("Heat stroke needs cooling.", "en") == {"heat_stroke"}
    assert evaluation.named_conditions("goutiness", "en") == set()


def test_knowledge_scores_keep_red_flag_cases_apart_and_count_non_words():
    rows = {
        "condition": ["asthma", "asthma", "influenza"],
        "lang": ["en", "en", "zh"],
        "fact": ["department", "red_flag_case", "symptoms"],
        "key_facts": [["respiratory medicine"], ["emergency"], ["发热", "咳嗽"]],
    }
    answers = ["For asthma, see a doctor in respiratory medicine. Tonsmques help.",
               "Go to the emergency department now.",
               "普通感冒的常见症状包括发热。"]
    vocabulary = frozenset("for asthma see a doctor in respiratory medicine help go to the emergency department now".split())
    scores = evaluation.knowledge_scores(answers, rows, vocabulary)
    assert scores["recall"] == pytest.approx((1.0 + 0.5) / 2)  # the red-flag case is not a fact question
    assert scores["recall_en"] == 1.0 and scores["recall_zh"] == 0.5
    assert scores["safety_rate"] == 1.0 and scores["n_red_flag_cases"] == 1 and scores["n_fact_questions"] == 2
    assert scores["wrong_condition_rate"] == pytest.approx(1 / 3)  # the influenza answer is about the common cold
    english = "for asthma see a doctor in respiratory medicine tonsmques help go to the emergency department now".split()
    assert scores["non_word_rate"] == pytest.approx(1 / len(english)) and scores["non_word_examples"] == ["tonsmques"]


def test_training_vocabulary_holds_the_training_words_of_the_chosen_conditions():
    every = evaluation.training_vocabulary()
    tiny = evaluation.training_vocabulary(("asthma", "influenza"))
    assert {"asthma", "influenza", "emergency", "wheezing"} <= tiny < every
    assert "chickenpox" in every and "chickenpox" not in tiny
