"""Training from a large archive against a small one, side by side in one run: start-up, loader throughput,
validation cost, and (--resume-check) an exact resume on the large one.

    python hpc/bench/scale_train.py --small SHARDS_45D --large SHARDS_365D [--batches 150] [--workers 2]
                                    [--rounds 2] [--resume-check RUN_DIR] [--json out.json]

start-up   wall seconds from nothing to the first training batch: the manifest read, the training shards
           listed, a Trainer built (tiny UNet; the loss weights, the normaliser, the streams), and its first
           batch (DataLoader workers started, shards opened, the shuffle buffer filled)
loader     samples/s of the training stream (data.workers DataLoader workers, batch 8) over --batches batches
           after the first
validation samples/s of the validation loader over the same number of batches on both archives (the smaller
           split's, at most --batches): shards opened, decoded, batched
Rounds alternate small/large; the best of each is reported, and the ratio large/small (goal >= 0.9, start-up
< 10 s). --resume-check: 12 steps on the large archive with a checkpoint at step 6, then the same run rewound
to step 6 and resumed: the final weights must be bit-identical (exit 1 when not).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from hpc.bench import benchcli  # noqa: E402


VAL_SPLIT = ["val"]


def cfg_for(shards: str, run: str, workers: int, *over):
    from sgmagnet.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return load_config(os.path.join(root, "configs", "tiny.yaml"),
                       [f"data.shards={shards}", f"train.run_dir={run}", "model.name=unet", f"data.workers={workers}",
                        "data.batch_size=8", "data.shuffle_buffer=64", f"data.val_split={VAL_SPLIT[0]}", *over])


def measure(shards: str, batches: int, workers: int, val_batches: int) -> dict:
    import itertools

    from sgmagnet.loaders import iterate, loader
    from sgmagnet.shards import read_manifest, split_urls
    from sgmagnet.train import Trainer

    out = {}
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        man = read_manifest(shards)
        t1 = time.perf_counter()
        urls = split_urls(shards, "train")
        t2 = time.perf_counter()
        tr = Trainer(cfg_for(shards, run, workers), log=lambda m: None)
        it = tr._batches = iter(tr.stream)
        next(it)
        t3 = time.perf_counter()
        out.update(shards=len(man.shards), train_shards=len(urls), train_samples=man.counts["train"],
                   read_manifest_s=t1 - t0, list_shards_s=t2 - t1, startup_s=t3 - t0)
        n, t4 = 0, time.perf_counter()
        for b in itertools.islice(it, batches):
            n += len(b["keys"])
        out["loader_samples_per_s"] = n / (time.perf_counter() - t4)
        tr.close()
    val = split_urls(shards, VAL_SPLIT[0])
    t5 = time.perf_counter()
    with iterate(loader("validation", val, tr.norm, batch_size=8, workers=workers)) as vb:
        nv = sum(len(b["keys"]) for b in itertools.islice(vb, val_batches))
    out.update(val_shards=len(val), val_samples_per_s=nv / (time.perf_counter() - t5))
    return out


def resume_check(shards: str, folder: str, workers: int = 2) -> bool:
    import torch

    from sgmagnet.train import run_training

    over = ["train.steps=12", "train.ckpt_every=6", "train.keep_checkpoints=3", "train.val_every=0",
            "data.val_split=", "train.progress=false"]
    full, part = os.path.join(folder, "full"), os.path.join(folder, "resumed")
    for d in (full, part):
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    run_training(cfg_for(shards, full, workers, *over), log=lambda m: None)
    t_full = time.perf_counter() - t0
    shutil.copytree(full, part)
    ck = os.path.join(part, "checkpoints")
    shutil.rmtree(os.path.join(ck, "step_0000012"))
    with open(os.path.join(ck, "latest"), "w") as f:
        f.write("step_0000006\n")
    t0 = time.perf_counter()
    run_training(cfg_for(shards, part, workers, *over), resume=True, log=lambda m: None)
    t_res = time.perf_counter() - t0
    a = torch.load(os.path.join(full, "checkpoints", "step_0000012", "state.pt"), weights_only=True)["model"]
    b = torch.load(os.path.join(ck, "step_0000012", "state.pt"), weights_only=True)["model"]
    same = all(torch.equal(a[k], b[k]) for k in a)
    print(f"resume check on {shards}: 12 steps {t_full:.1f} s; resumed at step 6 and finished in {t_res:.1f} s; "
          f"final weights {'bit-identical' if same else 'DIFFERENT'}")
    return same


def main(argv=None) -> int:
    p = benchcli.parser("scale_train.py", __doc__)
    p.add_argument("--small", required=True, help="shard folder of the small archive (e.g. 45 days)")
    p.add_argument("--large", required=True, help="shard folder of the large archive (e.g. 365 days)")
    p.add_argument("--batches", type=benchcli.positive, default=150)
    p.add_argument("--workers", type=benchcli.count0, default=2)
    p.add_argument("--rounds", type=benchcli.positive, default=2)
    p.add_argument("--resume-check", metavar="DIR", help="also check an exact resume on --large (runs under DIR)")
    p.add_argument("--val-split", default="val", help="the split validation reads (val)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    VAL_SPLIT[0] = a.val_split
    from sgmagnet.shards import read_manifest

    for s in (a.small, a.large):
        read_manifest(s)              # a folder that is not a shard set: one line, exit 2
    # the same validation work on both: as many batches as the smaller validation split holds
    val_batches = min([a.batches] + [-(-read_manifest(s).counts.get(VAL_SPLIT[0], 0) // 8) for s in (a.small, a.large)])
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for name, shards in (("small", a.small), ("large", a.large)):
            m = measure(shards, a.batches, a.workers, max(1, val_batches))
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in m.items()), flush=True)
            b = best.setdefault(name, dict(m))
            for k in ("loader_samples_per_s", "val_samples_per_s"):
                b[k] = max(b[k], m[k])
            for k in ("startup_s", "read_manifest_s", "list_shards_s"):
                b[k] = min(b[k], m[k])
    s, g = best["small"], best["large"]
    print(f"\n{'':>12}{'shards':>8}{'start-up s':>12}{'loader sa/s':>13}{'val sa/s':>10}")
    for name in ("small", "large"):
        x = best[name]
        print(f"{name:>12}{x['shards']:>8}{x['startup_s']:>12.2f}{x['loader_samples_per_s']:>13.1f}"
              f"{x['val_samples_per_s']:>10.1f}")
    ratio = {k: g[k] / s[k] for k in ("loader_samples_per_s", "val_samples_per_s")}
    print(f"large / small: loader {ratio['loader_samples_per_s']:.2f} (goal >= 0.90), validation "
          f"{ratio['val_samples_per_s']:.2f}; start-up of the large archive {g['startup_s']:.2f} s (goal < 10 s)")
    ok = True
    if a.resume_check:
        ok = resume_check(a.large, a.resume_check, a.workers)
        best["resume_bit_identical"] = ok
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"best": best, "ratio": ratio, "workers": a.workers, "batches": a.batches, "val_batches": val_batches,
                       "cpus": os.cpu_count()}, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "scale_train.py"))
