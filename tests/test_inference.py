"""Inference: question files, batch predictions, streaming multi-turn chat, the widget, `medgpt infer`."""

import json

import pytest

from medgpt_utils import inference, models


@pytest.fixture(scope="module")
def tiny_chat(tiny_base):
    return inference.load_model(tiny_base, device="cpu")


def test_read_questions_keeps_order_and_line_numbers_and_skips_empty_lines(tmp_path, caplog):
    path = tmp_path / "q.txt"
    path.write_text("What is gout?\n\n   \n流感有哪些症状？\n", encoding="utf-8")
    assert inference.read_questions(path) == [(1, "What is gout?"), (4, "流感有哪些症状？")]
    assert "skipped 2 empty line(s): 2, 3" in caplog.text


def test_read_questions_reads_jsonl_fields_and_names_file_and_line_of_bad_records(tmp_path):
    good = tmp_path / "q.jsonl"
    good.write_text('{"question": "A?"}\n{"instruction": "B?"}\n"C?"\n', encoding="utf-8")
    assert [q for _, q in inference.read_questions(good)] == ["A?", "B?", "C?"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "A?"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        inference.read_questions(bad)
    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "A?"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"missing.jsonl:1: no question field"):
        inference.read_questions(missing)


def test_predict_file_writes_one_prediction_per_question_in_order_and_survives_long_questions(tiny_chat, tmp_path):
    model, tokenizer = tiny_chat
    long_question = "Why do I have a headache? " * 2000  # far beyond the 1,024-token context
    path = tmp_path / "q.txt"
    path.write_text(f"What is gout?\n\n{long_question}\n头痛怎么办？\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    assert inference.predict_file(model, tokenizer, path, out, max_new_tokens=8) == 3
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == [1, 3, 4]
    assert rows[0]["question"] == "What is gout?" and rows[2]["question"] == "头痛怎么办？"
    assert [r["shortened"] for r in rows] == [False, True, False]
    assert all(isinstance(r["answer"], str) for r in rows)


class RecordingGenerate:
    """`inference.generate`, recording each batch's prompts; it can fail on a chosen call, as running out of memory would."""

    def __init__(self, fail_on_call: int | None = None):
        self.batches, self.fail_on_call = [], fail_on_call
        self.real = inference.generate

    def __call__(self, model, tokenizer, texts, *args, **kwargs):
        self.batches.append(list(texts))
        if len(self.batches) == self.fail_on_call:
            raise RuntimeError("CUDA out of memory (simulated)")
        return self.real(model, tokenizer, texts, *args, **kwargs)


def _questions_file(tmp_path):
    path = tmp_path / "q.txt"
    lengths = [3, 400, 1, 6, 2000]  # repeats of a sentence: short, long, shortest, medium, beyond any budget
    path.write_text("".join("Why does my knee hurt? " * n + "\n" for n in lengths), encoding="utf-8")
    return path, len(lengths)


def test_predict_file_budgets_prompts_sorts_batches_by_length_and_answers_in_input_order(tiny_chat, tmp_path, monkeypatch):
    model, tokenizer = tiny_chat
    path, count = _questions_file(tmp_path)
    spy = RecordingGenerate()
    monkeypatch.setattr(inference, "generate", spy)
    out = tmp_path / "p.jsonl"
    assert inference.predict_file(model, tokenizer, path, out, max_new_tokens=4, batch_size=2, max_prompt_tokens=120) == count
    lengths = [[len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in batch] for batch in spy.batches]
    flat = [n for batch in lengths for n in batch]
    assert max(flat) <= 120 < inference.context_length(model) - 4  # the given budget, not the model's context
    assert flat == sorted(flat, reverse=True) and [len(b) for b in lengths] == [2, 2, 1]  # longest first
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["shortened"] for r in rows] == [False, True, False, False, True]
    assert not (tmp_path / "p.jsonl.partial").exists()


def test_predict_file_keeps_the_finished_answers_when_a_batch_fails(tiny_chat, tmp_path, monkeypatch, caplog):
    model, tokenizer = tiny_chat
    path, count = _questions_file(tmp_path)
    monkeypatch.setattr(inference, "generate", RecordingGenerate(fail_on_call=2))
    out = tmp_path / "p.jsonl"
    with pytest.raises(RuntimeError, match="out of memory"):
        inference.predict_file(model, tokenizer, path, out, max_new_tokens=4, batch_size=2, max_prompt_tokens=120)
    kept = [json.loads(line) for line in (tmp_path / "p.jsonl.partial").read_text(encoding="utf-8").splitlines()]
    assert sorted(r["line"] for r in kept) == [2, 5] and all(isinstance(r["answer"], str) for r in kept)  # the longest
    assert not out.exists() and "stopped after 2 of 5 answers; the finished ones are in" in caplog.text


def test_fit_to_context_drops_oldest_turns_first_and_keeps_the_system_prompt(tiny_chat):
    _, tokenizer = tiny_chat
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} " * 20}, {"role": "assistant", "content": f"answer {i} " * 20}]
    messages = inference.build_messages("last question", history, "Be brief.")
    fitted, shortened = inference.fit_to_context(tokenizer, messages, 200)
    assert shortened and fitted[0] == {"role": "system", "content": "Be brief."}
    assert fitted[-1] == {"role": "user", "content": "last question"}
    assert inference.prompt_tokens(tokenizer, fitted) <= 200 < inference.prompt_tokens(tokenizer, messages)
    assert fitted[1]["role"] == "user"  # whole turns were dropped, oldest first


def test_chat_session_streams_pieces_and_keeps_multi_turn_history(tiny_chat):
    model, tokenizer = tiny_chat
    session = inference.ChatSession(model, tokenizer, system_prompt="You are a careful assistant.", max_new_tokens=6,
                                    temperature=0.0)
    pieces = list(session.stream("What is gout?"))
    assert len(pieces) >= 1 and session.history[-1] == {"role": "assistant", "content": "".join(pieces).strip()}
    second = session.ask("And how is it treated?")
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[-1]["content"] == second
    # the second prompt carried the first turn: greedy continuation of the same prompt must match
    expected = "".join(inference.stream_reply(model, tokenizer, inference.build_messages(
        "And how is it treated?", session.history[:2], "You are a careful assistant."), 6, 0.0)).strip()
    assert second == expected
    session.clear()
    assert session.history == []


def test_chat_widget_send_and_clear_callbacks(tiny_chat):
    from medgpt_utils.chat_widget import chat_widget

    model, tokenizer = tiny_chat
    chat = chat_widget(model, tokenizer, max_new_tokens=6, temperature=0.0)
    chat.question.value = "What is gout?"
    chat.max_new_tokens.value = 8
    chat.system_prompt.value = "Be brief."
    chat.send_button.click()
    assert chat.question.value == "" and not chat.send_button.disabled
    assert [m["role"] for m in chat.session.history] == ["user", "assistant"]
    assert chat.session.system_prompt == "Be brief." and chat.session.max_new_tokens == 8
    assert "What is gout?" in chat.transcript.value
    chat.question.value = "   "
    chat.send_button.click()  # an empty question sends nothing
    assert len(chat.session.history) == 2
    chat.clear_button.click()
    assert chat.session.history == [] and "No messages yet" in chat.transcript.value


def test_chat_widget_tells_the_user_when_the_question_was_cut(tiny_chat):
    from medgpt_utils.chat_widget import chat_widget

    model, tokenizer = tiny_chat
    chat = chat_widget(model, tokenizer, max_new_tokens=4, temperature=0.0)
    chat.question.value = "Why does my chest hurt? " * 5000
    chat.send_button.click()
    assert "Note: your message was cut to its first" in chat.transcript.value
    assert len(chat.session.history[0]["content"]) < 5000  # the history holds what the model saw
    chat.question.value = "What is gout?"
    chat.send_button.click()
    # the first question filled the context: now it is left out, and the note says so instead
    assert "your message was cut" not in chat.transcript.value
    assert "Note: the 2 oldest messages of the conversation were left out." in chat.transcript.value


def test_medgpt_infer_batch_predictions_from_the_command_line(tiny_base, tmp_path, capsys):
    from medgpt_utils.cli import main

    questions = tmp_path / "q.txt"
    questions.write_text("What is gout?\n\nWhat causes asthma?\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    assert main(["infer", "--preset", "tiny", "--base_model", str(tiny_base), "--data_file", str(questions),
                 "--predictions_file", str(out), "--max_new_tokens", "8", "--temperature", "0", "--use_cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in rows] == ["What is gout?", "What causes asthma?"]
    assert "wrote 2 predictions" in capsys.readouterr().out


def test_medgpt_infer_caps_prompts_at_the_presets_max_length(tiny_base, tmp_path, monkeypatch):
    """Batch prompts are budgeted by the preset's max_length (448 for tiny), not the model's 1,024 positions."""
    from medgpt_utils.cli import main
    from medgpt_utils.presets import get_preset

    spy = RecordingGenerate()
    monkeypatch.setattr(inference, "generate", spy)
    questions = tmp_path / "q.txt"
    questions.write_text("Why does my knee hurt? " * 3000 + "\nWhat is gout?\n", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    assert main(["infer", "--preset", "tiny", "--base_model", str(tiny_base), "--data_file", str(questions),
                 "--predictions_file", str(out), "--max_new_tokens", "4", "--temperature", "0", "--use_cpu"]) == 0
    tokenizer = models.load_tokenizer(tiny_base)
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for batch in spy.batches for t in batch)
    assert 400 < longest <= get_preset("tiny", verbose=False).max_length == 448
    assert [json.loads(line)["shortened"] for line in out.read_text(encoding="utf-8").splitlines()] == [True, False]


def test_medgpt_infer_interactive_says_when_a_question_was_cut(tiny_base, monkeypatch, capsys):
    from medgpt_utils.cli import main

    typed = iter(["Why does my chest hurt? " * 5000, "exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    assert main(["infer", "--preset", "tiny", "--base_model", str(tiny_base), "--interactive", "--max_new_tokens", "4",
                 "--temperature", "0", "--use_cpu"]) == 0
    assert "(Note: your message was cut to its first" in capsys.readouterr().out


def test_medgpt_infer_reports_a_bad_data_file_clearly(tiny_base, tmp_path, capsys):
    from medgpt_utils.cli import main

    bad = tmp_path / "q.jsonl"
    bad.write_text("{oops\n", encoding="utf-8")
    assert main(["infer", "--preset", "tiny", "--base_model", str(tiny_base), "--data_file", str(bad), "--use_cpu"]) == 2
    assert "q.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_newest_stage_is_the_most_recently_finished_chat_stage(outputs):
    import os
    import time

    from medgpt_utils.artifacts import stage_dir, write_json

    with pytest.raises(FileNotFoundError, match="medgpt run --preset tiny"):
        inference.newest_stage("tiny")
    for i, stage in enumerate(("sft", "dpo", "rm")):
        write_json(stage_dir("tiny", stage) / "metrics.json", {"stage": stage})
        t = time.time() - 100 + i * 10
        os.utime(stage_dir("tiny", stage) / "metrics.json", (t, t))
    assert inference.newest_stage("tiny") == "dpo"  # rm is newer but cannot chat


def test_load_model_applies_a_lora_adapter_and_takes_the_base_tokenizer(tiny_base, tmp_path):
    """An adapter folder without a tokenizer (as the stages save them) loads with the base's tokenizer;
    merged in memory or not, it gives the same logits."""
    import torch

    model = models.add_lora(models.load_causal_lm(tiny_base), r=4, alpha=8)
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)  # a non-trivial adapter
    model.save_pretrained(tmp_path / "adapter", safe_serialization=True)
    merged, tokenizer = inference.load_model(tiny_base, lora_model=tmp_path / "adapter", device="cpu")
    unmerged, _ = inference.load_model(tiny_base, lora_model=tmp_path / "adapter", device="cpu", merge=False)
    plain, _ = inference.load_model(tiny_base, device="cpu")
    ids = tokenizer("What is gout?", return_tensors="pt")
    with torch.no_grad():
        a, b, c = merged(**ids).logits, unmerged(**ids).logits, plain(**ids).logits
    assert torch.allclose(a, b, atol=1e-4) and not torch.allclose(a, c, atol=1e-3)
