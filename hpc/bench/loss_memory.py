"""Peak memory and time: the sparse gated loss (gather labelled columns) vs a dense-label cross-entropy.

    python hpc/bench/loss_memory.py [--batch 8] [--size 128] [--levels 38] [--labelled 128] [--repeat 5]

Both compute the same number (DESIGN.md loss) on logits [B, 4, L, S, S]:
  sparse  losses.sparse_ce: gathers the N labelled columns, then log-probs on [N, 4, L]
  dense   scatter the labels into a [B, L, S, S] volume (255 elsewhere), gated log-probs of the whole
          volume, F.nll_loss(weight, ignore_index=255) -- what a dense `cross_entropy` pipeline does
Each variant runs in its own subprocess; peak resident memory is read from the kernel (VmHWM, reset
through /proc/self/clear_refs before each phase), relative to the RSS with the logits already allocated.
"Extra" memory excludes the logits themselves and, for backward, their gradient (which any loss must
produce). CPU numbers; the GPU kernels' peak memory is measured by kernels/bench/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from hpc.bench import benchcli  # noqa: E402  (one bad-input convention for the benchmarks)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def worker(a) -> dict:
    import torch

    from sgmagnet.losses import dense_gated_ce, sparse_ce

    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    B, L, S = a.batch, a.levels, a.size
    logits = torch.empty(B, 4, L, S, S).normal_().requires_grad_()
    rows = torch.arange(a.labelled) * S // a.labelled
    idx = torch.stack([torch.arange(B).repeat_interleave(a.labelled), rows.repeat(B), (S - 1 - rows).repeat(B)], 1)
    prof = torch.randint(0, 4, (B * a.labelled, L), dtype=torch.uint8)
    prof[:, :3] = 255
    w = torch.tensor([0.4, 1.6, 1.4, 2.0])
    nbytes = logits.numel() * 4

    def run():
        if a.variant == "sparse":
            return sparse_ce(logits, idx, prof, w)
        dense = torch.full((B, L, S, S), 255, dtype=torch.long)
        dense[idx[:, 0], :, idx[:, 1], idx[:, 2]] = prof.long()
        return dense_gated_ce(logits, dense, w)

    # warm-up (allocator, thread pools), then memory, then time
    run().backward()
    logits.grad = None
    base = _kib("VmRSS")
    _reset_peak()
    loss = run()
    fwd_peak = _kib("VmHWM") - base
    _reset_peak()
    loss.backward()
    bwd_peak = _kib("VmHWM") - base
    value = float(loss)
    del loss
    tf, tb = [], []
    for _ in range(a.repeat):
        logits.grad = None
        t0 = time.perf_counter()
        loss = run()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        tf.append(t1 - t0)
        tb.append(t2 - t1)
    return {"variant": a.variant, "loss": value, "logits_MiB": nbytes / 2**20,
            "fwd_extra_MiB": max(fwd_peak, 0) / 2**20,
            "fwdbwd_extra_MiB": max(bwd_peak - nbytes, 0) / 2**20,
            "fwd_ms": 1e3 * sorted(tf)[len(tf) // 2], "bwd_ms": 1e3 * sorted(tb)[len(tb) // 2]}


def main(argv=None):
    p = benchcli.parser("loss_memory.py", __doc__)
    p.add_argument("--batch-size", "--batch", dest="batch", type=benchcli.positive, default=8, help="samples per batch (8)")
    p.add_argument("--size", type=benchcli.positive, default=128)
    p.add_argument("--levels", type=benchcli.positive, default=38)
    p.add_argument("--labelled", type=benchcli.positive, default=128, help="labelled pixels per patch (a track crossing it)")
    p.add_argument("--repeat", type=benchcli.positive, default=5)
    p.add_argument("--threads", type=benchcli.positive, default=2)
    p.add_argument("--variant", choices=("sparse", "dense"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.labelled > a.size * a.size:
        p.error(f"--labelled {a.labelled}: a {a.size}x{a.size} patch has only {a.size * a.size} pixels")
    if a.variant:
        print(json.dumps(worker(a)))
        return 0
    res = {}
    for v in ("sparse", "dense"):
        cmd = [sys.executable, __file__, "--variant", v] + [f"--{k}={getattr(a, k)}" for k in
                                                             ("batch", "size", "levels", "labelled", "repeat", "threads")]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        if out.returncode:
            sys.stderr.write(out.stderr)
            return 1
        res[v] = json.loads(out.stdout.strip().splitlines()[-1])
    s, d = res["sparse"], res["dense"]
    print(f"logits [{a.batch}, 4, {a.levels}, {a.size}, {a.size}] float32 = {s['logits_MiB']:.1f} MiB; "
          f"{a.labelled} labelled columns per patch; CPU, {a.threads} threads")
    print(f"{'':8}{'fwd extra MiB':>15}{'fwd+bwd extra MiB':>19}{'fwd ms':>9}{'bwd ms':>9}{'loss':>10}")
    for v in ("sparse", "dense"):
        r = res[v]
        print(f"{v:8}{r['fwd_extra_MiB']:15.2f}{r['fwdbwd_extra_MiB']:19.2f}{r['fwd_ms']:9.1f}{r['bwd_ms']:9.1f}"
              f"{r['loss']:10.5f}")
    same = abs(s['loss'] - d['loss']) < 1e-4 * abs(d['loss'])
    print(f"sparse/dense: forward memory {s['fwd_extra_MiB'] / max(d['fwd_extra_MiB'], 1e-9):.1%}, "
          f"forward+backward memory {s['fwdbwd_extra_MiB'] / max(d['fwdbwd_extra_MiB'], 1e-9):.1%} "
          f"(target <= 10%), time {(s['fwd_ms'] + s['bwd_ms']) / (d['fwd_ms'] + d['bwd_ms']):.1%}; "
          f"same loss: {same}")
    if not same:             # the two ways must compute one loss, or the comparison means nothing
        sys.stderr.write(f"loss_memory.py: error: the sparse and dense losses differ ({s['loss']} vs {d['loss']})\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "loss_memory.py"))
