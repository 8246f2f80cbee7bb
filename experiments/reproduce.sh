#!/usr/bin/env bash
# Reproduce both survey experiments end to end with the paper settings and write the committed
# figures/tables into experiments/results/. Restartable: rerun it and finished runs are skipped.
#
#   bash experiments/reproduce.sh            # 2 worker processes, 1 thread each
#   WORKERS=1 bash experiments/reproduce.sh  # one core
#
# MNIST: preset `mnist_paper` with seeds 0 1 2 (GD, batch-1 SGD and batch-64 for every
# optimizer); Karate: preset `karate_paper` (10 seeds = 10 edge splits, both models).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
LOGDIR=${LOGDIR:-runs/paper}
WORKERS=${WORKERS:-2}
start=$SECONDS
python -m torchopt_survey.experiments all \
  --config mnist_paper --config karate_paper \
  --set mnist.seeds=[0,1,2] --workers "$WORKERS" --threads 1 --logdir "$LOGDIR" --resume "$@"
echo "suite wall time: $((SECONDS - start)) s with $WORKERS workers" | tee "$LOGDIR/suite_time.txt"
python -m torchopt_survey.experiments report --logdir "$LOGDIR" --out experiments/results
