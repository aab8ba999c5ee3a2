#!/usr/bin/env bash
# BMAML, EMAML, PLATIPUS, LLAMA and MAML on regression (docs/results.md): train ITERS iterations (default 15000), then
# test on 600 tasks (the MSE table, the predictive measures in test_*.uncertainty.json, the samples figure).
# Usage: bash benchmarks/bayesian_runs.sh RUN
#   RUN: {bmaml,emaml,maml,platipus,llama,llama_eta0_}{5,10} on --datasource=bmaml_sinusoid (K = 5 or 10),
#        bmaml_authors5 (BMAML with the authors' halved SVGD repulsion, --bmaml_repulsion=0.5), or
#        sl_{bmaml,emaml,maml,platipus,llama,llama_eta0} on --datasource=sine_line (PLATIPUS's ambiguous sines and
#        lines, K = 5). llama_eta0: LLAMA's network and schedule with eta = 0, i.e. MAML, with Laplace samples.
# Logs: logs/runs/RUN.log and RUN.test.log; outputs under logs/bayesian/.
set -uo pipefail
RUN=$1
ITERS=${ITERS:-15000}
COMMON="--norm=None --meta_batch_size=10 --metatrain_iterations=$ITERS --progress=False"
# BMAML's sinusoid config (jsikyoon/bmaml): 10 particles, 1 chaser and 1 leader SVGD step of 1e-3, meta-batch 10,
# meta step size 1e-3 decayed; EMAML alike with SGD steps of 1e-3. MAML is EMAML with one particle (exactly MAML on
# the same network) with the original sinusoid step size 0.01; PLATIPUS and LLAMA adapt as MAML.
case $RUN in
  bmaml5|bmaml10)       ALGO="--algorithm=bmaml" ;;
  bmaml_authors5)       ALGO="--algorithm=bmaml --bmaml_repulsion=0.5" ;;
  emaml5|emaml10)       ALGO="--algorithm=emaml" ;;
  maml5|maml10)         ALGO="--algorithm=emaml --emaml_num_particles=1 --update_lr=0.01" ;;
  platipus5|platipus10) ALGO="--algorithm=platipus --update_lr=0.01" ;;
  llama5|llama10)             ALGO="--algorithm=llama --update_lr=0.01" ;;
  llama_eta0_5|llama_eta0_10) ALGO="--algorithm=llama --llama_eta=0 --update_lr=0.01" ;;
  sl_bmaml)    ALGO="--algorithm=bmaml" ;;
  sl_emaml)    ALGO="--algorithm=emaml" ;;
  sl_maml)     ALGO="--algorithm=emaml --emaml_num_particles=1 --update_lr=0.01" ;;
  sl_platipus) ALGO="--algorithm=platipus --update_lr=0.01" ;;
  sl_llama)    ALGO="--algorithm=llama --update_lr=0.01" ;;
  sl_llama_eta0) ALGO="--algorithm=llama --llama_eta=0 --update_lr=0.01" ;;
  *) echo "unknown run $RUN"; exit 2 ;;
esac
case $RUN in
  sl_*) DATA="--datasource=sine_line --update_batch_size=5 --logdir=logs/bayesian/sine_line/" ;;
  *5)   DATA="--datasource=bmaml_sinusoid --update_batch_size=5 --logdir=logs/bayesian/sinusoid5/" ;;
  *10)  DATA="--datasource=bmaml_sinusoid --update_batch_size=10 --logdir=logs/bayesian/sinusoid10/" ;;
esac
mkdir -p logs/runs
export TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
python main.py $COMMON $DATA $ALGO >> "logs/runs/$RUN.log" 2>&1
python main.py $COMMON $DATA $ALGO --train=False >> "logs/runs/$RUN.test.log" 2>&1
tail -n 12 "logs/runs/$RUN.test.log"
