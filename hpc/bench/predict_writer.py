"""Full-scene prediction with the NetCDF writer thread against writing in the loop, side by side in one run.

    python hpc/bench/predict_writer.py [--size 1024] [--model unet] [--model-size demo] [--tile 128] [--batch 8]
                                       [--repeats 2] [--device auto] [--bf16] [--work bench_out/predict_writer]

Writes a synthetic P-Tree scene of SIZE x SIZE pixels once (random bands, the full-disk recipe of
predict_memory.py cut to the size), then runs sgmagnet.predict.predict_scene with an untrained model of the
given kind (timing does not depend on the weights) REPEATS times each way, alternating, and prints the median
wall time of each and their ratio. On CUDA the int8 classes also come back by asynchronous copies into pinned
memory (both ways). The cubes of both ways must be identical; the script checks it.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

from hpc.bench import benchcli  # noqa: E402  (one bad-input convention for the benchmarks)

import numpy as np
import torch


def scene(path: str, n: int) -> str:
    from hpc.bench.predict_memory import random_scene

    return random_scene(path, 30.0 - 0.05 * np.arange(n), 120.0 + 0.05 * np.arange(n), np.full((n, n), 30.0))


def main(argv=None) -> int:
    p = benchcli.parser("predict_writer.py", __doc__)
    p.add_argument("--size", type=benchcli.positive, default=1024, help="scene side in pixels (1024)")
    p.add_argument("--model", default="unet", help="model kind (unet)")
    p.add_argument("--model-size", default="demo", choices=("tiny", "demo", "paper"))
    p.add_argument("--tile", type=benchcli.positive, default=128)
    p.add_argument("--batch-size", "--batch", dest="batch", type=benchcli.positive, default=8)
    p.add_argument("--repeats", type=benchcli.positive, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--work", default="bench_out/predict_writer")
    a = p.parse_args(argv)
    from sgmagnet.data import Normaliser
    from sgmagnet.models import MODELS, build_model
    from sgmagnet.predict import predict_scene
    from sgmagnet.runtime import Runtime

    if a.model not in MODELS:
        p.error(f"--model must be one of {', '.join(MODELS)}")
    os.makedirs(a.work, exist_ok=True)
    ahi = scene(a.work, a.size)
    rt = Runtime.resolve(a.device, bf16=a.bf16)
    torch.manual_seed(0)
    model = build_model(a.model, a.model_size)
    norm = Normaliser(np.zeros(16, np.float32), np.ones(16, np.float32))
    times = {True: [], False: []}
    outs = {}
    for _ in range(a.repeats):
        for threaded in (False, True):
            out = os.path.join(a.work, f"cube_{'thread' if threaded else 'loop'}.nc")
            t0 = time.perf_counter()
            predict_scene(model, norm, ahi, out, tile=a.tile, batch=a.batch, rt=rt, log=None, writer_thread=threaded)
            times[threaded].append(time.perf_counter() - t0)
            outs[threaded] = out
    import netCDF4

    with netCDF4.Dataset(outs[True]) as x, netCDF4.Dataset(outs[False]) as y:
        same = bool(np.array_equal(x["cloud_phase"][:], y["cloud_phase"][:]))
    loop, thread = statistics.median(times[False]), statistics.median(times[True])
    where = torch.cuda.get_device_name() if rt.device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{a.model}/{a.model_size}, scene {a.size} x {a.size}, tile {a.tile}, batch {a.batch}, {where}, "
          f"{'bf16' if a.bf16 else 'fp32'}, median of {a.repeats}")
    print(f"writes in the loop   {loop:8.2f} s")
    print(f"writer thread        {thread:8.2f} s   ({loop / thread:.2f}x)")
    print(f"cubes identical: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "predict_writer.py"))
