"""Pieces of the training stages, on the tiny base model (the stages run end to end in test_cli)."""

import torch

from medgpt_utils import data, models, scoring
from medgpt_utils.evaluation import key_fact_recall, tokens_per_char
from medgpt_utils.generation import answer, chat_prompt_texts, generate
from medgpt_utils.presets import PRESETS
from medgpt_utils.sources import BUNDLED
from medgpt_utils.stages import pretrain, sft, vocab

TINY = PRESETS["tiny"]


def test_pack_texts_joins_documents_with_eos_into_full_blocks(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    texts = ["fever and cough", "头痛", "rest and fluids help"]
    stream = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = data.pack_texts(texts, tokenizer, 4)
    assert all(len(b) == 4 for b in blocks)
    assert sum(blocks, []) == stream[: len(blocks) * 4]  # order kept, only the partial tail left out
    assert len(stream) - len(blocks) * 4 < 4
    assert stream.count(tokenizer.eos_token_id) == len(texts)


def test_new_vocabulary_rows_start_as_the_mean_of_their_pieces(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_causal_lm(tiny_base)
    terms = [t for t, _ in vocab.split_terms(tokenizer, vocab.knowledge_base_terms(TINY.conditions), 3)[:5]]
    assert len(terms) == 5
    pieces = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in terms}
    old = model.get_input_embeddings().weight.detach().clone()
    heldout = data.load_bundled("pretrain/heldout.jsonl", conditions=TINY.conditions)["text"]
    before = tokens_per_char(tokenizer, heldout)
    new_ids = vocab.add_terms(model, tokenizer, terms)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tokenizer) == old.shape[0] + 5
    for term, new_id in zip(terms, new_ids):
        assert torch.allclose(weight[new_id], old[pieces[term]].mean(0))
        assert tokenizer(term, add_special_tokens=False)["input_ids"] == [new_id]
    assert tokens_per_char(tokenizer, heldout) < before
    ids = torch.tensor([new_ids])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_batched_generation_matches_one_at_a_time(tiny_base):
    """Left padding must not change greedy answers; tokens after EOS are dropped."""
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_causal_lm(tiny_base)
    prompts = [[{"role": "user", "content": "What causes gout?"}],
               [{"role": "user", "content": "A much longer question about the symptoms of influenza in adults?"}]]
    together = answer(model, tokenizer, prompts, max_new_tokens=8, batch_size=2)
    alone = [answer(model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert [a.text for a in together] == [a.text for a in alone]
    assert all(a.n_tokens <= 8 for a in together)
    assert tokenizer.padding_side == "right"  # restored after generation


def test_greedy_answers_do_not_depend_on_the_batch_size(tiny_base):
    """``GREEDY_BATCH_SIZE`` is a speed setting only: held-out questions of many lengths, answered in batches of 4
    (little padding) and all at once (much more), give the same tokens."""
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_causal_lm(tiny_base)
    rows = sft.heldout_questions(PRESETS["tiny"])
    prompts = [rows[i]["prompt"] for i in range(0, len(rows), len(rows) // 24)][:24]
    for k in range(0, 24, 3):  # every third a follow-up question after an earlier exchange: much longer prompts
        prompts[k] = prompts[k + 1] + [{"role": "assistant", "content": "Rest and drink fluids."}] + prompts[k]
    lengths = {len(ids) for ids in tokenizer(chat_prompt_texts(tokenizer, prompts), add_special_tokens=False)["input_ids"]}
    assert max(lengths) - min(lengths) >= 10, lengths  # the large batch really pads
    small = answer(model, tokenizer, prompts, max_new_tokens=12, batch_size=4)
    large = answer(model, tokenizer, prompts, max_new_tokens=12, batch_size=len(prompts))
    assert [(a.text, a.n_tokens) for a in small] == [(a.text, a.n_tokens) for a in large]


def test_generation_stops_at_eos(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_causal_lm(tiny_base)
    eos = tokenizer.eos_token_id
    model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i != eos]  # only EOS is left
    outs = generate(model, tokenizer, ["hello", "a longer prompt here"], max_new_tokens=6)
    assert [(o.n_tokens, o.ended_with_eos, o.text) for o in outs] == [(0, True, "")] * 2
    model.generation_config.suppress_tokens = [eos]  # EOS impossible: runs to the limit
    assert [(o.n_tokens, o.ended_with_eos) for o in generate(model, tokenizer, ["hello"], max_new_tokens=6)] == [(6, False)]


def test_key_fact_recall_counts_facts_case_insensitively():
    assert key_fact_recall("High Fever and cough.", ["high fever", "cough", "rash"]) == 2 / 3


def test_reward_scores_and_pairwise_accuracy_by_kind(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.load_reward_model(tiny_base, pad_token_id=tokenizer.pad_token_id)
    pairs = data.load_bundled("preference/heldout.jsonl").select(range(12))
    result = scoring.pairwise_accuracy(model, tokenizer, pairs)
    assert set(result["by_kind"]) == set(pairs["rejected_kind"])
    assert 0.0 <= result["accuracy"] <= 1.0 and len(result["chosen_scores"]) == 12
    # padding must not change a score: one conversation alone vs in a batch with a longer one
    convs = [pairs[0]["prompt"] + pairs[0]["chosen"], pairs[1]["prompt"] + pairs[1]["rejected"]]
    together = scoring.reward_scores(model, tokenizer, convs)
    alone = [scoring.reward_scores(model, tokenizer, [c])[0] for c in convs]
    assert torch.allclose(torch.tensor(together), torch.tensor(alone), atol=1e-4)


def test_sft_config_trains_on_assistant_tokens_in_fp32(tmp_path):
    config = sft.sft_config(TINY, tmp_path)
    assert config.assistant_only_loss and config.max_length == TINY.max_length
    assert not config.bf16 and not config.fp16
    train, held_out = sft.load_datasets(TINY)
    assert train.column_names == held_out.column_names == ["messages"]
    every = sum(len(data.load_bundled(name)) for name in BUNDLED["sft"][0])
    about_tiny = sum(len(data.load_bundled(name, conditions=TINY.conditions)) for name in BUNDLED["sft"][0])
    assert len(train) == about_tiny < every


def test_vocabulary_stage_on_a_4bit_base_trains_the_new_rows(tiny_base, outputs):
    """The GPU presets' path (QLoRA + trainable new token rows), run on the CPU with the tiny model."""
    import json
    import shutil

    from medgpt_utils.presets import override

    from medgpt_utils.fingerprints import stage_record

    preset = override(TINY, {"quantization": "4bit", "vocab.max_added_tokens": 20, "vocab.train_steps": 2})
    shutil.copytree(tiny_base, outputs / "tiny" / "pt")  # stand-in for the PT stage's model, recorded as this preset's
    (outputs / "tiny" / "pt" / "metrics.json").write_text(json.dumps({"stage": "pt", "made_with": stage_record(preset, "pt")}))
    out = vocab.run(preset)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["added_tokens"] == 20 and metrics["vocab_after"] == metrics["vocab_before"] + 20
    assert metrics["tokens_per_char_all_after"] < metrics["tokens_per_char_all_before"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["trainable_token_indices"]


def test_a_stage_run_twice_gives_the_same_numbers(tiny_base, outputs, monkeypatch):
    """`medgpt run` and a notebook call the same stage function: run the same way, it must give the same
    numbers (each stage seeds itself after its inputs are built)."""
    import json
    import shutil

    from medgpt_utils.presets import override

    preset = override(TINY, {"pt.max_steps": 3, "pt.logging_steps": 1, "eval_question_stride": 50})
    results = []
    for attempt in ("first", "second"):
        root = outputs / attempt
        monkeypatch.setenv("MEDGPT_OUTPUT_DIR", str(root))
        shutil.copytree(tiny_base, root / "tiny" / "base")
        metrics = json.loads((pretrain.run(preset) / "metrics.json").read_text())
        results.append((metrics["loss_history"], metrics["heldout_loss_after"], metrics["cloze_after"]["examples"]))
    assert results[0] == results[1]


def test_a_tokenizer_that_learns_the_dialogues_keeps_the_answers_opening_words_whole(outputs):
    """An SFT answer opens with a capitalised word ("Swelling of lips…") that the PT text has only mid-sentence:
    a tokenizer learnt on PT alone spells it letter by letter; one that also learns the dialogues keeps it whole."""
    import re

    from medgpt_utils.presets import get_preset, override
    from medgpt_utils.stages import base
    from medgpt_utils.training import stage_data

    preset = get_preset("tiny", verbose=False)
    opening_words = (re.match(r"[A-Z][a-z]+", m["content"]) for r in stage_data(preset, "sft").train
                     for m in r["messages"] if m["role"] == "assistant")
    openings = {word.group(0) for word in opening_words if word}

    def pieces(start):
        tokenizer = models.load_tokenizer(base.run(start))
        return {word: len(tokenizer.tokenize(word)) for word in openings}

    pt_only = pieces(preset)
    learns = pieces(override(preset, {"tiny.tokenizer_learns_dialogues": True}))
    assert pt_only["Swelling"] >= 3 and learns["Swelling"] == 1
    assert all(n == 1 for n in learns.values()), {w: n for w, n in learns.items() if n > 1}


def test_degenerate_pairs_teach_the_reward_model_that_a_repeated_piece_is_worse():
    import random

    from medgpt_utils.presets import get_preset
    from medgpt_utils.stages.reward import repeat_a_piece, training_pairs, with_degenerate_pairs

    rng = random.Random(0)
    listed = repeat_a_piece("Common symptoms of gout include joint pain, swollen joint and red skin.", rng)
    assert listed.endswith("skin.") and any(listed.count(item) == 3 for item in ("swollen joint", "red skin"))
    listed = repeat_a_piece("痛风的常见症状包括关节痛、关节肿胀和皮肤发红。", rng)
    assert listed.endswith("。") and any(listed.count(item) == 3 for item in ("关节肿胀", "皮肤发红"))
    doubled = repeat_a_piece("See a doctor in orthopedics.", rng).split(" ")
    assert len(doubled) == 6 and any(a == b for a, b in zip(doubled, doubled[1:]))
    assert len(repeat_a_piece("哮喘一般应到呼吸内科就诊。", rng)) == len("哮喘一般应到呼吸内科就诊。") + 1

    written = training_pairs(get_preset("tiny", verbose=False)).select(range(40))
    assert with_degenerate_pairs(written, 0.0, 42) is written
    more = with_degenerate_pairs(written, 0.5, 42)
    assert len(more) == 60 and more.features == written.features
    chosen = {str(r["chosen"]) for r in written}
    for pair in more.select(range(40, 60)):
        assert str(pair["chosen"]) in chosen and pair["rejected"][-1]["content"] != pair["chosen"][-1]["content"]
        assert len(pair["rejected"][-1]["content"]) > len(pair["chosen"][-1]["content"])  # something said again
    assert list(with_degenerate_pairs(written, 0.5, 42)["rejected"]) == list(more["rejected"])  # the seed decides
