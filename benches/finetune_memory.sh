#!/usr/bin/env bash
# Peak memory and step time of GPT-2 fine-tunes (batch 4 x 256, AdamW, random weights),
# wick against transformers + peft on the same machine, alternating, one row per size
# and mode: full fine-tune, full + gradient checkpointing, LoRA r=8 on c_attn, LoRA +
# gradient checkpointing.
#
#   cargo build --release && bash benches/finetune_memory.sh [SIZES] [STEPS]
#   # SIZES: a comma list of 124m, 355m, 774m (default 124m); STEPS: 6 (median of steps 3-6)
#   # MODES=lora,lora+ckpt ... picks the modes (default: all four)
#
# Needs python3 with torch, transformers and peft (PYTHON=... to choose one). The random
# checkpoints are made once under $TMPDIR (default /tmp) by the peer script. ms/step is
# the median of steps 3..STEPS (wick: differences of metrics.jsonl's elapsed_s, the last
# step left out as it holds the final validation pass); peak RSS is /usr/bin/time's.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-124m}
steps=${2:-6}
MODES=${MODES:-full,full+ckpt,lora,lora+ckpt}
wick=${WICK:-target/release/wick}
python=${PYTHON:-python3}
peer=benches/peers/gpt2_finetune_torch.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

rss_mib() { sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\)/\1/p' "$1" | awk '{printf "%d", $1 / 1024}'; }

wick_run() { # model, extra flags; prints "ms rss"
  local model=$1 && shift
  rm -rf "$tmp/run"
  /usr/bin/time -v "$wick" train --model "$model" --data data/tinyshakespeare.txt \
    --out "$tmp/run" --batch-size 4 --block-size 256 --max-iters "$steps" --log-every 1 \
    --eval-every 100000 --save-every 100000 --sample-tokens 0 --dropout 0 \
    --learning-rate 3e-5 --warmup-iters 0 --val-fraction 0.01 "$@" >"$tmp/out" 2>"$tmp/time"
  local ms
  ms=$($python - "$tmp/run/metrics.jsonl" <<'EOF'
import json, statistics, sys
e = [json.loads(l)["elapsed_s"] for l in open(sys.argv[1])]
d = [b - a for a, b in zip(e, e[1:])][1:-1]  # steps 3..N-1: step 2 warms, the last evaluates
print(round(statistics.median(d) * 1000))
EOF
)
  echo "$ms $(rss_mib "$tmp/time")"
}

peer_run() { # model, extra flags; prints "ms rss"
  local model=$1 && shift
  /usr/bin/time -v $python "$peer" --model "$model" --steps "$steps" "$@" >"$tmp/out" 2>"$tmp/time"
  echo "$(sed -n 's/^median ms\/step.*: \([0-9]*\)/\1/p' "$tmp/out") $(rss_mib "$tmp/time")"
}

echo "| size | mode | peer ms/step | wick ms/step | wick / peer | peer peak RSS MiB | wick peak RSS MiB | wick / peer |"
echo "|---|---|---|---|---|---|---|---|"
for size in ${sizes//,/ }; do
  model=${TMPDIR:-/tmp}/gpt2-$size-random
  [ -d "$model" ] || $python "$peer" --save "$model" --size "$size" >/dev/null
  for mode in ${MODES//,/ }; do
    flags=() peer_flags=()
    case $mode in
      *lora*) flags+=(--lora-r 8) peer_flags+=(--lora-r 8) ;;
    esac
    case $mode in
      *ckpt) flags+=(--gradient-checkpointing) peer_flags+=(--gradient-checkpointing) ;;
    esac
    read -r w_ms w_rss < <(wick_run "$model" "${flags[@]}")
    read -r p_ms p_rss < <(peer_run "$model" "${peer_flags[@]}")
    awk -v s="$size" -v m="$mode" -v wm="$w_ms" -v wr="$w_rss" -v pm="$p_ms" -v pr="$p_rss" \
      'BEGIN { printf "| %s | %s | %d | %d | %.2f× | %d | %d | %.2f× |\n", s, m, pm, wm, wm / pm, pr, wr, wr / pr }'
  done
done
