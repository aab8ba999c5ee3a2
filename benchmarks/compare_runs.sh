#!/bin/bash
# The side-by-side comparisons of docs/results.md ("The original code side by side"): the 10-shot sinusoid,
# 70,000 iterations, and Omniglot 5-way 1-shot, 2,000 iterations, each program in lockstep with the other.
# Usage: bash benchmarks/compare_runs.sh [ORIGINAL_DIR]   (default ../shared/original/cbfinn-maml)
# Outputs: logs/compare/{sinusoid10,omniglot5w1s}/ (report.md, report.json, curves.png), logs/compare_*.log.
set -e
ORIG=${1:-../shared/original/cbfinn-maml}
TFDS=${TFDS_DIR:-../shared/data/tfds}
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1 TF_CPP_MIN_LOG_LEVEL=2
mkdir -p logs
python -m maml_tf.compare --original_dir="$ORIG" --out=logs/compare/sinusoid10 --datasource=sinusoid --norm=None \
  --update_batch_size=10 --metatrain_iterations=70000 --iterations=70000 --batch_tasks=False \
  > logs/compare_sinusoid.log 2>&1
python -m maml_tf.compare --original_dir="$ORIG" --out=logs/compare/omniglot5w1s --datasource=omniglot \
  --omniglot_source=tfds --tfds_data_dir="$TFDS" --meta_batch_size=32 --update_batch_size=1 --update_lr=0.4 \
  --num_updates=1 --metatrain_iterations=2000 --iterations=2000 --val_interval=100 --batch_tasks=False \
  > logs/compare_omniglot.log 2>&1
