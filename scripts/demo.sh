#!/usr/bin/env bash
# The main job on the embedded default: a small synthetic archive -> benchmark shards -> train SGMAGNet and
# the UNet baseline briefly -> evaluate on the held-out test days -> side-by-side table and pictures.
set -euo pipefail
OUT=${1:-demo_out}
. .venv/bin/activate
T0=$(date +%s)
echo "== 1. synthetic archive (real formats: P-Tree NetCDF + HDF-EOS2 2B-CLDCLASS-LIDAR)"
sgmagnet synth --out "$OUT/archive" --start 2018-10-01 --days 6 --region 125,145,-40,40 --res 0.05 --seed 0 --quiet
echo "== 2. collocation -> WebDataset shards (2 MPI ranks)"
rm -rf "$OUT/shards" "$OUT/runs"
mpirun --allow-run-as-root --oversubscribe -n 2 sgmagnet build --ahi "$OUT/archive/ahi" \
  --cloudsat "$OUT/archive/cloudsat" --out "$OUT/shards" --patch-size 64 --min-labelled 32 \
  --split-days 2,1,1 --gap-days 1 --quiet
sgmagnet inspect "$OUT/shards" --verify
for m in sgmagnet unet; do
  echo "== 3. train $m (configs/demo_$m.yaml)"
  sgmagnet train --config "configs/demo_$m.yaml" --no-progress data.shards="$OUT/shards" train.run_dir="$OUT/runs/$m"
  echo "== 4. evaluate $m on the test split"
  sgmagnet evaluate --checkpoint "$OUT/runs/$m" --shards "$OUT/shards" --split test > /dev/null
done
echo "== 5. results (small synthetic demo: $(python -c "import json;print(json.load(open('$OUT/shards/manifest.json'))['counts'])"))"
sgmagnet report "$OUT/runs/sgmagnet/eval_test.json" "$OUT/runs/unet/eval_test.json" --out "$OUT/results.md" \
  --curves "$OUT/loss_curves.png"
echo "tables: $OUT/runs/*/eval_test.md; pictures: $OUT/loss_curves.png, $OUT/runs/*/{confusion,curtain}_test*.png"
echo "demo finished in $(( $(date +%s) - T0 )) s"
