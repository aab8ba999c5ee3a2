#!/usr/bin/env bash
# MAML against MAML++ on Omniglot at equal wall-clock time (docs/results.md): each run trains for SECONDS of
# wall-clock time (Ctrl-C from `timeout` saves a checkpoint), validating on the same validation tasks at the end
# of each epoch, then is tested on 600 test tasks (the latest checkpoint, and the ensemble of the 3 best epochs).
# Usage: bash benchmarks/mamlpp_runs.sh RUN [SECONDS]
#   RUN: maml5, mamlpp5 (5-way 1-shot), maml20, mamlpp20 (20-way 1-shot), or an ablation run on 5-way 1-shot
#   with ITERS iterations (default 300): abl_maml, abl_msl, abl_lslr, abl_bn, abl_all.
# Logs: logs/runs/RUN.log and RUN.test.log; outputs under logs/mamlpp/. Needs data/omniglot_resized.
set -uo pipefail
RUN=$1
SECONDS_BUDGET=${2:-1200}
ITERS=${ITERS:-300}
COMMON="--datasource=omniglot --update_batch_size=1 --progress=False"
# MAML++: the authors' Omniglot config (batch 8, 5 steps, LSLR from 0.1, MSL, per-step BN, CA from 0.001 to 1e-5);
# their epochs scaled to the run: MSL anneals over the first tenth, CA over the whole run.
PP="--algorithm=maml++ --meta_batch_size=8 --num_updates=5 --mamlpp_multi_step_loss_num_epochs=1"
OFF="--mamlpp_msl=False --mamlpp_lslr=False --mamlpp_bnrs=False --mamlpp_bnwb=False --mamlpp_ca=False"
ABL="$COMMON --logdir=logs/mamlpp/ablation/ --metatrain_iterations=$ITERS --epoch_iterations=$((ITERS / 5)) --val_tasks=200 --mamlpp_multi_step_loss_num_epochs=1 --algorithm=maml++ --meta_batch_size=8 --num_updates=5"
case $RUN in
  # The original MAML commands (cbfinn/maml README), epochs added for the validation curve.
  maml5)    FLAGS="$COMMON --num_classes=5 --metatrain_iterations=60000 --meta_batch_size=32 --update_lr=0.4 --num_updates=1 --epoch_iterations=300 --val_tasks=200 --logdir=logs/mamlpp/omniglot5/" ;;
  mamlpp5)  FLAGS="$COMMON --num_classes=5 $PP --metatrain_iterations=${ITERS5:-1300} --epoch_iterations=${EPOCH5:-130} --val_tasks=200 --logdir=logs/mamlpp/omniglot5/" ;;
  maml20)   FLAGS="$COMMON --num_classes=20 --metatrain_iterations=60000 --meta_batch_size=16 --update_lr=0.1 --num_updates=5 --epoch_iterations=100 --val_tasks=100 --logdir=logs/mamlpp/omniglot20/" ;;
  mamlpp20) FLAGS="$COMMON --num_classes=20 $PP --metatrain_iterations=${ITERS20:-350} --epoch_iterations=${EPOCH20:-35} --val_tasks=100 --logdir=logs/mamlpp/omniglot20/" ;;
  abl_maml) FLAGS="$ABL $OFF" ;;
  abl_msl)  FLAGS="$ABL $OFF --mamlpp_msl=True" ;;
  abl_lslr) FLAGS="$ABL $OFF --mamlpp_msl=True --mamlpp_lslr=True" ;;
  abl_bn)   FLAGS="$ABL $OFF --mamlpp_msl=True --mamlpp_lslr=True --mamlpp_bnrs=True --mamlpp_bnwb=True" ;;
  abl_all)  FLAGS="$ABL" ;;
  *) echo "unknown run $RUN"; exit 2 ;;
esac
mkdir -p logs/runs
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
timeout -s INT "$SECONDS_BUDGET" python main.py $FLAGS >> "logs/runs/$RUN.log" 2>&1
python main.py $FLAGS --train=False --test_set=True >> "logs/runs/$RUN.test.log" 2>&1
tail -n 12 "logs/runs/$RUN.test.log"
