#!/usr/bin/env bash
# Idempotent environment setup: system packages (when root), a .venv, and pinned wheels.
# torch is ALWAYS pinned in the same pip command (an unpinned torch pulls several GB of CUDA wheels).
set -euo pipefail
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
STAMP="$VENV/.setup-stamp"
HASH=$(cat scripts/setup.sh pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  echo "setup: up to date ($VENV)"; exit 0
fi
APT_PKGS="libopenmpi-dev openmpi-bin slurm-wlm munge libhdfeos-dev libgctp-dev libhdf4-dev"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: WARNING not root, cannot install:$missing (MPI/Slurm/HDF-EOS tests will fail under CI=true)" >&2
  fi
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
. "$VENV/bin/activate"
pip install -q -U pip
pip install -q torch==2.13.0
pip install -q torch==2.13.0 triton==3.7.1 numpy
python -c "import deepspeed" 2>/dev/null || pip install -q --no-build-isolation torch==2.13.0 deepspeed==0.19.8
pip install -q torch==2.13.0 webdataset==1.0.2 mpi4py xarray h5netcdf netCDF4 h5py pyhdf==0.11.7 \
    submitit nvidia-dali-cuda130==2.4.0 pyyaml matplotlib tensorboard tqdm pytest pytest-timeout
# Himawari Standard Data is read with satpy's ahi_hsd reader; pyresample gives the geostationary area.
pip install -q torch==2.13.0 satpy==0.60.0 pyresample zarr threadpoolctl
# ccplot (CloudSat/CALIPSO HDF-EOS client) is used by tests to open our synthetic swaths like real ones.
python -c "import ccplot" 2>/dev/null || { pip install -q cython && pip install -q --no-build-isolation ccplot; } || echo "setup: WARNING ccplot did not build" >&2
pip install -q --no-deps -e .
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$HASH" > "$STAMP"
echo "setup: done ($VENV)"
