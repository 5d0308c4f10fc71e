"""Fused gated sparse CE (Triton) vs the eager PyTorch reference and torch.compile of it.

    python kernels/bench/bench_gated_loss.py [--batches 4,16,32] [--densities 0.01,1.0] [--size 128]
                                             [--dtype bf16] [--no-csv]

Per batch size and label density (fraction of the H*W columns labelled: ~1 % is a real CloudSat track
through a 128x128 patch, 1.0 is dense) it times forward, backward and forward+backward with
triton.testing.do_bench, measures the peak extra memory of forward+backward, and the achieved bandwidth
for the bytes the fused op must move: read the labelled logits, write the full logits gradient. Rows
are appended to kernels/bench/results.csv with the GPU, torch/triton versions, date and commit.

Without a GPU the script runs the kernels through the Triton interpreter on a small case and checks
them against the reference: correctness only -- timings need a GPU.
"""
from __future__ import annotations

import os
import sys

import torch

from common import DTYPES, bench_parser  # noqa: E402  (kernels/bench/common.py, beside this script)


def inputs(B, L, S, density, dtype, device):
    g = torch.Generator().manual_seed(0)
    n = max(1, int(round(density * S * S))) * B
    logits = torch.randn(B, 4, L, S, S, generator=g).to(device=device, dtype=dtype).requires_grad_()
    pix = torch.randperm(B * S * S, generator=g)[:n]
    index = torch.stack([pix // (S * S), (pix // S) % S, pix % S], 1).to(device)
    prof = torch.randint(0, 4, (n, L), generator=g, dtype=torch.uint8).to(device)
    w = torch.tensor([0.4, 1.6, 1.4, 2.0], device=device)
    return logits, index, prof, w


def cpu_check():
    os.environ["TRITON_INTERPRET"] = "1"
    import kernels
    from kernels.reference import reference_sparse_ce as ref

    logits, index, prof, w = inputs(2, 38, 16, 0.1, torch.float32, "cpu")
    a = kernels.gated_sparse_ce(logits, index, prof, w)
    ga, = torch.autograd.grad(a, logits)
    b = ref(logits, index, prof, w)
    gb, = torch.autograd.grad(b, logits)
    ok = torch.allclose(a, b, rtol=1e-5) and torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)
    print(f"no CUDA device: ran the kernels in the Triton interpreter on [2,4,38,16,16]; "
          f"loss {a.item():.6f} vs reference {b.item():.6f}; gradients match: {ok}")
    print("timings, bandwidth and memory need a GPU: run this script on one (see docs/kernels.md)")
    return 0 if ok else 1


def main(argv=None):
    p = bench_parser(__doc__, densities=True)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        return cpu_check()
    import kernels
    from common import append_rows, bench_ms, compile_reference, gpu_name, hbm_gbps, peak_extra_mib

    from kernels.reference import reference_sparse_ce as ref

    compiled = compile_reference(ref)
    dtype, dev = DTYPES[a.dtype], "cuda"
    peak_bw = hbm_gbps(gpu_name())
    # tri-uniq: the distinct-rows fast path (unique_index=True: no duplicate-row coalescing in the backward), what
    # training on the column path uses; the pixels here are distinct (randperm), so both Triton rows are exact
    # invalid=<device counter>: what training passes (the count of unscorable voxels is checked at the end of the
    # step, no host sync per call); without it every call would sync to check the count at once
    bad = torch.zeros((), device=dev)
    impls = {"triton": lambda *t: kernels.gated_sparse_ce(*t, invalid=bad),
             "tri-uniq": lambda *t: kernels.gated_sparse_ce(*t, unique_index=True, invalid=bad),
             "eager": lambda *t: ref(*t, invalid=bad), "compile": lambda *t: compiled(*t, invalid=bad)}
    print(f"{gpu_name()} (nominal HBM {peak_bw} GB/s), logits [B,4,{a.levels},{a.size},{a.size}] {a.dtype}")
    print(f"{'B':>3} {'dens':>5} {'impl':>8} {'fwd ms':>8} {'bwd ms':>8} {'full ms':>8} {'GB/s':>7} {'%HBM':>5} "
          f"{'peak MiB':>9} {'x logits':>8} {'vs triton':>9}")
    rows = []
    for B in map(int, a.batches.split(",")):
        for dens in map(float, a.densities.split(",")):
            logits, index, prof, w = inputs(B, a.levels, a.size, dens, dtype, dev)
            lbytes = logits.numel() * logits.element_size()
            must = lbytes + prof.numel() * 4 * logits.element_size()   # write full grad + read labelled logits
            res = {}
            for name, fn in impls.items():
                fwd = lambda: fn(logits, index, prof, w)  # noqa: E731
                loss = fwd()
                t_f = bench_ms(fwd)
                t_b = bench_ms(lambda: torch.autograd.grad(loss, logits, retain_graph=True))
                t_all = bench_ms(lambda: torch.autograd.grad(fwd(), logits))
                mem = peak_extra_mib(lambda: torch.autograd.grad(fwd(), logits))
                res[name] = t_all
                gbps = must / (t_all * 1e-3) / 1e9
                pct = 100 * gbps / peak_bw if peak_bw else float("nan")
                slower = "-" if name == "triton" else f"{t_all / res['triton']:.2f}x"
                print(f"{B:>3} {dens:>5.2f} {name:>8} {t_f:>8.3f} {t_b:>8.3f} {t_all:>8.3f} {gbps:>7.0f} {pct:>5.0f} "
                      f"{mem:>9.1f} {mem * 2**20 / lbytes:>8.2f} {slower:>8}", flush=True)
                for phase, t in (("fwd", t_f), ("bwd", t_b), ("fwd+bwd", t_all)):
                    rows.append({"op": "gated_sparse_ce", "impl": name, "phase": phase, "batch": B, "levels": a.levels,
                                 "size": a.size, "label_density": dens, "dtype": a.dtype, "ms": round(t, 4),
                                 "gbps": round(gbps, 1) if phase == "fwd+bwd" else "",
                                 "pct_hbm": round(pct, 1) if phase == "fwd+bwd" else "",
                                 "peak_extra_mib": round(mem, 1) if phase == "fwd+bwd" else "",
                                 "logits_mib": round(lbytes / 2**20, 1)})
            print(f"    speed-up of triton: {res['eager'] / res['triton']:.2f}x eager, "
                  f"{res['compile'] / res['triton']:.2f}x torch.compile; of tri-uniq: "
                  f"{res['eager'] / res['tri-uniq']:.2f}x eager, {res['compile'] / res['tri-uniq']:.2f}x torch.compile")
    if not a.no_csv:
        append_rows(rows, *([a.csv] if a.csv else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
