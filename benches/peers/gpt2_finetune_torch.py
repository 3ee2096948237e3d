#!/usr/bin/env python3
"""The peer of a GPT-2 fine-tune with `wick train`: a plain PyTorch loop over
transformers' GPT2LMHeadModel, batch 4 x 256 random windows of tiny shakespeare, AdamW
(betas 0.9/0.95, weight decay 0.1 on >=2-D weights), clip 1.0, dropout 0, f32. With
--lora-r, peft's LoRA on c_attn (alpha 8, dropout 0: wick's defaults) with the base
frozen; with --gradient-checkpointing, transformers' gradient_checkpointing_enable().

    # once: a random GPT-2 124M in the hub config, saved by transformers, with GPT-2's tokenizer
    python3 benches/peers/gpt2_finetune_torch.py --save /tmp/gpt2-124m-random
    # or the 355M / 774M geometries (GPT-2 medium / large)
    python3 benches/peers/gpt2_finetune_torch.py --save /tmp/gpt2-774m-random --size 774m
    # the peer: ms per step (median of steps 3-8)
    /usr/bin/time -v python3 benches/peers/gpt2_finetune_torch.py --model /tmp/gpt2-124m-random
    # wick on the same folder (ms per step: differences of elapsed_s in metrics.jsonl)
    /usr/bin/time -v wick train --model /tmp/gpt2-124m-random --data data/tinyshakespeare.txt \
        --out /tmp/gpt2-ft --batch-size 4 --block-size 256 --max-iters 8 --log-every 1 \
        --eval-every 100000 --save-every 100000 --sample-tokens 0 --dropout 0 \
        --learning-rate 3e-5 --warmup-iters 0     # betas 0.9/0.95, weight decay 0.1: the defaults
"""
import argparse
import os
import shutil
import statistics
import time

import torch

ap = argparse.ArgumentParser()
ap.add_argument("--model")
ap.add_argument("--save")
ap.add_argument("--steps", type=int, default=8)
ap.add_argument("--size", choices=["124m", "355m", "774m"], default="124m")
ap.add_argument("--lora-r", type=int, default=0)
ap.add_argument("--gradient-checkpointing", action="store_true")
# torch's CPU mixed precision (bf16 matmuls on AMX through oneDNN, f32 master weights):
# the peer of `wick train --matmul-precision bf16`.
ap.add_argument("--autocast-bf16", action="store_true")
ap.add_argument("--device", default="cpu", help="cpu or cuda (f32, no TF32; cuda adds a synchronize to each step's time)")
ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "data", "tinyshakespeare.txt"))
ap.add_argument("--tokenizer", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "gpt2-tokenizer"))
args = ap.parse_args()

from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast  # noqa: E402

if args.save:
    torch.manual_seed(0)
    n_embd, n_layer, n_head = {"124m": (768, 12, 12), "355m": (1024, 24, 16), "774m": (1280, 36, 20)}[args.size]
    cfg = GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(cfg).save_pretrained(args.save)
    for f in ("tokenizer.json", "vocab.json", "merges.txt"):
        shutil.copy(os.path.join(args.tokenizer, f), args.save)
    print("saved", args.save)
    raise SystemExit

tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.model, "tokenizer.json"))
ids = torch.tensor(tok(open(args.data).read())["input_ids"], dtype=torch.long)
model = GPT2LMHeadModel.from_pretrained(args.model, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0).to(args.device)
cuda = args.device.startswith("cuda")
if args.gradient_checkpointing:
    model.gradient_checkpointing_enable()
if args.lora_r:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True))
    if args.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: the checkpointed blocks need a grad-tracking input
model.train()
trained = [p for p in model.parameters() if p.requires_grad]
print(f"{sum(p.numel() for p in trained)} trained parameters", flush=True)
decay = [p for p in trained if p.dim() >= 2]
rest = [p for p in trained if p.dim() < 2]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
    lr=3e-5, betas=(0.9, 0.95), fused=False,
)
g = torch.Generator().manual_seed(1337)
B, T = 4, 256
times = []
for step in range(1, args.steps + 1):
    t0 = time.perf_counter()
    ix = torch.randint(len(ids) - T - 1, (B,), generator=g)
    x = torch.stack([ids[i : i + T] for i in ix]).to(args.device)
    with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.autocast_bf16):
        out = model(input_ids=x, labels=x)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(trained, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    times.append(dt)
    print(f"step {step}: loss {out.loss.item():.4f}, {dt * 1e3:.0f} ms", flush=True)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu {torch.backends.cpu.get_cpu_capability()}")
if cuda:
    print(f"{torch.cuda.get_device_name()}: peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
print(f"median ms/step (steps 3-{args.steps}): {statistics.median(times[2:]) * 1e3:.0f}")
