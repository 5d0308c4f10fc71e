"""The benchmark study: SGMAGNet vs the baselines and its ablations, same data, protocol and selection rule.

    python hpc/study.py --shards study_data/shards --out docs/study [--runs study_out] [--config cpu|gpu|tiny]
                        [--seeds 0,1,2] [--only NAME,...] [--phase sweep|main|all] [--report-only]
                        [--results docs/RESULTS.md]

Protocol (issue 15):
  1. learning rate per model family from a sweep on the validation split (seed 0, the preset's `sweep_lrs`,
     or its `sweep_lrs_family` grid for a family; the preset's `sweep_steps`): the rate whose run reached the
     best validation macro F1 wins (`lr_sweep.json`, tabled in study.md); ablations and size-matched variants
     use their family's rate. Widening a grid runs only the new rates; a finished run whose family then picks
     another rate moves to superseded/ and is trained again;
  2. every run trains until its validation macro F1 has not improved for `patience` validations (or
     `max_steps`); the checkpoint with the best validation macro F1 (`checkpoints/best`) is the one scored;
     study.md's convergence table says which of the two stopped each run and, for the cap, how much its last
     `patience` validations still gained;
  3. `sgmagnet evaluate` of that checkpoint on the test split, with the reference rows (top-layer oracle,
     climatology, all clear) and per-patch confusion matrices;
  4. tables: mean ± sd over seeds, and paired bootstrap 95 % intervals over test patches (the seed-mean
     macro F1 of each run, and its difference to SGMAGNet, resampling the same patches for every run);
  5. the SGMAGNet configuration is itself chosen on validation: among sgmagnet and its one-change variants
     with as many seeds as sgmagnet, the highest seed-mean validation macro F1 (ties keep sgmagnet). When a
     variant wins, study.md adds the baselines' test Δ against it (paired CI, P(Δ ≤ 0)); the ablation table
     still measures each change against sgmagnet as designed.
Runs:
  models      sgmagnet (v2), unet, unet3d, segnet, transformer (preset size)
  ablations   sgmagnet with: static height code, single-scale generator, no phase-aware gating (plain 4-way
              softmax), unweighted loss, focal loss (gamma = 2); and one addition: auxiliary losses at
              scales 2 and 4 on vertically pooled labels (loss.aux_weight = 0.5)
  size-matched baselines at SGMAGNet's parameter count (`-params`) or label-sparse FLOPs per sample
              (`-flops`), widths chosen at the demo size (docs/architecture.md)
Resumable and incremental: a finished run (its study_run.json) is kept; an unfinished one resumes from its
last checkpoint; --report-only rebuilds the tables and figures from what is finished. Run order: the sweep,
then seed 0 of the models, ablations and size-matched runs, then the other seeds (so a partial study
answers the main question first). Each run folder (under --runs, not for git) keeps checkpoints and
TensorBoard; --out/runs/<run>/ gets study_run.json (model, seed, lr, steps trained, selected step,
train_days, patch, scores overall and by stratum, reference rows, parameters, FLOPs, samples/s, wall time,
exact command), eval_test_patches.npz, eval_test.md, log.jsonl and config.yaml; --out/sweep/<family>_lr<rate>/
gets each sweep trial's log.jsonl; --out gets study.json, study.md and the figures. --results PAGE rewrites
the headline tables between the page's two study markers from study.md (checked before training: a page
without them stops the study with exit 2 and is not touched).
"""
from __future__ import annotations

import argparse
import fcntl
import glob
import json
import os
import shutil
import sys
import tarfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    # 2-core CPU, 64-pixel patches of the study archive (hpc/study_data.py), demo-size models
    "cpu": {"size": "demo", "max_steps": 3000, "batch": 8, "lr": 0.004, "warmup": 100, "val_every": 150,
            "patience": 4, "workers": 1, "sweep_lrs": [0.001, 0.002, 0.004, 0.008], "sweep_steps": 900, "threads": 1,
            # the 3D UNet trains ~16x slower per step than the Transformer on 2 cores (~45 min per 900-step trial):
            # its sweep is cut to the rate every other family chose (said in study.md)
            "sweep_lrs_family": {"unet3d": [0.002]}},
    # one GPU, 128-pixel patches, paper-size models
    "gpu": {"size": "paper", "max_steps": 40000, "batch": 16, "lr": 0.001, "warmup": 500, "val_every": 1000,
            "patience": 5, "workers": 8, "sweep_lrs": [0.0005, 0.001, 0.002], "sweep_steps": 8000, "threads": 0},
    # tests: seconds (the tiny test archive has no validation days: validates on test, never for results)
    "tiny": {"size": "tiny", "max_steps": 6, "batch": 2, "lr": 0.003, "warmup": 2, "val_every": 2,
             "patience": 2, "workers": 0, "sweep_lrs": [0.003, 0.01], "sweep_steps": 2, "threads": 1,
             "val_split": "test"},
}
# name -> (model, model options, extra config overrides, family whose learning rate it uses)
RUNS = {
    "sgmagnet": ("sgmagnet", {}, [], "sgmagnet"),
    "unet": ("unet", {}, [], "unet"),
    "unet3d": ("unet3d", {}, [], "unet3d"),
    "segnet": ("segnet", {}, [], "segnet"),
    "transformer": ("transformer", {}, [], "transformer"),
    "sgmagnet-static-height": ("sgmagnet", {"height": "static"}, [], "sgmagnet"),
    "sgmagnet-single-scale": ("sgmagnet", {"scales": [1]}, [], "sgmagnet"),
    "sgmagnet-no-gating": ("sgmagnet", {"gating": False}, ["loss.form=softmax"], "sgmagnet"),
    "sgmagnet-unweighted": ("sgmagnet", {}, ["loss.weights=none"], "sgmagnet"),
    "sgmagnet-focal": ("sgmagnet", {}, ["loss.gamma=2.0"], "sgmagnet"),
    "sgmagnet-aux": ("sgmagnet", {"aux": True}, ["loss.aux_weight=0.5"], "sgmagnet"),   # + coarse-scale aux losses
    # size-matched to SGMAGNet v2 demo (121,408 parameters; 1.21 GFLOP per 128-px sample on the column path)
    "unet-params": ("unet", {"width": 8}, [], "unet"),            # 123,688 parameters
    "unet-flops": ("unet", {"width": 16}, [], "unet"),            # 1.24 GFLOP
    "segnet-params": ("segnet", {"width": 14}, [], "segnet"),     # 125,410 parameters
    "segnet-flops": ("segnet", {"width": 20}, [], "segnet"),      # 1.15 GFLOP
    "unet3d-params": ("unet3d", {"width": 10}, [], "unet3d"),     # 116,654 parameters
}
MIN_BOOT = 40                          # bootstrap draws: 2.5 % of 40 is the first draw that is not the minimum
MODELS = ("sgmagnet", "unet", "unet3d", "segnet", "transformer")
ABLATIONS = tuple(n for n in RUNS if n.startswith("sgmagnet-"))
MATCHED = tuple(n for n in RUNS if n.endswith(("-params", "-flops")))


def train_days(shards: str, split: str = "train") -> int:
    """Distinct UTC days among the split's sample keys (YYYYMMDDTHHMM_...), read from the tar headers."""
    from sgmagnet.shards import shard_paths

    days = set()
    for p in shard_paths(shards, split):
        with tarfile.open(p) as t:
            days.update(os.path.basename(m.name)[:8] for m in t.getmembers())
    return len(days)


def overrides(a, preset: dict, model: str, opts: dict, extra: list, run: str, seed: int, lr: float,
              steps: int) -> list[str]:
    return [f"data.shards={a.shards}", f"train.run_dir={run}", f"train.steps={steps}", f"train.seed={seed}",
            f"model.name={model}", f"model.size={preset['size']}", f"data.batch_size={preset['batch']}",
            f"data.workers={preset['workers']}", f"optim.lr={lr}", f"optim.warmup_steps={preset['warmup']}",
            f"train.val_every={preset['val_every']}", f"train.ckpt_every={preset['val_every']}",
            f"train.patience={preset['patience']}", f"train.threads={preset['threads']}", "train.log_every=10",
            "train.progress=false", "model.options=" + json.dumps(opts)] + list(extra) + (
                [f"data.val_split={preset['val_split']}"] if "val_split" in preset else [])


def train(over: list[str]) -> tuple[dict, float]:
    from sgmagnet.config import load_config
    from sgmagnet.train import run_training

    t0 = time.time()
    _, summary, preempted = run_training(load_config(None, over), resume=True, log=lambda m: None)  # resumes
    if preempted:        # exit 3, as `sgmagnet train`: a Slurm wrapper requeues on it; the trainer's loaders are closed
        sys.stderr.write(f"study: preempted; checkpoint {preempted.checkpoint} (run the study again to resume)\n")
        raise SystemExit(preempted.code)
    return summary, time.time() - t0


def sweep_grid(preset: dict, fam: str) -> list[float]:
    """The learning rates a family is swept over: the preset's grid, or its per-family grid where it has one."""
    return list(preset.get("sweep_lrs_family", {}).get(fam, preset["sweep_lrs"]))


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
                _dump(path, done)

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


def _dump(path: str, obj):
    _dump_text(path, json.dumps(obj, indent=1))


def _dump_text(path: str, text: str):
    tmp = f"{path}.{os.getpid()}.tmp"          # one temporary name per process: two studies may write at once
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def log_wall_s(path: str) -> float | None:
    """Training seconds a run's log.jsonl records over all its sessions: each (re)start writes a header, and a
    session lasts from its header to its last record. (The study's own clock sees only the last session of a
    run that was preempted and resumed.) None when the log is missing."""
    if not os.path.exists(path):
        return None
    total, start, last = 0.0, None, None
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:            # a line cut short by a kill: its time is not known
                continue
            if rec.get("kind") == "header":
                if start is not None:
                    total += last - start
                start = last = rec["time"]
            elif start is not None and "time" in rec:
                last = rec["time"]
    return round(total + (last - start), 1) if start is not None else None


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
    _dump(res_path, out)
    return out


# ----------------------------------------------------------------------------------------- tables
def _ms(vals):
    v = np.asarray(vals, float)
    return f"{v.mean():.3f} ± {v.std(ddof=0):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def patch_cms(out: str, results: list[dict]) -> tuple[dict, dict]:
    """(run name -> [seeds, P, 4, 4], reference name -> [P, 4, 4]) aligned on the test keys common to all."""
    from sgmagnet.evaluate import load_patch_confusions

    loaded = {(r["name"], r["seed"]): load_patch_confusions(os.path.join(out, "runs", f"{r['name']}_s{r['seed']}",
                                                                         "eval_test_patches.npz"))
              for r in results}
    common = sorted(set.intersection(*(set(z["keys"].tolist()) for z in loaded.values())))
    order = {k: {key: i for i, key in enumerate(z["keys"].tolist())} for k, z in loaded.items()}
    take = lambda k, arr: arr[[order[k][c] for c in common]]  # noqa: E731
    runs = {}
    for (name, seed), z in sorted(loaded.items()):
        runs.setdefault(name, []).append(take((name, seed), z["model"]))
    first = next(iter(loaded))
    refs = {f[4:]: take(first, loaded[first][f]) for f in loaded[first] if f.startswith("ref_")}
    return {n: np.stack(v) for n, v in runs.items()}, refs


def variant_val_scores(results: list[dict]) -> dict:
    """sgmagnet and each one-change variant -> its runs' best validation macro F1s."""
    val = {}
    for r in results:
        if r["name"] == "sgmagnet" or r["name"] in ABLATIONS:
            val.setdefault(r["name"], []).append(r["val_macro_f1"])
    return val


def selected_variant(results: list[dict]) -> str | None:
    """The SGMAGNet configuration the protocol picks: among sgmagnet and its one-change variants with as many
    seeds as sgmagnet, the highest seed-mean validation macro F1 (test is not looked at; ties keep sgmagnet)."""
    val = variant_val_scores(results)
    if "sgmagnet" not in val:
        return None
    n = len(val["sgmagnet"])
    cands = [k for k, v in val.items() if len(v) == n]
    return max(cands, key=lambda k: (float(np.mean(val[k])), k == "sgmagnet"))


def bootstrap(runs: dict, refs: dict, n_boot: int, seed: int = 0, selected: str | None = None) -> dict:
    """Paired percentile bootstrap over test patches: per run the seed-mean macro F1 and its difference to
    sgmagnet (and to the validation-selected SGMAGNet configuration, when given); the same resampled patches
    for every run and reference (95 % intervals)."""
    from sgmagnet.metrics import macro_f1 as macro

    P = next(iter(runs.values())).shape[1]
    idx = np.random.default_rng(seed).integers(0, P, size=(n_boot, P))

    def draws(c):                       # [S, P, 4, 4] -> [n_boot] seed-mean macro F1 on resampled patches
        c = c.astype(np.float64)
        return np.stack([macro(c[:, i].sum(1)).mean(0) for i in idx])
    d = {n: draws(c) for n, c in runs.items()}
    d.update({f"ref:{n}": draws(c[None]) for n, c in refs.items()})
    point = {n: float(macro(c.astype(np.float64).sum(1)).mean()) for n, c in runs.items()}
    point.update({f"ref:{n}": float(macro(c.astype(np.float64).sum(0))) for n, c in refs.items()})
    against = {"minus_sgmagnet": "sgmagnet", "minus_selected": selected, "minus_oracle": "ref:oracle"}
    out = {}
    for n, v in d.items():
        lo, hi = np.quantile(v, [0.025, 0.975])
        out[n] = {"macro_f1": point[n], "low": float(lo), "high": float(hi)}
        for key, base in against.items():
            if base in d and n != base:
                diff = v - d[base]
                dlo, dhi = np.quantile(diff, [0.025, 0.975])
                out[n][key] = {"point": point[n] - point[base], "low": float(dlo), "high": float(dhi),
                               "p_le_0": float((diff <= 0).mean())}
    return {"patches": int(P), "n_boot": n_boot, "selected": selected, "runs": out}


def tables(results: list[dict], boot: dict, preset_name: str, preset: dict, a, lrs: dict) -> str:
    from sgmagnet.metrics import paper_comparable

    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    ref = results[0]["references"]
    b = boot["runs"]
    r0 = results[0]
    out = [f"Configuration `{preset_name}`: {json.dumps(preset)}; shards `{a.shards}` (manifest sha256 "
           f"`{r0['manifest_sha256'][:16]}…`, {r0['train_days']} training days, {r0['patch']}-px patches); "
           f"learning rates from the validation sweep: {json.dumps(lrs)}. Test split, {boot['patches']} patches. "
           "Macro F1: mean ± sd over seeds; 95 % CI: paired bootstrap over test patches "
           f"({boot['n_boot']} draws) of the seed-mean; Δ vs SGMAGNet with its paired 95 % CI.", ""]
    head = ("| run | seeds | macro F1 | 95 % CI | Δ vs SGMAGNet [95 % CI] | Δ vs oracle [95 % CI] | macro IoU | "
            "phase F1 | mask F1 | selected step | params | GFLOP/sample | samples/s |")
    sep = "|---" * 13 + "|"

    def delta(n, key="minus_sgmagnet"):
        d = b.get(n, {}).get(key)
        return f"{d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "–"

    def row(name, rs):
        o = [r["overall"] for r in rs]
        ci = b.get(name)
        return (f"| {name} | {len(rs)} | {_ms([x['macro']['f1'] for x in o])} | "
                + (f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "–") + " | "
                f"{delta(name)} | {delta(name, 'minus_oracle')} | {_ms([x['macro']['iou'] for x in o])} | {_ms([x['phase_macro']['f1'] for x in o])} | "
                f"{_ms([x['cloud_mask']['f1'] for x in o])} | {np.mean([r['selected_step'] for r in rs]):.0f} | "
                f"{rs[0]['parameters']:,} | {rs[0]['gflops_per_sample']:.3f} | "
                f"{np.mean([r['samples_per_s'] or 0 for r in rs]):.1f} |")

    def refrow(name, key):
        r, ci = ref[key]["overall"], b.get(f"ref:{key}")
        return (f"| {name} | – | {r['macro']['f1']:.3f} | " + (f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "–")
                + " | – | " + delta(f"ref:{key}", "minus_oracle")
                + f" | {r['macro']['iou']:.3f} | {r['phase_macro']['f1']:.3f} | {r['cloud_mask']['f1']:.3f} "
                "| – | – | – | – |")
    for title, names in (("Models", MODELS), ("SGMAGNet ablations and the aux-loss variant (one component changed)", ("sgmagnet",) + ABLATIONS),
                         ("Size-matched baselines", ("sgmagnet",) + MATCHED)):
        rows = [row(n, by[n]) for n in names if n in by]
        if len(rows) > (1 if names[0] == "sgmagnet" and title != "Models" else 0):
            out += [f"### {title}", "", head, sep] + rows
            if title == "Models":
                out += [refrow("top-layer oracle ±1 km (reference)", "oracle")] if "oracle" in ref else []
                out += [refrow("climatology (reference)", "climatology"), refrow("all clear (reference)", "all_clear")]
            out.append("")

    sel = boot.get("selected")
    if sel and sel != "sgmagnet":
        val = {n: np.mean(v) for n, v in variant_val_scores(results).items()}
        out += [f"### Baselines vs the validation-selected SGMAGNet configuration (`{sel}`)", "",
                f"The protocol's choice among SGMAGNet and its one-change variants with {len(by['sgmagnet'])} seeds: "
                "the highest seed-mean validation macro F1 (" + ", ".join(f"{n} {v:.3f}" for n, v in
                                                                       sorted(val.items(), key=lambda x: -x[1]))
                + "). Test Δ = baseline − selected, paired bootstrap over test patches; P(Δ ≤ 0) = share of draws "
                "in which the baseline does not beat it.", "",
                f"| run | seeds | macro F1 | Δ vs {sel} [95 % CI] | P(Δ ≤ 0) |", "|---" * 5 + "|"]
        for n in (n for n in ("sgmagnet",) + MODELS[1:] + MATCHED if n in by):
            d = b[n].get("minus_selected")
            out.append(f"| {n} | {len(by[n])} | {_ms([r['overall']['macro']['f1'] for r in by[n]])} | "
                       + (f"{d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['p_le_0']:.2f} |" if d
                          else "– | – |"))
        out.append("")

    def pc(o):
        return o.get("paper_comparable") or paper_comparable(o["confusion"])
    out += ["### Paper-comparable block (micro over the 3 phases with clear as negative; support-weighted over "
            "4 classes; pooled cloud mask)", "", "| run | micro-phase P | micro-phase R | micro-phase F1 | "
            "micro-phase IoU | weighted F1 | mask IoU |", "|---" * 7 + "|"]
    keys = (("micro_phase", "precision"), ("micro_phase", "recall"), ("micro_phase", "f1"), ("micro_phase", "iou"),
            ("weighted", "f1"), ("mask_pooled", "iou"))
    for n in RUNS:
        if n in by:
            ps = [pc(r["overall"]) for r in by[n]]
            out.append(f"| {n} | " + " | ".join(_ms([p[x][y] for p in ps]) for x, y in keys) + " |")
    for k in ("oracle", "climatology", "all_clear"):
        if k in ref:
            p = pc(ref[k]["overall"])
            out.append(f"| {k.replace('_', ' ')} (reference) | " + " | ".join(f"{p[x][y]:.3f}" for x, y in keys) + " |")
    out += ["", "### Per-class F1 (mean over seeds)", "", "| run | clear | ice | mixed | liquid |", "|---" * 5 + "|"]
    for n in RUNS:
        if n in by:
            out.append(f"| {n} | " + " | ".join(_ms([r["overall"]["per_class"][c]["f1"] for r in by[n]])
                                               for c in ("clear", "ice", "mixed", "liquid")) + " |")
    for k in ("oracle", "climatology"):
        if k in ref:
            out.append(f"| {k} (reference) | " + " | ".join(f"{ref[k]['overall']['per_class'][c]['f1']:.3f}"
                                                          for c in ("clear", "ice", "mixed", "liquid")) + " |")
    for fam in results[0]["strata"]:
        strata = sorted({s for r in results for s in r["strata"][fam]})
        out += ["", f"### Macro F1 by {fam}", "", "| run | " + " | ".join(strata) + " |", "|---" * (len(strata) + 1) + "|"]
        for n in RUNS:
            if n not in by:
                continue
            cells = []
            for s in strata:
                v = [r["strata"][fam][s]["macro"]["f1"] for r in by[n] if s in r["strata"][fam]]
                cells.append(_ms(v) if v else "–")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        for k in ("oracle", "climatology"):
            if k in ref:
                cl = ref[k]["strata"][fam]
                out.append(f"| {k} | " + " | ".join(f"{cl[s]['macro']['f1']:.3f}" if s in cl else "–" for s in strata) + " |")
        counts = [str(results[0]["strata"][fam][s]["voxels"]) if s in results[0]["strata"][fam] else "0" for s in strata]
        out.append("| labelled voxels | " + " | ".join(counts) + " |")
    return "\n".join(out) + "\n"


def figures(results: list[dict], boot: dict, out: str):
    """Learning curves (seed 0), macro F1 per run with bootstrap CIs, and the Pareto plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from sgmagnet.plots import loss_curves_png

    s0 = min(r["seed"] for r in results)
    logs = {r["name"]: os.path.join(out, "runs", f"{r['name']}_s{r['seed']}", "log.jsonl") for r in results if r["seed"] == s0}
    loss_curves_png({n: p for n, p in logs.items() if n in MODELS}, os.path.join(out, "curves_models.png"))
    loss_curves_png({n: p for n, p in logs.items() if n == "sgmagnet" or n in ABLATIONS},
                    os.path.join(out, "curves_ablations.png"))
    b, ref = boot["runs"], results[0]["references"]
    names = [n for n in RUNS if n in b]
    fig, ax = plt.subplots(figsize=(10, 3.8), constrained_layout=True)
    y = [b[n]["macro_f1"] for n in names]
    err = [[b[n]["macro_f1"] - b[n]["low"] for n in names], [b[n]["high"] - b[n]["macro_f1"] for n in names]]
    ax.bar(range(len(names)), y, yerr=err, capsize=3,
           color=["#4a90d9" if n in MODELS else "#9b59b6" if n in ABLATIONS else "#e67e22" for n in names])
    for key, style, label in (("oracle", "-.", "top-layer oracle"), ("climatology", "--", "climatology"),
                              ("all_clear", ":", "all clear")):
        if key in ref:
            ax.axhline(ref[key]["overall"]["macro"]["f1"], color="k", ls=style, lw=1, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test macro F1 (seed mean, 95 % CI)")
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "macro_f1.png"), dpi=110)
    plt.close(fig)
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    sel = boot.get("selected") or "sgmagnet"
    labelled = [n for n in names if n not in ABLATIONS or n == sel]      # other ablations: unlabelled dots
    colour = {n: "#4a90d9" if n in MODELS else "#9b59b6" if n in ABLATIONS else "#e67e22" for n in names}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for ax, key, label, better in ((axes[0], "gflops_per_sample", "GFLOP per sample (label-sparse forward)", -1),
                                   (axes[1], "samples_per_s", "training samples/s (this machine)", +1)):
        pts = {n: np.mean([r[key] or np.nan for r in by[n]]) for n in names}
        pts = {n: x for n, x in pts.items() if np.isfinite(x) and x > 0}
        if not pts:                     # e.g. runs too short to record a throughput
            ax.text(0.5, 0.5, "not recorded", ha="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            continue
        for n, x in pts.items():
            y = b[n]["macro_f1"]
            if n in labelled:
                ax.errorbar(x, y, yerr=[[y - b[n]["low"]], [b[n]["high"] - y]], fmt="o", color=colour[n],
                            capsize=2, lw=1)
            else:
                ax.plot(x, y, "o", ms=4, color=colour[n], alpha=0.5)
        # labels of the labelled points, nudged apart vertically so close scores stay readable
        placed = []
        for n in sorted((n for n in pts if n in labelled), key=lambda n: b[n]["macro_f1"]):
            x, y = pts[n], b[n]["macro_f1"]
            ty = y
            while any(abs(np.log10(x / px)) < 0.35 and abs(ty - py) < 0.006 for px, py in placed):
                ty += 0.006
            placed.append((x, ty))
            ax.annotate(n + (" (selected)" if n == sel and n != "sgmagnet" else ""), (x, y), xytext=(x, ty),
                        textcoords="data", fontsize=7, ha="left", va="bottom",
                        arrowprops=None if ty == y else {"arrowstyle": "-", "lw": 0.4, "color": "0.5"})
        # the Pareto front: no other run is both cheaper (faster) and better
        front = sorted(pts, key=lambda n: (-better * pts[n], -b[n]["macro_f1"]))    # best cost first
        best, line = -1.0, []
        for n in front:
            if b[n]["macro_f1"] > best:
                best = b[n]["macro_f1"]
                line.append((pts[n], best))
        ax.step([p[0] for p in line], [p[1] for p in line], where="post",
                color="0.6", lw=0.8, ls="--", label="Pareto front")
        ax.plot([], [], "o", ms=4, color="#9b59b6", alpha=0.5, label="other SGMAGNet ablations")
        if "oracle" in ref:
            ax.axhline(ref["oracle"]["overall"]["macro"]["f1"], color="k", ls="-.", lw=1, label="top-layer oracle")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(label + (" — fewer is better" if better < 0 else " — more is better"))
        ax.set_ylabel("test macro F1 (seed mean, 95 % CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if better < 0 else "lower left")
    fig.savefig(os.path.join(out, "pareto.png"), dpi=110)
    plt.close(fig)


def sweep_table(out: str, preset: dict) -> str:
    """The learning-rate sweep as a table: best validation macro F1 (and its step) per family and rate; the
    chosen rate in bold; a note where the choice sits on the grid's edge or the family's grid was cut."""
    path = os.path.join(out, "lr_sweep.json")
    if not os.path.exists(path):
        return ""
    done = json.load(open(path))
    rates = sorted({float(k) for v in done.values() for k in v.get("trials", {})})
    lines = ["### Learning-rate sweep (validation macro F1 at the best step of "
             f"{preset['sweep_steps']}, seed 0)", "",
             "| family | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen | note |",
             "|---" * (len(rates) + 3) + "|"]
    for fam, v in sorted(done.items()):
        t = {float(k): x for k, x in v.get("trials", {}).items()}
        cells = []
        for r in rates:
            if r not in t:
                cells.append("–")
                continue
            c = f"{t[r]['best_val_macro_f1']:.3f} (step {t[r]['best_step']})"
            cells.append(f"**{c}**" if v.get("lr") == r else c)
        grid = sorted(sweep_grid(preset, fam))
        note = []
        if len(grid) < len(preset["sweep_lrs"]):
            note.append(f"grid cut to {', '.join(f'{g:g}' for g in grid)} for cost")
        elif "lr" in v and v["lr"] in (grid[0], grid[-1]):
            note.append("chosen rate on the grid's edge")
        if "lr" not in v:
            note.append("unfinished")
        lines.append(f"| {fam} | " + " | ".join(cells) + f" | {v.get('lr', '–')} | {'; '.join(note)} |")
    return "\n".join(lines) + "\n"


def convergence_table(out: str, results: list[dict], preset: dict) -> str:
    """Did each run reach a validation plateau? From its kept log.jsonl: what stopped it (patience or the
    max_steps cap) and, for the cap, how much the best validation macro F1 of its last `patience`
    validations exceeds the best before them (> 0: still improving when the cap stopped it)."""
    k = preset["patience"]
    lines = [f"### Convergence (stopped by `patience` = {k} validations without a better validation macro F1, "
             f"or by the `max_steps` cap)", "",
             "| run | seed | steps | stopped by | selected step | best val macro F1 | gain in the last "
             f"{k} validations |", "|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["name"], r["seed"])):
        log = os.path.join(out, "runs", f"{r['name']}_s{r['seed']}", "log.jsonl")
        val = []
        if os.path.exists(log):
            with open(log) as f:
                val = [x["val_macro_f1"] for x in map(json.loads, f) if x.get("kind") == "val"]
        capped = r["steps"] >= r.get("max_steps", preset["max_steps"])
        gain = f"{max(val[-k:]) - max(val[:-k]):+.3f}" if capped and len(val) > k else "–"
        lines.append(f"| {r['name']} | {r['seed']} | {r['steps']} | {'cap' if capped else 'patience'} | "
                     f"{r['selected_step']} | {r['val_macro_f1']:.3f} | {gain} |")
    return "\n".join(lines) + "\n"


def training_wall(out: str, results: list[dict]) -> dict:
    """Seconds of training the study's files record: every learning-rate sweep trial and every finished run
    (so a study that was stopped and resumed across sessions still adds up correctly). A sweep trial whose log
    is kept (<out>/sweep/<family>_lr<rate>/log.jsonl) counts every session of it; an older trial, without one,
    counts the study's clock (lr_sweep.json's wall_s: its last session only)."""
    path = os.path.join(out, "lr_sweep.json")
    sweep_s = sum(log_wall_s(os.path.join(out, "sweep", f"{name}_lr{lr}", "log.jsonl")) or t.get("wall_s", 0.0)
                  for name, fam in (json.load(open(path)).items() if os.path.exists(path) else [])
                  for lr, t in fam.get("trials", {}).items())
    runs_s = sum(r.get("train_wall_s", 0.0) for r in results)
    old_s = sum(log_wall_s(os.path.join(os.path.dirname(p), "log.jsonl")) or json.load(open(p)).get("train_wall_s", 0.0)
                for p in glob.glob(os.path.join(out, "superseded", "*", "study_run.json")))
    return {"sweep": round(sweep_s, 1), "runs": round(runs_s, 1), "superseded_runs": round(old_s, 1),
            "total": round(sweep_s + runs_s + old_s, 1)}


def report(a, preset_name: str, preset: dict, lrs: dict) -> int:
    results = []
    for p in sorted(glob.glob(os.path.join(a.out, "runs", "*", "study_run.json"))):
        with open(p) as f:
            results.append(json.load(f))
    if not results:
        print("no finished run yet", flush=True)
        return 0
    for r in results:                   # wall time from the kept log: counts every session of a resumed run
        r["train_wall_s"] = log_wall_s(os.path.join(a.out, "runs", f"{r['name']}_s{r['seed']}", "log.jsonl")) or (
            r.get("train_wall_s", 0.0))
    runs, refs = patch_cms(a.out, results)
    boot = bootstrap(runs, refs, a.n_boot, selected=selected_variant(results))
    index = [{k: r[k] for k in ("name", "seed", "model", "options", "lr", "steps", "selected_step", "val_macro_f1",
                                 "train_days", "patch", "parameters", "gflops_per_sample", "samples_per_s",
                                 "train_wall_s", "command")} | {"macro": r["overall"]["macro"],
                                                                "metrics": f"runs/{r['name']}_s{r['seed']}/study_run.json"}
             for r in results]
    spent = training_wall(a.out, results)
    _dump(os.path.join(a.out, "study.json"),
          {"config": preset_name, "preset": preset, "shards": a.shards, "manifest_sha256": results[0]["manifest_sha256"],
           "lr": lrs, "bootstrap": boot, "train_wall_s": spent, "runs": index})
    md = tables(results, boot, preset_name, preset, a, lrs) + "\n\n" + sweep_table(a.out, preset) + "\n\n" + (
        convergence_table(a.out, results, preset)) + (
        f"\n\nTraining wall time so far (from the runs' own records; evaluation and tables not included): "
        f"sweep {spent['sweep'] / 3600:.2f} h, runs {spent['runs'] / 3600:.2f} h, superseded runs "
        f"{spent['superseded_runs'] / 3600:.2f} h, total {spent['total'] / 3600:.2f} h "
        f"on 2 CPU cores shared with other work.\n")
    figures(results, boot, a.out)
    with open(os.path.join(a.out, "study.md"), "w") as f:
        f.write(md)
    print(md, flush=True)
    if a.results:
        splice_results(a.results, md)
    return 0


RESULTS_BEGIN = "<!-- study tables: begin (written by hpc/study.py --results; edit the prose around them) -->"
RESULTS_END = "<!-- study tables: end -->"


def results_problem(path: str) -> str | None:
    """Why `path` cannot take the study's tables (checked before any training), or None."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        return getattr(e, "strerror", None) or str(e)
    if text.count(RESULTS_BEGIN) != 1 or text.count(RESULTS_END) != 1 or text.index(RESULTS_BEGIN) > text.index(RESULTS_END):
        return f"needs one line '{RESULTS_BEGIN}' followed by one line '{RESULTS_END}'"
    return None


def splice_results(path: str, md: str):
    """Replace the block between RESULTS_BEGIN and RESULTS_END in `path` with study.md's headline tables (Models
    through the validation-selected comparison and the paper-comparable block, the sweep and the convergence
    table), so the tables a results page shows are the study's own, never copied by hand. Per-class F1 and the
    strata stay in study.md."""
    text = open(path, encoding="utf-8").read()
    head, rest = md.split("\n### Per-class F1", 1)
    tail = rest.split("\n### Learning-rate sweep", 1)
    block = head[head.index("### Models"):].rstrip() + ("\n\n### Learning-rate sweep" + tail[1] if len(tail) > 1 else "")
    block = block.split("\n\nTraining wall time so far")[0].rstrip()
    before, after = text.split(RESULTS_BEGIN)[0], text.split(RESULTS_END)[1]
    _dump_text(path, before + RESULTS_BEGIN + "\n\n" + block + "\n\n" + RESULTS_END + after)


def main(argv=None):
    from sgmagnet.cli import Parser

    p = Parser(prog="study.py", description=__doc__.split("\n\n")[0])     # bad option: one line, exit 2
    p.add_argument("--shards", default="study_data/shards", help="shards folder (hpc/study_data.py)")
    p.add_argument("--out", default="docs/study", help="results: tables, JSON, small per-run files (for git)")
    p.add_argument("--runs", default="study_out", help="run folders (checkpoints, TensorBoard): not for git")
    p.add_argument("--config", choices=tuple(PRESETS), default="cpu", help="preset (cpu)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (0,1,2)")
    p.add_argument("--only", help="comma-separated run names (default: all)")
    p.add_argument("--phase", choices=("sweep", "main", "all"), default="all", help="what to run (all)")
    p.add_argument("--n-boot", type=int, default=2000, help=f"bootstrap draws, at least {MIN_BOOT}")
    p.add_argument("--report-only", action="store_true", help="only rebuild tables and figures from finished runs")
    p.add_argument("--results", metavar="MD", help="also rewrite the tables between the study markers of this "
                   "results page (e.g. docs/RESULTS.md) from study.md")
    a = p.parse_args(argv)
    preset = dict(PRESETS[a.config])
    if a.only is not None and not a.only.strip(","):
        p.error("--only: no run named (leave it out to run them all)")
    names = a.only.split(",") if a.only else list(RUNS)
    for n in names:
        if n not in RUNS:
            p.error(f"--only: unknown run {n!r}; choose from {', '.join(RUNS)}")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: {a.seeds!r} is not a comma-separated list of integers")
    if min(seeds) < 0 or len(set(seeds)) < len(seeds):
        p.error(f"--seeds: {a.seeds!r}: seeds must be distinct and >= 0")
    if a.n_boot < MIN_BOOT:          # fewer draws cannot place the 2.5th and 97.5th percentiles on distinct draws
        p.error(f"--n-boot: {a.n_boot} draws; need at least {MIN_BOOT} for a 95 % interval")
    if a.results and (why := results_problem(a.results)):
        p.error(f"--results {a.results}: {why}")
    from sgmagnet.shards import ManifestError, read_manifest

    try:
        man = read_manifest(a.shards)
    except ManifestError as e:
        p.error(f"--shards: {e}")
    val = preset.get("val_split", "val")
    if not a.report_only and not man.counts.get(val):
        p.error(f"--shards {a.shards}: the {a.config} preset validates on {val!r}, which has no samples "
                f"(counts {man.counts})")
    for flag, d in (("--out", a.out), ("--runs", a.runs)):
        if os.path.exists(d) and not os.path.isdir(d):
            p.error(f"{flag} {d!r} is a file, not a folder")
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()
    families = sorted({RUNS[n][3] for n in names})
    lrs = {}
    if not a.report_only:
        if a.phase in ("sweep", "all"):
            lrs = sweep(a, preset, families)
        if a.phase in ("main", "all"):
            lrs = lrs or sweep(a, preset, families)
            days = train_days(a.shards)
            order = [(s, n) for s in seeds for grp in (MODELS, ABLATIONS, MATCHED) for n in grp if n in names]
            for seed, n in order:
                r = run_one(n, seed, a, preset, lrs[RUNS[n][3]], days)
                print(f"[{time.time() - t0:6.0f} s] {n} seed {seed}: test macro F1 {r['overall']['macro']['f1']:.3f} "
                      f"(best val {r['val_macro_f1']:.3f} at step {r['selected_step']} of {r['steps']}; "
                      f"{r['train_wall_s']:.0f} s)", flush=True)
    path = os.path.join(a.out, "lr_sweep.json")
    lrs = lrs or ({f: v["lr"] for f, v in json.load(open(path)).items() if "lr" in v} if os.path.exists(path) else {})
    return report(a, a.config, preset, lrs)


def cli(argv=None) -> int:
    """main() with the bad-input contract for what only a run finds (a config the trainer refuses, damaged
    shards): one line, exit 2."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"study.py: error: {' '.join(str(e).split())}\n")
        return 2


if __name__ == "__main__":
    sys.exit(cli())
