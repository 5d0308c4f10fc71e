"""The benchmark study: SGMAGNet vs the baselines, and SGMAGNet ablations, same data and budget.

    python hpc/study.py --shards demo_out/shards --out docs/study_cpu [--runs study_out] [--config cpu|gpu]
                        [--seeds 0,1] [--only NAME,...] [--steps N]

Every run trains with the same shards, optimiser, schedule, batch, step budget and seeds (the `cpu` or
`gpu` preset below), then `sgmagnet evaluate` scores it on the held-out test split. Runs:
  models     sgmagnet, unet, unet3d, segnet, transformer
  ablations  sgmagnet with: static height code (no dynamic height encoder), single-scale generator,
             no phase-aware gating (plain head and a plain 4-way softmax), unweighted loss,
             focal loss (gamma = 2)
Each run folder (under --runs) keeps its config, log.jsonl, TensorBoard, checkpoints, eval_test.json/.md and
PNGs; --out/runs/<run>/ gets study_run.json (the run's metrics overall and by stratum, reference rows,
parameters, FLOPs, samples/s, wall time, exact command) and copies of eval_test.md, log.jsonl, config, the
confusion matrix and one curtain; the study writes --out/study.json (an index of the runs) and --out/study.md (mean ± spread over seeds, the reference rows,
stratified tables). Finished runs are skipped on a rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PRESETS = {
    # 2-core CPU, ~35 min for everything with 2 seeds on the demo shards (64-pixel patches)
    "cpu": {"size": "demo", "steps": 60, "batch": 8, "lr": 0.004, "warmup": 10, "val_every": 30, "workers": 1},
    # one GPU, 128-pixel patches, paper-size models
    "gpu": {"size": "paper", "steps": 20000, "batch": 16, "lr": 0.001, "warmup": 500, "val_every": 2000, "workers": 8},
}
RUNS = {
    "sgmagnet": ("sgmagnet", {}, []),
    "unet": ("unet", {}, []),
    "unet3d": ("unet3d", {}, []),
    "segnet": ("segnet", {}, []),
    "transformer": ("transformer", {}, []),
    "sgmagnet-static-height": ("sgmagnet", {"height": "static"}, []),
    "sgmagnet-single-scale": ("sgmagnet", {"scales": [1]}, []),
    "sgmagnet-no-gating": ("sgmagnet", {"gating": False}, ["loss.form=softmax"]),
    "sgmagnet-unweighted": ("sgmagnet", {}, ["loss.weights=none"]),
    "sgmagnet-focal": ("sgmagnet", {}, ["loss.gamma=2.0"]),
}
MODELS = ("sgmagnet", "unet", "unet3d", "segnet", "transformer")


def run_one(name: str, seed: int, a, preset: dict) -> dict:
    from sgmagnet.config import load_config
    from sgmagnet.evaluate import evaluate_checkpoint
    from sgmagnet.models import build_model, flops_per_sample
    from sgmagnet.shards import read_manifest
    from sgmagnet.train import Trainer

    model, opts, extra = RUNS[name]
    run = os.path.join(a.runs, f"{name}_s{seed}")
    keep = os.path.join(a.out, "runs", f"{name}_s{seed}")
    res_path = os.path.join(keep, "study_run.json")
    if os.path.exists(res_path):
        with open(res_path) as f:
            out = json.load(f)
        if a.reevaluate and os.path.isdir(run):   # score the kept checkpoint again (e.g. after new strata)
            ev = evaluate_checkpoint(run, a.shards, "test", log=lambda m: None)
            out.update(overall=ev["metrics"]["overall"], strata=ev["metrics"]["strata"], references=ev["references"])
            for f in ("eval_test.md", "confusion_test.png", "curtain_test_0.png"):
                shutil.copy(os.path.join(run, f), keep)
            with open(res_path, "w") as f:
                json.dump(out, f, indent=1)
        return out
    over = [f"data.shards={a.shards}", f"train.run_dir={run}", f"train.steps={a.steps or preset['steps']}",
            f"train.seed={seed}", f"model.name={model}", f"model.size={preset['size']}",
            f"data.batch_size={preset['batch']}", f"data.workers={preset['workers']}", f"optim.lr={preset['lr']}",
            f"optim.warmup_steps={preset['warmup']}", f"train.val_every={preset['val_every']}",
            f"train.ckpt_every={preset['val_every']}", "train.log_every=5", "train.progress=false",
            "model.options=" + json.dumps(opts)] + extra
    cfg = load_config(None, over)
    t0 = time.time()
    Trainer(cfg, log=lambda m: None, resume=True).fit()     # a killed study continues its unfinished run
    wall = time.time() - t0
    ev = evaluate_checkpoint(run, a.shards, "test", log=lambda m: None)
    log = [json.loads(x) for x in open(os.path.join(run, "log.jsonl"))]
    sps = [r["samples_per_s"] for r in log if r["kind"] == "train"][1:]
    m = build_model(model, preset["size"], **opts)
    patch = read_manifest(a.shards)["config"]["patch_size"]
    out = {"name": name, "seed": seed, "model": model, "options": opts, "extra": extra, "train_wall_s": wall,
           "samples_per_s": float(np.median(sps)) if sps else None,
           "parameters": sum(p.numel() for p in m.parameters()), "gflops_per_sample": flops_per_sample(m, patch) / 1e9,
           "patch": patch, "overall": ev["metrics"]["overall"], "strata": ev["metrics"]["strata"],
           "references": ev["references"], "command": "sgmagnet train " + " ".join(over)}
    os.makedirs(keep, exist_ok=True)
    for f in ("eval_test.md", "log.jsonl", "confusion_test.png", "curtain_test_0.png", "config.yaml"):
        if os.path.exists(os.path.join(run, f)):
            shutil.copy(os.path.join(run, f), keep)
    with open(res_path, "w") as f:
        json.dump(out, f, indent=1)
    return out


def _ms(vals):
    v = np.asarray(vals, float)
    return f"{v.mean():.3f} ± {v.std(ddof=0):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def tables(results: list[dict], preset_name: str, preset: dict, shards: str) -> str:
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    ref = results[0]["references"]
    head = "| run | seeds | macro P | macro R | macro F1 | macro IoU | phase F1 | mask F1 | params | GFLOP/sample | samples/s |"
    sep = "|---" * 11 + "|"

    def row(name, rs):
        o = [r["overall"] for r in rs]
        return (f"| {name} | {len(rs)} | {_ms([x['macro']['precision'] for x in o])} | {_ms([x['macro']['recall'] for x in o])} | "
                f"{_ms([x['macro']['f1'] for x in o])} | {_ms([x['macro']['iou'] for x in o])} | "
                f"{_ms([x['phase_macro']['f1'] for x in o])} | {_ms([x['cloud_mask']['f1'] for x in o])} | "
                f"{rs[0]['parameters']:,} | {rs[0]['gflops_per_sample']:.2f} | "
                f"{np.mean([r['samples_per_s'] or 0 for r in rs]):.1f} |")

    def refrow(name, r):
        return (f"| {name} | – | {r['macro']['precision']:.3f} | {r['macro']['recall']:.3f} | {r['macro']['f1']:.3f} | "
                f"{r['macro']['iou']:.3f} | {r['phase_macro']['f1']:.3f} | {r['cloud_mask']['f1']:.3f} | – | – | – |")
    out = [f"Configuration `{preset_name}`: {json.dumps(preset)}; shards `{shards}`; test split; "
           f"mean ± standard deviation over seeds.", "", "### Models", "", head, sep]
    out += [row(n, by[n]) for n in MODELS if n in by]
    out += ([refrow("top-layer oracle ±1 km (reference)", ref["oracle"]["overall"])] if "oracle" in ref else [])
    out += [refrow("climatology (reference)", ref["climatology"]["overall"]),
            refrow("all clear (reference)", ref["all_clear"]["overall"])]
    abl = [n for n in RUNS if n not in MODELS and n in by]
    if abl:
        out += ["", "### SGMAGNet ablations (one component changed)", "", head, sep]
        out += [row(n, by[n]) for n in ["sgmagnet"] + abl if n in by]
    from sgmagnet.metrics import paper_comparable

    def pc(o):
        return o.get("paper_comparable") or paper_comparable(o["confusion"])
    out += ["", "### Paper-comparable block (micro over the 3 phases with clear as negative; support-weighted over "
            "4 classes; pooled cloud mask)", "", "| run | micro-phase P | micro-phase R | micro-phase F1 | "
            "micro-phase IoU | weighted F1 | mask IoU |", "|---" * 7 + "|"]
    for n in list(MODELS) + abl:
        if n in by:
            ps = [pc(r["overall"]) for r in by[n]]
            out.append(f"| {n} | " + " | ".join(_ms([p[a][b] for p in ps]) for a, b in (
                ("micro_phase", "precision"), ("micro_phase", "recall"), ("micro_phase", "f1"), ("micro_phase", "iou"),
                ("weighted", "f1"), ("mask_pooled", "iou"))) + " |")
    for k in ("oracle", "climatology", "all_clear"):
        if k in ref:
            p = pc(ref[k]["overall"])
            out.append(f"| {k.replace('_', ' ')} (reference) | " + " | ".join(f"{v:.3f}" for v in (
                p["micro_phase"]["precision"], p["micro_phase"]["recall"], p["micro_phase"]["f1"],
                p["micro_phase"]["iou"], p["weighted"]["f1"], p["mask_pooled"]["iou"])) + " |")
    fams = results[0]["strata"].keys()
    for fam in fams:
        strata = sorted({s for r in results for s in r["strata"][fam]})
        out += ["", f"### Macro F1 by {fam}", "", "| run | " + " | ".join(strata) + " |", "|---" * (len(strata) + 1) + "|"]
        for n in list(MODELS) + abl:
            if n not in by:
                continue
            cells = []
            for s in strata:
                v = [r["strata"][fam][s]["macro"]["f1"] for r in by[n] if s in r["strata"][fam]]
                cells.append(_ms(v) if v else "–")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        cl = ref["climatology"]["strata"][fam]
        out.append("| climatology | " + " | ".join(f"{cl[s]['macro']['f1']:.3f}" if s in cl else "–" for s in strata) + " |")
        counts = [str(results[0]["strata"][fam][s]["voxels"]) if s in results[0]["strata"][fam] else "0" for s in strata]
        out.append("| labelled voxels | " + " | ".join(counts) + " |")
    return "\n".join(out) + "\n"


def figures(results: list[dict], out: str):
    """Loss/validation curves (seed 0) of the models and of the ablations, and macro F1 per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgmagnet.plots import loss_curves_png

    seed0 = {r["name"]: os.path.join(out, "runs", f"{r['name']}_s{r['seed']}", "log.jsonl")
             for r in results if r["seed"] == min(x["seed"] for x in results)}
    loss_curves_png({n: p for n, p in seed0.items() if n in MODELS}, os.path.join(out, "curves_models.png"))
    loss_curves_png({n: p for n, p in seed0.items() if n.startswith("sgmagnet")}, os.path.join(out, "curves_ablations.png"))
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r["overall"]["macro"]["f1"])
    names = [n for n in RUNS if n in by]
    fig, ax = plt.subplots(figsize=(9, 3.6), constrained_layout=True)
    ax.bar(range(len(names)), [np.mean(by[n]) for n in names], yerr=[np.std(by[n]) for n in names], capsize=3,
           color=["#4a90d9" if n in MODELS else "#9b59b6" for n in names])
    ref = results[0]["references"]
    if "oracle" in ref:
        ax.axhline(ref["oracle"]["overall"]["macro"]["f1"], color="tab:green", ls="-.", lw=1, label="top-layer oracle")
    ax.axhline(ref["climatology"]["overall"]["macro"]["f1"], color="k", ls="--", lw=1, label="climatology")
    ax.axhline(ref["all_clear"]["overall"]["macro"]["f1"], color="grey", ls=":", lw=1, label="all clear")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test macro F1 (mean ± sd over seeds)")
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "macro_f1.png"), dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", default="demo_out/shards")
    p.add_argument("--out", default="docs/study_cpu", help="results: tables, JSON, small per-run files")
    p.add_argument("--runs", default="study_out", help="run folders (checkpoints, TensorBoard): not for git")
    p.add_argument("--config", choices=tuple(PRESETS), default="cpu")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--only", help="comma-separated run names (default: all)")
    p.add_argument("--steps", type=int, default=0, help="override the preset's step budget")
    p.add_argument("--reevaluate", action="store_true", help="re-score finished runs from their kept checkpoints")
    a = p.parse_args(argv)
    preset = dict(PRESETS[a.config])
    if a.steps:
        preset["steps"] = a.steps
    names = a.only.split(",") if a.only else list(RUNS)
    for n in names:
        if n not in RUNS:
            p.error(f"unknown run {n!r}; choose from {', '.join(RUNS)}")
    os.makedirs(a.out, exist_ok=True)
    results, t0 = [], time.time()
    for seed in (int(s) for s in a.seeds.split(",")):
        for n in names:
            r = run_one(n, seed, a, preset)
            results.append(r)
            print(f"[{time.time() - t0:6.0f} s] {n} seed {seed}: macro F1 {r['overall']['macro']['f1']:.3f} "
                  f"IoU {r['overall']['macro']['iou']:.3f} ({r['train_wall_s']:.0f} s)", flush=True)
    index = [{"name": r["name"], "seed": r["seed"], "macro": r["overall"]["macro"], "parameters": r["parameters"],
              "gflops_per_sample": r["gflops_per_sample"], "samples_per_s": r["samples_per_s"],
              "metrics": f"runs/{r['name']}_s{r['seed']}/study_run.json"} for r in results]
    with open(os.path.join(a.out, "study.json"), "w") as f:   # the index; full metrics are in each study_run.json
        json.dump({"config": a.config, "preset": preset, "shards": a.shards, "runs": index}, f, indent=1)
    md = tables(results, a.config, preset, a.shards)
    figures(results, a.out)
    with open(os.path.join(a.out, "study.md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
