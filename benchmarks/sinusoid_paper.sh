#!/usr/bin/env bash
# The paper's sinusoid experiments (Finn et al. 2017, Section 5.1), trained and
# tested with main.py. Results go to logs/sine/<experiment>/test_ubs5_stepsize0.01.csv.
# Usage: bash benchmarks/sinusoid_paper.sh [iterations]   (default 70000)
set -euo pipefail
ITERS=${1:-70000}
ONLY=${2:-all}  # all, maml or baselines
COMMON="--datasource=sinusoid --norm=None --update_lr=0.01 --progress=False"
# The original folder name ignores --pretrain_iterations: each baseline gets its own --logdir.
# MAML, trained 10-shot, tested 5-shot with 10 steps.
if [ "$ONLY" != baselines ]; then
python main.py $COMMON --logdir=logs/sine/ --metatrain_iterations=$ITERS --update_batch_size=10
python main.py $COMMON --logdir=logs/sine/ --metatrain_iterations=$ITERS --update_batch_size=5 --train_update_batch_size=10 --train=False
fi
[ "$ONLY" = maml ] && exit 0
# Pretrained baseline: plain multi-task training, then fine-tuning at test time.
python main.py $COMMON --logdir=logs/sine_pretrained/ --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=10
python main.py $COMMON --logdir=logs/sine_pretrained/ --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=5 --train_update_batch_size=10 --train=False
# Oracle: amplitude and phase given as inputs.
python main.py $COMMON --logdir=logs/sine_oracle/ --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=10 --baseline=oracle
python main.py $COMMON --logdir=logs/sine_oracle/ --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=5 --train_update_batch_size=10 --baseline=oracle --train=False
