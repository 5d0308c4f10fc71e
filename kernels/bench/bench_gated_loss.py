"""Fused gated sparse CE (Triton) vs the eager PyTorch reference and torch.compile of it, at the same precision.

    python kernels/bench/bench_gated_loss.py [--batches 4,16,32] [--densities 0.01,1.0] [--size 128]
                                             [--layouts compact,permuted,dense] [--dtype bf16] [--no-csv]

Per layout (`inputs`: the compact [N, 4, L] column view training uses, SGMAGNet's permuted dense output, a
contiguous NCDHW volume), batch size and label density (fraction of the H*W columns labelled: ~1 % is a real
CloudSat track through a 128x128 patch, 1.0 is dense) it times forward, backward and forward+backward with
triton.testing.do_bench (>= 50 timed calls; host launch overhead included) and forward+backward also with
do_bench_cudagraph (replayed from a CUDA graph: the GPU floor), measures the peak extra memory of
forward+backward and the achieved bandwidth for the bytes the op must move: read the labelled logits and
their labels, write the gradient tensor autograd asks for -- for the compact view that is the [N, 4, L]
gradient, for the dense layouts the whole zero-filled volume (at 1 % labels that memset is ~99 % of the
bytes, which column training never moves: compare the layouts, not the GB/s of one). Every implementation
gets the same logits dtype and computes in fp32 inside. Rows are appended to kernels/bench/results.csv with
the GPU, torch/triton versions, date and `git describe --always --dirty`.

Without a GPU the script runs the kernels through the Triton interpreter on a small case and checks
them against the reference: correctness only -- timings need a GPU.
"""
from __future__ import annotations

import os
import sys

import torch

from common import DTYPES, bench_parser  # noqa: E402  (kernels/bench/common.py, beside this script)


LAYOUTS = ("compact", "permuted", "dense")


def inputs(B, L, S, density, dtype, device, layout="dense"):
    """(logits, index, profiles, weights) as the loss sees them in training (DESIGN.md, Interfaces):
    compact   the column path: a column forward's [N, 4, L] output through its [1, 4, L, 1, N] view, index (0, 0, n)
    permuted  SGMAGNet's dense output: [B, H, W, 4, L] memory seen as [B, 4, L, H, W] (each column contiguous)
    dense     a contiguous NCDHW volume [B, 4, L, H, W] (each voxel's 4 channels 2 x L x H x W bytes apart)"""
    g = torch.Generator().manual_seed(0)
    n = max(1, int(round(density * S * S))) * B
    prof = torch.randint(0, 4, (n, L), generator=g, dtype=torch.uint8).to(device)
    w = torch.tensor([0.4, 1.6, 1.4, 2.0], device=device)
    if layout == "compact":
        cols = torch.randn(n, 4, L, generator=g).to(device=device, dtype=dtype).requires_grad_()
        index = torch.zeros(n, 3, dtype=torch.long, device=device)
        index[:, 2] = torch.arange(n, device=device)
        return cols, index, prof, w
    pix = torch.randperm(B * S * S, generator=g)[:n]
    index = torch.stack([pix // (S * S), (pix // S) % S, pix % S], 1).to(device)
    if layout == "permuted":
        base = torch.randn(B, S, S, 4, L, generator=g).to(device=device, dtype=dtype).requires_grad_()
        return base, index, prof, w
    logits = torch.randn(B, 4, L, S, S, generator=g).to(device=device, dtype=dtype).requires_grad_()
    return logits, index, prof, w


def view(leaf, layout):
    """The [B, 4, L, H, W] tensor the loss takes, from the leaf the gradient is taken for (no copy)."""
    if layout == "compact":
        return leaf.permute(1, 2, 0)[None, :, :, None]
    if layout == "permuted":
        return leaf.permute(0, 3, 4, 1, 2)
    return leaf


def cpu_check():
    os.environ["TRITON_INTERPRET"] = "1"
    import kernels
    from kernels.reference import reference_sparse_ce as ref

    ok = True
    for layout in LAYOUTS:
        leaf, index, prof, w = inputs(2, 38, 16, 0.1, torch.float32, "cpu", layout)
        a = kernels.gated_sparse_ce(view(leaf, layout), index, prof, w, unique_index=layout == "compact")
        ga, = torch.autograd.grad(a, leaf)
        b = ref(view(leaf, layout), index, prof, w)
        gb, = torch.autograd.grad(b, leaf)
        same = torch.allclose(a, b, rtol=1e-5) and torch.allclose(ga, gb, rtol=1e-4, atol=1e-6)
        ok &= same
        print(f"no CUDA device: {layout:>8} layout in the Triton interpreter ([2,4,38,16,16], 10 % labelled): "
              f"loss {a.item():.6f} vs reference {b.item():.6f}; gradients match: {same}")
    print("timings, bandwidth and memory need a GPU: run this script on one (see docs/kernels.md)")
    return 0 if ok else 1


def main(argv=None):
    p = bench_parser(__doc__, densities=True)
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma list of compact, permuted, dense (default: all)")
    a = p.parse_args(argv)
    layouts = a.layouts.split(",")
    if not layouts or not set(layouts) <= set(LAYOUTS):
        p.error(f"--layouts: choose among {', '.join(LAYOUTS)}, got {a.layouts!r}")
    import common

    dev = common.smoke_device(a)
    if dev is None:
        return cpu_check()
    import kernels
    from common import append_rows, bench_ms, bench_ms_cudagraph, compile_reference, gpu_name, hbm_gbps, peak_extra_mib

    from kernels.reference import reference_sparse_ce as ref

    compiled = compile_reference(ref)
    dtype = DTYPES[a.dtype]
    peak_bw = hbm_gbps(gpu_name())
    # tri-uniq: the distinct-rows fast path (unique_index=True: no duplicate-row coalescing in the backward), what
    # training on the column path uses; the pixels here are distinct (randperm), so both Triton rows are exact
    # invalid=<device counter>: what training passes (the count of unscorable voxels is checked at the end of the
    # step, no host sync per call); without it every call would sync to check the count at once
    bad = torch.zeros((), device=dev)
    impls = {"triton": lambda *t: kernels.gated_sparse_ce(*t, invalid=bad),
             "tri-uniq": lambda *t: kernels.gated_sparse_ce(*t, unique_index=True, invalid=bad),
             "eager": lambda *t: ref(*t, invalid=bad), "compile": lambda *t: compiled(*t, invalid=bad)}
    print(f"{gpu_name()} (nominal HBM {peak_bw} GB/s), [B,4,{a.levels},{a.size},{a.size}] {a.dtype}; ms = do_bench "
          f"median (>= 50 calls), cg = do_bench_cudagraph (no host overhead)")
    print(f"{'layout':>8} {'B':>3} {'dens':>5} {'impl':>8} {'fwd ms':>8} {'bwd ms':>8} {'full ms':>8} {'cg ms':>7} "
          f"{'GB/s':>7} {'%HBM':>5} {'must MiB':>9} {'peak MiB':>9} {'vs triton':>9}")
    rows = []
    for layout in layouts:
        for B in map(int, a.batches.split(",")):
            for dens in map(float, a.densities.split(",")):
                leaf, index, prof, w = inputs(B, a.levels, a.size, dens, dtype, dev, layout)
                lbytes = leaf.numel() * leaf.element_size()
                # read the labelled logits and their labels, write the gradient tensor (the leaf's size)
                must = prof.numel() * (4 * leaf.element_size() + 1) + lbytes
                uniq = layout == "compact"           # the compact rows are distinct: what training passes
                res = {}
                for name, fn in impls.items():
                    if name == "tri-uniq" and not uniq:
                        continue
                    fwd = lambda: fn(view(leaf, layout), index, prof, w)  # noqa: E731
                    loss = fwd()
                    t_f = bench_ms(fwd)
                    t_b = bench_ms(lambda: torch.autograd.grad(loss, leaf, retain_graph=True))
                    t_all = bench_ms(lambda: torch.autograd.grad(fwd(), leaf))
                    # the eager reference copies a host list to the device (inside_rows' bounds): not capturable,
                    # so it is not tried (a failed capture is best not risked between measurements)
                    t_cg = None if name == "eager" else bench_ms_cudagraph(lambda: torch.autograd.grad(fwd(), leaf))
                    mem = peak_extra_mib(lambda: torch.autograd.grad(fwd(), leaf))
                    res[name] = t_all
                    gbps = must / (t_all * 1e-3) / 1e9
                    pct = 100 * gbps / peak_bw if peak_bw else float("nan")
                    slower = "-" if name == "triton" else f"{t_all / res['triton']:.2f}x"
                    cg = f"{t_cg:>7.3f}" if t_cg is not None else f"{'n/a':>7}"
                    print(f"{layout:>8} {B:>3} {dens:>5.2f} {name:>8} {t_f:>8.3f} {t_b:>8.3f} {t_all:>8.3f} {cg} "
                          f"{gbps:>7.0f} {pct:>5.0f} {must / 2**20:>9.1f} {mem:>9.1f} {slower:>8}", flush=True)
                    for phase, t in (("fwd", t_f), ("bwd", t_b), ("fwd+bwd", t_all)):
                        last = phase == "fwd+bwd"
                        rows.append({"op": "gated_sparse_ce", "impl": name, "layout": layout, "phase": phase,
                                     "batch": B, "levels": a.levels, "size": a.size, "label_density": dens,
                                     "dtype": a.dtype, "ms": round(t, 4),
                                     "ms_cudagraph": round(t_cg, 4) if last and t_cg is not None else "",
                                     "iters": ">=50", "gbps": round(gbps, 1) if last else "",
                                     "pct_hbm": round(pct, 1) if last else "",
                                     "peak_extra_mib": round(mem, 1) if last else "",
                                     "logits_mib": round(lbytes / 2**20, 1), "must_mib": round(must / 2**20, 2)})
                best = min((k for k in res if k.startswith("tri")), key=res.get)
                print(f"    {layout}: {best} is {res['eager'] / res[best]:.2f}x eager, "
                      f"{res['compile'] / res[best]:.2f}x torch.compile (forward+backward, do_bench)")
    if not a.no_csv:
        append_rows(rows, *([a.csv] if a.csv else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
