"""lm-eval-harness on the course's models: the repository's own task (offline), pointed at a preset's conditions."""

import json

import pytest

from medgpt_utils import data, harness
from medgpt_utils.presets import TINY_CONDITIONS, get_preset


def test_the_task_files_point_at_the_presets_questions(outputs):
    preset = get_preset("tiny", verbose=False)
    folder = harness.task_folder(preset)
    rows = [json.loads(line) for line in (folder / "multiple_choice.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["condition"] for r in rows} == set(TINY_CONDITIONS) and len(rows) == len(TINY_CONDITIONS) * 2 * 3
    for name in ("medgpt_kb_mc.yaml", "medgpt_kb_mc_en.yaml", "medgpt_kb_mc_zh.yaml", "utils.py"):
        assert (folder / name).is_file()
    task = (folder / "medgpt_kb_mc_en.yaml").read_text(encoding="utf-8")
    assert str(folder / "multiple_choice.jsonl") in task and harness.COMMITTED_DATA not in task


def test_lm_eval_loads_the_tasks_with_one_language_each(outputs):
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    folder = harness.task_folder(get_preset("tiny", verbose=False))
    manager = TaskManager(include_path=str(folder), include_defaults=False)
    assert {"medgpt_kb_mc", *harness.LOCAL_TASKS} <= set(manager.all_tasks)
    loaded = manager.load(list(harness.LOCAL_TASKS))["tasks"]
    for name, lang in (("medgpt_kb_mc_en", "en"), ("medgpt_kb_mc_zh", "zh")):
        docs = list(loaded[name].test_docs())
        assert len(docs) == len(TINY_CONDITIONS) * 3 and {d["lang"] for d in docs} == {lang}


def test_the_committed_tasks_read_the_bundled_questions():
    """As committed (run from the repository root), the tasks read data/eval/multiple_choice.jsonl."""
    for name in harness.LOCAL_TASKS:
        assert harness.COMMITTED_DATA in (harness.TASK_DIR / f"{name}.yaml").read_text(encoding="utf-8")
    assert len(data.load_bundled("eval/multiple_choice.jsonl")) == data.card_counts()["eval/multiple_choice.jsonl"]


def _by_hand_accuracy(model_path, docs, template):
    """Accuracy as lm-eval computes it for a multiple-choice task: the summed log-probability of each choice
    (" " + choice) after the context, with the context / continuation split of lm-eval's HFLM._encode_pair."""
    import torch

    from medgpt_utils import models

    tokenizer = models.load_tokenizer(model_path)
    model = models.load_causal_lm(model_path).eval()
    hits = 0
    for doc in docs:
        context = template.format(question=doc["question"])
        scores = []
        for choice in doc["choices"]:
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
            continuation = whole[len(context_ids):]
            ids = torch.tensor([context_ids + continuation])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            positions = range(len(context_ids) - 1, ids.shape[1] - 1)
            scores.append(sum(logprobs[p, ids[0, p + 1]].item() for p in positions))
        hits += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
    return hits / len(docs)


def test_the_harness_scores_a_model_as_its_log_likelihoods_say(outputs, tiny_base):
    """lm-eval's accuracy on the tiny base model equals the one computed by hand from the model's log-probabilities."""
    pytest.importorskip("lm_eval")
    preset = get_preset("tiny", verbose=False)
    folder = harness.task_folder(preset)
    scores = harness.evaluate_model(tiny_base, ["medgpt_kb_mc_en"], preset, include_path=folder, limit=12, batch_size=4)
    docs = [json.loads(line) for line in (folder / "multiple_choice.jsonl").read_text(encoding="utf-8").splitlines()]
    docs = [d for d in docs if d["lang"] == "en"][:12]
    assert scores["medgpt_kb_mc_en"]["acc"] == pytest.approx(_by_hand_accuracy(tiny_base, docs, "Question: {question}\nAnswer:"))
    assert 0.0 <= scores["medgpt_kb_mc_en"]["acc_norm"] <= 1.0
