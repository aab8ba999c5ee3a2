#!/usr/bin/env bash
# The Omniglot 5-way runs of the README's results, each trained for a wall-clock budget, then tested on
# 600 tasks of the test characters. Ctrl-C (sent by `timeout`) saves a checkpoint; the test restores the latest.
# Usage: bash benchmarks/omniglot_runs.sh RUN [SECONDS]   (RUN: maml, fomaml, llama, mmaml, reptile1, reptile5, imaml_gd,
#        imaml_hf; default 3600 s). ITERS caps MAML's, LLAMA's and MMAML's iterations (default 60000).
#        Logs: logs/runs/RUN.log. Needs data/omniglot_resized (data/prepare_omniglot.py).
set -uo pipefail
RUN=$1
SECONDS_BUDGET=${2:-3600}
COMMON="--datasource=omniglot --num_classes=5 --progress=False"
case $RUN in
  maml)     FLAGS="--metatrain_iterations=${ITERS:-60000} --meta_batch_size=32 --update_batch_size=1 --update_lr=0.4 --num_updates=1 --logdir=logs/omniglot5way/" ;;
  fomaml)   FLAGS="--metatrain_iterations=${ITERS:-60000} --meta_batch_size=32 --update_batch_size=1 --update_lr=0.4 --num_updates=1 --stop_grad=True --logdir=logs/omniglot5way/" ;;
  llama)    FLAGS="--algorithm=llama --metatrain_iterations=${ITERS:-60000} --meta_batch_size=32 --update_batch_size=1 --update_lr=0.4 --num_updates=1 --logdir=logs/omniglot5way/" ;;
  mmaml)    FLAGS="--algorithm=mmaml --metatrain_iterations=${ITERS:-60000} --meta_batch_size=32 --update_batch_size=1 --update_lr=0.4 --num_updates=1 --logdir=logs/omniglot5way/" ;;
  reptile1) FLAGS="--algorithm=reptile --update_batch_size=1 --reptile_inner_batch=10 --reptile_inner_iters=5 --reptile_meta_step=1 --meta_batch_size=5 --metatrain_iterations=${REPTILE_ITERS:-3000} --reptile_eval_batch=5 --reptile_eval_iters=50 --reptile_learning_rate=0.001 --reptile_meta_step_final=0 --reptile_train_shots=10 --logdir=logs/reptile/" ;;
  reptile5) FLAGS="--algorithm=reptile --update_batch_size=5 --reptile_train_shots=10 --reptile_inner_batch=10 --reptile_inner_iters=5 --reptile_learning_rate=0.001 --reptile_meta_step=1 --reptile_meta_step_final=0 --meta_batch_size=5 --metatrain_iterations=${REPTILE_ITERS:-3000} --reptile_eval_batch=5 --reptile_eval_iters=50 --logdir=logs/reptile/" ;;
  imaml_gd) FLAGS="--algorithm=imaml --update_batch_size=1 --meta_batch_size=32 --meta_lr=0.001 --imaml_lam=2 --imaml_n_steps=16 --imaml_inner_lr=0.1 --imaml_cg_steps=5 --metatrain_iterations=20000 --logdir=logs/imaml/" ;;
  imaml_hf) FLAGS="--algorithm=imaml --imaml_solver=hessian_free --update_batch_size=1 --meta_batch_size=32 --meta_lr=0.001 --imaml_lam=2 --imaml_n_steps=4 --imaml_hf_cg_steps=5 --imaml_cg_steps=5 --metatrain_iterations=20000 --logdir=logs/imaml/" ;;
  *) echo "unknown run $RUN"; exit 2 ;;
esac
mkdir -p logs/runs
timeout -s INT "$SECONDS_BUDGET" python main.py $COMMON $FLAGS >> "logs/runs/$RUN.log" 2>&1
python main.py $COMMON $FLAGS --train=False --test_set=True >> "logs/runs/$RUN.test.log" 2>&1
if [[ $RUN == reptile* ]]; then
  python main.py $COMMON $FLAGS --train=False --test_set=True --reptile_transductive=True >> "logs/runs/$RUN.test.log" 2>&1
fi
tail -n 3 "logs/runs/$RUN.test.log"
