"""Fused phase-gated softmax (Triton) vs the eager PyTorch reference and torch.compile of it.

    python kernels/bench/bench_gated_softmax.py [--batches 4,16,32] [--size 128] [--dtype bf16] [--no-csv]

Times forward (probabilities), backward and forward+backward, and the int8 argmax path, with
triton.testing.do_bench; peak extra memory; achieved bandwidth for the bytes each must move
(forward: read + write the [B,4,L,H,W] volume, 2 V; backward: read logits (or saved probabilities) and the
upstream gradient, write the gradient, 3 V; forward+backward: both, 5 V -- counted as 4 V before issue 32;
argmax: read the volume, write 1 byte per voxel). Rows go to kernels/bench/results.csv.
Without a GPU: interpreter correctness check only.
"""
from __future__ import annotations

import os
import sys

import torch

from common import DTYPES, bench_parser  # noqa: E402  (kernels/bench/common.py, beside this script)


def cpu_check():
    os.environ["TRITON_INTERPRET"] = "1"
    import kernels
    from kernels.reference import reference_argmax, reference_softmax

    x = torch.randn(2, 4, 38, 16, 16) * 3
    ok = torch.allclose(kernels.gated_softmax(x), reference_softmax(x), atol=1e-6)
    agree = (kernels.gated_argmax(x).long() == reference_argmax(x)).float().mean().item()
    print(f"no CUDA device: interpreter check on [2,4,38,16,16]: probabilities match {ok}, argmax agrees on "
          f"{agree:.2%} of voxels; timings need a GPU (see docs/kernels.md)")
    return 0 if ok and agree > 0.999 else 1


def main(argv=None):
    p = bench_parser(__doc__, densities=False)
    a = p.parse_args(argv)
    import common

    dev = common.smoke_device(a)
    if dev is None:
        return cpu_check()
    import kernels
    from common import (append_rows, bench_ms, bench_ms_cudagraph, compile_reference, gpu_name, hbm_gbps,
                        peak_extra_mib)

    from kernels.reference import reference_argmax, reference_softmax

    dtype = DTYPES[a.dtype]
    peak_bw = hbm_gbps(gpu_name())
    ref = lambda x: reference_softmax(x).to(x.dtype)  # noqa: E731  (same output dtype as the kernel)
    compiled = compile_reference(ref)
    print(f"{gpu_name()} (nominal HBM {peak_bw} GB/s), logits [B,4,{a.levels},{a.size},{a.size}] {a.dtype}")
    print(f"{'B':>3} {'impl':>8} {'phase':>8} {'ms':>8} {'cg ms':>7} {'GB/s':>7} {'%HBM':>5} {'cg %HBM':>8} {'peak MiB':>9}"
          f"   (ms: do_bench, >= 50 calls; cg: do_bench_cudagraph, without host launch overhead)")
    rows = []
    for B in map(int, a.batches.split(",")):
        x = torch.randn(B, 4, a.levels, a.size, a.size, device=dev, dtype=dtype).requires_grad_()
        vb = x.numel() * x.element_size()
        up = torch.randn_like(x)
        for name, fn in (("triton", kernels.gated_softmax), ("eager", ref), ("compile", compiled)):
            y = fn(x)
            cases = (("fwd", lambda: fn(x), 2 * vb),
                     ("bwd", lambda: torch.autograd.grad(y, x, up, retain_graph=True), 3 * vb),
                     ("fwd+bwd", lambda: torch.autograd.grad(fn(x), x, up), 5 * vb))
            for phase, f, nbytes in cases:
                t = bench_ms(f)
                t_cg = bench_ms_cudagraph(f)
                mem = peak_extra_mib(f)
                gbps = nbytes / (t * 1e-3) / 1e9
                pct = 100 * gbps / peak_bw if peak_bw else float("nan")
                pct_cg = 100 * nbytes / (t_cg * 1e-3) / 1e9 / peak_bw if peak_bw and t_cg else float("nan")
                cg = f"{t_cg:>7.3f}" if t_cg is not None else f"{'n/a':>7}"
                print(f"{B:>3} {name:>8} {phase:>8} {t:>8.3f} {cg} {gbps:>7.0f} {pct:>5.0f} {pct_cg:>8.0f} {mem:>9.1f}",
                      flush=True)
                rows.append({"op": "gated_softmax", "impl": name, "phase": phase, "batch": B, "levels": a.levels,
                             "size": a.size, "label_density": "", "dtype": a.dtype, "ms": round(t, 4),
                             "ms_cudagraph": round(t_cg, 4) if t_cg is not None else "", "iters": ">=50",
                             "layout": "dense",
                             "gbps": round(gbps, 1), "pct_hbm": round(pct, 1), "peak_extra_mib": round(mem, 1),
                             "logits_mib": round(vb / 2**20, 1)})
        for name, fn in (("triton", kernels.gated_argmax), ("eager", lambda v: reference_argmax(v).to(torch.int8))):
            with torch.no_grad():
                t = bench_ms(lambda: fn(x))
                t_cg = bench_ms_cudagraph(lambda: fn(x))
            gbps = (vb + x.numel() // 4) / (t * 1e-3) / 1e9
            pct = 100 * gbps / peak_bw if peak_bw else float("nan")
            cg = f"{t_cg:>7.3f}" if t_cg is not None else f"{'n/a':>7}"
            print(f"{B:>3} {name:>8} {'argmax':>8} {t:>8.3f} {cg} {gbps:>7.0f} {pct:>5.0f}", flush=True)
            rows.append({"op": "gated_argmax", "impl": name, "phase": "fwd", "batch": B, "levels": a.levels,
                         "size": a.size, "label_density": "", "dtype": a.dtype, "ms": round(t, 4),
                         "ms_cudagraph": round(t_cg, 4) if t_cg is not None else "", "iters": ">=50",
                         "layout": "dense",
                         "gbps": round(gbps, 1), "pct_hbm": round(pct, 1), "peak_extra_mib": "",
                         "logits_mib": round(vb / 2**20, 1)})
    if not a.no_csv:
        append_rows(rows, *([a.csv] if a.csv else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
