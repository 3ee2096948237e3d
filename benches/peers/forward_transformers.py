#!/usr/bin/env python3
"""The peer of benches/forward.rs: transformers' GPT2LMHeadModel forward on the same
GPT-2 124M geometry (random weights), f32, CPU, same shapes, median of runs."""
import os
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

runs = int(os.environ.get("WICK_BENCH_RUNS", "5"))
cfg = GPT2Config.from_pretrained(os.path.join(os.path.dirname(__file__), "..", "..", "models", "gpt2-124m.json"))
model = GPT2LMHeadModel(cfg).eval()
print(f"transformers GPT-2 124M geometry, f32, CPU, {torch.get_num_threads()} threads")
for b, t in [(1, 128), (8, 256)]:
    ids = torch.tensor([[(i * 7919) % 50257 for i in range(r * t, (r + 1) * t)] for r in range(b)])
    with torch.inference_mode():
        model(ids)
        times = []
        for _ in range(runs):
            s = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - s)
    s = sorted(times)[len(times) // 2]
    print(f"forward {b}x{t}: {s * 1e3:8.1f} ms  {b * t / s:8.1f} tokens/s")
