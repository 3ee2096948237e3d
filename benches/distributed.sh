#!/usr/bin/env bash
# Data-parallel training over MPI on this machine: the same global batch trained by one
# process (all cores) and by two ranks (a core each), alternating, with each run's step
# time and, for two ranks, rank 0's share of the loop spent summing gradients. The
# ranks share the machine's cores, so this measures the overhead, not a speed-up.
#
#   cargo build --release --features mpi && bash benches/distributed.sh [ROUNDS]
#
# Needs mpirun (Open MPI) and, for the GPT-2 124M rows, /tmp/gpt2-124m-random
# (python3 benches/peers/gpt2_finetune_torch.py --save /tmp/gpt2-124m-random). Writes only
# under a temporary folder; MPI talks over shared memory and loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
wick=${WICK:-target/release/wick}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo

quiet=(--eval-every 100000 --save-every 100000 --sample-tokens 0 --log-every 1)
declare -A flags=(
  [default]="--max-iters 300 --dropout 0"
  [gpt2-124m]="--model /tmp/gpt2-124m-random --data data/tinyshakespeare.txt --batch-size 4 --block-size 256 --max-iters 6 --dropout 0 --learning-rate 3e-5 --warmup-iters 0"
)

# Median ms per step over the logged steps after the first two (elapsed_s differences).
ms_per_step() {
  python3 -c "import json, statistics, sys; e = [json.loads(l)['elapsed_s'] for l in open(sys.argv[1])]; d = [b - a for a, b in zip(e, e[1:])][1:]; print(round(statistics.median(d) * 1000, 1))" "$1/metrics.jsonl"
}

lscpu | grep "^Model name" >&2
printf '%-10s %8s %12s %12s %8s %s\n' job round "1 proc ms" "2 ranks ms" ratio "2 ranks: summing gradients"
for job in default gpt2-124m; do
  if [ "$job" = gpt2-124m ] && [ ! -d /tmp/gpt2-124m-random ]; then
    echo "skipping $job: /tmp/gpt2-124m-random not found" >&2
    continue
  fi
  for r in $(seq "$rounds"); do
    rm -rf "$tmp/one" "$tmp/two"
    # shellcheck disable=SC2086 # the flags are words
    "$wick" train --out "$tmp/one" "${quiet[@]}" ${flags[$job]} >/dev/null 2>&1
    # shellcheck disable=SC2086
    share=$(mpirun -np 2 "$wick" train --out "$tmp/two" "${quiet[@]}" ${flags[$job]} 2>/dev/null |
      sed -n 's/^distributed  rank 0 spent .*(\(.*\)) summing gradients/\1/p')
    one=$(ms_per_step "$tmp/one")
    two=$(ms_per_step "$tmp/two")
    printf '%-10s %8s %12s %12s %8.2f %s\n' "$job" "$r" "$one" "$two" "$(echo "$two / $one" | bc -l)" "$share"
  done
done
