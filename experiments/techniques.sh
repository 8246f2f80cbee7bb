#!/usr/bin/env bash
# The second survey's §V techniques: vanishing/exploding gradients and overfitting studies,
# then the report (figures, tables, claim verdicts) into experiments/results/techniques/.
# Restartable: every command resumes finished/interrupted runs (--resume).
set -euo pipefail
LOGDIR=${LOGDIR:-runs/techniques}
OUT=${OUT:-experiments/results/techniques}
WORKERS=${WORKERS:-2}
run() {
    python -m torchopt_survey.experiments mnist --quiet --resume --workers "$WORKERS" \
        --threads 1 --logdir "$LOGDIR" "$@"
}
# §V.A vanishing gradients: deep narrow tanh and sigmoid MLPs (preset `mnist_deep`).
for act in tanh sigmoid; do
    deep=(--config mnist_deep --set activation=$act)
    run "${deep[@]}" --set name=deep-$act-default
    run "${deep[@]}" --set name=deep-$act-xavier --set init=xavier_normal
    run "${deep[@]}" --set name=deep-$act-he --set init=kaiming_normal
    run "${deep[@]}" --set name=deep-$act-batchnorm --set norm=batch
    run "${deep[@]}" --set name=deep-$act-layernorm --set norm=layer
done
# Exploding gradients: the same depth with ReLU and He init at twice the gain.
explode=(--config mnist_deep --set activation=relu --set init=kaiming_normal
         --set init_gain=2.0)
run "${explode[@]}" --set name=explode-noclip
run "${explode[@]}" --set name=explode-clip --set clip_grad_norm=1.0
run "${explode[@]}" --set name=explode-batchnorm --set norm=batch
run "${explode[@]}" --set name=explode-layernorm --set norm=layer
# §V.C overfitting: small training set, wide ReLU MLP (preset `mnist_overfit`).
over=(--config mnist_overfit)
run "${over[@]}" --set name=overfit-none
run "${over[@]}" --set name=overfit-l1 --set l1=1e-4
run "${over[@]}" --set name=overfit-l1-strong --set l1=1e-3
run "${over[@]}" --set name=overfit-l2 --set l2=5e-3
run "${over[@]}" --set name=overfit-l2-strong --set l2=5e-2
run "${over[@]}" --set name=overfit-dropout --set dropout=0.5
run "${over[@]}" --set name=overfit-early --set early_stopping=10
python -m torchopt_survey.experiments report --logdir "$LOGDIR" --out "$OUT"
