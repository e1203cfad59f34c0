#!/usr/bin/env bash
# GPU check: bench/gpu_check.sh [OUT.json]   (or `make gpu-check`; default OUT: bench/gpu_check.json)
#
# On a machine with one CUDA GPU and a fresh checkout: `make install` (whatever is missing), `pytest -m gpu`
# (the CuPy kernels against their references, forward and backward, fp32/fp16/bf16/fp64), then the kernel
# benchmarks at PDVC's and Deformable DETR's shapes, faiss-gpu if a wheel installs, and one epoch of CM2
# training steps on GPU vs CPU. Every step runs under its own `timeout` (the limits add up to < 8 minutes) and
# is recorded in the one JSON file as ok / skipped (with the reason) / failed (with the error line); without a
# GPU the GPU steps are skipped, "no CUDA GPU". The format of the file: README, Performance, GPU check.
#
# Environment: GPU_CHECK_FAST=1 skips `make install`, pytest and faiss-gpu and keeps every shape tiny (the
# CPU test's mode: a smoke run, not measurements);
# GPU_CHECK_FAISS=0 does not try to install faiss-gpu; OMP_NUM_THREADS (default 1) for the CPU rows.
# Exit status: 0 when no step failed, 1 otherwise (the JSON is written either way).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/gpu_check.json}
FAST=${GPU_CHECK_FAST:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-${OMP_NUM_THREADS:-1}}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=.venv/bin/python
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
STARTED=$(date +%s.%N)
FASTFLAG=""; [ "$FAST" = 1 ] && FASTFLAG="--fast"

# Per-step limits in seconds: 435 s, with the faiss-gpu install 465 s, and ~15 s of bookkeeping: < 8 min.
# A fresh venv (torch, CuPy) may download for longer than 2 minutes: GPU_CHECK_INSTALL_LIMIT raises that one
# limit (everything after install is bounded by 345 s).
declare -A LIMIT=([install]=${GPU_CHECK_INSTALL_LIMIT:-120} [pytest_gpu]=90 [msda_cpu]=40 [msda_gpu]=40
                  [topk_cpu]=40 [topk_gpu]=25 [faiss_gpu]=20 [cm2_train_cpu]=35 [cm2_train_gpu]=25)
FAISS_INSTALL_LIMIT=30  # tried only on a GPU machine

say() { echo "gpu-check: $*"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }'; }
skip() { "$PY" -m bench.gpu_check skip "$1" --part "$WORK/$1.json" --reason "$2"; }
# run_step NAME CMD...: run CMD under the step's timeout, then record its status (and pytest's counts).
run_step() {
  local name=$1; shift
  local t0 rc
  say "$name (limit ${LIMIT[$name]} s)"
  t0=$(date +%s.%N)
  timeout --kill-after=10 "${LIMIT[$name]}" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  tail -n 5 "$WORK/$name.log" | sed "s/^/  [$name] /"
  "$PY" -m bench.gpu_check record "$name" --part "$WORK/$name.json" --rc "$rc" --log "$WORK/$name.log" \
    --seconds "$(elapsed "$t0")" --limit "${LIMIT[$name]}" \
    ${JUNIT:+--junit "$JUNIT"}
}
measure() { run_step "$1" "$PY" -m bench.gpu_check step "$1" --part "$WORK/$1.json" $FASTFLAG; }

# 1. install
if [ "$FAST" = 1 ]; then
  [ -x "$PY" ] || { echo "gpu-check: GPU_CHECK_FAST=1 needs an installed $PY (make install)" >&2; exit 1; }
  skip install "fast mode (GPU_CHECK_FAST=1)"
else
  # The recorder needs a Python; before the venv exists, record install's result once it does.
  t0=$(date +%s.%N)
  timeout --kill-after=10 "${LIMIT[install]}" make install >"$WORK/install.log" 2>&1
  rc=$?
  tail -n 5 "$WORK/install.log" | sed "s/^/  [install] /"
  if [ ! -x "$PY" ]; then
    echo "gpu-check: make install failed (exit $rc) before creating $PY; see above" >&2
    exit 1
  fi
  "$PY" -m bench.gpu_check record install --part "$WORK/install.json" --rc "$rc" --log "$WORK/install.log" \
    --seconds "$(elapsed "$t0")" --limit "${LIMIT[install]}"
fi

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  GPU=1; say "CUDA GPU: $("$PY" -c 'import torch; print(torch.cuda.get_device_name())')"
else
  GPU=0; say "no CUDA GPU: the GPU steps are skipped (recorded as skipped, \"no CUDA GPU\")"
fi

# 2. the GPU tests
if [ "$GPU" = 0 ]; then
  skip pytest_gpu "no CUDA GPU"
elif [ "$FAST" = 1 ]; then
  skip pytest_gpu "fast mode (GPU_CHECK_FAST=1): run pytest -m gpu by itself"
else
  JUNIT="$WORK/pytest_gpu.xml" run_step pytest_gpu "$PY" -m pytest -m gpu -q -p no:cacheprovider \
    --junitxml="$WORK/pytest_gpu.xml"
fi

# 3. kernels, CPU baselines then GPU
for step in msda topk; do
  measure "${step}_cpu"
  if [ "$GPU" = 1 ]; then measure "${step}_gpu"; else skip "${step}_gpu" "no CUDA GPU"; fi
done

# 4. faiss-gpu: never required; installed (into a scratch folder, not the venv) only on a GPU machine.
if [ "$GPU" = 0 ]; then
  skip faiss_gpu "no CUDA GPU"
elif [ "$FAST" = 1 ]; then
  skip faiss_gpu "fast mode (GPU_CHECK_FAST=1)"
elif [ "${GPU_CHECK_FAISS:-1}" = 0 ]; then
  skip faiss_gpu "not tried (GPU_CHECK_FAISS=0)"
elif ! timeout "$FAISS_INSTALL_LIMIT" "$PY" -m pip install -q --no-deps --target "$WORK/faiss" \
       faiss-gpu-cu12 >"$WORK/faiss_install.log" 2>&1; then
  why=$(grep -v '^\s*$' "$WORK/faiss_install.log" | tail -n 1 | cut -c1-300)
  skip faiss_gpu "no faiss-gpu wheel installed: ${why:-pip failed or timed out}"
elif ! PYTHONPATH="$WORK/faiss:$PYTHONPATH" "$PY" -c 'import faiss; faiss.StandardGpuResources()' \
       >"$WORK/faiss_import.log" 2>&1; then
  skip faiss_gpu "faiss-gpu installed but does not load: $(tail -n 1 "$WORK/faiss_import.log" | cut -c1-300)"
else
  PYTHONPATH="$WORK/faiss:$PYTHONPATH" measure faiss_gpu
fi

# 5. CM2 training steps, CPU then GPU
measure cm2_train_cpu
if [ "$GPU" = 1 ]; then measure cm2_train_gpu; else skip cm2_train_gpu "no CUDA GPU"; fi

mkdir -p "$(dirname "$OUT")"
"$PY" -m bench.gpu_check assemble "$WORK" "$OUT" $FASTFLAG --started "$STARTED"
