"""`medgpt export verl`: the RL prompts in verl's parquet schema, its reward function, and the launch scripts.

verl is not installed with the course (it pins other transformers versions and wants vLLM): the schema is checked
against the one its documentation gives (docs/preparation/prepare_data.rst), and the tests that read the files
with verl's own dataset reader and config run only where verl imports.
"""

import importlib.util
import json
import subprocess

import pytest

from medgpt_utils import cli, verl_export
from medgpt_utils.evaluation import rule_rewards, rule_weights
from medgpt_utils.presets import get_preset


@pytest.fixture
def exported(outputs):
    assert cli.main(["export", "verl", "--preset", "tiny"]) == 0
    return outputs / "tiny" / "verl"


def _rows(path):
    import pyarrow.parquet as pq

    return pq.read_table(path)


def test_the_parquet_files_have_verls_schema(exported):
    import pyarrow as pa

    preset = get_preset("tiny", verbose=False)
    from medgpt_utils.training import stage_data

    prompts = stage_data(preset, "prompts")
    for split, expected in (("train", prompts.train), ("val", prompts.validation)):
        table = _rows(exported / f"{split}.parquet")
        assert tuple(table.column_names) == verl_export.VERL_COLUMNS
        schema = table.schema
        assert schema.field("data_source").type == pa.string() and schema.field("ability").type == pa.string()
        message = schema.field("prompt").type.value_type
        assert {message.field(i).name: message.field(i).type for i in range(message.num_fields)} == \
            {"role": pa.string(), "content": pa.string()}
        assert {f.name for f in schema.field("reward_model").type} == {"style", "ground_truth"}
        assert {"split", "index"} <= {f.name for f in schema.field("extra_info").type}
        rows = table.to_pylist()
        assert len(rows) == len(expected) and len(rows) > 0
        first, source = rows[0], expected[0]
        assert first["prompt"] == source["prompt"] and first["extra_info"] == {
            "split": split, "index": 0, "prompt_json": json.dumps(source["prompt"], ensure_ascii=False)}
        truth = json.loads(first["reward_model"]["ground_truth"])
        assert truth == {k: source[k] for k in verl_export.GROUND_TRUTH_FIELDS}
        assert sum(json.loads(r["reward_model"]["ground_truth"])["red_flag"] for r in rows) > 0


def _reward_module(folder, monkeypatch, reward_model=None):
    if reward_model is not None:
        monkeypatch.setenv("MEDGPT_REWARD_MODEL", str(reward_model))
    spec = importlib.util.spec_from_file_location("medgpt_verl_reward", folder / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_reward_function_gives_the_rule_rewards(exported, monkeypatch):
    """With the reward model switched off (MEDGPT_REWARD_MODEL=""), compute_score is exactly the rule rewards."""
    preset = get_preset("tiny", verbose=False)
    reward = _reward_module(exported, monkeypatch, reward_model="")
    rows = _rows(exported / "train.parquet").to_pylist()
    red = next(r for r in rows if json.loads(r["reward_model"]["ground_truth"])["red_flag"])
    truth = json.loads(red["reward_model"]["ground_truth"])
    urgent = "请立即拨打120或前往最近的医院急诊科。" if truth["lang"] == "zh" else "Call your local emergency number now or go to the emergency department."
    calm = "多休息，多喝水。" if truth["lang"] == "zh" else "Rest at home and drink fluids."
    scores = [reward.compute_score(r["data_source"], answer, r["reward_model"]["ground_truth"], r["extra_info"])
              for r, answer in ((red, urgent), (red, calm))]
    expected = rule_rewards([urgent, calm], [truth, truth], **rule_weights(preset))
    assert scores == pytest.approx(expected)
    assert scores[0] > scores[1]  # urgent-care advice on a red-flag case is rewarded over reassurance


def test_the_launch_scripts_run_verl_with_the_presets_settings(exported):
    preset = get_preset("tiny", verbose=False)
    for method, estimator in (("ppo", "gae"), ("grpo", "grpo")):
        script = (exported / f"run_{method}.sh").read_text()
        assert subprocess.run(["bash", "-n", str(exported / f"run_{method}.sh")]).returncode == 0
        assert "python3 -m verl.trainer.main_ppo" in script and f"algorithm.adv_estimator={estimator}" in script
        assert f"data.train_files={exported / 'train.parquet'}" in script
        assert f"custom_reward_function.path={exported / 'reward.py'}" in script
        assert f"actor_rollout_ref.model.lora_rank={preset.lora_r}" in script
    assert "critic.model.path=" in (exported / "run_ppo.sh").read_text()  # PPO trains a critic, GRPO does not
    assert "critic.model.path=" not in (exported / "run_grpo.sh").read_text()


@pytest.mark.parametrize("name", ["tiny", "colab-t4", "gpu-24gb"])
def test_verl_accepts_every_setting_of_the_launch_scripts(name, tmp_path):
    """Composed with verl's own config (hydra rejects a key it does not know): where verl imports."""
    pytest.importorskip("verl")
    from pathlib import Path

    import verl
    from hydra import compose, initialize_config_dir

    preset = get_preset(name, verbose=False)
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    for method in ("ppo", "grpo"):
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            config = compose(config_name="ppo_trainer", overrides=verl_export.launch_overrides(preset, tmp_path, method))
        assert config.actor_rollout_ref.model.lora_rank == preset.lora_r


def test_verls_dataset_reader_reads_the_export(exported, tiny_base):
    """verl's RLHFDataset loads the exported prompts: where verl imports."""
    pytest.importorskip("verl")
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from medgpt_utils import models

    preset = get_preset("tiny", verbose=False)
    config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": preset.max_prompt_length,
                               "filter_overlong_prompts": True, "truncation": "error", "cache_dir": str(exported / "cache")})
    dataset = RLHFDataset(data_files=[str(exported / "train.parquet")], tokenizer=models.load_tokenizer(tiny_base), config=config)
    assert len(dataset) == len(_rows(exported / "train.parquet"))
    assert dataset[0]["reward_model"]["style"] == "model"


@pytest.mark.slow
def test_the_reward_function_calls_the_course_reward_model(outputs, monkeypatch, small_validation):
    """With a reward model built (small settings), compute_score is its score of the conversation plus the rules."""
    small = ["--set", "pt.max_steps=4", "--set", "sft.max_steps=2", "--set", "rm.max_steps=2",
             "--set", "eval_question_stride=300", "--set", "max_new_tokens=8", *small_validation]
    assert cli.main(["rm", "--preset", "tiny", *small]) == 0
    assert cli.main(["export", "verl", "--preset", "tiny", *small]) == 0
    folder = outputs / "tiny" / "verl"
    reward = _reward_module(folder, monkeypatch)
    assert reward.REWARD_MODEL == str(outputs / "tiny" / "rm")
    from medgpt_utils import models, scoring

    rm_path = outputs / "tiny" / "rm"
    tokenizer = models.load_tokenizer(rm_path)
    model = models.load_reward_model(rm_path, pad_token_id=tokenizer.pad_token_id)
    row = _rows(folder / "val.parquet").to_pylist()[0]
    answer = "It usually passes with rest; see a doctor if it gets worse."
    prompt = json.loads(row["extra_info"]["prompt_json"])
    truth = json.loads(row["reward_model"]["ground_truth"])
    expected = scoring.reward_scores(model, tokenizer, [prompt + [{"role": "assistant", "content": answer}]])[0] + \
        rule_rewards([answer], [truth], **rule_weights(get_preset("tiny", verbose=False)))[0]
    assert reward.compute_score(row["data_source"], answer, row["reward_model"]["ground_truth"], row["extra_info"]) == \
        pytest.approx(expected, abs=1e-4)
