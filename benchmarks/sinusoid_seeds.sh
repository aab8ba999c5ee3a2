#!/usr/bin/env bash
# MAML on the paper's sinusoid (70,000 iterations, 10-shot training, 5-shot test with 10 steps) at both inner
# step sizes and several seeds; two runs at a time. Then: python benchmarks/summarize_sinusoid.py
# Usage: bash benchmarks/sinusoid_seeds.sh [iterations] [seeds...]   (defaults: 70000, seeds 0 1 2)
set -uo pipefail
ITERS=${1:-70000}
shift || true
SEEDS=${*:-0 1 2}
run() {  # alpha seed
  local dir=logs/sine_seeds/alpha$1_seed$2
  python main.py --norm=None --update_lr=$1 --seed=$2 --update_batch_size=10 --metatrain_iterations=$ITERS --logdir=$dir > $dir.train.log 2>&1
  python main.py --norm=None --update_lr=$1 --seed=$2 --update_batch_size=5 --train_update_batch_size=10 --metatrain_iterations=$ITERS --logdir=$dir --train=False > $dir.test.log 2>&1
}
mkdir -p logs/sine_seeds
for seed in $SEEDS; do
  run 0.001 $seed &
  run 0.01 $seed &
  wait
done
