"""The course's SFT loss on the CPU (``answer_loss``): the same loss and gradients as TRL's fused head."""

import pytest
import torch

from medgpt_utils import models
from medgpt_utils.presets import PRESETS
from medgpt_utils.stages import sft

TINY = PRESETS["tiny"]


def _trainers(model_path, tmp_path, lora: bool):
    from peft import LoraConfig, get_peft_model
    from trl import SFTTrainer

    from medgpt_utils.answer_loss import AnswerLossSFTTrainer

    train, _ = sft.load_datasets(TINY)
    train = train.select(range(0, 400, 50))  # dialogues of different lengths: batches with padding
    args = sft.sft_config(TINY, tmp_path, per_device_train_batch_size=8, train_sampling_strategy="random",
                          save_strategy="no")
    built = []
    for cls in (SFTTrainer, AnswerLossSFTTrainer):
        model = models.load_causal_lm(model_path)
        torch.manual_seed(0)  # the same LoRA A matrices in both
        if lora:
            model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))  # the same adapter weights in both, and not zero, so the adapter shapes the loss
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
        built.append(cls(model=model, args=args, train_dataset=train, processing_class=models.load_tokenizer(model_path)))
    return built


@pytest.mark.parametrize("lora", [False, True])
def test_answer_positions_loss_equals_trls_fused_head(tiny_base, tmp_path, lora):
    fused, ours = _trainers(tiny_base, tmp_path, lora)
    batch = next(iter(fused.get_train_dataloader()))
    targets = batch["labels"][:, 1:]
    assert (targets == -100).any() and (targets != -100).any(), "the batch should hold both prompt and answer positions"
    assert ours.computes_answer_loss_itself(ours.model)
    calls = []
    head = ours.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    losses, grads = [], []
    for trainer in (fused, ours):
        trainer.model.train()
        trainer.model.zero_grad()
        for count in (None, int((targets != -100).sum()) * 2):  # alone, and as half of an accumulated step
            loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=count)
            losses.append(loss.item())
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
    handle.remove()
    assert calls == [int((targets != -100).sum())] * 2, "the LM head should see the answer positions only"
    assert losses[0] == pytest.approx(losses[2], abs=1e-5) and losses[1] == pytest.approx(losses[3], abs=1e-5)
    assert losses[1] == pytest.approx(losses[0] / 2, rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
    assert ours._metrics["train"]["mean_token_accuracy"], "token accuracy should still be logged"
