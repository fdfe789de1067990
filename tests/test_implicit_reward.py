"""The reward model trained the DPO way (``reward_kind="implicit"``): its score, its stage, and every reader of a
reward model taking it where they take the classifier."""

import json
import shutil

import pytest
import torch

from medgpt_utils import data, models, scoring
from medgpt_utils.fingerprints import stage_fingerprint, stage_record
from medgpt_utils.presets import PRESETS, override
from medgpt_utils.stages import grpo, reward
from medgpt_utils.training import as_dataset, stage_data

TINY = PRESETS["tiny"]


def conversations():
    pairs = data.load_bundled("preference/heldout.jsonl").select(range(3))
    return [pairs[0]["prompt"] + pairs[0]["chosen"], pairs[1]["prompt"] + pairs[1]["rejected"],
            pairs[2]["prompt"] + pairs[2]["chosen"]]


def perturbed_copy(model, seed: int = 0):
    """``model`` with every weight moved a little: another policy than its reference."""
    other = models.load_causal_lm(model.name_or_path)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return other


def test_the_answer_starts_where_the_prompt_ends(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    conversation = conversations()[0]
    ids, start = scoring.answer_token_ids(tokenizer, conversation)
    assert 0 < start < len(ids)
    assert tokenizer.decode(ids[start:]).strip().startswith(conversation[-1]["content"][:20])
    assert conversation[-1]["content"][:20] not in tokenizer.decode(ids[:start])


def test_the_implicit_reward_is_beta_times_the_answers_log_likelihood_ratio(tiny_base):
    tokenizer = models.load_tokenizer(tiny_base)
    reference = models.load_causal_lm(tiny_base)
    policy = perturbed_copy(reference)
    convs = conversations()
    same = scoring.reward_scores(scoring.ImplicitReward(reference, reference, 0.1), tokenizer, convs)
    assert same == [0.0, 0.0, 0.0]  # a model against itself prefers nothing

    policy.train()  # as in the stage, between training steps
    scores = scoring.reward_scores(scoring.ImplicitReward(policy, reference, 0.5), tokenizer, convs)
    assert policy.training and not reference.training  # the policy's mode is restored, the reference stays frozen
    for conversation, score in zip(convs, scores):  # by hand: one sequence, log-softmax, the answer's tokens
        ids, start = scoring.answer_token_ids(tokenizer, conversation)
        ids_t = torch.tensor([ids])

        def answer_logprob(model):
            logp = torch.log_softmax(model(input_ids=ids_t).logits[0, :-1].float(), -1)
            return logp[torch.arange(len(ids) - 1), ids_t[0, 1:]][start - 1:].sum().item()

        with torch.no_grad():
            expected = 0.5 * (answer_logprob(policy) - answer_logprob(reference))
        assert score == pytest.approx(expected, abs=1e-3)
    alone = [scoring.reward_scores(scoring.ImplicitReward(policy, reference, 0.5), tokenizer, [c])[0] for c in convs]
    assert torch.allclose(torch.tensor(scores), torch.tensor(alone), atol=1e-4)  # padding changes no score


def test_an_unknown_reward_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="reward_kind: 'dpo' is not one of classifier, implicit"):
        reward.is_implicit(override(TINY, {"reward_kind": "dpo"}))


def test_the_classifier_reward_models_fingerprint_ignores_the_implicit_knobs():
    assert stage_fingerprint(TINY, "rm") == stage_fingerprint(override(TINY, {"reward_beta": 0.5}), "rm")
    implicit = override(TINY, {"reward_kind": "implicit"})
    assert stage_fingerprint(implicit, "rm") != stage_fingerprint(TINY, "rm")
    assert stage_fingerprint(implicit, "rm") != stage_fingerprint(override(implicit, {"reward_beta": 0.5}), "rm")
    assert stage_fingerprint(implicit, "ppo") != stage_fingerprint(TINY, "ppo")  # what reads the reward model follows


# In full (the tiny preset), as a LoRA adapter, and as a QLoRA adapter on the 4-bit SFT model (the GPU presets' way)
HOW_TRAINED = {"full": {}, "lora": {"full_parameter_stages": ("pt", "sft")},
               "qlora": {"full_parameter_stages": ("pt", "sft"), "quantization": "4bit"}}


@pytest.mark.parametrize("how", HOW_TRAINED)
def test_the_implicit_reward_stage_trains_saves_and_reloads_as_one_reward_model(tiny_base, outputs, how):
    preset = override(TINY, {"reward_kind": "implicit", "rm.max_steps": 4, "rm.learning_rate": 3e-4,
                             "data.preference_validation": str(small_heldout(outputs)), **HOW_TRAINED[how]})
    sft_dir = outputs / "tiny" / "sft"
    shutil.copytree(tiny_base, sft_dir)  # stand-in for the SFT model, recorded as this preset's (and so are its inputs)
    for stage in ("base", "pt"):
        shutil.copytree(tiny_base, outputs / "tiny" / stage)
    for stage in ("base", "pt", "sft"):
        (outputs / "tiny" / stage / "metrics.json").write_text(json.dumps({"stage": stage, "made_with": stage_record(preset, stage)}))

    out = reward.run(preset)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reward_kind"] == "implicit" and metrics["accuracy_before"] == 0.0  # untrained: every score 0
    assert set(metrics["accuracy_by_kind"]) and 0.0 <= metrics["degenerate_accuracy"] <= 1.0
    assert not (out / "score.weight").exists() and "ForCausalLM" in json.loads((out / "config.json").read_text())["architectures"][0]
    assert json.loads((out / models.IMPLICIT_REWARD_FILE).read_text()) == {"reference": "../sft", "beta": 0.1}

    tokenizer = models.load_tokenizer(out)
    reloaded = models.load_reward_model(out, pad_token_id=tokenizer.pad_token_id, quantization=preset.quantization)
    assert isinstance(reloaded, scoring.ImplicitReward) and reloaded.beta == 0.1
    # an adapter scores against its own model with the adapter off: one model in memory, no second copy
    assert (reloaded.reference is None) == (how != "full") == (out / "adapter" / "adapter_config.json").is_file()
    assert any(type(p).__name__ == "Params4bit" for p in reloaded.policy.parameters()) == (how == "qlora")
    assert not (out / "adapter" / "ref").exists()  # TRL's frozen copy of the adapter, its DPO reference, is not saved
    pairs = as_dataset(stage_data(preset, "preference").validation)
    again = scoring.pairwise_accuracy(reloaded, tokenizer, pairs)
    assert again["chosen_scores"] == pytest.approx(metrics["chosen_scores"], abs=1e-4)  # what was saved scores as trained
    # (in 4 bits too: the adapter on the very weights it was trained on, not a merged copy re-quantized)
    assert any(abs(s) > 1e-6 for s in again["chosen_scores"])  # training moved it off its reference

    # GRPO hands TRL a function for it (TRL scores only models with a head): the same scores, in TRL's signature
    prompts = [p for p in pairs["prompt"][:3]]
    completions = [[c[-1]] for c in pairs["chosen"][:3]]
    function = grpo.implicit_reward_function(reloaded, tokenizer)
    assert function(prompts=prompts, completions=completions) == pytest.approx(again["chosen_scores"][:3], abs=1e-4)


def small_heldout(outputs):
    """Twelve held-out pairs of the tiny preset's conditions, in a file of their own."""
    from medgpt_utils.presets import TINY_CONDITIONS

    rows = [json.loads(line) for line in data.bundled("preference", "heldout.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if r["condition"] in TINY_CONDITIONS][:12]
    path = outputs.parent / "heldout_pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
