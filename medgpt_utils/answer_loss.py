"""TRL's ``SFTTrainer`` with the SFT loss computed on the answer positions only, on the CPU.

The SFT loss counts only the positions whose next token is the assistant's (``labels != -100``). TRL scores them
through a fused LM head (``trl.trainer.utils.add_fused_lm_head``): on a GPU with Triton it projects only those
positions; elsewhere it projects *every* position (prompt and padding included), in tiles, and projects them
again in the backward pass. On the tiny preset's CPU runs that head was a large share of each step. Here, on a
single CPU process, the loss is the formula of notebook 02 written out: the backbone's hidden states, the LM head
on the labelled positions only, cross-entropy summed and divided by the batch's answer tokens. Measured
(notebooks/EXPERIMENTS.md): the same loss to about 1e-6, and 1.4-1.5x the samples per second of the fused head
on MedicalGPT's SFT data. Anywhere else (GPUs, several processes, other loss types) TRL's own path runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer


def causal_lm(model):
    """The ``...ForCausalLM`` under a PEFT wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def answer_positions_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-sum of log p(next token) over the positions whose next token has a label, divided by ``num_items_in_batch``
    (the answer tokens of every micro-batch of the optimizer step) or by this batch's own count.
    Returns the loss, the logits of those positions and their targets."""
    lm = causal_lm(model)
    # Everything but the labels goes to the backbone: the attention mask, or a packed batch's position_ids
    hidden = lm.base_model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).last_hidden_state
    targets = inputs["labels"][:, 1:]  # position t predicts token t+1
    counted = targets != -100
    logits = lm.get_output_embeddings()(hidden[:, :-1][counted]).float()
    count = counted.sum() if num_items_in_batch is None else num_items_in_batch
    loss = F.cross_entropy(logits, targets[counted], reduction="sum") / torch.as_tensor(count).clamp(min=1)
    return loss, logits, targets[counted]


class AnswerLossSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose loss, in one CPU process, projects only the positions that carry it (the module's doc)."""

    def computes_answer_loss_itself(self, model) -> bool:
        plain_nll = (self.args.loss_type == "nll" and self.compute_loss_func is None and self.label_smoother is None
                     and not self.aux_loss_enabled)
        return plain_nll and model.device.type == "cpu" and self.accelerator.num_processes == 1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self.computes_answer_loss_itself(model):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if model.training else "eval"
        loss, logits, targets = answer_positions_loss(model, inputs, num_items_in_batch)
        with torch.no_grad():  # TRL's token accuracy and token count, as its own path logs them
            correct = (logits.argmax(-1) == targets).sum().item()
        self._metrics[mode]["mean_token_accuracy"].append(correct / max(len(targets), 1))
        if mode == "train":  # a padding-free batch has no attention mask: all its tokens are real
            mask = inputs.get("attention_mask")
            self._total_train_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
