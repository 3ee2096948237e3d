#!/usr/bin/env python3
"""The peer of benches/generate.rs: transformers' generate() on the GPT-2 124M geometry
(random weights), f32, CPU, batch 1, a 16-token prompt, 128 new tokens, greedy.
Time to first token is one generate() of 1 new token; decode speed is
(128 - 1) / (time(128 tokens) - time(1 token)); median of runs after a warm-up.
WICK_BENCH_DEVICE=cuda runs it on the GPU (f32, no TF32), synchronized."""
import os
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

runs = int(os.environ.get("WICK_BENCH_RUNS", "3"))
device = os.environ.get("WICK_BENCH_DEVICE", "cpu")
cfg = GPT2Config.from_pretrained(os.path.join(os.path.dirname(__file__), "..", "..", "models", "gpt2-124m.json"))
model = GPT2LMHeadModel(cfg).eval().to(device)
ids = torch.tensor([[(i * 7919) % 50257 for i in range(16)]], device=device)
mask = torch.ones_like(ids)
where = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
print(f"transformers generate: GPT-2 124M geometry, f32, {where}, "
      "batch 1, 16-token prompt, 128 new tokens, greedy")


def timed(n):
    s = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    assert out.shape[1] == 16 + n
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - s


timed(8)
firsts, rates = [], []
for _ in range(runs):
    t1 = timed(1)
    t128 = timed(128)
    firsts.append(t1)
    rates.append(127 / (t128 - t1))
med = lambda xs: sorted(xs)[len(xs) // 2]
print(f"time to first token {med(firsts) * 1e3:7.1f} ms   decode {med(rates):6.1f} tokens/s")
