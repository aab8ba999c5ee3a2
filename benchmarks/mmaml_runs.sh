#!/usr/bin/env bash
# MMAML's regression table (docs/results.md): MAML, Multi-MAML and MMAML on 2, 3 and 5 modes, the authors' settings
# (vuoristo/MMAML-Regression's README commands): 5 support and 5 query points, noise 0.3, 3 x 100 network without
# normalisation, 5 inner steps of 0.001, meta-batches of 25 tasks per mode. Trains ITERS iterations (default 10000;
# the authors: 70000), then tests on 600 tasks (TEST_ONLY=1: only the test). MMAML trains XLA-compiled
# (--jit_compile=True: the same results up to rounding, several times faster on a CPU; benchmarks/README.md).
# Usage: bash benchmarks/mmaml_runs.sh RUN
#   RUN: {maml,multimaml,mmaml}{2,3,5}. multimaml: one MAML per mode, told the mode (--task_mode=k), each trained
#        on 25 tasks of its mode per batch and tested on its mode's tasks; summarize_mmaml.py pools the modes.
#        MAML and Multi-MAML clip the meta-gradient to norm 2 (--clip_norm=2), as the authors' baselines
#        (CLIP=0: the original MAML's unclipped update; MMAML clips its own, --mmaml_clip_norm).
# Logs: logs/runs/RUN[.k].log and .test.log; outputs under logs/mmaml/.
set -uo pipefail
RUN=$1
ITERS=${ITERS:-10000}
MODES=${RUN: -1}
COMMON="--datasource=multimodal_regression --num_modes=$MODES --norm=None --num_updates=5 --update_lr=0.001
        --update_batch_size=5 --metatrain_iterations=$ITERS --progress=False --logdir=logs/mmaml/"
case $RUN in
  maml?)      JOBS=("--algorithm=maml --meta_batch_size=$((25 * MODES)) --clip_norm=${CLIP:-2}") ;;
  multimaml?) JOBS=(); for k in $(seq 0 $((MODES - 1))); do JOBS+=("--algorithm=maml --meta_batch_size=25 --task_mode=$k --clip_norm=${CLIP:-2}"); done ;;
  mmaml2)     JOBS=("--algorithm=mmaml --meta_batch_size=50 --mmaml_modulated_layers=1 --jit_compile=True") ;;  # Their 2-mode command.
  mmaml3|mmaml5) JOBS=("--algorithm=mmaml --meta_batch_size=$((25 * MODES)) --jit_compile=True") ;;
  *) echo "unknown run $RUN"; exit 2 ;;
esac
mkdir -p logs/runs
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
for i in "${!JOBS[@]}"; do
  NAME=$RUN; [ ${#JOBS[@]} -gt 1 ] && NAME=$RUN.$i
  [ "${TEST_ONLY:-0}" = 1 ] || python main.py $COMMON ${JOBS[$i]} >> "logs/runs/$NAME.log" 2>&1
  python main.py $COMMON ${JOBS[$i]} --train=False >> "logs/runs/$NAME.test.log" 2>&1
  tail -n 14 "logs/runs/$NAME.test.log"
done
