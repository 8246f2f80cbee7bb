#!/usr/bin/env bash
# The GPU checks in one command, for a machine with one CUDA device (CI has none).
#
#   bash benchmarks/gpu_checks.sh [tests] [fused] [memory] [vectorized] [sweep]
#                                                               (default: the first four)
#
#   tests       pytest -m cuda (fused Triton kernels vs forloop, per-replica hyperparameters,
#               GradScaler, CUDA graphs, state moves, compact bf16/int8 state inside the
#               Triton kernel vs the general path, second-order methods on CUDA)
#   fused       benchmarks/bench_fused.py --device cuda (ours vs torch fused/foreach, GB/s)
#   memory      benchmarks/bench_memory.py --device cuda (peak memory and step time: fp32,
#               bf16 and int8 state -- the fused ones inside the Triton kernel --, in backward)
#   vectorized  benchmarks/bench_vectorized.py --device cuda (N replicas vs N runs, N = 1..16)
#   sweep       the issue-#10 MNIST sweep at full size, vectorised, fused, on the GPU
#
# Logs, JSON and tables go to $OUT (default ./gpu-out). MNIST is read from
# $TORCHOPT_SURVEY_DATA (a folder holding MNIST/raw). Each stage has its own time limit
# (T_TESTS, T_FUSED, T_MEMORY, T_VEC, T_SWEEP seconds) so one that hangs cannot eat the
# others' time.
set -u
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCHOPT_SURVEY_CACHE_DIR=${TORCHOPT_SURVEY_CACHE_DIR:-$(mktemp -d)}
py=${PYTHON:-python3}
stages=${*:-tests fused memory vectorized}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  $py -c 'import sys, torch, triton; print(sys.version.split()[0], "torch", torch.__version__,
"triton", triton.__version__, torch.cuda.get_device_name())'
  nproc; } 2>&1 | tee "$out/env.txt"

for stage in $stages; do
  start=$(date +%s)
  case $stage in
    tests)
      timeout "${T_TESTS:-240}" $py -m pytest -m cuda -p no:cacheprovider -rfE --tb=short -v \
        tests/optim/core/test_fused_cuda.py tests/optim/core/test_compact_triton.py \
        tests/optim/test_second_order.py >"$out/pytest-cuda.log" 2>&1
      echo "pytest rc=$?"
      grep -E "^(FAILED|ERROR)|passed|failed" "$out/pytest-cuda.log" | tail -30 ;;
    fused)
      timeout "${T_FUSED:-150}" $py benchmarks/bench_fused.py --device cuda --repeats 7 \
        --sizes 10000000 100000000 1000000000 --json "$out/fused-cuda.json" \
        >"$out/bench-fused.log" 2>&1
      echo "bench_fused rc=$?"
      sed -n '/^fused step time/,$p' "$out/bench-fused.log" | tail -80 ;;
    memory)
      timeout "${T_MEMORY:-120}" $py benchmarks/bench_memory.py --device cuda \
        --json "$out/memory-cuda.json" >"$out/bench-memory.log" 2>&1
      echo "bench_memory rc=$?"
      tail -30 "$out/bench-memory.log" ;;
    vectorized)
      timeout "${T_VEC:-90}" $py benchmarks/bench_vectorized.py --device cuda --fused \
        --replicas 1 2 4 8 16 32 --steps 40 --out "$out/vectorized-cuda" 2>&1 | tail -12
      echo "bench_vectorized rc=${PIPESTATUS[0]}" ;;
    sweep)
      # a few seconds' smoke run first: a sweep that cannot start must not eat the stage's time
      if ! timeout 120 $py -m torchopt_survey.experiments sweep --experiment mnist \
          --optimizers sgd adam --lr-grid 1e-3:1e-1:2 --seeds 0 1 --epochs 1 --train-subset 640 \
          --device cuda --fused --vectorize --logdir "$(mktemp -d)" --quiet >"$out/sweep.log" 2>&1
      then echo "sweep smoke run failed"; tail -30 "$out/sweep.log"; continue; fi
      logdir=$(mktemp -d)
      timeout "${T_SWEEP:-400}" $py -m torchopt_survey.experiments sweep --experiment mnist \
        --optimizers all --lr-grid 1e-4:1:7 --seeds 0 1 2 --epochs 10 --device cuda --fused \
        --vectorize --logdir "$logdir" --quiet >"$out/sweep.log" 2>&1
      echo "sweep rc=$?"
      tail -5 "$out/sweep.log"
      # tables, figures and every run's result.json; not the checkpoints or event files
      (cd "$logdir" && find . -name result.json -o -path './sweep/*' -type f |
        tar -czf "$out/sweep-mnist.tgz" -T -) ;;
    *) echo "unknown stage: $stage" >&2 ;;
  esac
  echo "== $stage: $(( $(date +%s) - start )) s"
done
