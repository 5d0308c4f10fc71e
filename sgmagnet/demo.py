"""`sgmagnet demo` (what `make demo` runs): the main job on the embedded default, end to end.

1. a small synthetic archive in the real formats (6 days, 125-145E 40S-40N, 0.05 deg, seed 0)
2. collocation into WebDataset shards with 2 MPI ranks (in one process when mpirun is missing)
3. train SGMAGNet and the UNet baseline (configs/demo_sgmagnet.yaml, configs/demo_unet.yaml)
4. evaluate both on the held-out test days
5. the side-by-side table (+ the reference rows) and the pictures
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("sgmagnet", "unet")


def run(cli, out: str = "demo_out", ranks: int = 2) -> int:
    """`cli` is sgmagnet.cli.main (passed in, so this module does not import the CLI it serves)."""
    t0 = time.time()
    configs = {m: os.path.join(REPO, "configs", f"demo_{m}.yaml") for m in MODELS}
    for c in configs.values():
        if not os.path.exists(c):
            sys.stderr.write(f"sgmagnet demo: error: {c} not found (run the demo from a source checkout)\n")
            return 2
    arc, shards, runs = (os.path.join(out, d) for d in ("archive", "shards", "runs"))
    print("== 1. synthetic archive (real formats: P-Tree NetCDF + HDF-EOS2 2B-CLDCLASS-LIDAR)", flush=True)
    if cli(["synth", "--out", arc, "--start", "2018-10-10", "--days", "6", "--region", "125,145,-40,40", "--res",
            "0.05", "--seed", "0", "--quiet"]):
        return 1
    print(f"== 2. collocation -> WebDataset shards ({ranks} MPI ranks)", flush=True)
    for d in (shards, runs):
        shutil.rmtree(d, ignore_errors=True)
    build = ["build", "--ahi", os.path.join(arc, "ahi"), "--cloudsat", os.path.join(arc, "cloudsat"), "--out", shards,
             "--patch-size", "64", "--min-labelled", "32", "--split-days", "2,1,1", "--gap-days", "1", "--quiet"]
    if shutil.which("mpirun") and ranks > 1:
        rc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), sys.executable,
                             "-m", "sgmagnet.cli", *build]).returncode
    else:
        rc = cli(build)
    if rc or cli(["inspect", shards, "--verify"]):
        sys.stderr.write("sgmagnet demo: error: the build or its verification failed (see above)\n")
        return rc or 1
    for m in MODELS:
        print(f"== 3. train {m} ({os.path.relpath(configs[m], REPO)})", flush=True)
        rc = cli(["train", "--config", configs[m], "--no-progress", f"data.shards={shards}",
                  f"train.run_dir={os.path.join(runs, m)}"])
        if rc:
            return rc
        print(f"== 4. evaluate {m} on the test split", flush=True)
        rc = cli(["evaluate", "--checkpoint", os.path.join(runs, m), "--shards", shards, "--split", "test", "--quiet"])
        if rc:
            return rc
    from .shards import read_manifest

    counts = read_manifest(shards).counts
    print(f"== 5. results (small synthetic demo: {counts})", flush=True)
    cli(["report", *[os.path.join(runs, m, "eval_test.json") for m in MODELS], "--out",
         os.path.join(out, "results.md"), "--curves", os.path.join(out, "loss_curves.png")])
    print(f"tables: {out}/runs/*/eval_test.md; pictures: {out}/loss_curves.png, "
          f"{out}/runs/*/{{confusion,curtain}}_test*.png")
    print(f"demo finished in {time.time() - t0:.0f} s")
    return 0
