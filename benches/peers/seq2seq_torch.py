"""The seq2seq training peer: PyTorch's nn.Transformer at transformer-tiny's sizes, trained
the way `wick train --model transformer-tiny` trains, on the same pairs, with the same
tokenizer, batch shapes and optimizer, so the time per step can be compared.

What is the same as wick's run: the pairs (source TAB target, extra columns ignored, 2%
held out), wick's learned BPE (`tokenizer.json` from a wick run on the same file), each
side framed `ids </s>` and cut to --block-size, the decoder reading `<s>` + target and
predicting target + `</s>`, batches of --batch-size pairs right-padded to their longest,
post-LN layers with ReLU, dropout 0.1, sinusoidal positions, one embedding shared by both
sides and the output projection (scaled by sqrt(d_model)), label smoothing 0.1 with
padding ignored, AdamW (betas 0.9/0.98, wd 0.01), clipping at 1.0, warmup then cosine.
What differs: the shuffle (Python's RNG, not wick's), so the batches are the same in
distribution, not pair for pair; and nn.Transformer's final LayerNorm on each stack.

    python3 benches/peers/seq2seq_torch.py --pairs /tmp/fra20k.txt \
        --run /tmp/wick-s2s --steps 100

prints the loop's seconds, the median seconds per step (steps after the third) and
tokens/s counted as wick counts them (batch size x block size per step).
"""

import argparse
import json
import math
import os
import random
import statistics
import time

import torch
from torch import nn
from tokenizers import Tokenizer


def read_pairs(path):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) >= 2 and cols[0].strip() and cols[1].strip():
                pairs.append((cols[0], cols[1]))
    return pairs


def frame(ids, eos, max_len):
    return ids[: max(max_len - 1, 0)] + [eos]


def sinusoids(n, d):
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, dtype=torch.float32)
    angle = pos / torch.pow(10000.0, i / d)
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(angle)  # interleaved, as the paper and wick's own family
    pe[:, 1::2] = torch.cos(angle)
    return pe


class TinyTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.d = d
        self.shared = nn.Embedding(c["vocab_size"], d)
        nn.init.normal_(self.shared.weight, std=d**-0.5)
        self.register_buffer("pe", sinusoids(c.get("max_position_embeddings", 64), d))
        self.drop = nn.Dropout(c.get("dropout", 0.1))
        self.core = nn.Transformer(
            d_model=d,
            nhead=c["num_heads"],
            num_encoder_layers=c["encoder_layers"],
            num_decoder_layers=c["decoder_layers"],
            dim_feedforward=c["d_ff"],
            dropout=c.get("dropout", 0.1),
            activation="relu",
            batch_first=True,
        )

    def embed(self, ids):
        return self.drop(self.shared(ids) * math.sqrt(self.d) + self.pe[: ids.shape[1]])

    def forward(self, src, src_pad, tgt, tgt_pad):
        t = tgt.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)  # True: may not attend
        h = self.core(
            self.embed(src),
            self.embed(tgt),
            tgt_mask=causal,
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad,
            tgt_is_causal=True,
        )
        return h @ self.shared.weight.T  # (B, T, V)


def pad(rows, value):
    n = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (n - len(r)) for r in rows])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", required=True, help="source TAB target per line")
    ap.add_argument("--run", required=True, help="a wick run's folder: tokenizer.json, config.json")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    c = json.load(open(os.path.join(args.run, "config.json")))
    tok = Tokenizer.from_file(os.path.join(args.run, "tokenizer.json"))
    pad_id, bos, eos = c.get("pad_token_id", 0), c.get("bos_token_id", 1), c.get("eos_token_id", 2)

    pairs = read_pairs(args.pairs)
    random.shuffle(pairs)
    n_val = max(1, round(len(pairs) * 0.02))
    train = pairs[: len(pairs) - n_val]
    enc = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    src = [frame(ids, eos, args.block_size) for ids in enc([s for s, _ in train])]
    tgt = [frame(ids, eos, args.block_size) for ids in enc([t for _, t in train])]

    model = TinyTransformer(c)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.98),
    )
    loss_fn = nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1)
    warmup, max_lr, min_lr, total = 200, 1e-3, 1e-4, 3000

    def lr_at(it):
        if it < warmup:
            return max_lr * (it + 1) / warmup
        r = min(1.0, (it - warmup) / max(1, total - warmup))
        return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (max_lr - min_lr)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(train)} train pairs"
    )
    order, at = list(range(len(train))), len(train)
    times, losses = [], []
    model.train()
    loop_start = time.perf_counter()
    for it in range(args.steps):
        t0 = time.perf_counter()
        if at + args.batch_size > len(order):
            random.shuffle(order)
            at = 0
        picks, at = order[at : at + args.batch_size], at + args.batch_size
        s = pad([src[i] for i in picks], pad_id)
        tgt_in = pad([[bos] + tgt[i][:-1] for i in picks], pad_id)
        labels = pad([tgt[i] for i in picks], -100)
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        logits = model(s, s == pad_id, tgt_in, labels == -100)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        times.append(time.perf_counter() - t0)
    loop = time.perf_counter() - loop_start
    per_step = statistics.median(times[3:]) if len(times) > 4 else statistics.median(times)
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    print(
        f"loop {loop:.2f} s for {args.steps} steps, median {per_step * 1000:.1f} ms/step, "
        f"{args.batch_size * args.block_size / per_step:.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
