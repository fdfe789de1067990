"""The PPO loop in medgpt_utils.ppo: each formula on small tensors, then the loop on the tiny model."""

import math
from contextlib import contextmanager

import pytest
import torch

from medgpt_utils import judging, models, ppo
from medgpt_utils.generation import chat_prompt_texts

EOS = 9


# ---------------------------------------------------------------- formulas on small tensors
def test_gae_matches_a_hand_computed_example():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the 5.0 sits after the answer ended
    values = torch.tensor([[0.5, 0.2, 0.1, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = ppo.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # by hand: delta_2 = 1 + 0 - 0.1 = 0.9           A_2 = 0.9
    #          delta_1 = 0 + 0.1 - 0.2 = -0.1        A_1 = -0.1 + 0.5 * 0.9 = 0.35
    #          delta_0 = 0 + 0.2 - 0.5 = -0.3        A_0 = -0.3 + 0.5 * 0.35 = -0.125
    assert torch.allclose(advantages, torch.tensor([[-0.125, 0.35, 0.9, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[0.375, 0.55, 1.0, 0.0]]))


def test_gae_discount_applies_per_step():
    advantages, _ = ppo.gae(torch.tensor([[0.0, 2.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.5, lam=1.0)
    assert torch.allclose(advantages, torch.tensor([[1.0, 2.0]]))


def test_response_mask_keeps_tokens_up_to_and_including_the_first_eos():
    response = torch.tensor([[5, EOS, 7, EOS], [5, 6, 7, 8], [EOS, 1, 2, 3]])
    assert ppo.response_mask(response, EOS).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards, kl = ppo.kl_penalized_rewards(torch.tensor([2.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 2.0, 0.0], [0.0, 0.0, -1.0]]))


def test_policy_loss_is_the_clipped_surrogate():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25, 0.55]]))  # ratios 1.5, 0.5, 1.1
    advantages = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = ppo.policy_loss(new, old, advantages, mask, cliprange=0.2)
    # token 0: A>0, ratio 1.5 clipped to 1.2 -> -1.2 ; token 1: A<0, ratio 0.5 clipped to 0.8 -> 0.8
    # token 2: ratio 1.1 is inside the clip range -> -2.2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(2 / 3)
    log_ratio = (new - old)[0]
    assert stats["approx_kl"] == pytest.approx(float(0.5 * (log_ratio ** 2).mean()), abs=1e-6)


def test_policy_loss_ignores_masked_tokens():
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.0, 5.0]])
    loss, _ = ppo.policy_loss(new, old, torch.tensor([[1.0, 100.0]]), torch.tensor([[1.0, 0.0]]), 0.2)
    assert loss.item() == pytest.approx(-1.0)


def test_value_loss_is_the_clipped_squared_error():
    values = torch.tensor([[1.0, 0.0]])
    old_values = torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0]])
    loss, _ = ppo.value_loss(values, old_values, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: unclipped error 0, clipped value 0.2 -> error 0.64, max 0.64; token 1: 1 and 1
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.0) / 2)


def test_whiten_gives_zero_mean_unit_variance_over_the_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo.whiten(x, mask)
    assert ppo.masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert ppo.masked_mean(w ** 2, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert w[0, 3] == 0


def test_adaptive_kl_controller_tightens_above_target_and_loosens_below():
    controller = ppo.AdaptiveKLController(0.1, target=4.0, horizon=100)
    assert controller.update(8.0, n_steps=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    controller = ppo.AdaptiveKLController(0.1, target=4.0, horizon=100)
    assert controller.update(3.6, n_steps=10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    assert controller.update(0.0, n_steps=100) == pytest.approx(0.1 * 0.99 * 0.8)  # error clipped at -0.2


def test_paired_interval():
    out = judging.paired_interval([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
    assert out["mean"] == pytest.approx(2.0)
    assert out["low"] == pytest.approx(2.0 - 1.96 * 1.0 / math.sqrt(3))


# ---------------------------------------------------------------- on the tiny model
# LoRA on the output layer too: the tiny base is untrained, and an adapter on its body alone cannot
# lift a whole group of output logits (measured: no rise in 15 steps even at lr 3e-2).
WITH_HEAD = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def _policy(tiny_base, seed=0, targets="all-linear"):
    torch.manual_seed(seed)
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.add_lora(models.load_causal_lm(tiny_base), r=8, alpha=16, target_modules=targets)
    return model, tokenizer


def _prompts(tokenizer, n):
    questions = ["What causes gout?", "How is influenza treated?", "头痛怎么办？", "When should I see a doctor for a cough?"]
    return chat_prompt_texts(tokenizer, [[{"role": "user", "content": questions[i % 4] * (1 + i % 3)}] for i in range(n)])


def test_rollout_logprobs_match_the_sampling_distribution_and_reference_kl_is_zero(tiny_base):
    """Left-padded forward log-probs equal generate's own; a fresh adapter equals the reference."""
    model, tokenizer = _policy(tiny_base)
    texts = _prompts(tokenizer, 4)
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = "right"
    model.eval()
    torch.manual_seed(1)
    out = model.generate(**batch, max_new_tokens=6, do_sample=True, top_k=0, top_p=1.0, output_scores=True,
                         return_dict_in_generate=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    response = out.sequences[:, batch["input_ids"].shape[1]:]
    from_generate = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)
    from_generate = from_generate.gather(-1, response.unsqueeze(-1)).squeeze(-1)
    mask = ppo.response_mask(response, tokenizer.eos_token_id)
    attention = torch.cat([batch["attention_mask"], mask], 1)
    with torch.no_grad():
        logprobs, _, _ = ppo.sequence_logprobs(model, out.sequences, attention, response.shape[1])
        with model.disable_adapter():
            ref, _, _ = ppo.sequence_logprobs(model, out.sequences, attention, response.shape[1])
    assert torch.allclose(logprobs * mask, from_generate * mask, atol=1e-4)
    assert torch.equal(logprobs, ref)  # LoRA B starts at zero: KL(pi || pi_ref) = 0 exactly


def test_rollout_masks_and_pads_everything_after_eos(tiny_base):
    model, tokenizer = _policy(tiny_base)
    torch.manual_seed(0)
    batch = ppo.rollout(model, tokenizer, _prompts(tokenizer, 8), max_new_tokens=12)
    assert batch.response.shape[0] == 8 and batch.response.shape[1] <= 12
    assert torch.equal(batch.response_mask, ppo.response_mask(batch.response, tokenizer.eos_token_id))
    assert (batch.response[batch.response_mask == 0] == tokenizer.pad_token_id).all()
    assert tokenizer.padding_side == "right"


def _share_of_low_ids(limit):
    """Synthetic reward: the share of answer tokens whose id is below ``limit``."""
    def reward(prompts, batch, answers):
        hits = ((batch.response < limit) & (batch.response_mask == 1)).float().sum(1)
        return hits / batch.response_mask.sum(1).clamp(min=1)
    return reward


@contextmanager
def compute_threads(n):
    """Run a block with ``n`` compute threads: a sum split over another number of threads adds in another order,
    and over 30 steps at this learning rate that is another trajectory."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def test_ppo_raises_a_synthetic_reward_within_a_bounded_number_of_steps(tiny_base):
    """The algorithm apart from any reward model: reward = share of tokens with id < 300."""
    # 30 steps: with the tiny preset's 3,234-token vocabulary (one token per Chinese character) the share
    # rose from step 20 on (0.09 at the start). Measured 2026-12-06 with two threads, policy seeds 0 / 1 / 2: best
    # 3-step mean over steps 21-30 0.78 / 0.73 / 0.60. With one thread seed 0 reached only 0.22 there (it rose by
    # step 39; seeds 1 and 2: 0.66, 0.75): the thread count is pinned, so the test asks the same question under any
    # OMP_NUM_THREADS. About 18 s in CI.
    with compute_threads(2):
        model, tokenizer = _policy(tiny_base, targets=WITH_HEAD)
        config = ppo.PPOConfig(prompts_per_step=16, minibatch_size=8, ppo_epochs=2, learning_rate=1e-2,
                               max_new_tokens=12, kl_coef=0.01)
        loop = ppo.PPOLoop(model, tokenizer, _share_of_low_ids(300), config)
        prompts = _prompts(tokenizer, 16)
        history = [loop.step(prompts)["score"] for _ in range(30)]
    start = sum(history[:3]) / 3
    best = max(sum(history[i : i + 3]) / 3 for i in range(20, 28))  # best 3-step mean over the last ten steps
    assert start < 0.2, history  # about 300 / 3,234 of a random model's tokens
    assert best > 3 * start and best > 0.35, history


def test_resume_continues_from_the_saved_step_with_the_same_state(tiny_base, tmp_path):
    config = ppo.PPOConfig(prompts_per_step=4, minibatch_size=2, ppo_epochs=1, learning_rate=1e-3, max_new_tokens=6)
    prompts = _prompts(tokenizer=models.load_tokenizer(tiny_base), n=4)

    model, tokenizer = _policy(tiny_base)
    first = ppo.PPOLoop(model, tokenizer, _share_of_low_ids(300), config)
    torch.manual_seed(5)
    first.step(prompts)
    first.save_checkpoint(tmp_path / "ckpt")
    straight_on = first.step(prompts)
    straight_weights = {k: v.clone() for k, v in model.state_dict().items() if "lora" in k}

    model2, tokenizer2 = _policy(tiny_base, seed=123)  # different fresh adapter: the checkpoint must overwrite it
    second = ppo.PPOLoop(model2, tokenizer2, _share_of_low_ids(300), config)
    assert second.load_checkpoint(tmp_path / "ckpt") == 1
    resumed = second.step(prompts)
    assert resumed["step"] == straight_on["step"] == 2
    assert resumed["score"] == pytest.approx(straight_on["score"])
    for key, value in model2.state_dict().items():
        if "lora" in key:
            assert torch.allclose(value, straight_weights[key], atol=1e-6), key
    assert torch.allclose(second.value_head.summary.weight, first.value_head.summary.weight, atol=1e-6)


def test_old_policy_and_reference_are_the_same_computed_per_minibatch(tiny_base):
    """The no-grad log-probs and values go a minibatch at a time (a whole rollout's log-softmax over Qwen's vocabulary
    ran a T4's budget out of memory); the result is the whole batch's, chunk sizes that do not divide it included."""
    model, tokenizer = _policy(tiny_base, targets=WITH_HEAD)
    torch.manual_seed(0)
    batch = ppo.rollout(model, tokenizer, _prompts(tokenizer, 7), max_new_tokens=8)
    results = {}
    for size in (7, 3):
        loop = ppo.PPOLoop(model, tokenizer, _share_of_low_ids(300), ppo.PPOConfig(minibatch_size=size, max_new_tokens=8))
        torch.manual_seed(1)
        torch.nn.init.normal_(loop.value_head.summary.weight)  # the same value head for both sizes
        results[size] = loop.old_policy_and_reference(batch)
    for whole, chunked in zip(results[7], results[3]):
        assert whole.shape == chunked.shape == batch.response.shape
        assert torch.allclose(whole, chunked, atol=1e-5), (whole - chunked).abs().max()


# ---------------------------------------------------------------- PPO-ptx: the SFT loss beside PPO's
DIALOGUES = [[{"role": "user", "content": "What causes gout?"}, {"role": "assistant", "content": "Uric acid crystals in a joint."}],
             [{"role": "user", "content": "头痛怎么办？"}, {"role": "assistant", "content": "休息，多喝水。"}]]


def _sft_batch(tokenizer):
    return models.assistant_labelled_batch(tokenizer, DIALOGUES)


def test_ptx_loss_is_the_mean_answer_nll_of_the_numbered_batch(tiny_base):
    model, tokenizer = _policy(tiny_base)
    batch, drawn = _sft_batch(tokenizer), []
    loop = ppo.PPOLoop(model, tokenizer, _share_of_low_ids(300), ppo.PPOConfig(ptx_coef=1.0),
                       sft_batch=lambda n: drawn.append(n) or batch)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    with torch.no_grad():
        loss = loop.ptx_loss(7)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        by_hand = torch.nn.functional.cross_entropy(logits[targets != -100], targets[targets != -100])
    assert drawn == [7]
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    with pytest.raises(ValueError, match="sft_batch"):
        ppo.PPOLoop(model, tokenizer, _share_of_low_ids(300), ppo.PPOConfig(ptx_coef=1.0))


def test_ptx_term_pulls_the_policy_towards_the_sft_answers(tiny_base):
    """Three PPO steps with and without the SFT term, same seeds: only with it does the SFT batch's loss fall;
    one numbered batch per minibatch, numbered in order."""
    config = dict(prompts_per_step=4, minibatch_size=2, ppo_epochs=1, learning_rate=1e-2, max_new_tokens=6)
    nll, drawn = {}, []
    for coef in (0.0, 5.0):
        model, tokenizer = _policy(tiny_base, targets=WITH_HEAD)
        batch = _sft_batch(tokenizer)
        loop = ppo.PPOLoop(model, tokenizer, _share_of_low_ids(300), ppo.PPOConfig(**config, ptx_coef=coef),
                           sft_batch=lambda n: drawn.append(n) or batch)
        before = loop.ptx_loss(-1).item()
        torch.manual_seed(3)
        records = [loop.step(_prompts(tokenizer, 4)) for _ in range(3)]
        nll[coef] = loop.ptx_loss(-1).item()
        assert ("ptx_loss" in records[0]) == (coef > 0)
    assert [n for n in drawn if n >= 0] == list(range(6))  # 3 steps x 1 epoch x 2 minibatches
    # measured: 8.09 before, 8.05 after plain PPO, 3.02 with the term
    assert nll[0.0] > before - 0.5 and nll[5.0] < before - 1.0 and nll[5.0] < nll[0.0] - 1.0, (before, nll)
