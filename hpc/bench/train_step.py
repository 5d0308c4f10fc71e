"""Training throughput per model: samples/s and peak memory of full steps (forward, sparse loss, backward,
AdamW), for the dense path and the label-sparse column path, side by side in one run.

    python hpc/bench/train_step.py [--models sgmagnet,unet,...] [--size demo] [--patch 64,128] [--batch 8]
                                   [--paths dense,columns] [--steps 3] [--warmup 1] [--device auto] [--bf16]
    python hpc/bench/train_step.py --models sgmagnet --paths columns --compile none,default,graphs [--batch-sweep 8,16,32]
    python hpc/bench/train_step.py --loader real --shards demo_out/shards [--models unet] [--workers 2]

--loader memory (default): synthetic batches held in memory (random bands, one diagonal CloudSat-like track
of labelled columns per patch: 1/patch of the columns, 0.8 % at 128 px), so this measures model + loss +
optimiser. Paths: `dense` decodes the whole [B, 4, 38, H, W] volume and the loss gathers the labelled columns;
`columns` calls model(x, geom, columns=index) and the loss reads the compact [N, 4, 38] output through its
[1, 4, 38, 1, N] view (DESIGN.md, Interfaces). Prints parameters, forward GFLOPs per sample of each path
(torch.utils.flop_counter), samples/s, the column path's speed-up over the dense path, and peak memory:
on CUDA max_memory_allocated, on CPU the peak resident set of a fresh process that runs only that
measurement (each row is run in its own spawned process, so rows do not inherit each other's peaks).
--compile: the column path's step eagerly (none), through torch.compile (default) and as CUDA graphs (graphs,
CUDA only: on CPU that row is skipped), the index padded to 2 x patch columns per patch as training does
(sgmagnet/train/compiled.py); compile time is excluded (--warmup steps, at least 3 when compiled). Rows per mode
side by side, with the speed-up over eager. --batch-sweep B1,B2,...: the same for each batch size, stopping at the
first that does not fit (CUDA out of memory), so the table shows throughput against batch size and the largest
batch that fits.
--loader real: the same training step fed by the real WebDataset loader (DataLoader workers) over the
shards, against the same batches pre-loaded into memory, in one run: the ratio is the input-pipeline
overhead seen by training (target >= 95 %).
"""
from __future__ import annotations

import argparse
import sys
import time

from hpc.bench import benchcli  # noqa: E402  (one bad-input convention for the benchmarks)

import torch
from torch.profiler import record_function

from sgmagnet.grid import N_BANDS, N_CLASSES, N_GEOM, N_LEVELS
from sgmagnet.losses import SparseLoss, compact_view, sparse_ce
from sgmagnet.runtime import Runtime
from sgmagnet.models import MODELS, build_model, flops_per_sample, n_parameters, track_columns


def memory_batch(b: int, s: int, device):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, N_BANDS, s, s, generator=g)
    geom = torch.rand(b, N_GEOM, s, s, generator=g) * 80
    idx = track_columns(b, s)
    prof = torch.randint(0, N_CLASSES, (len(idx), N_LEVELS), dtype=torch.uint8, generator=g)
    return [t.to(device) for t in (x, geom, idx, prof)]


def train_step_fn(model, opt, data, path: str, bf16: bool, loss_fn=sparse_ce, compile_mode: str = "none"):
    """One full training step (forward on the dense or column path, sparse loss, backward, optimiser) on the
    in-memory batch `data` = (x, geom, index, profiles), as a closure (shared with profile_step.py), with the
    trainer's record_function ranges. compile_mode default|graphs (column path): forward + loss through
    sgmagnet/train/compiled.py, the index padded as training pads it."""
    x, geom, idx, prof = data
    device = x.device
    bad = torch.zeros((), device=device)     # as the trainer: unscorable voxels counted on the device, no sync

    if compile_mode != "none":
        from sgmagnet.train.compiled import CompiledStep

        def forward(x, geom, columns):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                return model(x, geom, columns=columns)
        if not isinstance(loss_fn, SparseLoss):          # the plain reference function: its module form
            loss_fn = SparseLoss().to(device)
        cs = CompiledStep(forward, loss_fn, compile_mode, 2 * x.shape[-1], device, log=lambda m: None)
        b = cs.pad({"x": x, "geom": geom, "index": idx.cpu(), "prof": prof.cpu()})
        pidx, pprof = b["index"].to(device), b["prof"].to(device)
        den = loss_fn.weight_sum(pprof).float()

        def forward_loss():
            with record_function("forward+loss"):
                return cs(b, pidx, pprof, den, bad)
    else:
        def forward_loss():
            with record_function("forward"), torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                                            enabled=bf16):
                if path == "columns":
                    y, index = compact_view(model(x, geom, columns=idx))
                else:
                    y, index = model(x, geom), idx
            with record_function("loss"):
                return loss_fn(y, index, prof, invalid=bad)

    def step():
        loss = forward_loss()
        opt.zero_grad(set_to_none=True)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            opt.step()
    return step


def bench_model(name, size, patch, batch, steps, warmup, device, bf16, loss_impl="torch", path="dense",
                compile_mode="none"):
    """One (model, patch, path, compile mode) measurement in this process."""
    torch.manual_seed(0)
    loss_fn = SparseLoss(fused=Runtime.resolve(device.type, loss_impl=loss_impl).fused).to(device)   # runtime decides
    m = build_model(name, size).to(device)
    # the optimizer training uses (train/components.py): fused AdamW on CUDA
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, **({"fused": True} if device.type == "cuda" else {}))
    data = memory_batch(batch, patch, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = train_step_fn(m, opt, data, path, bf16, loss_fn, compile_mode)
    if compile_mode != "none":
        warmup = max(warmup, 3)          # compilation (and CUDA-graph recording) happens in the first calls

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
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024       # KiB on Linux
    return {"model": name, "path": path, "params": n_parameters(m),
            "gflops": flops_per_sample(m.cpu(), patch, columns=(path == "columns")) / 1e9,
            "samples_per_s": steps * batch / dt, "peak_mib": peak}


def _child(queue, args):
    torch.set_num_threads(args.pop("threads"))
    args["device"] = torch.device(args["device"])
    try:
        queue.put(bench_model(**args))
    except Exception as e:   # noqa: BLE001 - reported as the row's error, the other rows go on
        queue.put({"error": f"{type(e).__name__}: {e}"})


def isolated(**kw) -> dict:
    """bench_model in a fresh spawned process (CPU peak memory = that process's peak resident set)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    kw = {**kw, "device": str(kw["device"]), "threads": torch.get_num_threads()}
    p = ctx.Process(target=_child, args=(q, kw))
    p.start()
    p.join()
    if p.exitcode != 0:
        return {"error": f"exit code {p.exitcode} (out of memory?)"}
    return q.get()


def append_csv(path: str, rows: list[dict]):
    """Rows with the date, `git describe --always --dirty`, the device and versions (for `make gpu-check` and
    comparisons across machines)."""
    import csv
    import datetime as dt
    import os

    import triton

    from kernels.bench.common import git_commit

    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    base = {"date": dt.date.today().isoformat(), "commit": git_commit(), "device": where, "torch": torch.__version__,
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

    from sgmagnet.data import Normaliser
    from sgmagnet.loaders import loader
    from sgmagnet.shards import split_urls

    norm = Normaliser.from_manifest(a.shards)
    urls = split_urls(a.shards, "train")

    def stream():
        return loader("train", urls, norm, batch_size=a.batch, workers=a.workers, shuffle_buffer=32, seed=0)
    n = a.warmup + a.steps
    cached = list(itertools.islice(iter(stream()), n))
    print(f"{'model':<12}{'memory s/s':>12}{'real s/s':>10}{'real/memory':>13}   ({a.workers} workers, batch {a.batch})")
    for name in a.models.split(","):
        rates = {}
        for mode in ("memory", "real"):
            torch.manual_seed(0)
            m = build_model(name, a.size).to(device)
            opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
            batches = iter(cached) if mode == "memory" else iter(stream())
            t0, seen = None, 0
            for i in range(n):
                if i == a.warmup:
                    t0, seen = time.perf_counter(), 0
                b = next(batches)
                y, index = compact_view(m(b["x"].to(device), b["geom"].to(device), columns=b["index"].to(device)))
                loss = sparse_ce(y, index, b["prof"].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                seen += len(b["keys"])
            rates[mode] = seen / (time.perf_counter() - t0)
        print(f"{name:<12}{rates['memory']:>12.2f}{rates['real']:>10.2f}{rates['real'] / rates['memory']:>12.1%}",
              flush=True)
    return 0


def compile_sweep(a, device, patches, models, modes, batches) -> int:
    """Column path: eager / compiled / CUDA-graph rows per batch size, side by side in one run."""
    from kernels.bench.common import peak_tflops

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    peak = peak_tflops(where, "bf16" if a.bf16 else "fp32") if device.type == "cuda" else None
    rows, failed, largest = [], 0, {}
    for patch in patches:
        print(f"\nsize {a.size}, patch {patch}, column path, {a.steps} timed steps, {where}, "
              f"{'bf16' if a.bf16 else 'fp32'}, loss {a.loss}; MFU = 3 x forward FLOPs x samples/s / "
              f"{'device peak ' + str(peak) + ' TFLOP/s' if peak else 'device peak (unknown here)'}")
        print(f"{'model':<13}{'batch':>6}{'compile':>9}{'samples/s':>11}{'vs eager':>10}{'MFU':>7}{'peak MiB':>10}"
              f"   (peak: CUDA allocated; on CPU the process RSS so far)")
        for name in models:
            for batch in batches:
                eager, oom = None, False
                for mode in modes:
                    if mode == "graphs" and device.type != "cuda":
                        print(f"{name:<13}{batch:>6}{mode:>9}  skipped: CUDA graphs need a CUDA device", flush=True)
                        continue
                    kw = dict(name=name, size=a.size, patch=patch, batch=batch, steps=a.steps, warmup=a.warmup,
                              device=device, bf16=a.bf16, loss_impl=a.loss, path="columns", compile_mode=mode)
                    try:
                        r = bench_model(**kw)
                    except torch.OutOfMemoryError:
                        print(f"{name:<13}{batch:>6}{mode:>9}  does not fit (CUDA out of memory)", flush=True)
                        torch.cuda.empty_cache()
                        oom = True
                        break
                    except Exception as e:  # noqa: BLE001 - reported as the row's error, the other rows go on
                        print(f"{name:<13}{batch:>6}{mode:>9}  failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                        failed += 1
                        continue
                    eager = r["samples_per_s"] if mode == "none" else eager
                    ratio = f"{r['samples_per_s'] / eager:>9.2f}x" if eager and mode != "none" else f"{'':>10}"
                    mfu = 3 * r["gflops"] * 1e9 * r["samples_per_s"] / (peak * 1e12) if peak else None
                    rows.append({**r, "size": a.size, "patch": patch, "batch": batch, "bf16": a.bf16, "loss": a.loss,
                                 "compile": mode, "mfu": "" if mfu is None else round(mfu, 5)})
                    largest[(name, patch)] = batch
                    mf = f"{mfu:>7.2%}" if mfu is not None else f"{'-':>7}"
                    print(f"{name:<13}{batch:>6}{mode:>9}{r['samples_per_s']:>11.2f}{ratio}{mf}{r['peak_mib']:>10.0f}",
                          flush=True)
                    torch._dynamo.reset()
                if oom:
                    break
    for (name, patch), b in largest.items():
        print(f"{name} at {patch} px: largest batch measured that fits: {b}")
    if a.csv and rows:
        append_csv(a.csv, rows)
    if failed:
        sys.stderr.write(f"train_step.py: error: {failed} measurement(s) failed (see the table)\n")
    return 1 if failed else 0


def main(argv=None):
    p = benchcli.parser("train_step.py", __doc__)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--size", default="demo", choices=("tiny", "demo", "paper"))
    p.add_argument("--patch", default="64,128", help="patch sizes, comma-separated (default 64,128)")
    p.add_argument("--paths", default="dense,columns", help="dense, columns or both (default dense,columns)")
    p.add_argument("--batch-size", "--batch", dest="batch", type=benchcli.positive, default=8, help="samples per batch (8)")
    p.add_argument("--steps", type=benchcli.positive, default=3)
    p.add_argument("--warmup", type=benchcli.count0, default=1)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--loader", choices=("memory", "real"), default="memory")
    p.add_argument("--shards", default="demo_out/shards", help="with --loader real")
    p.add_argument("--workers", type=benchcli.count0, default=2, help="DataLoader workers with --loader real")
    p.add_argument("--loss", choices=("torch", "triton"), default="torch",
                   help="loss implementation: the PyTorch reference or the fused Triton kernel (CUDA)")
    p.add_argument("--compile", default="none", help="compile modes, comma-separated: none, default, graphs "
                   "(column path; graphs needs CUDA) (default none)")
    p.add_argument("--batch-sweep", default="", help="batch sizes, comma-separated, instead of --batch: stops at the "
                   "first that does not fit; auto = 8, 16, 32, ... up to 4096 on CUDA (8, 16 on CPU)")
    p.add_argument("--csv", help="append one row per model and path to this CSV")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    if a.loader == "real":
        a.patch = benchcli.int_list(a.patch)[0]
        return real_vs_memory(a, device)
    try:
        patches = benchcli.int_list(a.patch)
        paths = a.paths.split(",")
        assert paths and set(paths) <= {"dense", "columns"}
        models = a.models.split(",")
        assert set(models) <= set(MODELS)
        modes = a.compile.split(",")
        assert modes and set(modes) <= {"none", "default", "graphs"}
        batches = ([8 * 2 ** k for k in range(10)] if device.type == "cuda" else [8, 16]) if a.batch_sweep == "auto" \
            else benchcli.int_list(a.batch_sweep) if a.batch_sweep else [a.batch]
    except (ValueError, AssertionError, argparse.ArgumentTypeError):
        p.error(f"--patch and --batch-sweep must be integers, --paths dense and/or columns, --compile among none, "
                f"default, graphs, --models among {', '.join(MODELS)}")
    if modes != ["none"] or a.batch_sweep:
        return compile_sweep(a, device, patches, models, modes, batches)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    mem = "peak MiB (CUDA allocated)" if device.type == "cuda" else "peak MiB (process RSS)"
    rows, failed = [], 0
    for patch in patches:
        print(f"\nsize {a.size}, patch {patch}, batch {a.batch}, {a.steps} timed steps after {a.warmup}, {where}, "
              f"{'bf16' if a.bf16 else 'fp32'}, in-memory batches, {patch} labelled columns per patch")
        print(f"{'model':<13}{'path':<9}{'params':>11}{'GFLOP/sample':>14}{'samples/s':>11}{'columns/dense':>15}"
              f"{mem:>27}")
        for name in models:
            dense = None
            for path in paths:
                kw = dict(name=name, size=a.size, patch=patch, batch=a.batch, steps=a.steps, warmup=a.warmup,
                          device=device, bf16=a.bf16, loss_impl=a.loss, path=path)
                r = bench_model(**kw) if device.type == "cuda" else isolated(**kw)
                if "error" in r:
                    print(f"{name:<13}{path:<9}  failed: {r['error']}", flush=True)
                    failed += 1
                    continue
                dense = r["samples_per_s"] if path == "dense" else dense
                ratio = f"{r['samples_per_s'] / dense:>14.1f}x" if path == "columns" and dense else f"{'':>15}"
                rows.append({**r, "size": a.size, "patch": patch, "batch": a.batch, "bf16": a.bf16, "loss": a.loss})
                print(f"{name:<13}{path:<9}{r['params']:>11,}{r['gflops']:>14.3f}{r['samples_per_s']:>11.2f}{ratio}"
                      f"{r['peak_mib']:>27.0f}", flush=True)
    if a.csv and rows:
        append_csv(a.csv, rows)
    if failed:
        sys.stderr.write(f"train_step.py: error: {failed} measurement(s) failed (see the table)\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "train_step.py"))
