#!/usr/bin/env bash
# Peak memory and time per meta-iteration of second-order MAML on Omniglot 20-way 1-shot (synthetic pixels, the
# omniglot20 preset: meta-batch 16, 64 filters) with 5, 10, 20 and 50 inner steps, with and without
# --recompute_inner_steps (benchmarks/README.md). One process per case; TensorFlow's BFC allocator on the CPU, so
# that the peak memory of the tensors during the timed steps is counted (`peak_tensors_gb`).
# Usage: bash benchmarks/recompute_memory.sh [OUT]   (default benchmarks/results/recompute_memory-cpu.jsonl)
set -uo pipefail
export TF_CPU_ALLOCATOR_USE_BFC=true
OUT=${1:-benchmarks/results/recompute_memory-cpu.jsonl}
: > "$OUT"
for steps in 5 10 20 50; do
  for recompute in False True; do
    python benchmarks/bench_meta_iteration.py --preset=omniglot20 --iterations=${ITERATIONS:-3} --warmup=1 \
      --set=num_updates=$steps,recompute_inner_steps=$recompute | tail -n 1 >> "$OUT"
    tail -n 1 "$OUT"
  done
done
