"""Stage 3, reward modeling (RM): learn a score that prefers the better of two answers.

Recipe: the SFT model with a scalar head (sequence classification, ``num_labels=1``) and a
LoRA adapter reads (prompt, answer) and returns r. Trained on preference pairs with the
pairwise (Bradley-Terry) loss  -log sigma(r_chosen - r_rejected); judged by pairwise accuracy on
held-out pairs, overall and for every kind of rejected answer.

With ``reward_kind="implicit"`` the reward model is instead the start model (the SFT model, or the preset's
``reward_base_model``) trained with DPO's loss on the same pairs, against itself as the frozen reference; its score is
DPO's implicit reward r = beta * (log pi(a|q) - log pi_ref(a|q)) (``scoring.ImplicitReward``): no head, every token of
the answer counts. Trained as a LoRA adapter, the reference is the same model with the adapter off.
"""

from __future__ import annotations

import re
from pathlib import Path

from datasets import concatenate_datasets

from .. import models
from ..models import CJK_CHARACTER
from ..scoring import ImplicitReward, pairwise_accuracy
from ..artifacts import stage_dir
from ..presets import Preset
from ..training import (StageRun, as_dataset, begin_stage, build_if_stale, data_report, is_main_process, loss_history,
                        measuring, prepared, save_metrics, seed_stage, stage_data, stage_output, trainer_arguments)
from . import sft

STAGE = "rm"
REWARD_KINDS = ("classifier", "implicit")
PAIR_COLUMNS = ["prompt", "chosen", "rejected"]


def training_pairs(preset: Preset, loaded=None):
    """The training pairs of ``data.preference`` in TRL's conversational preference format (the reward model
    reads them; DPO and ORPO do with ``preference.pair_source="data"``)."""
    return as_dataset((loaded or stage_data(preset, "preference")).train, PAIR_COLUMNS)


def repeat_a_piece(answer: str, rng) -> str:
    """``answer`` made degenerate the way a policy that climbs a careless reward model makes it: one list item said
    three times ("sore throat, cough, cough, cough and fever"), or, in an answer without a list, one word (English)
    or character (Chinese) doubled."""
    parts = re.split(r"(, |、| and |和|或)", answer)
    items = [i for i in range(2, len(parts), 2) if parts[i].strip()]  # not the first: it carries the sentence's start
    if items:
        i = rng.choice(items)
        item, end = re.match(r"(.*?)([。.；;]?\s*)$", parts[i], re.S).groups()  # the sentence's end stays at the end
        parts[i] = ("、" if "、" in answer else ", ").join([item] * 3) + end
        return "".join(parts)
    if re.search(CJK_CHARACTER, answer) and len(answer) > 1:
        i = rng.randrange(1, len(answer))
        return answer[:i] + answer[i] + answer[i:]
    words = answer.split(" ")
    i = rng.randrange(len(words))
    return " ".join(words[:i + 1] + words[i:])


def degenerate_pairs(pairs, rng) -> list[dict]:
    """Each pair's prompt and chosen answer against that answer made degenerate (``repeat_a_piece``)."""
    return [{"prompt": pair["prompt"], "chosen": pair["chosen"],
             "rejected": [{**pair["chosen"][-1], "content": repeat_a_piece(pair["chosen"][-1]["content"], rng)}]}
            for pair in pairs]


def with_degenerate_pairs(pairs, share: float, seed: int):
    """``pairs`` and, for ``share`` of them (chosen at random with ``seed``), one more pair: the same prompt and
    chosen answer against that answer made degenerate."""
    if share <= 0:
        return pairs
    import random

    rng = random.Random(seed)
    picked = sorted(rng.sample(range(len(pairs)), round(share * len(pairs))))
    return concatenate_datasets([pairs, as_dataset(degenerate_pairs(pairs.select(picked), rng)).cast(pairs.features)])


def degenerate_accuracy(model, tokenizer, heldout, seed: int) -> float:
    """How often the reward model ranks each distinct held-out chosen answer above itself made degenerate (0.5:
    it does not see the repetition; a policy climbing it is free to repeat)."""
    import random

    distinct = {str((pair["prompt"], pair["chosen"])): pair for pair in heldout}
    return pairwise_accuracy(model, tokenizer, as_dataset(degenerate_pairs(distinct.values(), random.Random(seed))))["accuracy"]


def start_model_path(preset: Preset) -> Path | str:
    """The reward model starts from the SFT model (or the preset's reward base model)."""
    if preset.reward_base_model:
        return preset.reward_base_model
    build_if_stale(preset, sft)
    return stage_dir(preset.name, sft.STAGE)


def is_implicit(preset: Preset) -> bool:
    """Whether the preset's reward model is trained the DPO way (``reward_kind``)."""
    if preset.reward_kind not in REWARD_KINDS:
        raise ValueError(f"reward_kind: {preset.reward_kind!r} is not one of {', '.join(REWARD_KINDS)}")
    return preset.reward_kind == "implicit"


def reward_model_to_train(preset: Preset, base_path, pad_token_id: int):
    """The start model with a fresh scalar head: every weight trainable when ``rm`` is among the preset's
    ``full_parameter_stages``, else a LoRA adapter (QLoRA when 4-bit) with the head trained in full. The implicit
    kind: the start model itself, no head (every weight, or a LoRA adapter, the same way)."""
    if is_implicit(preset):
        return models.load_trainable(preset, base_path, STAGE)
    if STAGE in preset.full_parameter_stages:
        return models.load_for_preset(preset, base_path, reward=True, pad_token_id=pad_token_id)
    return models.load_lora_model(preset, base_path, task_type="SEQ_CLS", pad_token_id=pad_token_id)


def prepare(preset: Preset) -> StageRun:
    """Everything before the trainer: the SFT model (built if missing) with a scalar head and a LoRA adapter,
    the training and held-out pairs, and the pairwise accuracy before training."""
    begin_stage(preset, STAGE)  # the output folder's lock, before anything is built
    base_path = start_model_path(preset)
    seed_stage(preset)  # after any missing earlier stage is built, so runs match
    tokenizer = models.load_tokenizer(base_path, preset.trust_remote_code)
    pairs = stage_data(preset, "preference")
    if not pairs.validation:
        raise ValueError("data.preference: no validation pairs (give data.preference_validation, or a data.validation_percent above 0)")
    train_pairs = with_degenerate_pairs(training_pairs(preset, pairs), preset.reward_degenerate_pairs, preset.seed)
    heldout_pairs = as_dataset(pairs.validation)
    model = reward_model_to_train(preset, base_path, tokenizer.pad_token_id)
    metrics = {"stage": STAGE, "preset": preset.name, "reward_kind": preset.reward_kind, "train_pairs": len(train_pairs),
               "parameters": models.count_parameters(model), "data": data_report(pairs)}
    run = StageRun(preset, STAGE, model, tokenizer, base_path, metrics, train_pairs, heldout_pairs)
    if is_implicit(preset) and STAGE in preset.full_parameter_stages:  # the frozen SFT model: DPO's reference in
        # training, the score's baseline after (a LoRA adapter's reference is the same model with the adapter off)
        run.extras["reference"] = models.load_for_preset(preset, base_path).eval().requires_grad_(False)
    # the implicit kind scores every answer 0 before training (the model is its reference): accuracy 0
    metrics["accuracy_before"] = pairwise_accuracy(scorer(run), tokenizer, heldout_pairs)["accuracy"]
    return run


def scorer(run: StageRun):
    """What scores an answer while the stage runs: the model with its head, or, for the implicit kind, the model
    being trained against its reference (``scoring.ImplicitReward``)."""
    if is_implicit(run.preset):
        return ImplicitReward(run.model, run.extras.get("reference"), run.preset.reward_beta)
    return run.model


def reward_config(run: StageRun):
    """The ``RewardConfig`` of the preset's ``rm`` knobs."""
    from trl import RewardConfig

    return trainer_arguments(RewardConfig, run.preset, run.preset.rm, run.workdir, max_length=run.preset.max_length)


def implicit_reward_config(run: StageRun):
    """The implicit kind's ``DPOConfig``: the preset's ``rm`` knobs, DPO's loss with ``reward_beta``."""
    from trl import DPOConfig

    return trainer_arguments(DPOConfig, run.preset, run.preset.rm, run.workdir, max_length=run.preset.max_length,
                             beta=run.preset.reward_beta)


def trainer(run: StageRun):
    """The stage's trainer: TRL's ``RewardTrainer`` (pairwise loss on the head's scores), or for the implicit kind
    its ``DPOTrainer`` against the frozen SFT model (a LoRA adapter's reference: the same model, adapter off)."""
    from trl import DPOTrainer, RewardTrainer

    if is_implicit(run.preset):
        return DPOTrainer(model=run.model, ref_model=run.extras.get("reference"), args=implicit_reward_config(run),
                          train_dataset=run.train_set, processing_class=run.tokenizer)
    return RewardTrainer(model=run.model, args=reward_config(run), train_dataset=run.train_set,
                         processing_class=run.tokenizer)


def finish(run: StageRun, trainer) -> Path:
    """After ``trainer.train()``: pairwise accuracy after (overall and by kind of rejected answer); the adapter
    saved and merged into a standalone reward model (the implicit kind: a causal LM beside ``implicit_reward.json``)."""
    preset, model, metrics, trained = run.preset, run.model, run.metrics, scorer(run)
    after = pairwise_accuracy(trained, run.tokenizer, run.eval_set)
    metrics.update(accuracy_after=after["accuracy"], accuracy_by_kind=after["by_kind"],
                   degenerate_accuracy=degenerate_accuracy(trained, run.tokenizer, run.eval_set, preset.seed),
                   heldout_pairs=len(run.eval_set), loss_history=loss_history(trainer),
                   chosen_scores=after["chosen_scores"], rejected_scores=after["rejected_scores"])
    with stage_output(preset, STAGE) as out:
        if is_main_process() and is_implicit(preset):
            models.save_trained(preset, STAGE, model, run.tokenizer, run.start_path, out)
            save_implicit_reward_settings(preset, run.start_path, out)
            save_metrics(out, metrics, preset, STAGE)
        elif is_main_process() and STAGE in preset.full_parameter_stages:
            model.save_pretrained(out, safe_serialization=True)
            run.tokenizer.save_pretrained(out)
            save_metrics(out, metrics, preset, STAGE)
        elif is_main_process():
            model.save_pretrained(out / "adapter", safe_serialization=True)
            models.merge_adapter(run.start_path, out / "adapter", out, dtype=preset.torch_dtype, reward=True,
                                 trust_remote_code=preset.trust_remote_code, atomic=False)
            save_metrics(out, metrics, preset, STAGE)
    run.clean_up()  # the saved stage supersedes its step checkpoints
    return stage_dir(preset.name, STAGE)


def save_implicit_reward_settings(preset: Preset, start_path, out: Path) -> None:
    """``implicit_reward.json`` beside the implicit kind's model: its reference (relative to the stage's folder when
    local, so outputs move together) and beta (``models.implicit_reward_settings`` reads it)."""
    import json
    import os

    reference = str(start_path)
    if Path(start_path).exists():
        reference = os.path.relpath(Path(start_path).resolve(), stage_dir(preset.name, STAGE).resolve())
    (out / models.IMPLICIT_REWARD_FILE).write_text(json.dumps({"reference": reference, "beta": preset.reward_beta}) + "\n",
                                                   encoding="utf-8")


def run(preset: Preset) -> Path:
    """The whole stage, as ``medgpt rm`` runs it (notebook 03 takes the same steps one cell at a time)."""
    run = prepare(preset)
    stage_trainer = prepared(trainer(run), preset, STAGE)
    with measuring(run):
        stage_trainer.train(resume_from_checkpoint=run.resume_from)  # None: from the start
    return finish(run, stage_trainer)
