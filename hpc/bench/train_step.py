"""Training throughput per model: samples/s of full steps (forward, sparse loss, backward, AdamW).

    python hpc/bench/train_step.py [--models sgmagnet,unet,...] [--size demo] [--patch 64] [--batch 8]
                                   [--steps 5] [--warmup 2] [--device auto] [--bf16]
    python hpc/bench/train_step.py --loader real --shards demo_out/shards [--models unet] [--workers 2]

--loader memory (default): synthetic batches held in memory (random bands, a diagonal track of labelled
columns per patch), so this measures model + loss + optimiser. Prints parameters, forward GFLOPs per
sample (torch.utils.flop_counter) and samples/s, all models in one run so the ratios are comparable.
--loader real: the same training step fed by the real WebDataset loader (DataLoader workers) over the
shards, against the same batches pre-loaded into memory, in one run: the ratio is the input-pipeline
overhead seen by training (target >= 95 %).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from sgmagnet.losses import gated_sparse_ce
from sgmagnet.models import MODELS, build_model, flops_per_sample, n_parameters


def memory_batch(b: int, s: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 16, s, s, generator=g)
    geom = torch.rand(b, 2, s, s, generator=g) * 80
    r = torch.arange(s)
    idx = torch.stack([torch.arange(b).repeat_interleave(s), r.repeat(b), r.flip(0).repeat(b)], 1)
    prof = torch.randint(0, 4, (b * s, 38), dtype=torch.uint8, generator=g)
    return [t.to(device) for t in (x, geom, idx, prof)]


def bench_model(name, size, patch, batch, steps, warmup, device, bf16, loss_impl="torch"):
    torch.manual_seed(0)
    loss_fn = gated_sparse_ce
    if loss_impl == "triton":
        import kernels
        loss_fn = kernels.gated_sparse_ce
    m = build_model(name, size).to(device)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, geom, idx, prof = memory_batch(batch, patch, device)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            y = m(x, geom)
        loss = loss_fn(y, idx, prof)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return {"model": name, "params": n_parameters(m), "gflops": flops_per_sample(m.cpu(), patch) / 1e9,
            "samples_per_s": steps * batch / dt, "peak_mib": peak}


def append_csv(path: str, rows: list[dict]):
    """Rows with the device, versions and date (for `make gpu-check` and comparisons across machines)."""
    import csv
    import datetime as dt
    import os

    import triton

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    base = {"date": dt.date.today().isoformat(), "device": where, "torch": torch.__version__,
            "triton": triton.__version__}
    fields = list(base) + list(rows[0])
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**base, **r})


def real_vs_memory(a, device):
    import itertools

    from sgmagnet.data import EpochStream, LoaderConfig, Normaliser, split_urls

    norm = Normaliser.from_manifest(a.shards)
    cfg = LoaderConfig(batch_size=a.batch, workers=a.workers, shuffle_buffer=32)
    urls = split_urls(a.shards, "train")
    n = a.warmup + a.steps
    cached = list(itertools.islice(iter(EpochStream(urls, norm, cfg, seed=0)), n))
    print(f"{'model':<12}{'memory s/s':>12}{'real s/s':>10}{'real/memory':>13}   ({a.workers} workers, batch {a.batch})")
    for name in a.models.split(","):
        rates = {}
        for mode in ("memory", "real"):
            torch.manual_seed(0)
            m = build_model(name, a.size).to(device)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
            batches = iter(cached) if mode == "memory" else iter(EpochStream(urls, norm, cfg, seed=0))
            t0, seen = None, 0
            for i in range(n):
                if i == a.warmup:
                    t0, seen = time.perf_counter(), 0
                b = next(batches)
                y = m(b["x"].to(device), b["geom"].to(device))
                loss = gated_sparse_ce(y, b["index"].to(device), b["prof"].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(b["keys"])
            rates[mode] = seen / (time.perf_counter() - t0)
        print(f"{name:<12}{rates['memory']:>12.2f}{rates['real']:>10.2f}{rates['real'] / rates['memory']:>12.1%}",
              flush=True)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--size", default="demo", choices=("tiny", "demo", "paper"))
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--loader", choices=("memory", "real"), default="memory")
    p.add_argument("--shards", default="demo_out/shards", help="with --loader real")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers with --loader real")
    p.add_argument("--loss", choices=("torch", "triton"), default="torch",
                   help="loss implementation: the PyTorch reference or the fused Triton kernel (CUDA)")
    p.add_argument("--csv", help="append one row per model to this CSV")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    if a.loader == "real":
        return real_vs_memory(a, device)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"size {a.size}, patch {a.patch}, batch {a.batch}, {a.steps} timed steps, {where}, in-memory batches")
    print(f"{'model':<12}{'params':>12}{'GFLOP/sample':>14}{'samples/s':>11}{'vs first':>10}")
    first, rows = None, []
    for name in a.models.split(","):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        r = bench_model(name, a.size, a.patch, a.batch, a.steps, a.warmup, device, a.bf16, a.loss)
        rows.append({**r, "size": a.size, "patch": a.patch, "batch": a.batch, "bf16": a.bf16, "loss": a.loss})
        first = first or r["samples_per_s"]
        print(f"{name:<12}{r['params']:>12,}{r['gflops']:>14.3f}{r['samples_per_s']:>11.2f}"
              f"{r['samples_per_s'] / first:>9.2f}x", flush=True)
    if a.csv:
        append_csv(a.csv, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
