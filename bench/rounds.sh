#!/usr/bin/env bash
# The CPU benches against PyTorch in interleaved rounds, for a shared machine whose
# single runs move by 1.3x or more: each round runs norm (1 and 2 threads), conv
# (2 threads) and block (1 and 2 threads), diffrl then torch, back to back; then
# bench/rounds_summary.py prints the fastest of each side over all rounds and
# their ratio. Raw outputs stay in DIR.
#
#   bench/rounds.sh [ROUNDS] [DIR]      (default 8 rounds, /tmp/diffrl-rounds)
#
# Needs build/diffrl and PyTorch (pip install torch numpy). OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE are unset here only (bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-8}
dir=${2:-/tmp/diffrl-rounds}
mkdir -p "$dir"
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
for r in $(seq "$rounds"); do
  echo "round $r of $rounds" >&2
  for t in 2 1; do
    build/diffrl run bench/norm_bench.lua "$t" 20 > "$dir/norm_ours_${t}_$r.txt"
    python3 bench/norm_bench_torch.py "$t" 20 > "$dir/norm_torch_${t}_$r.txt"
  done
  build/diffrl run bench/conv_bench.lua 2 10 > "$dir/conv_ours_2_$r.txt"
  python3 bench/conv_bench_torch.py 2 10 > "$dir/conv_torch_2_$r.txt"
  build/diffrl run bench/block_bench.lua 2 15 > "$dir/block_2_$r.txt"
  build/diffrl run bench/block_bench.lua 1 9 > "$dir/block_1_$r.txt"
done
python3 bench/rounds_summary.py "$dir"
