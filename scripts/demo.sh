#!/usr/bin/env bash
# The main job on the embedded default: a small synthetic archive -> benchmark shards -> statistics.
set -euo pipefail
OUT=${1:-demo_out}
. .venv/bin/activate
echo "== 1. synthetic archive (real formats: P-Tree NetCDF + HDF-EOS2 2B-CLDCLASS-LIDAR)"
sgmagnet synth --out "$OUT/archive" --start 2018-10-01 --days 6 --region 125,145,-40,40 --res 0.05 --seed 0 --quiet
echo "== 2. collocation -> WebDataset shards (2 MPI ranks)"
rm -rf "$OUT/shards"
mpirun --allow-run-as-root --oversubscribe -n 2 sgmagnet build --ahi "$OUT/archive/ahi" \
  --cloudsat "$OUT/archive/cloudsat" --out "$OUT/shards" --patch-size 64 --min-labelled 32 \
  --split-days 2,1,1 --gap-days 1 --quiet
echo "== 3. inspect"
sgmagnet inspect "$OUT/shards" --verify
