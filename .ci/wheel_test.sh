#!/usr/bin/env bash
# The release as a user gets it: build the sdist and the wheel, install the wheel into a fresh
# virtual environment outside the repository, and use it from another directory.
#
#   bash .ci/wheel_test.sh          (from anywhere; uses python3 and pip's cache)
#
# Needs: python3 with venv, network or pip cache for the dependencies, and for the experiment
# step an MNIST copy in $TORCHOPT_SURVEY_DATA (skipped, with a note, without one).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK" &' EXIT  # (removing an environment of torch takes a while: not waited for)
PYTHON="${PYTHON:-python3}"
start=$SECONDS
phase() { echo "wheel test: $1 ($((SECONDS - start)) s so far)"; }

# 1. sdist + wheel, built in their own isolated environment (as pip would build them), from a
# copy of the working tree's files (setuptools writes egg-info and build/ beside the sources)
mkdir "$WORK/src"
git -C "$REPO" ls-files -z --cached --others --exclude-standard \
  | tar -C "$REPO" --null --ignore-failed-read -T - -cf - | tar -C "$WORK/src" -xf -
"$PYTHON" -m venv "$WORK/build-env"
"$WORK/build-env/bin/python" -m pip install -q build
"$WORK/build-env/bin/python" -m build --sdist --wheel --outdir "$WORK/dist" "$WORK/src" \
  >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
ls -l "$WORK/dist"
wheel=$(ls "$WORK"/dist/torchopt_survey-*.whl)
sdist=$(ls "$WORK"/dist/torchopt_survey-*.tar.gz)
# what the distributions must carry (and must not)
"$WORK/build-env/bin/python" - "$wheel" "$sdist" <<'PY'
import sys, tarfile, zipfile
wheel = zipfile.ZipFile(sys.argv[1]).namelist()
for needed in ("torchopt_survey/__init__.py", "torchopt_survey/py.typed",
               "torchopt_survey/optim/core/base.py", "torchopt_survey/experiments/__main__.py"):
    assert needed in wheel, f"wheel lacks {needed}"
assert not [n for n in wheel if n.startswith(("tests/", "docs/", "benchmarks/"))], "stray files"
sdist = tarfile.open(sys.argv[2]).getnames()
assert any(n.endswith("/pyproject.toml") for n in sdist), "sdist lacks pyproject.toml"
print(f"wheel: {len(wheel)} files; sdist: {len(sdist)} entries")
PY
phase "built"

# 2. a fresh environment outside the repository, the wheel and its extras from the index
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
install_start=$SECONDS
# --no-compile: no .pyc for torch's thousands of modules at install time (halves the install;
# Python compiles what it imports on first use)
"$WORK/venv/bin/python" -m pip install -q --no-compile -c "$REPO/constraints-ci.txt" "${wheel}[experiments]" \
  2> >(grep -v "^WARNING: Location 'file:" >&2)
echo "wheel test: install took $((SECONDS - install_start)) s"
phase "installed"

# 3. used from another directory: nothing of the checkout may be importable
mkdir "$WORK/elsewhere"
cd "$WORK/elsewhere"
unset PYTHONPATH
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
expected=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO/pyproject.toml" | head -1)
"$WORK/venv/bin/python" - "$REPO" "$expected" <<'PY'
import inspect
import sys
from pathlib import Path

import torch
import torchopt_survey
from torchopt_survey.optim import SurveyOptimizer

repo, expected = Path(sys.argv[1]).resolve(), sys.argv[2]
where = Path(torchopt_survey.__file__).resolve()
assert repo not in where.parents, f"imported from the checkout: {where}"
assert torchopt_survey.__version__ == expected, (torchopt_survey.__version__, expected)
print(f"torchopt_survey {torchopt_survey.__version__} from {where.parent}")

torch.manual_seed(0)
optimizers = [name for name in torchopt_survey.__all__
              if isinstance(getattr(torchopt_survey, name), type)
              and issubclass(getattr(torchopt_survey, name), torch.optim.Optimizer)]
assert len(optimizers) == 14, optimizers
for name in optimizers:
    cls = getattr(torchopt_survey, name)
    model = torch.nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    before = [p.detach().clone() for p in model.parameters()]
    options = {"max_iter": 2} if "max_iter" in inspect.signature(cls).parameters else {}
    opt = cls(model.parameters(), lr=0.1, **options)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    if issubclass(cls, SurveyOptimizer):
        closure()
        opt.step()
    else:  # the second-order methods take a closure, as LBFGS
        opt.step(closure)
    moved = any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert moved, f"{name}: one step changed no parameter"
print(f"one step of each of {len(optimizers)} optimizers: ok")
PY
"$WORK/venv/bin/python" -m torchopt_survey.experiments --help >"$WORK/help.txt"
head -3 "$WORK/help.txt"
phase "imported, stepped, --help"

# 4. a one-epoch experiment on the MNIST copy
if [ -n "${TORCHOPT_SURVEY_DATA:-}" ] && [ -d "$TORCHOPT_SURVEY_DATA/MNIST/raw" ]; then
  # the paper's preset, by name: it must ship inside the wheel
  "$WORK/venv/bin/python" -m torchopt_survey.experiments mnist --config mnist_paper \
    --optimizers sgd --regimes minibatch --epochs 1 --train-subset 2000 --test-subset 500 \
    --seeds 0 --device cpu --threads 1 --quiet \
    --data-dir "$TORCHOPT_SURVEY_DATA" --logdir "$WORK/runs"
  result=$(find "$WORK/runs" -name result.json | head -1)
  [ -n "$result" ] || { echo "wheel test: the experiment wrote no result.json"; exit 1; }
  echo "wheel test: experiment result $(basename "$(dirname "$result")")"
else
  echo "wheel test: no MNIST copy in \$TORCHOPT_SURVEY_DATA: one-epoch experiment skipped"
fi
phase "done"
