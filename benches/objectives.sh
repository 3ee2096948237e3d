#!/usr/bin/env bash
# Every training objective with the fused CPU kernels and without them (WICK_NO_FUSED=1),
# alternating, on the data beside the checkout: the fused path must never be the slower.
# Prints one row per objective and run: tokens/s of each path and fused / plain.
#
#   cargo build --release && bash benches/objectives.sh [ROUNDS]
#
# Needs ../shared/data (all-MiniLM-L6-v2, SST-2, the Tatoeba pairs). Writes only under a
# temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
wick=${WICK:-target/release/wick}
shared=../shared/data
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

head -c 200000 data/tinyshakespeare.txt >"$tmp/sh200k.txt"
unzip -p "$shared/tatoeba-fra-eng-full/fra-eng.zip" fra.txt >"$tmp/fra.txt"
head -20000 "$tmp/fra.txt" >"$tmp/fra20k.txt"
head -65 "$shared/sst2/dev.tsv" >"$tmp/dev64.tsv"
quiet=(--eval-every 100000 --save-every 100000 --sample-tokens 0)
minilm=(--model "$shared/all-minilm-l6-v2")

run() { # objective, then wick train's flags; prints tokens/s of the training loop
  local out="$tmp/run" && rm -rf "$out"
  "$wick" train --out "$out" "${quiet[@]}" "$@" 2>/dev/null |
    sed -n 's/^trained .* \([0-9.]*\) tokens\/s.*/\1/p'
}

declare -A flags=(
  [clm]="--max-iters 200"
  [mlm]="${minilm[*]} --objective mlm --data $tmp/sh200k.txt --max-iters 20 --batch-size 8 --block-size 128"
  [mlm+nsp]="${minilm[*]} --objective mlm+nsp --data $tmp/sh200k.txt --max-iters 20 --batch-size 8 --block-size 128"
  [classify]="${minilm[*]} --objective classify --data $shared/sst2/train.tsv --eval-data $tmp/dev64.tsv --max-iters 30 --batch-size 32 --block-size 64"
  [seq2seq]="--model transformer-tiny --data $tmp/fra20k.txt --max-iters 30"
)

lscpu | grep "^Model name" >&2
echo "CPU features: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')" >&2
printf '%-10s %12s %12s %8s\n' objective "fused tok/s" "plain tok/s" ratio
for objective in clm mlm mlm+nsp classify seq2seq; do
  for _ in $(seq "$rounds"); do
    # shellcheck disable=SC2086 # the flags are words
    fused=$(run ${flags[$objective]})
    # shellcheck disable=SC2086
    plain=$(WICK_NO_FUSED=1 run ${flags[$objective]})
    printf '%-10s %12s %12s %8.2f\n' "$objective" "$fused" "$plain" "$(echo "$fused / $plain" | bc -l)"
  done
done
