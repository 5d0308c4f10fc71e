"""Peak memory and time of full-scene prediction on a full-disk 0.05-degree P-Tree grid (2401 x 2401).

    python hpc/bench/predict_memory.py --checkpoint demo_out/runs/unet [--tile 128] [--overlap 32] [--work DIR]

Writes a synthetic full-disk file once (the P-Tree FLDK grid: 60N-60S, 80E-200E at 0.05 deg; pixels farther
than 81.3 deg of arc from the sub-satellite point 140.7E are off-disk), then runs `sgmagnet predict` on it
in a child process and reports the child's peak resident memory (getrusage), wall time and tiles/s,
next to the size of the scene's 16 bands in float32 and of a full-scene output cube, i.e. what a
non-streaming implementation would hold at once.
"""
from __future__ import annotations

import datetime as dt
import os
import resource
import subprocess
import sys
import time

from hpc.bench import benchcli  # noqa: E402  (one bad-input convention for the benchmarks)

import numpy as np


def random_scene(path: str, lat: np.ndarray, lon: np.ndarray, saz: np.ndarray) -> str:
    """A P-Tree file of random bands (reflectances 0-1, brightness temperatures 200-300 K) on the grid lat x lon
    with satellite zenith `saz` (NaN = off disk), written once into `path` (timing does not depend on the values;
    also used by predict_writer.py)."""
    from sgmagnet.formats.ahi import ahi_filename, write_ahi
    from sgmagnet.grid import BAND_VARS

    shape = (len(lat), len(lon))
    rng = np.random.default_rng(0)
    f = {b: (rng.uniform(0, 1, shape) if k < 6 else rng.uniform(200, 300, shape)).astype(np.float32)
         for k, b in enumerate(BAND_VARS)}
    f.update(SOZ=np.full(shape, 40.0, np.float32), SOA=np.zeros(shape, np.float32),
             SAZ=saz.astype(np.float32), SAA=np.zeros(shape, np.float32), Hour=np.full(shape, 3.1, np.float32))
    t = dt.datetime(2018, 10, 1, 3, 0)
    out = os.path.join(path, ahi_filename(t, *shape))
    if not os.path.exists(out):
        write_ahi(out, lat, lon, f, t)
    return out


def full_disk(path: str):
    lat = 60.0 - 0.05 * np.arange(2401)
    lon = 80.0 + 0.05 * np.arange(2401)
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon - 140.7), indexing="ij")
    arc = np.rad2deg(np.arccos(np.clip(np.cos(la) * np.cos(lo), -1, 1)))
    saz = np.where(arc < 81.3, arc * 1.1, np.nan)
    return random_scene(path, lat, lon, saz), int(np.isfinite(saz).sum())


def main(argv=None):
    p = benchcli.parser("predict_memory.py", __doc__)
    p.add_argument("--checkpoint", default="demo_out/runs/unet")
    p.add_argument("--tile", type=benchcli.positive, default=128)
    p.add_argument("--overlap", type=benchcli.count0, default=32)
    p.add_argument("--batch-size", "--batch", dest="batch", type=benchcli.positive, default=4, help="samples per batch (4)")
    p.add_argument("--work", default="bench_out/full_disk")
    a = p.parse_args(argv)
    if a.overlap % 2 or a.overlap >= a.tile:
        p.error(f"--overlap must be even and smaller than --tile {a.tile}, got {a.overlap}")
    from sgmagnet.checkpoint import load_saved

    load_saved(a.checkpoint)       # a missing or junk checkpoint: one line, exit 2, before minutes of synthesis
    os.makedirs(a.work, exist_ok=True)
    t0 = time.time()
    ahi, ondisk = full_disk(a.work)
    print(f"full-disk file {os.path.basename(ahi)} ({os.path.getsize(ahi) / 2**20:.0f} MiB, {ondisk:,} on-disk "
          f"pixels) ready in {time.time() - t0:.0f} s")
    out = os.path.join(a.work, "cube.nc")
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "predict", "--checkpoint", a.checkpoint, "--ahi", ahi,
                        "--out", out, "--tile", str(a.tile), "--overlap", str(a.overlap), "--batch-size", str(a.batch)],
                       capture_output=True, text=True)
    wall = time.time() - t0
    if r.returncode:
        sys.stderr.write(r.stderr[-3000:])
        return r.returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    bands = 16 * 2401 * 2401 * 4 / 2**20
    cube = 38 * 2401 * 2401 / 2**20
    print(r.stdout.strip().splitlines()[-1])
    print(f"peak resident memory of `sgmagnet predict`: {peak:.0f} MiB   wall {wall:.0f} s   "
          f"(16 bands of the whole scene in float32: {bands:.0f} MiB; int8 phase cube: {cube:.0f} MiB, "
          f"4 float32 probability cubes: {16 * cube:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "predict_memory.py"))
