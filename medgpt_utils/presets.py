"""Hardware presets: every knob a stage needs, in one documented place.

A preset is chosen by ``MEDGPT_PRESET``, else by the hardware found, and printed, so a reader
always knows which model and settings a notebook runs with. Notebooks and the ``medgpt`` command
take the same preset and may override single fields (``override(preset, {"sft.max_steps": 50})``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

PRESET_ENV = "MEDGPT_PRESET"
GPU_24GB_MIN_MEMORY_GIB = 20


def knob(default: Any = dataclasses.MISSING, help: str = "", *, factory=None):
    """A preset field with its meaning (``medgpt presets --explain`` prints it), as TRL's configs do."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainKnobs:
    """How long and how hard one stage trains."""

    learning_rate: float = knob(help="peak learning rate")
    batch_size: int = knob(8, "examples (PPO: prompts) per device per optimizer step")
    gradient_accumulation_steps: int = knob(1, "batches summed before one optimizer step")
    epochs: float = knob(1.0, "passes over the training data")
    max_steps: int = knob(-1, "optimizer steps; > 0 overrides epochs (PPO needs it: there are no epochs)")
    warmup_ratio: float = knob(0.05, "share of the steps spent warming the learning rate up")
    logging_steps: int = knob(10, "steps between two logged losses")
    lr_scheduler_type: str = knob("cosine", "learning-rate schedule after warm-up (transformers' names: cosine, linear, constant); "
                                            "the PPO loop knows constant, linear and cosine (decay to 0 over max_steps, no warm-up)")
    sampling: str = knob("", "order of the training examples (transformers' train_sampling_strategy: random, "
                             "group_by_length); empty: the stage's own (SFT groups by length, the others shuffle)")


@dataclass(frozen=True)
class RLKnobs:
    """The PPO loop's knobs beyond learning rate, batch and steps, and how every alignment stage is judged.

    ``TrainKnobs`` of the ``ppo`` stage give the learning rate, the prompts per step (``batch_size``) and
    the number of PPO steps (``max_steps``). DPO, ORPO and GRPO read ``heldout_prompt_stride`` (the judge's
    prompts) and ``missing_eos_penalty`` (scoring sampled answers) from here too.
    """

    kl_coef: float = knob(0.1, "beta: per-token KL penalty to the SFT (reference) policy")
    ppo_epochs: int = knob(4, "passes over each batch of sampled answers")
    minibatch_size: int = knob(8, "answers per gradient step inside a PPO epoch")
    temperature: float = knob(1.0, "sampling temperature of rollouts (1.0: the policy itself, no truncation)")
    adaptive_kl: bool = knob(False, "steer beta towards target_kl instead of keeping it fixed")
    target_kl: float = knob(4.0, "nats per answer the adaptive KL controller aims for")
    missing_eos_penalty: float | None = knob(1.0, "score penalty for answers that never end (PPO rollouts, sampled pairs, judging)")
    urgent_care_reward: float = knob(1.0, "PPO, GRPO and sampled DPO/ORPO pairs: rule reward, added to the reward-model score: +w when a red-flag "
                                          "case is answered with urgent-care advice, -w when not (0: off)")
    # Off by default: measured with PPO on the tiny preset it did not lower the held-out wrong-condition rate (0.073 /
    # 0.010 / 0.052 with it, 0.031 / 0.042 / 0.031 without) and the gains were smaller (notebooks/EXPERIMENTS.md).
    wrong_condition_penalty: float = knob(0.0, "PPO, GRPO and sampled DPO/ORPO pairs: subtracted from the score of an answer "
                                               "that names another condition and not the one asked about (0: off)")
    # Off by default: measured on the tiny preset alone (w=1) it lowered PPO's and GRPO's mean gains (K1); beside
    # PPO-ptx (w 1 and 2) it kept recall better but raised wrong-condition answers, and no setting with it won more than
    # one run in six (notebooks/EXPERIMENTS.md, issue 26, eighth part). With the user's own prompts that carry key
    # facts it is a ground-truth reward.
    key_fact_reward: float = knob(0.0, "PPO, GRPO and sampled DPO/ORPO pairs: w times the share of the asked-about key facts an "
                                       "answer states, added to the score of prompts that ask for facts (0: off)")
    # Off by default: measured on the tiny preset with PPO (alone, and beside PPO-ptx) and GRPO, on the models of two
    # machines, no setting with it won more than one run in six, made-up words still rose on held-out prompts, and its
    # effect on the mean gain changed sign with the models (notebooks/EXPERIMENTS.md, issue 26, fifth to seventh parts).
    non_word_penalty: float = knob(0.0, "PPO, GRPO and sampled DPO/ORPO pairs: subtracted from the score of an answer with an "
                                        "English word that appears nowhere in the training data, a made-up word (0: off)")
    kl_bound: float = knob(20.0, "the judge: a policy further than this from the SFT model (nats per answer) does not count as a win")
    recall_tolerance: float = knob(0.03, "the judge: key-fact recall may fall at most this much below SFT's for a win")
    heldout_prompt_stride: int = knob(3, "every alignment stage is judged on every Nth held-out prompt (3: 112 of 336)")
    kl_horizon: int = knob(10_000, "answers over which the adaptive KL controller corrects the KL error")
    gamma: float = knob(1.0, "discount; 1.0: every token of an answer counts equally")
    lam: float = knob(0.95, "GAE lambda: bias (0) against variance (1) of the advantage estimate")
    cliprange: float = knob(0.2, "epsilon of the clipped surrogate")
    cliprange_value: float = knob(0.2, "how far a value prediction may move per update")
    vf_coef: float = knob(0.1, "weight of the value loss against the policy loss")
    score_clip: float | None = knob(None, "clip reward-model scores to [-c, c] (None: no clipping)")
    score_norm: bool = knob(False, "normalise scores by their running mean and std (beta then means the same for any reward model)")
    target_approx_kl: float | None = knob(None, "stop a PPO step's epochs once approx KL to the sampling policy exceeds it")
    samples_per_prompt: int = knob(1, "answers per prompt in a PPO rollout (ppo.batch_size answers in all); >1: each score minus its siblings' mean")
    whiten_advantages: bool = knob(True, "rescale each PPO batch's advantages to unit variance (False: keep the normalised scores' scale)")
    value_warmup_steps: int = knob(0, "first PPO steps train only the value head (a fitted baseline before the policy moves)")
    # Off by default: measured on the tiny preset's study models (two pairs x three RL seeds, notebooks/EXPERIMENTS.md):
    # gamma 1 cut PPO's KL from 3.4 to 1.3-1.5 and raised its mean gain but won no run; gamma 10 held the policy near
    # SFT (KL 0.4) with every gain interval touching 0.
    ptx_coef: float = knob(0.0, "PPO-ptx (Ouyang et al. 2022): weight of the SFT loss on a batch of data.sft dialogues "
                                "(rl.minibatch_size of them) added to each PPO minibatch's loss, not during value warm-up (0: plain PPO)")
    max_grad_norm: float = knob(1.0, "gradient-norm clip of each PPO optimizer step")
    save_every: int = knob(10, "PPO steps between two resumable checkpoints")
    seed: int | None = knob(None, "seed of the alignment stages (LoRA init, sampling, data order); None: the preset's seed. "
                                  "Another value reruns RL from the same SFT and reward models (the seed study)")


@dataclass(frozen=True)
class DataKnobs:
    """Where each stage's data comes from (``medgpt_utils.sources``): 'bundled', a file or folder, a
    ``save_to_disk`` folder or ``hub:<dataset id>``; several joined by commas, options after '?'
    (``weight``, ``max_samples``; hub: ``config``, ``split``, ``revision``, ``streaming``)."""

    pt: str = knob("bundled", "pretraining text (PT; also the tiny tokenizer and the vocabulary stage)")
    sft: str = knob("bundled", "SFT dialogues")
    preference: str = knob("bundled", "preference pairs: the reward model, and DPO/ORPO with preference.pair_source='data'")
    prompts: str = knob("bundled", "RL prompts: PPO, GRPO and the sampled DPO/ORPO pairs")
    pt_validation: str = knob("", "held-out text; empty: the bundled held-out file and a carved share of other sources")
    sft_validation: str = knob("", "held-out dialogues; empty: as pt_validation")
    preference_validation: str = knob("", "held-out pairs; empty: as pt_validation")
    prompts_validation: str = knob("", "held-out prompts the alignment stages are judged on; empty: as pt_validation")
    validation_percent: float = knob(5.0, "share of each non-bundled source held out for validation (seeded by the preset's seed)")
    on_error: str = knob("skip", "a bad record in the user's data: 'skip' (counted and reported per source) or 'raise'")


@dataclass(frozen=True)
class PreferenceKnobs:
    """Method-specific knobs of DPO, ORPO and GRPO (learning rate, batch and steps are in their TrainKnobs)."""

    dpo_beta: float = knob(0.1, "DPO: strength of the implicit KL leash to the reference (SFT) model")
    dpo_sft_weight: float = knob(1.0, "DPO: weight of an NLL term on the chosen answer (RPO, Pang et al. 2024); 0: pure DPO")
    # Where DPO and ORPO get their pairs (stages/pairs.py): "sampled" = the SFT model's own answers
    # ranked by the reward model (greedy vs best sample); "bundled" = the written preference data.
    pair_source: str = knob("sampled", "DPO/ORPO pairs: 'sampled' (the SFT model's answers ranked by the reward model) or 'data' (the pairs of data.preference: the written pairs unless you give your own)")
    pair_samples_per_prompt: int = knob(3, "sampled pairs: sampled answers per prompt besides the greedy one")
    pair_prompts: int = knob(0, "sampled pairs: how many RL training prompts, spread over all of them (0: all)")
    pair_sample_temperature: float = knob(0.7, "sampled pairs: temperature (below 1 keeps samples close to the greedy answers judged later)")
    orpo_beta: float = knob(0.1, "ORPO: weight (lambda) of the odds-ratio term next to the SFT loss")
    grpo_num_generations: int = knob(4, "GRPO: answers sampled per prompt; each is judged against its group")
    grpo_beta: float = knob(0.04, "GRPO: KL penalty to the reference (0 drops the reference entirely)")
    grpo_num_iterations: int = knob(1, "GRPO: updates per batch of sampled answers (PPO's epochs)")
    grpo_temperature: float = knob(1.0, "GRPO: sampling temperature (below 1: answers closer to the greedy ones judged)")


# The knowledge-base conditions the tiny preset trains and evaluates on. A model of about 4M parameters
# with a few CPU minutes cannot learn all 84 conditions in two languages (notebooks/EXPERIMENTS.md); these
# 24 span the departments and include the conditions learners ask about first. GPU presets use all.
TINY_CONDITIONS = (
    "acne", "allergic_rhinitis", "ankle_sprain", "appendicitis", "asthma", "chickenpox", "common_cold",
    "conjunctivitis", "depression", "gastroenteritis", "gerd", "gout", "heart_attack", "hypertension",
    "influenza", "insomnia", "iron_deficiency_anemia", "kidney_stones", "migraine", "pneumonia", "psoriasis",
    "stroke", "type2_diabetes", "urinary_tract_infection",
)


@dataclass(frozen=True)
class VocabKnobs:
    """The optional vocabulary stage (notebook 01b): which medical terms become tokens, and how long it trains."""

    min_pieces: int = knob(3, "add a term the tokenizer cuts into at least this many tokens")
    max_added_tokens: int = knob(1000, "add at most this many terms, most-split first")
    train_steps: int = knob(40, "PT steps that train the new rows after resizing")


@dataclass(frozen=True)
class TinyArchitecture:
    """Shape of the LLaMA-architecture model the ``tiny`` preset builds from scratch."""

    vocab_size: int = knob(8000, "upper bound of the BPE vocabulary (it stops when no pair is left: 3,234 on the tiny corpus)")
    # One token per Chinese character (no merges across characters): see models.build_tiny_tokenizer.
    chinese_characters: bool = knob(False, "one token per Chinese character, no merges across characters")
    # The PT text has most words mid-sentence only; an SFT answer opens with one ("Swelling of lips…"), which a
    # tokenizer that never saw it spells letter by letter, and RL's sampling then misspells (EXPERIMENTS, twelfth part).
    tokenizer_learns_dialogues: bool = knob(False, "the tokenizer also learns the SFT training dialogues' text, not only PT's")
    hidden_size: int = knob(256, "width of the residual stream")
    # Every dimension a multiple of 64: bitsandbytes' CPU 4-bit kernels (AVX-512-BF16) need N % 32 == 0.
    intermediate_size: int = knob(704, "width of the MLP (a multiple of 64: bitsandbytes' CPU 4-bit kernels need N % 32 == 0)")
    num_hidden_layers: int = knob(4, "transformer blocks")
    num_attention_heads: int = knob(4, "query heads")
    num_key_value_heads: int = knob(2, "key/value heads (grouped-query attention)")
    max_position_embeddings: int = knob(1024, "longest sequence the RoPE positions cover")


@dataclass(frozen=True)
class Preset:
    """Everything a stage reads: models, precision, LoRA, lengths and training knobs.

    ``base_model`` is ``None`` for the tiny preset: its tokenizer and model are built locally
    from the bundled corpus (no network). GPU presets name hub models; they are only touched
    when a user chooses such a preset.
    """

    name: str = knob(help="the preset's name and its folder under outputs/")
    description: str = knob(help="one line for people")
    device: str = knob(help="'cpu' or 'cuda'")
    base_model: str | None = knob(help="hub id of the base model (GPU presets) or None (the tiny model is built locally)")
    reward_base_model: str | None = knob(help="model the reward model starts from; None = the SFT model")
    tiny: TinyArchitecture | None = knob(help="shape of the locally built tiny model (None for GPU presets)")
    # Precision. CPU presets are fp32: bf16 on a CPU without native support was 10-16x slower.
    compute_dtype: str = knob(help="'float32' | 'float16' | 'bfloat16' (CPU presets: float32; bf16 on a CPU was 10-16x slower)")
    quantization: str | None = knob(help="None | '4bit' | '8bit' (bitsandbytes; NF4 + double quant for 4bit)")
    # LoRA
    lora_r: int = knob(help="LoRA rank")
    lora_alpha: int = knob(help="LoRA scaling numerator (update scale = alpha / r)")
    lora_dropout: float = knob(help="dropout on the LoRA input")
    lora_target_modules: str | tuple[str, ...] = knob("all-linear", "layers that get an adapter ('all-linear' or names)")
    # Stages that train every weight instead of a LoRA adapter. The tiny model is too small and too
    # fresh for a low-rank update to learn the facts; GPU presets use LoRA/QLoRA everywhere.
    full_parameter_stages: tuple[str, ...] = knob((), "stages that train every weight instead of a LoRA adapter")
    # Bundled data: the knowledge-base condition ids this preset trains and evaluates on (empty: all).
    conditions: tuple[str, ...] = knob((), "knowledge-base condition ids trained and evaluated on (empty: all 84)")
    # A reward model trained on written pairs alone scores an answer with a list item said three times as high as the
    # answer itself, and PPO finds that ("headache, headache, headache"): EXPERIMENTS, twelfth part.
    reward_degenerate_pairs: float = knob(0.0, "reward model: one more training pair for this share of the pairs, its rejected answer the chosen one with a list item or a word repeated (0: none)")
    # A scalar head on the SFT model ranks an answer about another condition right 0.77-0.83 of the time; the SFT model
    # trained the DPO way on the same pairs, its reward read off as DPO defines it, 0.88-0.92 (EXPERIMENTS, 13th part).
    reward_kind: str = knob("classifier", "reward model: 'classifier' (a scalar head on the SFT model, pairwise loss) or 'implicit' (the SFT model trained the DPO way on the same pairs; r = reward_beta * (log pi(a|q) - log pi_SFT(a|q)))")
    reward_beta: float = knob(0.1, "reward model of kind 'implicit': DPO's beta in its training and in its score")
    # Lengths
    block_size: int = knob(512, "continued-pretraining block length in tokens")
    max_length: int = knob(512, "SFT / RM / DPO / ORPO sequence length in tokens")
    max_prompt_length: int = knob(256, "longest prompt the preference stages keep, in tokens")
    max_new_tokens: int = knob(128, "longest generated answer (evaluation, rollouts, sampled pairs, chat)")
    # Stages
    pt: TrainKnobs = knob(factory=lambda: TrainKnobs(learning_rate=2e-4), help="continued pretraining: learning rate, batch, epochs/steps")
    sft: TrainKnobs = knob(factory=lambda: TrainKnobs(learning_rate=2e-4), help="supervised fine-tuning: learning rate, batch, epochs/steps")
    rm: TrainKnobs = knob(factory=lambda: TrainKnobs(learning_rate=1e-4), help="reward model: learning rate, batch, epochs/steps")
    dpo: TrainKnobs = knob(factory=lambda: TrainKnobs(learning_rate=5e-5), help="DPO: learning rate, batch, epochs/steps")
    orpo: TrainKnobs = knob(factory=lambda: TrainKnobs(learning_rate=5e-5), help="ORPO: learning rate, batch, epochs/steps")
    grpo: TrainKnobs = knob(factory=lambda: TrainKnobs(learning_rate=1e-5), help="GRPO: learning rate, batch, epochs/steps")
    ppo: TrainKnobs = knob(factory=lambda: TrainKnobs(learning_rate=1e-5), help="PPO: learning rate, prompts per step (batch_size), steps (max_steps)")
    rl: RLKnobs = knob(factory=RLKnobs, help="the PPO loop's knobs, and how every alignment stage is judged")
    data: DataKnobs = knob(factory=DataKnobs, help="where each stage's data comes from (bundled, files, folders, hub datasets)")
    preference: PreferenceKnobs = knob(factory=PreferenceKnobs, help="DPO, ORPO and GRPO knobs beyond learning rate, batch and steps")
    vocab: VocabKnobs = knob(factory=VocabKnobs, help="the optional vocabulary stage: which terms to add and how long to train")
    eval_question_stride: int = knob(5, "evaluate every Nth held-out question")
    gradient_checkpointing: bool = knob(False, "recompute activations in the backward pass (less memory, more time)")
    # adamw_torch_fused was 4-14% faster per tiny step on the CPU but not bit-identical (notebooks/EXPERIMENTS.md, issue 29):
    # a default that changes training numerics waits for the three-seed checks.
    optim: str = knob("adamw_torch", "the Trainer stages' optimizer (a transformers `optim` name, e.g. adamw_torch_fused)")
    trust_remote_code: bool = knob(False, "run model code from the hub (off unless asked)")
    seed: int = knob(42, "seed of every stage (weights, data order, sampling)")
    # Not part of any stage's fingerprint: how often a run saves does not change what it trains.
    checkpoint_steps: int = knob(100, "optimizer steps between the step checkpoints PT, SFT, RM, DPO, ORPO and GRPO save in "
                                      "outputs/<preset>/<stage>_checkpoint/ (0: none); a rerun resumes from the last one")
    # Set by dryrun.stand_in (``medgpt run --dry-run``, ``MEDGPT_DRY_RUN`` in a notebook): random-weight stand-ins
    # train a few steps, so a notebook's checks assert the mechanics and leave what learning shows to real runs.
    dry_run: str | None = knob(None, "None, or the stand-in scale ('small' | 'full') of a dry run (random weights, a few steps)")

    @property
    def alignment_seed(self) -> int:
        """The seed PPO, DPO, ORPO and GRPO run with: ``rl.seed``, else the seed their SFT and reward models had."""
        return self.seed if self.rl.seed is None else self.rl.seed

    @property
    def bf16(self) -> bool:
        """Mixed-precision flag for trainers: only on a GPU and only for a bf16 preset."""
        return self.device == "cuda" and self.compute_dtype == "bfloat16"

    @property
    def fp16(self) -> bool:
        """Mixed-precision flag for trainers: only on a GPU and only for an fp16 preset."""
        return self.device == "cuda" and self.compute_dtype == "float16"

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.compute_dtype)

    def describe(self) -> str:
        model = self.base_model or "tiny LLaMA built locally"
        quant = self.quantization or "none"
        return (
            f"preset={self.name} device={self.device} model={model} "
            f"dtype={self.compute_dtype} quantization={quant} lora_r={self.lora_r}"
        )


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        description="CPU default: a ~4M-parameter LLaMA built from the bundled corpus, 24 conditions, fp32.",
        device="cpu",
        base_model=None,
        reward_base_model=None,
        compute_dtype="float32",
        quantization=None,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        # The reward model too (issue 26): in full it ranked the two hard kinds of rejected answer better than
        # with LoRA and as fast (notebooks/EXPERIMENTS.md)
        full_parameter_stages=("pt", "sft", "rm"),
        tiny=TinyArchitecture(chinese_characters=True),
        conditions=TINY_CONDITIONS,  # 24 of the 84 conditions: notebooks/EXPERIMENTS.md
        eval_question_stride=1,  # all 336 held-out questions about those conditions
        block_size=256,
        max_length=448,  # the longest SFT conversation about the 24 conditions is 383 tokens (one per Chinese character)
        max_prompt_length=96,
        max_new_tokens=96,
        # Many epochs over a small corpus: PT training loss reaches 0.02 (the facts are memorised) and held-out
        # fact cloze 0.72; small batches: more updates per token (notebooks/EXPERIMENTS.md)
        pt=TrainKnobs(learning_rate=1e-3, batch_size=2, epochs=12),
        sft=TrainKnobs(learning_rate=1e-3, batch_size=4, epochs=6),
        # 1,008 pairs, every weight: 3 epochs ranked the held-out pairs as well as 6 on three seeds (overall 0.816 / 0.812 /
        # 0.822 against 0.817 / 0.797 / 0.784) in half the time (notebooks/EXPERIMENTS.md). With 336 pairs and LoRA,
        # 2 epochs had left off_question at 0.5.
        rm=TrainKnobs(learning_rate=5e-4, batch_size=16, epochs=3),
        # DPO on sampled pairs (preference.pair_source). With the SFT model of issue 12 (24 conditions), samples
        # at T=0.7 mostly equal the greedy answer (84 of 144 prompts gave no pair) and 2 epochs left every answer
        # unchanged; T=1.0, 5 samples and 4 epochs: 102 pairs, held-out score 0.98 -> 1.93 (32 prompts), but on all
        # 96 held-out prompts a paired gain of +0.31 (95% interval -0.21 .. +0.82): not yet reliable (issue 14).
        dpo=TrainKnobs(learning_rate=1e-3, batch_size=8, epochs=4),
        # ORPO has no reference to hold it: lr 2e-4 x 1 epoch and 5e-4 x 2 left the answers where they were (KL 0.1-0.2),
        # 1e-3 x 4 drifted away (KL 22-25, recall 0.57 -> 0.3, score -2 to -2.9); notebook 05 and EXPERIMENTS.md.
        orpo=TrainKnobs(learning_rate=5e-4, batch_size=8, epochs=2),
        # GRPO: 8 answers to each of 4 prompts per batch, each batch used for 2 updates (24 steps: 12 batches, 384
        # answers; PPO samples 768). lr 5e-4 with 1 update per batch left the policy where it was (KL 0.0; the log).
        # On the same six models (AVX-512 CPU), 48 steps lost more recall on the question sets (3 runs of 6 past the
        # verdict's tolerance, 24 steps: 2) and won none (24 steps: 1), in twice the time (issue 26, thirteenth part).
        grpo=TrainKnobs(learning_rate=2e-3, batch_size=32, max_steps=24, lr_scheduler_type="constant"),
        # 32 prompts per step: fewer made the score too noisy to learn from (measured: no gain with 16)
        # 32 answers per step: 8 prompts x 4 answers, each scored against its siblings (rl.samples_per_prompt), scores
        # normalised. Measured on three SFT/RM pairs (notebooks/EXPERIMENTS.md, issue 14): one answer per prompt
        # gained on one pair in three; with siblings and lr 2e-3 the gain's interval cleared 0 on two of three.
        # P16 (issue 26): 16 prompts x 4 answers per step, one pass over them (rl.ppo_epochs=1): each update sees
        # twice the samples and reuses them half as often (the seed study in notebooks/EXPERIMENTS.md). A small move: a
        # random reward at PPO's KL costs 6-10 points of held-out recall. lr 1e-3 for 24 steps: on the study's two
        # pairs x three RL seeds PPO won 3 of 6 with KL 0.5 and recall up on average on every question set; 0 of 6
        # at lr 2e-3 x 12 steps (KL 1.2), 2 of 6 at 1.4e-3 x 12, 1 of 6 at 1e-3 x 12 (KL 0.2, gains inside the
        # noise); notebooks/EXPERIMENTS.md, issue 26, sixteenth part.
        ppo=TrainKnobs(learning_rate=1e-3, batch_size=64, max_steps=24, lr_scheduler_type="constant"),
        rl=RLKnobs(kl_coef=0.1, ppo_epochs=1, minibatch_size=16, samples_per_prompt=4, score_norm=True,
                   heldout_prompt_stride=1),  # all 96 held-out prompts: judging is cheap, intervals narrower
        preference=PreferenceKnobs(pair_sample_temperature=1.0, pair_samples_per_prompt=5, grpo_num_generations=8,
                                   grpo_num_iterations=2),
    ),
    "colab-t4": Preset(
        name="colab-t4",
        description="Colab T4 (16 GB): Qwen2.5-0.5B-Instruct (zh+en), 4-bit NF4 QLoRA, fp16 compute.",
        device="cuda",
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        reward_base_model="Qwen/Qwen2.5-0.5B-Instruct",
        tiny=None,
        compute_dtype="float16",  # the T4 has no bf16
        quantization="4bit",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        block_size=512,
        max_length=512,
        max_prompt_length=256,
        max_new_tokens=192,
        pt=TrainKnobs(learning_rate=2e-4, batch_size=4, gradient_accumulation_steps=4, max_steps=200),
        sft=TrainKnobs(learning_rate=2e-4, batch_size=4, gradient_accumulation_steps=4, epochs=1),
        rm=TrainKnobs(learning_rate=5e-5, batch_size=4, gradient_accumulation_steps=4, epochs=1),
        dpo=TrainKnobs(learning_rate=5e-6, batch_size=2, gradient_accumulation_steps=8, epochs=1),
        orpo=TrainKnobs(learning_rate=8e-6, batch_size=2, gradient_accumulation_steps=8, epochs=1),
        grpo=TrainKnobs(learning_rate=1e-6, batch_size=4, gradient_accumulation_steps=2, max_steps=100),
        ppo=TrainKnobs(learning_rate=2e-5, batch_size=32, gradient_accumulation_steps=2, max_steps=100),
        rl=RLKnobs(kl_coef=0.05, ppo_epochs=2, minibatch_size=8),  # not yet measured on a T4
        gradient_checkpointing=True,
    ),
    "gpu-24gb": Preset(
        name="gpu-24gb",
        description="24 GB GPU: Qwen2.5-7B-Instruct (zh+en), 4-bit NF4 QLoRA, bf16 compute.",
        device="cuda",
        base_model="Qwen/Qwen2.5-7B-Instruct",
        reward_base_model="Qwen/Qwen2.5-1.5B-Instruct",
        tiny=None,
        compute_dtype="bfloat16",
        quantization="4bit",
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        block_size=1024,
        max_length=1024,
        max_prompt_length=512,
        max_new_tokens=256,
        pt=TrainKnobs(learning_rate=1e-4, batch_size=2, gradient_accumulation_steps=8, max_steps=200),
        sft=TrainKnobs(learning_rate=1e-4, batch_size=2, gradient_accumulation_steps=8, epochs=1),
        rm=TrainKnobs(learning_rate=2e-5, batch_size=4, gradient_accumulation_steps=4, epochs=1),
        dpo=TrainKnobs(learning_rate=5e-6, batch_size=1, gradient_accumulation_steps=16, epochs=1),
        orpo=TrainKnobs(learning_rate=8e-6, batch_size=1, gradient_accumulation_steps=16, epochs=1),
        grpo=TrainKnobs(learning_rate=1e-6, batch_size=4, gradient_accumulation_steps=4, max_steps=100),
        ppo=TrainKnobs(learning_rate=2e-5, batch_size=16, gradient_accumulation_steps=4, max_steps=100),
        rl=RLKnobs(kl_coef=0.05, ppo_epochs=2, minibatch_size=4),  # not yet measured on a GPU
        gradient_checkpointing=True,
    ),
}


# Training seconds of each stage as last measured, per preset: what a notebook says before it builds a missing
# earlier stage. Tiny: `medgpt run --preset tiny` from empty outputs, 2-core x86_64 CPU, 2026-12-06 (train_seconds
# of each metrics.json); PPO since its 24 steps at learning rate 1e-3: notebook 04's run of 2026-12-07 (2-core AMD
# EPYC without AVX-512, a slower CPU: 67 s there for the 12 steps before). GPU presets: not measured yet (no GPU was
# available to this project so far).
MEASURED_TRAIN_SECONDS = {
    "tiny": {"base": 0, "pt": 146, "sft": 157, "rm": 95, "ppo": 154, "dpo": 22, "orpo": 7, "grpo": 66},
}


def detect_preset_name() -> tuple[str, str]:
    """Pick a preset for this machine; returns (name, reason)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        has_cuda = False
    if not has_cuda:
        return "tiny", "no CUDA GPU found"
    import torch

    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if gib >= GPU_24GB_MIN_MEMORY_GIB:
        return "gpu-24gb", f"GPU with {gib:.0f} GiB found"
    return "colab-t4", f"GPU with {gib:.0f} GiB found"


def get_preset(name: str | None = None, overrides: Mapping[str, Any] | None = None, verbose: bool = True) -> Preset:
    """Return the preset ``name``, else ``$MEDGPT_PRESET``, else the one for this hardware.

    ``overrides`` maps field paths to values, e.g. ``{"lora_r": 8, "sft.max_steps": 20}``.
    """
    if name:
        reason = "asked for"
    elif os.environ.get(PRESET_ENV):
        name, reason = os.environ[PRESET_ENV], f"from ${PRESET_ENV}"
    else:
        name, reason = detect_preset_name()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} ({reason}); choose one of: {', '.join(PRESETS)}")
    preset = override(PRESETS[name], overrides or {})
    if verbose:
        print(f"MedicalGPT preset: {preset.name} ({reason}) - {preset.description}")
    return preset


def override(preset: Preset, overrides: Mapping[str, Any]) -> Preset:
    """Return a copy of ``preset`` with dotted field paths replaced (values coerced from str)."""
    for path, value in overrides.items():
        preset = _replace_path(preset, path.split("."), value, path)
    return preset


def _replace_path(obj: Any, parts: list[str], value: Any, full_path: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        raise ValueError(f"unknown preset field {full_path!r}; fields here: {', '.join(names)}")
    current = getattr(obj, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"preset field {full_path!r}: {head!r} has no sub-fields")
        new = _replace_path(current, parts[1:], value, full_path)
    else:
        new = _coerce(value, current, full_path, str(names[head].type))
    return dataclasses.replace(obj, **{head: new})


def _coerce(value: Any, current: Any, full_path: str, annotation: str = "") -> Any:
    """Turn a command-line string into the type the field holds (or declares, when it holds None)."""
    if not isinstance(value, str):
        return value
    if value.lower() == "none" and (current is None or "None" in annotation):
        return None
    if current is None:  # e.g. rl.score_clip: float | None
        current = next((kind() for name, kind in (("bool", bool), ("int", int), ("float", float)) if name in annotation), "")
    if isinstance(current, str):
        return value
    if isinstance(current, tuple):  # e.g. full_parameter_stages=pt,sft,rm
        return tuple(part.strip() for part in value.split(",") if part.strip())
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
    except ValueError:
        raise ValueError(f"preset field {full_path!r} wants a {type(current).__name__}, got {value!r}") from None
    return value


def field_value(preset: Preset, path: str) -> Any:
    """The value at a dotted field path, e.g. ``field_value(preset, "rl.kl_coef")``."""
    holder = preset
    for part in path.split("."):
        holder = getattr(holder, part)
    return holder


def explain(obj: Any, prefix: str = "") -> str:
    """One line per field, in ``--set`` form: ``path = value  # meaning`` (groups expanded)."""
    lines = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{prefix}{f.name}.*  # {f.metadata.get('help', '')}")
            lines.append(explain(value, f"{prefix}{f.name}."))
        else:
            lines.append(f"{prefix}{f.name} = {value!r}  # {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_overrides(pairs: list[str] | None) -> dict[str, str]:
    """Parse ``["sft.max_steps=20", "lora_r=8"]`` from the command line."""
    result = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set wants FIELD=VALUE, got {pair!r}")
        result[key.strip()] = value.strip()
    return result
