"""Roofline-style figure of the kernel benchmarks: achieved GB/s of each implementation against the device's
nominal HBM bandwidth, one panel per shape (op, layout, batch, label density, dtype), from the CSV rows the
benchmarks append (bench_gated_loss.py, bench_gated_softmax.py; `make gpu-check` -> bench_results/gpu/).

    python kernels/bench/roofline.py bench_results/gpu/kernels.csv [--out docs/img/roofline.png] [--gpu H100]

The ops are memory-bound (a few flops per byte), so the roof that matters is bandwidth: each bar is the
bytes the op must move divided by its do_bench time, the dashed line the nominal peak, the label the
fraction of it. Runs anywhere (matplotlib; no GPU): the figure is drawn from committed rows.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys


def load(path: str, gpu: str | None) -> dict:
    panels: dict = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if not r.get("gbps") or (gpu and gpu not in r.get("gpu", "")):
                continue
            key = (r["op"], r.get("layout") or "dense", r["batch"], r.get("label_density") or "-", r["dtype"])
            panels.setdefault(key, {})[r["impl"]] = (float(r["gbps"]), float(r["pct_hbm"] or "nan"), r["gpu"],
                                                     r.get("commit", ""))
    return panels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", help="rows appended by the kernel benchmarks")
    p.add_argument("--out", default="docs/img/roofline.png", help="PNG to write (default docs/img/roofline.png)")
    p.add_argument("--gpu", default=None, help="only rows whose GPU name contains this")
    a = p.parse_args(argv)
    if not os.path.isfile(a.csv):
        sys.stderr.write(f"roofline.py: error: {a.csv!r} is not a file\n")
        return 2
    panels = load(a.csv, a.gpu)
    if not panels:
        sys.stderr.write(f"roofline.py: error: {a.csv} has no rows with a bandwidth (gbps) to draw\n")
        return 2
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.stderr.write("roofline.py: error: matplotlib is not installed (draw the figure where it is)\n")
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import hbm_gbps

    keys = sorted(panels)
    cols = min(4, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        impls = panels[key]
        names = sorted(impls)
        vals = [impls[n][0] for n in names]
        peak = hbm_gbps(next(iter(impls.values()))[2])
        ax.bar(names, vals, color="#4C72B0")
        if peak:
            ax.axhline(peak, ls="--", color="k", lw=1)
            for i, v in enumerate(vals):
                ax.text(i, v, f"{v / peak:.0%}", ha="center", va="bottom", fontsize=7)
        op, layout, b, dens, dt = key
        ax.set_title(f"{op.replace('gated_', '')} {layout}\nB={b} dens={dens} {dt}", fontsize=8)
        ax.set_ylabel("GB/s", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    first = next(iter(panels[keys[0]].values()))
    fig.suptitle(f"{first[2]} - achieved bandwidth vs nominal HBM peak (dashed); rows of {first[3]}", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    fig.savefig(a.out, dpi=110)
    print(f"roofline.py: {len(keys)} shape(s) -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
