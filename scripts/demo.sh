#!/usr/bin/env bash
# The main job on the embedded default (sgmagnet/demo.py): a small synthetic archive -> benchmark shards
# (2 MPI ranks) -> train SGMAGNet and the UNet baseline briefly -> evaluate on the held-out test days ->
# side-by-side table and pictures.
set -euo pipefail
OUT=${1:-demo_out}
. .venv/bin/activate
exec sgmagnet demo --out "$OUT"
