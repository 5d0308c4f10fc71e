"""Loader throughput: multi-worker WebDataset loader and DALI loader vs a raw sequential read.

    python hpc/bench/loader.py --shards demo_out/shards [--split train] [--batch 8] [--workers 2] [--epochs 3]
                               [--repeat 40]

raw      one process reads every tar member and decodes the .npy arrays (shards.iter_shard): the floor
         cost of getting the bytes into arrays, no normalisation, no batching
torch    loaders.loader("bench"): WebDataset pipeline (normalise, collate sparse labels) in DataLoader workers
dali     loaders.loader("bench", rt=dali runtime): dali.epoch_batches_of / fn.readers.webdataset + fn.decoders.numpy (CPU pipeline here)
All three over the same shards in one run; samples/s and the ratio to raw are printed. `--repeat K`
lists every shard K times, so a small demo set behaves like a K times larger epoch (worker start-up is
then amortised as it is on a real archive).
"""
from __future__ import annotations

import os
import sys
import time

from hpc.bench import benchcli  # noqa: E402  (one bad-input convention for the benchmarks)

import torch  # noqa: E402

from sgmagnet.data import Normaliser  # noqa: E402
from sgmagnet.loaders import loader  # noqa: E402
from sgmagnet.runtime import Runtime  # noqa: E402
from sgmagnet.shards import iter_shard, split_urls  # noqa: E402


def timed(fn, epochs):
    best = 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t0))
    return n, best


def main(argv=None):
    p = benchcli.parser("loader.py", __doc__)
    p.add_argument("--shards", default="demo_out/shards")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", "--batch", dest="batch", type=benchcli.positive, default=8, help="samples per batch (8)")
    p.add_argument("--workers", type=benchcli.count0, default=2)
    p.add_argument("--epochs", type=benchcli.positive, default=3, help="passes per loader; the best is reported")
    p.add_argument("--repeat", type=benchcli.positive, default=40, help="list each shard this many times (a larger epoch)")
    a = p.parse_args(argv)
    urls = split_urls(a.shards, a.split) * a.repeat
    norm = Normaliser.from_manifest(a.shards)

    def raw():
        return sum(1 for u in urls for _ in iter_shard(u))

    def torch_loader():
        return sum(len(b["keys"]) for b in loader("bench", urls, norm, batch_size=a.batch, workers=a.workers))

    def dali():
        rt = Runtime(torch.device("cpu"), loader="dali")
        return sum(len(b["keys"]) for b in loader("bench", urls, norm, batch_size=a.batch, rt=rt))

    print(f"{len(urls) // a.repeat} shards x {a.repeat} of split {a.split!r}, batch {a.batch}, {a.workers} DataLoader workers, "
          f"{os.cpu_count()} CPUs; best of {a.epochs} passes")
    n, base = timed(raw, a.epochs)
    print(f"{'raw sequential read':<28}{base:9.1f} samples/s   ({n} samples)")
    for name, fn in ((f"WebDataset + {a.workers} workers", torch_loader), ("DALI (CPU pipeline)", dali)):
        try:
            n2, r = timed(fn, a.epochs)
        except ImportError as e:
            print(f"{name:<28} unavailable ({e})")
            continue
        assert n2 == n, f"{name} read {n2} samples, raw read {n}"
        print(f"{name:<28}{r:9.1f} samples/s   {r / base:6.1%} of raw (target >= 70%)")
    return 0


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "loader.py"))
