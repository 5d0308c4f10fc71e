"""The study's runner: the learning-rate sweep, one run (train, evaluate, keep its small files), supersession."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tarfile
import time

import numpy as np

from sgmagnet.io import write_json

from .study_logs import log_wall_s
from .study_protocol import RUNS, overrides, sweep_grid


def train_days(shards: str, split: str = "train") -> int:
    """Distinct UTC days among the split's sample keys (YYYYMMDDTHHMM_...), read from the tar headers."""
    from sgmagnet.shards import shard_paths

    days = set()
    for p in shard_paths(shards, split):
        with tarfile.open(p) as t:
            days.update(os.path.basename(m.name)[:8] for m in t.getmembers())
    return len(days)


def train(over: list[str]) -> tuple[dict, float]:
    from sgmagnet.config import load_config
    from sgmagnet.train import run_training

    t0 = time.time()
    _, summary, preempted = run_training(load_config(None, over), resume=True, log=lambda m: None)  # resumes
    if preempted:        # exit 3, as `sgmagnet train`: a Slurm wrapper requeues on it; the trainer's loaders are closed
        sys.stderr.write(f"study: preempted; checkpoint {preempted.checkpoint} (run the study again to resume)\n")
        raise SystemExit(preempted.code)
    return summary, time.time() - t0


def sweep(a, preset: dict, families: list[str]) -> dict:
    """Learning rate per family: seed 0, preset['sweep_steps'] steps, best validation macro F1 wins.

    A family is done when every rate of its grid has a trial: widening the grid (a best rate at its edge)
    runs only the new trials and may change the choice. lr_sweep.json is re-read and rewritten under a file
    lock (<runs>/lr_sweep.lock), so study processes running side by side do not drop each other's trials."""
    path = os.path.join(a.out, "lr_sweep.json")

    def load():
        return json.load(open(path)) if os.path.exists(path) else {}

    def save(fam, entry):
        os.makedirs(a.runs, exist_ok=True)
        with open(os.path.join(a.runs, "lr_sweep.lock"), "a") as lock:   # read-modify-write, exclusively
            fcntl.flock(lock, fcntl.LOCK_EX)
            done = load()
            if done.get(fam) != entry:
                done[fam] = entry
                write_json(path, done, indent=1)

    for fam in families:
        model, opts, extra, _ = RUNS[fam]
        trials = load().get(fam, {}).get("trials", {})
        for lr in sweep_grid(preset, fam):
            if str(lr) in trials:
                continue
            run = os.path.join(a.runs, "sweep", f"{fam}_lr{lr}")
            summary, wall = train(overrides(a, preset, model, opts, extra, run, 0, lr, preset["sweep_steps"]))
            log = os.path.join(run, "log.jsonl")
            keep = os.path.join(a.out, "sweep", f"{fam}_lr{lr}")     # the trial's log, for git: its time is checkable
            os.makedirs(keep, exist_ok=True)
            shutil.copy(log, keep)
            trials[str(lr)] = {"best_val_macro_f1": summary["best"].get("val_macro_f1"),
                               "best_step": summary["best"].get("step"), "wall_s": log_wall_s(log) or round(wall, 1)}
            save(fam, {"trials": trials})
            print(f"sweep {fam} lr {lr}: best val macro F1 {trials[str(lr)]['best_val_macro_f1']:.4f} "
                  f"({trials[str(lr)]['wall_s']:.0f} s)", flush=True)
        grid = {str(lr) for lr in sweep_grid(preset, fam)}
        best = max(grid, key=lambda k: (trials[k]["best_val_macro_f1"] or -1, -float(k)))
        save(fam, {"trials": trials, "lr": float(best)})
    done = load()
    return {f: done[f]["lr"] for f in families if "lr" in done.get(f, {})}


def supersede(a, name: str, seed: int, old: float, new: float):
    """A finished run trained at a rate the (widened) sweep no longer picks: its kept files and run folder move
    to <out>/superseded/ and <runs>/superseded/ (nothing is deleted; its training time still counts) and the
    run is trained again at the new rate."""
    tag = f"{name}_s{seed}"
    for src, dst in ((os.path.join(a.out, "runs", tag), os.path.join(a.out, "superseded", f"{tag}_lr{old}")),
                     (os.path.join(a.runs, tag), os.path.join(a.runs, "superseded", f"{tag}_lr{old}"))):
        if os.path.exists(src):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.move(src, dst)
    print(f"{tag}: trained at lr {old}, the sweep now picks {new}: moved to superseded/, training again", flush=True)


def run_one(name: str, seed: int, a, preset: dict, lr: float, days: int) -> dict:
    from sgmagnet.evaluate import evaluate_checkpoint
    from sgmagnet.models import build_model, flops_per_sample
    from sgmagnet.shards import read_manifest

    model, opts, extra, _ = RUNS[name]
    run = os.path.join(a.runs, f"{name}_s{seed}")
    keep = os.path.join(a.out, "runs", f"{name}_s{seed}")
    res_path = os.path.join(keep, "study_run.json")
    if os.path.exists(res_path):
        with open(res_path) as f:
            kept = json.load(f)
        if kept["lr"] == lr:
            return kept
        supersede(a, name, seed, kept["lr"], lr)
    over = overrides(a, preset, model, opts, extra, run, seed, lr, preset["max_steps"])
    summary, wall = train(over)
    best = os.path.join(run, "checkpoints", "best")
    ev = evaluate_checkpoint(best, a.shards, "test", out=run, log=lambda m: None)
    log = [json.loads(x) for x in open(os.path.join(run, "log.jsonl"))]
    sps = [r["samples_per_s"] for r in log if r["kind"] == "train"][1:]
    m = build_model(model, preset["size"], **opts)
    patch = read_manifest(a.shards).patch_size
    out = {"name": name, "seed": seed, "model": model, "size": preset["size"], "options": opts, "extra": extra,
           "lr": lr, "steps": summary["steps"], "max_steps": preset["max_steps"],
           "selected_step": summary["best"]["step"], "val_macro_f1": summary["best"]["val_macro_f1"],
           "train_days": days, "patch": patch, "train_wall_s": log_wall_s(os.path.join(run, "log.jsonl")) or round(wall, 1),
           "samples_per_s": float(np.median(sps)) if sps else None,
           "parameters": sum(p.numel() for p in m.parameters()),
           "gflops_per_sample": flops_per_sample(m, patch, columns=True) / 1e9,
           "overall": ev["metrics"]["overall"], "strata": ev["metrics"]["strata"], "references": ev["references"],
           "manifest_sha256": ev["manifest_sha256"], "command": "sgmagnet train --resume " + " ".join(over)}
    os.makedirs(keep, exist_ok=True)
    for f in ("eval_test.md", "eval_test_patches.npz", "log.jsonl", "confusion_test.png", "config.yaml"):
        if os.path.exists(os.path.join(run, f)):
            shutil.copy(os.path.join(run, f), keep)
    write_json(res_path, out, indent=1)
    return out
