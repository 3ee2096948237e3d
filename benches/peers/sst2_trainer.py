#!/usr/bin/env python3
"""The peer of `wick train --objective classify` on SST-2: transformers' Trainer
fine-tuning all-MiniLM-L6-v2 (BertForSequenceClassification, a fresh 2-way head) with
the hyperparameters of the wick run in docs/benchmarks.md: batch 32, inputs truncated to
64 tokens and padded per batch, AdamW lr 6e-5 (betas 0.9/0.95, weight decay 0.1), 60
warmup steps then cosine decay, grad-norm clip 1.0, f32 on the CPU, no evaluation during
training. Prints the Trainer's own train_samples_per_second and, with --eval, dev
accuracy at the end.

    python3 benches/peers/sst2_trainer.py --model ../shared/data/all-minilm-l6-v2 \
        --train ../shared/data/sst2/train.tsv --dev ../shared/data/sst2/dev.tsv --steps 100
"""
import argparse
import csv
import time

import numpy as np
import torch
from transformers import (AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding,
                          Trainer, TrainingArguments)


def read_tsv(path):
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


class Encoded(torch.utils.data.Dataset):
    def __init__(self, tok, texts, labels):
        self.enc = tok(texts, truncation=True, max_length=64)
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.labels[i]
        return item


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--dev")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--bf16", action="store_true",
                    help="Trainer's bf16 mixed precision (CPU autocast), the peer of --matmul-precision bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = AutoTokenizer.from_pretrained(args.model)
    model = BertForSequenceClassification.from_pretrained(args.model, num_labels=2)
    train = Encoded(tok, *read_tsv(args.train))
    targs = TrainingArguments(
        output_dir="/tmp/sst2-trainer-peer", max_steps=args.steps, per_device_train_batch_size=32,
        learning_rate=6e-5, adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.1, warmup_steps=60,
        lr_scheduler_type="cosine", max_grad_norm=1.0, logging_steps=20, save_strategy="no",
        eval_strategy="no", report_to=[], use_cpu=True, seed=args.seed, dataloader_num_workers=0,
        bf16=args.bf16,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=train,
                      data_collator=DataCollatorWithPadding(tok))
    start = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - start
    print(f"transformers Trainer: {args.steps} steps x 32 in {wall:.1f} s wall, "
          f"{out.metrics['train_samples_per_second']:.2f} examples/s (Trainer's figure), "
          f"{args.steps * 32 / wall:.2f} examples/s (wall), {torch.get_num_threads()} threads")
    if args.dev:
        texts, labels = read_tsv(args.dev)
        model.eval()
        correct = 0
        with torch.no_grad():
            for s in range(0, len(texts), 64):
                enc = tok(texts[s:s + 64], truncation=True, max_length=64, padding=True, return_tensors="pt")
                pred = model(**enc).logits.argmax(-1).numpy()
                correct += int((pred == np.array(labels[s:s + 64])).sum())
        print(f"dev accuracy {correct / len(texts):.4f} ({len(texts)} sentences)")


if __name__ == "__main__":
    main()
