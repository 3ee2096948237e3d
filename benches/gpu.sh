#!/usr/bin/env bash
# The GPU checks and figures in one run, for a machine with an NVIDIA GPU, PyTorch and
# transformers (docs/benchmarks.md, "GPU"): the CUDA test suite, then wick against its
# peers on the same GPU, all in f32 (no TF32, no autocast, no torch.compile):
#   - the default run (2000 iterations) against nanoGPT's loop,
#   - the GPT-2 124M fine-tune (batch 4 x 256) against a PyTorch loop,
#   - GPT-2 124M greedy decode (batch 1, 128 new tokens) against transformers' generate.
#
#   cargo build --release --features cuda
#   cargo test --release --features cuda --test cuda --no-run    # prints the test binary
#   bash benches/gpu.sh target/release/wick target/release/deps/cuda-HASH [LOG_DIR]
#
# GPT-2's tokenizer files come from ../shared/data/gpt2-tokenizer, or WICK_GPT2_TOKENIZER.
# Writes only under a temporary folder and LOG_DIR; prints a table last.
set -uo pipefail
cd "$(dirname "$0")/.."
wick=$(realpath "$1")
tests=${2:+$(realpath "$2")}
logs=${3:-$(mktemp -d)}
tok=${WICK_GPT2_TOKENIZER:-../shared/data/gpt2-tokenizer}
mkdir -p "$logs"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
rows=()
row() { rows+=("$(printf '%-44s %14s %14s %8s' "$@")"); }
ratio() { python3 -c "import sys; a, b = map(float, sys.argv[1:]); print(f'{a / b:.2f}')" "$1" "$2" 2>/dev/null || echo "?"; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$logs/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)" | tee -a "$logs/gpu.txt"
lscpu | grep -E "^Model name|^CPU\(s\)" | tee -a "$logs/gpu.txt"

# The CUDA libraries wick links (cuBLAS, cuRAND, NVRTC, the runtime), from the toolkit
# or from PyTorch's wheels, unless the loader already finds them.
if ldd "$wick" | grep -q "not found"; then
  dirs=$(find /usr/local/nvidia /usr/local/cuda*/lib64 /usr/local/cuda*/targets/*/lib "$(python3 -c 'import site; print(site.getsitepackages()[0])')/nvidia" \
    -name 'libcuda.so.1' -o -name 'libcublas.so.*' -o -name 'libcurand.so.*' -o -name 'libnvrtc.so.*' -o -name 'libcudart.so.*' -o -name 'libnccl.so.*' 2>/dev/null |
    xargs -r -n1 dirname | sort -u | paste -sd:)
  export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
ldd "$wick" | grep -E "not found|cublas|curand|nvrtc|cudart|nccl|libcuda" | tee -a "$logs/gpu.txt"

if [ -n "$tests" ]; then
  echo "== CUDA test suite"
  timeout 200 "$tests" --test-threads 1 2>&1 | tee "$logs/tests.txt"
  row "CUDA test suite ($(grep -c '\.\.\. ok' "$logs/tests.txt") ok)" "$(grep -o 'test result: [a-zA-Z]*' "$logs/tests.txt" | tail -1)" "" ""
fi

echo "== default run"
start=$(date +%s.%N)
timeout 150 "$wick" train --device cuda --out "$tmp/default" 2>&1 | tee "$logs/default-wick.txt" | grep -E "step|trained|val loss|device"
wick_wall=$(python3 -c "import time; print(round(time.time() - $start, 1))")
start=$(date +%s.%N)
timeout 120 python3 benches/peers/nanogpt_shakespeare_char.py --device cuda 2>&1 | tee "$logs/default-nanogpt.txt" | grep -E "step 2000|nanoGPT"
peer_wall=$(python3 -c "import time; print(round(time.time() - $start, 1))")
wick_loop=$(python3 -c "import json; print(round([json.loads(l) for l in open('$tmp/default/metrics.jsonl')][-1]['elapsed_s'], 1))" 2>/dev/null)
peer_loop=$(sed -n 's/^nanoGPT: .* in \([0-9.]*\) s.*/\1/p' "$logs/default-nanogpt.txt")
row "default run: process wall s (wick, nanoGPT)" "$wick_wall" "$peer_wall" "$(ratio "$wick_wall" "$peer_wall")"
row "default run: training loop s" "$wick_loop" "$peer_loop" "$(ratio "$wick_loop" "$peer_loop")"
row "default run: final val loss" "$(grep -o 'val loss [0-9.]*' "$logs/default-wick.txt" | tail -1 | cut -d' ' -f3)" \
  "$(sed -n 's/.*final val loss \([0-9.]*\).*/\1/p' "$logs/default-nanogpt.txt")" ""

# Where a step's time goes (WICK_STEP_TIMES synchronizes at each phase: not timed above).
WICK_STEP_TIMES=1 timeout 60 "$wick" train --device cuda --max-iters 200 --sample-tokens 0 --out "$tmp/split" 2>&1 |
  grep "step split" | tee "$logs/split-default.txt"

echo "== GPT-2 124M fine-tune"
model=$tmp/gpt2-124m-random
python3 benches/peers/gpt2_finetune_torch.py --save "$model" --tokenizer "$tok" >/dev/null 2>&1
timeout 90 "$wick" train --device cuda --model "$model" --data data/tinyshakespeare.txt --out "$tmp/ft" \
  --batch-size 4 --block-size 256 --max-iters 20 --log-every 1 --eval-every 100000 --save-every 100000 \
  --sample-tokens 0 --dropout 0 --learning-rate 3e-5 --warmup-iters 0 >"$logs/ft-wick.txt" 2>&1
wick_ms=$(python3 -c "
import json, statistics; e = [json.loads(l)['elapsed_s'] for l in open('$tmp/ft/metrics.jsonl')]
print(round(statistics.median([b - a for a, b in zip(e[2:], e[3:])]) * 1000, 1))" 2>/dev/null)
timeout 90 python3 benches/peers/gpt2_finetune_torch.py --model "$model" --device cuda --steps 20 >"$logs/ft-torch.txt" 2>&1
peer_ms=$(sed -n 's/^median ms\/step.*: \([0-9.]*\)/\1/p' "$logs/ft-torch.txt")
WICK_STEP_TIMES=1 timeout 60 "$wick" train --device cuda --model "$model" --data data/tinyshakespeare.txt --out "$tmp/ft-split" \
  --batch-size 4 --block-size 256 --max-iters 10 --eval-every 100000 --save-every 100000 --sample-tokens 0 \
  --dropout 0 --warmup-iters 0 2>&1 | grep "step split" | tee "$logs/split-124m.txt"
row "124M fine-tune 4x256: median ms/step" "$wick_ms" "$peer_ms" "$(ratio "$wick_ms" "$peer_ms")"

echo "== GPT-2 124M decode"
prompt="The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun"
for _ in 1 2 3; do
  timeout 30 "$wick" generate --device cuda --model "$model" --prompt "$prompt" --max-new-tokens 128 --min-new-tokens 128 \
    --temperature 0 2>&1 >/dev/null | grep "tokens/s"
done | tee "$logs/decode-wick.txt"
wick_tps=$(sed -n 's/.* \([0-9.]*\) tokens\/s per sequence.*/\1/p' "$logs/decode-wick.txt" | sort -n | sed -n 2p)
WICK_BENCH_DEVICE=cuda timeout 90 python3 benches/peers/generate_transformers.py 2>&1 | tee "$logs/decode-transformers.txt"
peer_tps=$(sed -n 's/.*decode *\([0-9.]*\) tokens\/s.*/\1/p' "$logs/decode-transformers.txt")
row "124M decode, batch 1: tokens/s (median of 3)" "$wick_tps" "$peer_tps" "$(ratio "$peer_tps" "$wick_tps")"

echo
cat "$logs/gpu.txt"
printf '%-44s %14s %14s %8s\n' "job" "wick" "peer" "wick/peer"
printf '%s\n' "${rows[@]}" | tee "$logs/table.txt"
cat "$logs"/split-*.txt
echo "(wick/peer is a ratio of times, decode included: under 1, wick is the faster)"
