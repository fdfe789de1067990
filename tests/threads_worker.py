"""One small training run for tests/test_threads.py: a fresh tiny model, N steps on bundled text; prints seconds."""
import sys
import time

import torch

from medgpt_utils import data, models, threads
from medgpt_utils.presets import get_preset

steps = int(sys.argv[1])
threads.configure(verbose=False)
preset = get_preset("tiny", verbose=False)
texts = list(data.load_bundled("pretrain/train.jsonl", conditions=preset.conditions)["text"])[:300]
tokenizer = models.build_tiny_tokenizer(texts, 2000, chinese_characters=True)
model = models.build_tiny_model(tokenizer, preset.tiny)
blocks = torch.tensor(data.pack_texts(texts, tokenizer, preset.block_size))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
start = time.perf_counter()
for step in range(steps):
    at = (2 * step) % (len(blocks) - 2)
    batch = blocks[at : at + 2]
    model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
print(f"{time.perf_counter() - start:.3f}")
