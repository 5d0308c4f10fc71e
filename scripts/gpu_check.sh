#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one command, within 9 minutes.
# Runs with the machine's own python3 (PyTorch + Triton, no network, nothing installed; PYTHONPATH=.):
#   1. the kernel tests natively on CUDA against the PyTorch references (pytest, or the stand-in runner)
#      (scripts/compile_kernels.py compiles every kernel variant for sm_90 on any machine; `make test` runs it)
#   2. kernels/bench/bench_gated_loss.py and bench_gated_softmax.py (bf16 and fp32 rows)
#   3. hpc/bench/train_step.py on CUDA at 128 px, dense and column paths: fp32, and bf16 with the fused Triton loss
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
step kernel-tests 150 "$PY" scripts/kernel_tests.py
step bench-loss-bf16 110 "$PY" kernels/bench/bench_gated_loss.py --dtype bf16 --csv "$DEST/kernels.csv"
step bench-loss-fp32 60 "$PY" kernels/bench/bench_gated_loss.py --dtype fp32 --batches 16 --csv "$DEST/kernels.csv"
step bench-softmax 60 "$PY" kernels/bench/bench_gated_softmax.py --dtype bf16 --csv "$DEST/kernels.csv"
step train-step-fp32 100 "$PY" hpc/bench/train_step.py --device cuda --patch 128 --paths dense,columns --batch 8 \
    --steps 5 --warmup 2 --csv "$DEST/train_step.csv"
step train-step-bf16-triton 100 "$PY" hpc/bench/train_step.py --device cuda --patch 128 --paths dense,columns --batch 8 \
    --steps 5 --warmup 2 --bf16 --loss triton --csv "$DEST/train_step.csv"
echo "gpu-check: $( [ $status = 0 ] && echo all steps passed || echo SOME STEPS FAILED ) -> $DEST" | tee -a "$LOG"
exit $status
