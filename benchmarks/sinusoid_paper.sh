#!/usr/bin/env bash
# The paper's sinusoid experiments (Finn et al. 2017, Section 5.1), trained and
# tested with main.py. Results go to logs/sine/<experiment>/test_ubs5_stepsize0.01.csv.
# Usage: bash benchmarks/sinusoid_paper.sh [iterations]   (default 70000)
set -euo pipefail
ITERS=${1:-70000}
COMMON="--datasource=sinusoid --logdir=logs/sine/ --norm=None --update_lr=0.01 --progress=False"
# MAML, trained 10-shot, tested 5-shot with 10 steps.
python main.py $COMMON --metatrain_iterations=$ITERS --update_batch_size=10
python main.py $COMMON --metatrain_iterations=$ITERS --update_batch_size=5 --train_update_batch_size=10 --train=False
# Pretrained baseline: plain multi-task training, then fine-tuning at test time.
python main.py $COMMON --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=10
python main.py $COMMON --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=5 --train_update_batch_size=10 --train=False
# Oracle: amplitude and phase given as inputs.
python main.py $COMMON --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=10 --baseline=oracle
python main.py $COMMON --pretrain_iterations=$ITERS --metatrain_iterations=0 --update_batch_size=5 --train_update_batch_size=10 --baseline=oracle --train=False
