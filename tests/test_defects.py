"""Defects found by reading the package (issue 13); each test fails on the code before its fix."""

import json
import random
import subprocess
import sys
import zipfile

import pytest
import torch

from medgpt_utils import cli, models, ppo
from medgpt_utils.generation import chat_prompt_texts, generate
from medgpt_utils.presets import get_preset, override

QUESTIONS = ["What causes gout?", "How is influenza treated?", "头痛怎么办？", "When should I see a doctor?"]


def _model(tiny_base, dropout=0.0):
    torch.manual_seed(0)
    tokenizer = models.load_tokenizer(tiny_base)
    model = models.add_lora(models.load_causal_lm(tiny_base), r=8, alpha=16, dropout=dropout)
    return model, tokenizer


def _texts(tokenizer, n=8):
    return chat_prompt_texts(tokenizer, [[{"role": "user", "content": QUESTIONS[i % 4]}] for i in range(n)])


def test_generation_leaves_the_global_random_state_alone(tiny_base):
    """It used to call torch.manual_seed(0) on every call: PPO rollouts and pair sampling after an
    evaluation restarted from the same state whatever the preset's seed."""
    model, tokenizer = _model(tiny_base)
    texts = _texts(tokenizer)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    generate(model, tokenizer, texts, max_new_tokens=4)  # greedy
    assert torch.equal(torch.get_rng_state(), state)
    seeded = [generate(model, tokenizer, texts, max_new_tokens=12, temperature=1.5, seed=7) for _ in range(2)]
    assert [g.text for g in seeded[0]] == [g.text for g in seeded[1]]  # a seed gives the same samples
    assert torch.equal(torch.get_rng_state(), state)  # and leaves the global state as it was
    first = [g.text for g in generate(model, tokenizer, texts, max_new_tokens=12, temperature=1.5)]
    second = [g.text for g in generate(model, tokenizer, texts, max_new_tokens=12, temperature=1.5)]
    assert first != second  # without a seed, successive calls draw on from the global state


def test_4bit_models_load_onto_the_gpu_of_their_own_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert models._load_kwargs("4bit", torch.float16, "cuda", False)["device_map"] == {"": 1}
    monkeypatch.delenv("LOCAL_RANK")
    assert models._load_kwargs("4bit", torch.float16, "cuda", False)["device_map"] == {"": 0}


def test_gpus_option_is_set_before_preset_detection_asks_about_cuda(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    seen = []

    def fake_get_preset(*args, **kwargs):
        import os

        seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
        raise ValueError("stop here")

    monkeypatch.setattr(cli, "get_preset", fake_get_preset)
    assert cli.main(["infer", "--gpus", "3"]) == 2
    assert seen == ["3"]


def test_ppo_without_a_step_count_is_an_error_before_anything_is_built(outputs):
    from medgpt_utils.stages import ppo as ppo_stage

    preset = override(get_preset("tiny", verbose=False), {"ppo.max_steps": -1})
    with pytest.raises(ValueError, match="ppo.max_steps"):
        ppo_stage.run(preset)
    assert not outputs.exists() or not any(outputs.rglob("metrics.json"))


def test_ppo_update_ratio_starts_at_one_even_with_lora_dropout(tiny_base):
    """The update ran in train mode: LoRA dropout made the first ratio differ from 1 by noise."""
    model, tokenizer = _model(tiny_base, dropout=0.5)
    with torch.no_grad():  # a non-zero adapter, so that dropout on it changes the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    config = ppo.PPOConfig(prompts_per_step=4, minibatch_size=4, ppo_epochs=1, learning_rate=1e-3, max_new_tokens=8)
    loop = ppo.PPOLoop(model, tokenizer, lambda prompts, batch, answers: torch.ones(len(answers)), config)
    torch.manual_seed(0)
    stats = loop.step(_texts(tokenizer, 4))
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-6), stats
    assert stats["clipfrac"] == 0.0


def test_ppo_checkpoint_restores_python_random_state_too(tiny_base, tmp_path):
    model, tokenizer = _model(tiny_base)
    config = ppo.PPOConfig(prompts_per_step=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=4)
    loop = ppo.PPOLoop(model, tokenizer, lambda prompts, batch, answers: torch.ones(len(answers)), config)
    random.seed(11)
    loop.save_checkpoint(tmp_path / "ckpt")
    expected = (random.random(), torch.rand(1).item())
    random.seed(999)
    torch.manual_seed(999)
    loop.load_checkpoint(tmp_path / "ckpt")
    assert (random.random(), torch.rand(1).item()) == expected


def test_pair_cache_is_written_by_one_process_through_its_own_temporary_file(tmp_path, monkeypatch):
    from medgpt_utils.stages import pairs

    rows = [{"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": []}]
    pairs.write_cache(tmp_path / "cache", rows, {"k": 1}, {"n": 1})
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["pairs.jsonl", "summary.json"]
    assert json.loads((tmp_path / "cache" / "pairs.jsonl").read_text()) == rows[0]
    monkeypatch.setattr(pairs.os, "getpid", lambda: 4242)
    seen = []
    original = pairs.Path.write_text
    monkeypatch.setattr(pairs.Path, "write_text", lambda self, *a, **k: (seen.append(self.name), original(self, *a, **k))[1])
    pairs.write_cache(tmp_path / "cache", rows, {"k": 1}, {"n": 1})
    assert "pairs.jsonl.tmp-4242" in seen


def test_vocabulary_stage_refuses_known_terms_before_it_changes_the_model(tiny_base):
    from medgpt_utils.stages.vocab import add_terms

    model, tokenizer = _model(tiny_base)
    rows_before, size_before = model.get_input_embeddings().weight.shape[0], len(tokenizer)
    known = tokenizer.convert_ids_to_tokens(100)
    with pytest.raises(ValueError, match="already tokens"):
        add_terms(model, tokenizer, ["brand-new-term-xyz", known])
    assert len(tokenizer) == size_before and model.get_input_embeddings().weight.shape[0] == rows_before


@pytest.mark.slow
def test_a_non_editable_install_carries_the_bundled_data(tmp_path):
    """The package found data/ beside its own source folder only, so `pip install .` had no data."""
    from medgpt_utils.artifacts import PROJECT_ROOT

    subprocess.run([sys.executable, "-m", "pip", "wheel", str(PROJECT_ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from medgpt_utils import data; from medgpt_utils.artifacts import DATA_DIR; "
            "print(DATA_DIR); print(len(data.load_bundled('eval/heldout_questions.jsonl')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(site)) and int(out[1]) == data_card_count("eval/heldout_questions.jsonl")


def data_card_count(name):
    from medgpt_utils import data

    return data.card_counts()[name]


def test_ppo_update_keeps_train_mode_so_gradient_checkpointing_still_acts(tiny_base, monkeypatch):
    """Eval mode for the whole update turned gradient checkpointing off on GPU presets (it acts in train mode only)."""
    model, tokenizer = _model(tiny_base, dropout=0.5)
    config = ppo.PPOConfig(prompts_per_step=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=4)
    loop = ppo.PPOLoop(model, tokenizer, lambda prompts, batch, answers: torch.ones(len(answers)), config)
    seen, original = [], ppo.sequence_logprobs

    def spy(m, *args, **kwargs):
        if torch.is_grad_enabled():
            seen.append((m.training, [d.training for d in m.modules() if isinstance(d, torch.nn.Dropout)]))
        return original(m, *args, **kwargs)

    monkeypatch.setattr(ppo, "sequence_logprobs", spy)
    loop.step(_texts(tokenizer, 2))
    assert seen and all(training and not any(dropouts) for training, dropouts in seen), seen


def test_reuse_stale_keeps_a_stale_input_stage_with_a_warning(outputs, monkeypatch, capsys):
    from medgpt_utils.artifacts import stage_dir
    from medgpt_utils.stages import pretrain
    from medgpt_utils.training import REUSE_STALE_ENV, build_if_stale

    preset = get_preset("tiny", verbose=False)
    folder = stage_dir(preset.name, "pt")
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"stage": "pt"}))  # from before fingerprints: stale
    monkeypatch.setattr(pretrain, "run", lambda preset: pytest.fail("a kept stage must not be rebuilt"))
    monkeypatch.setenv(REUSE_STALE_ENV, "1")
    build_if_stale(preset, pretrain)
    assert "[pt] WARNING: reusing outputs built before outputs recorded how they were made" in capsys.readouterr().out
