"""Hand RL to an engine built for scale: the course's prompts, reward and models in verl's formats.

``medgpt export verl`` writes, to ``outputs/<preset>/verl/`` (or ``--out``):

- ``train.parquet`` and ``val.parquet``: the RL prompts of ``data.prompts`` (bundled or the user's) in verl's
  schema: ``data_source``, ``prompt`` (chat messages), ``ability``, ``reward_model`` (``style``,
  ``ground_truth``) and ``extra_info``. The ground truth is what the course's rules read: the condition, the
  language, whether the case is a red flag, and its key facts (JSON);
- ``reward.py``: verl's custom reward function (``compute_score``): the course's reward model scores the answer
  and the rule rewards of the preset are added (``score_answer``), exactly what PPO and GRPO learn from here;
- ``run_ppo.sh`` (GAE with a critic) and ``run_grpo.sh``: ``python -m verl.trainer.main_ppo`` with the merged SFT
  model, LoRA settings and RL knobs of the preset, the exported data and the reward function.

verl itself is not a dependency of the course (it pins other transformers versions and wants vLLM on GPUs):
install it in its own environment, with the course installed there too (``pip install -e <course> --no-deps``)
so that ``reward.py`` can import ``medgpt_utils``.
"""

from __future__ import annotations

import functools
import json
import shlex
from pathlib import Path

from .artifacts import output_root, stage_dir
from .presets import Preset

DATA_SOURCE = "medgpt-course"
ABILITY = "medical"
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
GROUND_TRUTH_FIELDS = ("condition", "lang", "red_flag", "key_facts")  # what the rules read (evaluation.rule_rewards)


def verl_records(rows, split: str) -> list[dict]:
    """Prompt rows (``{"prompt": [messages], ...}``) as verl records. A row without the rule columns (the
    user's own prompts) gets an empty ground truth: only the reward model scores its answers."""
    records = []
    for index, row in enumerate(rows):
        truth = {key: row[key] for key in GROUND_TRUTH_FIELDS if row.get(key) is not None}
        records.append({
            "data_source": DATA_SOURCE,
            "prompt": [{"role": m["role"], "content": m["content"]} for m in row["prompt"]],
            "ability": ABILITY,
            # "model": a learned reward model scores the answer (the rules are added to its score)
            "reward_model": {"style": "model", "ground_truth": json.dumps(truth, ensure_ascii=False)},
            "extra_info": {"split": split, "index": index,
                           "prompt_json": json.dumps(row["prompt"], ensure_ascii=False)},
        })
    return records


def write_parquet(records: list[dict], path: Path) -> Path:
    from datasets import Dataset

    Dataset.from_list(records).to_parquet(str(path))
    return path


@functools.lru_cache(maxsize=2)
def _reward_scorer(path: str):
    import torch

    from . import models

    tokenizer = models.load_tokenizer(path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = models.load_reward_model(path, pad_token_id=tokenizer.pad_token_id, device=device)
    model.eval().requires_grad_(False)
    return model, tokenizer


def score_answer(prompt: list[dict], answer: str, truth: dict, reward_model: str | None, weights: dict) -> float:
    """The reward the course's PPO and GRPO give an answer: the reward model's score of the conversation (when
    ``reward_model`` names one) plus the preset's rule rewards for the prompt's ``truth``."""
    from . import scoring
    from .evaluation import rule_rewards

    score = 0.0
    if reward_model:
        model, tokenizer = _reward_scorer(str(reward_model))
        score = scoring.reward_scores(model, tokenizer, [prompt + [{"role": "assistant", "content": answer}]])[0]
    return float(score + rule_rewards([answer], [truth], **weights)[0])


REWARD_FILE = '''"""verl reward function for the MedicalGPT course, written by `medgpt export verl` (preset {preset}).

verl calls compute_score(data_source, solution_str, ground_truth, extra_info) for every sampled answer; it
returns the course reward model's score plus the rule rewards (medgpt_utils.verl_export.score_answer).
Needs the course installed in verl's environment. MEDGPT_REWARD_MODEL overrides the reward model's path
(empty: rules only).
"""

import json
import os

from medgpt_utils.verl_export import score_answer

REWARD_MODEL = os.environ.get("MEDGPT_REWARD_MODEL", {reward_model!r})
RULE_WEIGHTS = {weights!r}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    truth = json.loads(ground_truth) if ground_truth else {{}}
    prompt = json.loads((extra_info or {{}}).get("prompt_json") or "[]")
    return score_answer(prompt, solution_str, truth, REWARD_MODEL or None, RULE_WEIGHTS)
'''


def launch_overrides(preset: Preset, folder: Path, method: str) -> list[str]:
    """verl's ``main_ppo`` settings for ``method`` (``ppo``: GAE with a critic; ``grpo``) from the preset."""
    rl, knobs = preset.rl, preset.preference
    sft = stage_dir(preset.name, "sft")
    k = rl.samples_per_prompt if method == "ppo" else knobs.grpo_num_generations
    steps, lr = (preset.ppo.max_steps, preset.ppo.learning_rate) if method == "ppo" else (preset.grpo.max_steps, preset.grpo.learning_rate)
    prompts_per_step = max(1, preset.ppo.batch_size // rl.samples_per_prompt) if method == "ppo" else \
        max(1, preset.grpo.batch_size * preset.grpo.gradient_accumulation_steps // k)
    settings = {
        "algorithm.adv_estimator": "gae" if method == "ppo" else "grpo",
        "data.train_files": str(folder / "train.parquet"),
        "data.val_files": str(folder / "val.parquet"),
        "data.train_batch_size": prompts_per_step,
        "data.max_prompt_length": preset.max_prompt_length,
        "data.max_response_length": preset.max_new_tokens,
        "data.filter_overlong_prompts": True,
        "actor_rollout_ref.model.path": str(sft),
        "actor_rollout_ref.model.lora_rank": preset.lora_r,
        "actor_rollout_ref.model.lora_alpha": preset.lora_alpha,
        "actor_rollout_ref.model.target_modules": "all-linear",
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "actor_rollout_ref.actor.optim.lr": lr,
        "actor_rollout_ref.actor.ppo_mini_batch_size": prompts_per_step,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 4,
        "actor_rollout_ref.actor.clip_ratio": rl.cliprange,
        "actor_rollout_ref.rollout.name": "vllm",
        "actor_rollout_ref.rollout.n": k,
        "actor_rollout_ref.rollout.temperature": rl.temperature if method == "ppo" else knobs.grpo_temperature,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.5,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 4,
        "actor_rollout_ref.rollout.load_format": "safetensors",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 4,
        "reward_model.enable": False,  # reward.py calls the course's reward model itself, and adds the rules
        "custom_reward_function.path": str(folder / "reward.py"),
        "custom_reward_function.name": "compute_score",
        "trainer.total_training_steps": steps,
        "trainer.logger": "['console']",
        "trainer.project_name": "medgpt-course",
        "trainer.experiment_name": f"{preset.name}-{method}",
        "trainer.nnodes": 1,
        "trainer.save_freq": -1,
        "trainer.test_freq": steps,
    }
    if method == "ppo":  # the course's PPO: a KL penalty in the reward, a critic
        settings.update({
            "algorithm.use_kl_in_reward": True,
            "algorithm.kl_ctrl.kl_coef": rl.kl_coef,
            "algorithm.gamma": rl.gamma,
            "algorithm.lam": rl.lam,
            "actor_rollout_ref.actor.ppo_epochs": rl.ppo_epochs,
            "actor_rollout_ref.actor.use_kl_loss": False,
            "critic.model.path": str(sft),
            "critic.model.enable_gradient_checkpointing": True,
            "critic.optim.lr": lr,
            "critic.ppo_micro_batch_size_per_gpu": 4,
            "critic.cliprange_value": rl.cliprange_value,
        })
    else:  # GRPO: the KL as a loss term, as TRL's GRPOTrainer does
        settings.update({
            "algorithm.use_kl_in_reward": False,
            "actor_rollout_ref.actor.use_kl_loss": knobs.grpo_beta > 0,
            "actor_rollout_ref.actor.kl_loss_coef": knobs.grpo_beta,
            "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        })
    return [f"{key}={value}" for key, value in settings.items()]


def launch_script(preset: Preset, folder: Path, method: str) -> str:
    lines = [f"{shlex.quote(o)} \\" for o in launch_overrides(preset, folder, method)]
    return "\n".join([
        "#!/usr/bin/env bash",
        f"# verl {method.upper()} for the MedicalGPT course (preset {preset.name}), written by `medgpt export verl`.",
        "# Run in an environment with verl (and vLLM) installed, on GPUs: NGPUS=2 bash this-file [more overrides].",
        "set -euo pipefail",
        "python3 -m verl.trainer.main_ppo \\",
        *[f"    {line}" for line in lines],
        '    trainer.n_gpus_per_node="${NGPUS:-1}" "$@"',
        "",
    ])


def export(preset: Preset, out: Path | None = None) -> Path:
    """Write the parquet files, ``reward.py`` and the launch scripts; return the folder."""
    from .training import stage_data

    folder = Path(out) if out else output_root() / preset.name / "verl"
    folder.mkdir(parents=True, exist_ok=True)
    prompts = stage_data(preset, "prompts")
    if not prompts.validation:
        raise ValueError("data.prompts: no validation prompts to export (give data.prompts_validation, or a data.validation_percent above 0)")
    write_parquet(verl_records(prompts.train, "train"), folder / "train.parquet")
    write_parquet(verl_records(prompts.validation, "val"), folder / "val.parquet")
    from .evaluation import rule_weights

    reward_model = stage_dir(preset.name, "rm")
    (folder / "reward.py").write_text(REWARD_FILE.format(preset=preset.name, reward_model=str(reward_model),
                                                         weights=rule_weights(preset)), encoding="utf-8")
    for method in ("ppo", "grpo"):
        script = folder / f"run_{method}.sh"
        script.write_text(launch_script(preset, folder, method), encoding="utf-8")
        script.chmod(0o755)
    missing = [s for s in ("sft", "rm") if not (stage_dir(preset.name, s) / "metrics.json").exists()]
    if missing:
        print(f"note: the scripts point at outputs/{preset.name}/{{{','.join(missing)}}}, not built yet: "
              f"run `medgpt {missing[-1]} --preset {preset.name}` first")
    return folder
