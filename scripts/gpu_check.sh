#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command: the step limits add up to 555 s (under the device tool's 600 s per call).
# Runs with the machine's own python3 (PyTorch + Triton, no network, nothing installed; PYTHONPATH=.):
#   1. the kernel tests natively on CUDA against the PyTorch references (pytest, or the stand-in runner), with
#      the loss op under torch.compile(fullgraph) and a CUDA graph
#      (scripts/compile_kernels.py compiles every kernel variant for sm_90 on any machine; `make test` runs it)
#   2. kernels/bench/bench_gated_loss.py on the compact, permuted and dense layouts (do_bench and
#      do_bench_cudagraph, >= 50 calls) and bench_gated_softmax.py, rows stamped with git describe
#   3. hpc/bench/train_step.py: SGMAGNet's column path eager and as CUDA graphs, bf16 + the Triton loss, over a
#      batch sweep (stops at the first batch that does not fit), at demo size and at paper size (MFU column)
#   4. hpc/bench/profile_step.py --summary: the profile summary of the captured step (busy fraction, launches)
#   5. hpc/bench/predict_writer.py on CUDA, where netCDF4 is installed (else a recorded skip)
# Only python3 + torch + triton are assumed: every script here imports nothing else on these paths
# (tests/test_gpu_check.py runs them with numpy, PyYAML, matplotlib and netCDF4 hidden). The roofline figure is
# drawn afterwards, anywhere: python kernels/bench/roofline.py bench_results/gpu/kernels.csv
# Writes CSV rows (GPU name, torch/triton versions) and a log to $OUT, or bench_results/gpu/ when unset.
# Through the device tool:  run(command="make gpu-check")  -> commit the CSVs under bench_results/gpu/.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-bench_results/gpu}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
unset TRITON_INTERPRET
LOG="$DEST/gpu_check.log"
: > "$LOG"
status=0
step() {   # step NAME SECONDS CMD...: run with a time limit, log it, remember a failure
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$LOG"
  [ "$rc" = 0 ] || status=1
}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device visible to $PY (run it on the lent GPU machine)" | tee -a "$LOG" >&2
  exit 2
fi
"$PY" -c "import torch, triton; print('device', torch.cuda.get_device_name(), '| torch', torch.__version__, '| triton', triton.__version__)" | tee -a "$LOG"
step kernel-tests 100 "$PY" scripts/kernel_tests.py
step bench-loss-bf16 80 "$PY" kernels/bench/bench_gated_loss.py --dtype bf16 --batches 8,32 --densities 0.01 \
    --layouts compact,permuted,dense --csv "$DEST/kernels.csv"
step bench-softmax 40 "$PY" kernels/bench/bench_gated_softmax.py --dtype bf16 --batches 16,32 --csv "$DEST/kernels.csv"
step train-step-compile 170 "$PY" hpc/bench/train_step.py --device cuda --models sgmagnet --patch 128 --paths columns \
    --compile none,graphs --batch-sweep 8,64,256 --steps 10 --warmup 3 --bf16 --loss triton --csv "$DEST/train_step.csv"
step train-step-paper 80 "$PY" hpc/bench/train_step.py --device cuda --models sgmagnet --size paper --patch 128 \
    --paths columns --compile none,graphs --batch-sweep 32 --steps 10 --warmup 3 --bf16 --loss triton \
    --csv "$DEST/train_step.csv"
step profile-graphs 50 "$PY" hpc/bench/profile_step.py --device cuda --model sgmagnet --patch 128 --batch 64 \
    --mode train-columns --compile graphs --bf16 --summary "$DEST/profile"
if "$PY" -c "import netCDF4, numpy" 2>/dev/null; then
  step predict-writer 35 "$PY" hpc/bench/predict_writer.py --device cuda --size 1024 --batch 32 --bf16 --repeats 1 \
      --work "$DEST/predict_writer"
else
  echo "== predict-writer: skipped (netCDF4/numpy not installed on this machine; the CPU figure is in docs/kernels.md)" | tee -a "$LOG"
fi
echo "gpu-check: $( [ $status = 0 ] && echo all steps passed || echo SOME STEPS FAILED ) -> $DEST" | tee -a "$LOG"
exit $status
