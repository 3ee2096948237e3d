#!/usr/bin/env python3
"""The peer of `wick embed --pooling mean --normalize`: sentence-transformers' encode of
the same sentences with the same checkpoint (batch 32, normalised), the whole process
timed from outside as wick's is.

    cut -f1 ../shared/data/sst2/train.tsv | sed 1d | head -4000 > /tmp/sst2-4000.txt
    /usr/bin/time -v python3 benches/peers/embed_sentence_transformers.py \
        --model ../shared/data/all-minilm-l6-v2 --file /tmp/sst2-4000.txt
    /usr/bin/time -v wick embed --model ../shared/data/all-minilm-l6-v2 --file /tmp/sst2-4000.txt \
        --pooling mean --normalize --batch-size 32 --output /tmp/wick-emb.npy
"""
import argparse
import time

import numpy as np
from sentence_transformers import SentenceTransformer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--file", required=True)
ap.add_argument("--batch-size", type=int, default=32)
ap.add_argument("--compare", help="a .npy of wick's embeddings of the same file")
args = ap.parse_args()

texts = [line.rstrip("\n") for line in open(args.file) if line.strip()]
model = SentenceTransformer(args.model, device="cpu")
t0 = time.perf_counter()
emb = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True)
dt = time.perf_counter() - t0
print(f"sentence-transformers: {len(texts)} sentences in {dt:.2f} s, {len(texts) / dt:.0f} sentences/s (encode only)")
if args.compare:
    ours = np.load(args.compare)
    cos = (ours * emb).sum(axis=1)
    print(f"cosine to wick's: min {cos.min():.6f}")
