"""Stage 2, supervised fine-tuning (SFT): teach the pretrained model to answer in turns.

Recipe: single- and multi-turn dialogues go through the chat template; the loss is computed on
the assistant tokens only (the ``{% generation %}`` marks in the template), so the model learns
to answer, not to imitate users; a LoRA adapter trains on the PT model (4-bit base on GPU
presets; the tiny preset trains every weight of its small model); batches group dialogues of similar length to keep padding low. Evaluated by the loss on held-out
dialogues and by key-fact recall on held-out questions, before and after.
"""

from __future__ import annotations

from pathlib import Path

from .. import models
from ..artifacts import stage_dir
from ..evaluation import recall_on_questions, training_vocabulary
from ..presets import Preset
from ..training import (StageRun, as_dataset, begin_stage, build_if_stale, bundled, data_report, is_main_process,
                        loss_history, measuring, prepared, save_metrics, seed_stage, stage_data, stage_output,
                        trainer_arguments)
from . import pretrain

STAGE = "sft"


def start_model_path(preset: Preset) -> Path:
    """SFT starts from the continued-pretraining model (built first if missing)."""
    build_if_stale(preset, pretrain)
    return stage_dir(preset.name, pretrain.STAGE)


def load_datasets(preset: Preset, loaded=None):
    """Training and held-out dialogues of ``data.sft`` (``loaded``: already read), as TRL conversational ``messages``."""
    loaded = loaded or stage_data(preset, "sft")
    if not loaded.validation:
        raise ValueError("data.sft: no validation dialogues (give data.sft_validation, or a data.validation_percent above 0)")
    return as_dataset(loaded.train, ["messages"]), as_dataset(loaded.validation, ["messages"])


def heldout_questions(preset: Preset):
    """Every Nth held-out question: a fixed subset across conditions and languages that evaluates quickly."""
    questions = bundled(preset, "eval/heldout_questions.jsonl")
    return questions.select(range(0, len(questions), preset.eval_question_stride))


def handwritten_questions(preset: Preset):
    """The questions written by hand in a learner's words (``data/eval/handwritten_questions.jsonl``)."""
    return bundled(preset, "eval/handwritten_questions.jsonl")


KNOWLEDGE_KEYS = ("recall", "recall_en", "recall_zh", "recall_by_fact", "recall_by_lang_fact", "safety_rate", "wrong_condition_rate", "non_word_rate",
                  "non_word_examples", "ended_with_eos", "mean_tokens", "n", "n_fact_questions", "n_red_flag_cases", "answers")


def question_sets(preset: Preset) -> dict:
    """The two question sets the knowledge measures use, by name (``judging.QUESTION_SETS``)."""
    return {"heldout": heldout_questions(preset), "handwritten": handwritten_questions(preset)}


def knowledge(model, tokenizer, preset: Preset, sets: dict | None = None) -> dict:
    """The course's knowledge measures on the generated held-out questions and on the hand-written ones
    (``sets``: ``question_sets(preset)``, read here unless given), with the answers themselves (the alignment
    stages score the SFT model's with their reward model)."""
    vocabulary = training_vocabulary(preset.conditions)
    results = {}
    for name, rows in (sets or question_sets(preset)).items():
        answered = recall_on_questions(model, tokenizer, rows, preset.max_new_tokens, vocabulary=vocabulary)
        results[name] = {k: answered[k] for k in KNOWLEDGE_KEYS}
        results[name]["examples"] = [(p[-1]["content"], a) for p, a in zip(rows["prompt"][:6], answered["answers"][:6])]
    return results


def sft_config(preset: Preset, output_dir: Path, **extra):
    from trl import SFTConfig

    settings = dict(
        max_length=preset.max_length,
        assistant_only_loss=True,  # loss on the assistant's tokens, EOS included
        # Batches of similar length keep padding low. Padding-free packing was slower on the CPU
        # (one long flattened sequence per batch: 2,100 vs 3,700 tokens/s measured on the tiny preset).
        packing=False,
        train_sampling_strategy="group_by_length",
    )
    return trainer_arguments(SFTConfig, preset, preset.sft, output_dir, **{**settings, **extra})


def real_tokens(trainer) -> int:
    """Non-padding tokens in the processed training set (what real tokens/s counts)."""
    return sum(len(ids) for ids in trainer.train_dataset["input_ids"])


def prepare(preset: Preset) -> StageRun:
    """Everything before the trainer: the PT model (built if missing) with its trainable weights, the dialogues,
    and the knowledge measures before training (when the knowledge base's dialogues are among the data)."""
    begin_stage(preset, STAGE)  # the output folder's lock, before anything is built
    base_path = start_model_path(preset)
    seed_stage(preset)  # after any missing earlier stage is built, so runs match
    tokenizer = models.load_tokenizer(base_path, preset.trust_remote_code)
    dialogues = stage_data(preset, "sft")
    train_set, eval_set = load_datasets(preset, dialogues)
    model = models.load_trainable(preset, base_path, STAGE)
    metrics = {"stage": STAGE, "preset": preset.name, "train_dialogues": len(train_set), "parameters": models.count_parameters(model),
               "data": data_report(dialogues)}
    # The knowledge base's questions measure what its dialogues teach: with the user's data alone, the held-out loss does.
    before = knowledge(model, tokenizer, preset) if dialogues.uses_bundled else None
    if before:
        metrics["recall_before"] = before["heldout"]["recall"]
    return StageRun(preset, STAGE, model, tokenizer, base_path, metrics, train_set, eval_set,
                    extras={"knowledge_before": before})


def finish(run: StageRun, trainer, result) -> Path:
    """After ``trainer.train()``: held-out loss, throughput and the knowledge measures after; the model saved."""
    preset, model, tokenizer, metrics = run.preset, run.model, run.tokenizer, run.metrics
    metrics["eval_loss_after"] = trainer.evaluate()["eval_loss"]
    epochs = result.metrics.get("epoch", preset.sft.epochs)
    metrics["real_tokens_per_second"] = round(real_tokens(trainer) * epochs / metrics["train_seconds"], 1)
    metrics["loss_history"] = loss_history(trainer)
    before = run.extras["knowledge_before"]
    if before:
        after = knowledge(model, tokenizer, preset)
        metrics.update(knowledge_before=before, knowledge=after, recall_after=after["heldout"]["recall"],
                       ended_with_eos=after["heldout"]["ended_with_eos"], mean_answer_tokens=after["heldout"]["mean_tokens"],
                       heldout_questions=after["heldout"]["n"])
    with stage_output(preset, STAGE) as out:
        if is_main_process():
            models.save_trained(preset, STAGE, model, tokenizer, run.start_path, out)
            save_metrics(out, metrics, preset, STAGE)
    run.clean_up()  # the saved stage supersedes its step checkpoints
    return stage_dir(preset.name, STAGE)


def run(preset: Preset) -> Path:
    """The whole stage, as ``medgpt sft`` runs it (notebook 02 takes the same steps one cell at a time)."""
    from ..answer_loss import AnswerLossSFTTrainer

    run = prepare(preset)
    trainer = AnswerLossSFTTrainer(model=run.model, args=sft_config(preset, run.workdir), train_dataset=run.train_set,
                                   eval_dataset=run.eval_set, processing_class=run.tokenizer)
    trainer = prepared(trainer, preset, STAGE)
    run.metrics["eval_loss_before"] = trainer.evaluate()["eval_loss"]
    with measuring(run):
        result = trainer.train(resume_from_checkpoint=run.resume_from)  # None: from the start
    return finish(run, trainer, result)
