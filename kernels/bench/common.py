"""Shared bits of the kernel benchmarks: device description, nominal HBM bandwidth, timing, CSV rows."""
from __future__ import annotations

import csv
import datetime as dt
import os
import subprocess

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.csv")
FIELDS = ["date", "commit", "gpu", "torch", "triton", "op", "impl", "layout", "phase", "batch", "levels", "size",
          "label_density", "dtype", "ms", "ms_cudagraph", "iters", "gbps", "pct_hbm", "peak_extra_mib", "logits_mib",
          "must_mib"]
# nominal HBM bandwidth (GB/s) by device-name substring (vendor data sheets)
HBM_GBPS = {"H200": 4800.0, "H100 SXM": 3350.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0, "H100": 3350.0,
            "A100-SXM4-80GB": 2039.0, "A100-SXM4-40GB": 1555.0, "A100": 1555.0, "L40S": 864.0}


# nominal dense tensor-core peaks (TFLOP/s) by device-name substring (vendor data sheets): bf16, and tf32 -- what
# fp32 convolutions run at by default (torch.backends.cudnn.allow_tf32 is True)
PEAK_TFLOPS = {"H200": {"bf16": 989.4, "fp32": 494.7}, "H100 SXM": {"bf16": 989.4, "fp32": 494.7},
               "H100 80GB HBM3": {"bf16": 989.4, "fp32": 494.7}, "H100 PCIe": {"bf16": 756.0, "fp32": 378.0},
               "H100": {"bf16": 989.4, "fp32": 494.7}, "A100": {"bf16": 312.0, "fp32": 156.0}}


def peak_tflops(name: str, dtype: str) -> float | None:
    for k, v in PEAK_TFLOPS.items():
        if k in name:
            return v[dtype]
    return None


def gpu_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() and not SMOKE else "cpu (triton interpreter)"


def smoke_device(a) -> str | None:
    """The device a benchmark runs on: 'cuda', 'cpu' (SMOKE: interpreter, set before triton is imported), or None
    = no CUDA and not asked for cpu (the caller runs its small correctness check instead)."""
    global SMOKE
    if a.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        SMOKE = True
        return "cpu"
    if a.device == "cuda" or torch.cuda.is_available():
        return "cuda"
    return None


def hbm_gbps(name: str) -> float | None:
    for k, v in HBM_GBPS.items():
        if k in name:
            return v
    return None


def git_commit() -> str:
    """`git describe --always --dirty`: a row measured on uncommitted code says so."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(RESULTS)).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


MIN_ITERS = 50
#: --device cpu: the GPU code path run through the Triton interpreter on a tiny case, to test the script itself;
#: times are wall-clock medians of 2 calls and mean nothing
SMOKE = False


def _rep_ms(fn, rep: float) -> float:
    """do_bench's `rep` is a time budget in ms: make it cover at least MIN_ITERS timed calls."""
    import triton.testing

    est = float(triton.testing.do_bench(fn, warmup=1, rep=5, return_mode="median"))
    return max(rep, 1.2 * MIN_ITERS * est)


def bench_ms(fn, warmup=10, rep=50) -> float:
    """Median milliseconds over >= MIN_ITERS calls: triton.testing.do_bench on CUDA (L2 flushed between runs;
    includes the host's launch overhead whenever the GPU waits for it)."""
    if SMOKE:
        import statistics
        import time

        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ts)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=_rep_ms(fn, rep), return_mode="median"))


def bench_ms_cudagraph(fn, rep=50) -> float | None:
    """The same calls replayed from a CUDA graph (triton.testing.do_bench_cudagraph): the GPU floor without
    host launch overhead. None where fn cannot be captured (a host sync inside), and with SMOKE."""
    if SMOKE:
        return None
    import triton.testing

    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=_rep_ms(fn, rep), return_mode="median"))
    except Exception:  # noqa: BLE001 - capture refused: reported as n/a
        torch.cuda.synchronize()
        return None


def peak_extra_mib(fn) -> float:
    """Peak CUDA memory allocated by fn() above what was allocated before it (nan with SMOKE)."""
    if SMOKE:
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return peak / 2**20


def append_rows(rows: list[dict], path: str = RESULTS):
    import triton

    new = not os.path.exists(path)
    base = {"date": dt.date.today().isoformat(), "commit": git_commit(), "gpu": gpu_name(),
            "torch": torch.__version__, "triton": triton.__version__}
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow({**base, **r})


def compile_reference(fn):
    """torch.compile(fn) for benchmarks that time one backward repeatedly (retain_graph=True): AOTAutograd's
    donated buffers forbid that (RuntimeError on the second backward), so they are switched off here."""
    import torch._functorch.config as functorch_config

    functorch_config.donated_buffer = False
    return torch.compile(fn, backend="eager" if SMOKE else "inductor")   # SMOKE: the path, not Inductor's time


def bench_parser(doc: str, densities: bool = False):
    """The options both kernel benchmarks share (shape, dtype, where the rows go)."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--batches", default="4,16,32", help="comma list of batch sizes B (default: 4,16,32)")
    if densities:
        p.add_argument("--densities", default="0.01,1.0",
                       help="comma list of labelled-column fractions (default: 0.01,1.0: a track, and every column)")
    p.add_argument("--size", type=int, default=128, help="patch height and width H = W (default: 128)")
    p.add_argument("--levels", type=int, default=38, help="levels L (default: 38)")
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES), help="logits dtype (default: bf16)")
    p.add_argument("--no-csv", action="store_true", help="print only, append no CSV rows")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="auto: cuda, else an interpreter correctness check; cpu: the whole benchmark path through the "
                        "Triton interpreter on whatever shape is given (tests the script; times mean nothing)")
    p.add_argument("--csv", default=None, help="append the rows to this CSV (default: kernels/bench/results.csv)")
    return p
