"""The transfer study (issue 30): a model trained on CloudSat-era labels (daylight only) scored on EarthCARE's day
and night, an infrared-only model, and models trained on EarthCARE's day and night.

    python hpc/transfer_study.py [--work transfer_out] [--out docs/transfer] [--seeds 0,1] [--days 15]
                                 [--results docs/RESULTS.md] [--report-only]

Data: one synthetic world (seed 0, 125-145E 40S-40N, 0.05 deg, written only near the tracks), two spans that
`sgmagnet synth` fills by the label epochs: CloudSat 2B-CLDCLASS-LIDAR from 2018-10-10 (C-Train, daylight
only, Himawari-8) and EarthCARE AC__TC__2B from 2025-06-01 (day and night, Himawari-9), `--days` each. Two
shard sets, each time-blocked (`--split-days 3,1,1 --gap-days 0` from its span's first day): shards_cs from
the CloudSat files only, shards_ec from the EarthCARE files only.

Runs (SGMAGNet v2, demo size), each with the main study's protocol (hpc/study_protocol.py, `cpu` preset: batch
8, warm-up, validation every 150 steps, patience 4, the best-validation checkpoint scored) and the learning rate
the main study's sweep chose for SGMAGNet (docs/study/lr_sweep.json), with at most `--max-steps` steps:
  cs-all   all 16 bands, trained and validated on the CloudSat days   (the daytime model users have today)
  cs-ir    B07-B16 only (no visible band, no solar zenith), the same days
  ec-all   all 16 bands, trained and validated on EarthCARE days (day and night)
  ec-ir    B07-B16 only, EarthCARE days
Every run is scored on the EarthCARE test days, per stratum (day / twilight / night of the patch: the median
solar zenith of its labelled pixels, sgmagnet.solar), and the cs-* runs also on the CloudSat test days.
Intervals: 95 %, paired percentile cluster bootstrap over whole label files (EarthCARE frames, CloudSat
granules) of the seed-mean macro F1 (hpc/study_stats.bootstrap).

Resumable: the archive, the shards and every finished run are kept and skipped on a re-run; an interrupted
run resumes from its last checkpoint.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hpc.study_protocol import PRESETS, overrides  # noqa: E402
from hpc.study_stats import bootstrap, granule_of  # noqa: E402

CONFIGS = {   # name -> (band set, shard set it trains and validates on)
    "cs-all": ("all", "cs"), "cs-ir": ("ir", "cs"), "ec-all": ("all", "ec"), "ec-ir": ("ir", "ec")}
SPANS = {"cs": "2018-10-10", "ec": "2025-06-01"}
STRATA = ("day", "twilight", "night")


def sh(args: list[str]):
    r = subprocess.run([sys.executable, "-m", "sgmagnet.cli", *args], stdout=subprocess.DEVNULL)
    if r.returncode:
        raise SystemExit(f"transfer_study: `sgmagnet {' '.join(args[:3])} ...` failed (exit {r.returncode})")


def data(a) -> dict:
    """The archive and the two shard sets (each step skipped when done)."""
    arc = os.path.join(a.work, "archive")
    if not os.path.exists(os.path.join(arc, f"synth_stats_{SPANS['ec']}.json")):
        sh(["synth", "--out", arc, "--start", ",".join(SPANS.values()), "--days", str(a.days), "--region", a.region,
            "--res", str(a.res), "--seed", "0", "--track-corridor", str(a.patch), "--quiet"])
    shards = {}
    for k, labels in (("cs", ["--cloudsat", os.path.join(arc, "cloudsat")]),
                      ("ec", ["--earthcare", os.path.join(arc, "earthcare")])):
        out = os.path.join(a.work, f"shards_{k}")
        if not os.path.exists(os.path.join(out, "manifest.json")):
            sh(["build", "--ahi", os.path.join(arc, "ahi"), *labels, "--out", out, "--patch-size", str(a.patch),
                "--min-labelled", str(a.patch // 2), "--split-days", "3,1,1", "--gap-days", "0", "--split-anchor", SPANS[k],
                "--quiet"])
        shards[k] = out
    return shards


def patch_meta(shards: str, split: str = "test") -> dict:
    """sample key -> (stratum, label file) of the split's samples."""
    from sgmagnet.shards import iter_shard, shard_paths

    out = {}
    for p in shard_paths(shards, split):
        for s in iter_shard(p):
            out[s["__key__"]] = (s["meta"]["day_night"], s["meta"]["granule"])
    return out


def run(a, name: str, seed: int, shards: dict, lr: float) -> dict:
    """Train (resumable) and score one run; its small results are kept under <out>/runs/<name>_s<seed>/."""
    from hpc.study_runner import train
    from sgmagnet.evaluate import evaluate_checkpoint
    from sgmagnet.io import write_json

    keep = os.path.join(a.out, "runs", f"{name}_s{seed}")
    res_path = os.path.join(keep, "transfer_run.json")
    if os.path.exists(res_path):
        return json.load(open(res_path))
    bands, on = CONFIGS[name]
    preset = dict(PRESETS[a.config])
    rdir = os.path.join(a.work, "runs", f"{name}_s{seed}")
    ns = type("A", (), {"shards": shards[on]})
    over = overrides(ns, preset, "sgmagnet", {}, [f"model.bands={bands}"], rdir, seed, lr, a.max_steps)
    summary, wall = train(over)
    best = os.path.join(rdir, "checkpoints", "best")
    out = {"name": name, "seed": seed, "bands": bands, "trained_on": on, "lr": lr, "steps": summary["steps"],
           "selected_step": summary["best"]["step"], "val_macro_f1": summary["best"]["val_macro_f1"],
           "train_wall_s": round(wall, 1), "command": "sgmagnet train --resume " + " ".join(over), "scores": {}}
    os.makedirs(keep, exist_ok=True)
    for k in ("ec", "cs") if on == "cs" else ("ec",):
        ev_dir = os.path.join(rdir, f"eval_{k}")
        ev = evaluate_checkpoint(best, shards[k], "test", out=ev_dir, curtains=0, log=lambda m: None)
        os.makedirs(os.path.join(keep, f"eval_{k}"), exist_ok=True)
        for f in ("eval_test.json", "eval_test.md", "eval_test_patches.npz", "confusion_test.png"):   # for git
            shutil.copy(os.path.join(ev_dir, f), os.path.join(keep, f"eval_{k}"))
        out["scores"][k] = {"overall": ev["metrics"]["overall"]["macro"], "daynight": {
            s: v["macro"] for s, v in ev["metrics"]["strata"]["daynight"].items()},
            "samples": ev["samples"], "manifest_sha256": ev["manifest_sha256"]}
    write_json(res_path, out, indent=1)
    return out


def cms(a, name: str, seeds: list[int], k: str):
    """[seeds, P, 4, 4] per-patch confusions of a config on shard set k, and the P keys (common to all seeds)."""
    from sgmagnet.evaluate import load_patch_confusions

    z = [load_patch_confusions(os.path.join(a.out, "runs", f"{name}_s{s}", f"eval_{k}", "eval_test_patches.npz"))
         for s in seeds]
    keys = sorted(set.intersection(*(set(x["keys"].tolist()) for x in z)))
    idx = [{key: i for i, key in enumerate(x["keys"].tolist())} for x in z]
    return np.stack([x["model"][[ix[key] for key in keys]] for x, ix in zip(z, idx)]), keys


def report(a, shards: dict, results: list[dict], seeds: list[int]) -> str:
    meta = {k: patch_meta(shards[k]) for k in shards}
    rows, table = {}, {}
    for name in CONFIGS:
        done = [r["seed"] for r in results if r["name"] == name]
        if done != seeds:
            continue
        for k in ("ec", "cs") if CONFIGS[name][1] == "cs" else ("ec",):
            c, keys = cms(a, name, seeds, k)
            strata = np.array([meta[k][key][0] for key in keys])
            for st in (None,) + STRATA:
                sel = np.ones(len(keys), bool) if st is None else strata == st
                if sel.sum() < 2:
                    continue
                b = bootstrap({name: c[:, sel]}, {}, a.n_boot, clusters=[granule_of(key) for key in np.array(keys)[sel]])
                r = b["runs"][name]
                table[(name, k, st or "all")] = (r["macro_f1"], r["low"], r["high"], int(sel.sum()), b["clusters"])
        rows[name] = [r for r in results if r["name"] == name]
    cols = [("ec", "day"), ("ec", "twilight"), ("ec", "night"), ("ec", "all"), ("cs", "all")]
    head = ("| run | bands | trained on | val macro F1 | EarthCARE day | EarthCARE twilight | EarthCARE night | "
            "EarthCARE all | CloudSat test |")
    lines = [head, "|---" * 9 + "|"]
    for name, rs in rows.items():
        bands, on = CONFIGS[name]
        val = np.mean([r["val_macro_f1"] for r in rs])
        cells = []
        for k, st in cols:
            v = table.get((name, k, st))
            cells.append(f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]" if v else "–")
        lines.append(f"| {name} | {bands} | {'CloudSat days (daylight)' if on == 'cs' else 'EarthCARE days (day+night)'}"
                     f" | {val:.3f} | " + " | ".join(cells) + " |")
    sizes = []
    for k, st in cols:
        v = next((t for (n, kk, s), t in table.items() if kk == k and s == st), None)
        if v:
            sizes.append(f"{'EarthCARE' if k == 'ec' else 'CloudSat'} {st}: {v[3]} patches from {v[4]} "
                         f"{'frames' if k == 'ec' else 'granules'}")
    man = {k: json.load(open(os.path.join(shards[k], "manifest.json"))) for k in shards}
    prov = {k: {s: d for s, d in man[k]["provenance"].items() if d} for k in man}
    md = "\n".join([
        f"Seeds {','.join(map(str, seeds))}; archive {a.days} days per span, {a.region} at {a.res} deg, {a.patch}-px "
        f"patches; SGMAGNet v2 ({PRESETS[a.config]['size']} size), learning rate {results[0]['lr']} (the main study's "
        f"sweep), at most {a.max_steps} steps, best-validation checkpoint. Macro F1 = seed mean; [95 % CI] = paired "
        f"cluster bootstrap over whole label files ({a.n_boot} draws). Test sets: " + "; ".join(sizes) + ".", "",
        *lines, "",
        "Samples per split (label product / day-night / imager): " + json.dumps(prov), ""])
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "transfer.md"), "w") as f:
        f.write(md)
    with open(os.path.join(a.out, "transfer.json"), "w") as f:
        json.dump({"seeds": seeds, "table": {"/".join(k): v for k, v in table.items()}, "runs": results,
                   "manifest_sha256": {k: results[0]["scores"].get(k, {}).get("manifest_sha256") for k in shards}},
                  f, indent=1)
    if a.results:
        splice(a.results, md)
    return md


BEGIN, END = "<!-- transfer-study:begin -->", "<!-- transfer-study:end -->"


def splice(path: str, md: str):
    text = open(path, encoding="utf-8").read()
    if text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"transfer_study: --results {path}: needs one line '{BEGIN}' and one line '{END}'")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    with open(path, "w", encoding="utf-8") as f:
        f.write(head + BEGIN + "\n" + md + "\n" + END + tail)


def main(argv=None):
    from sgmagnet.cli import Parser

    p = Parser(prog="transfer_study.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="transfer_out", help="archive, shards and run folders (not for git)")
    p.add_argument("--out", default="docs/transfer", help="results: tables, JSON, per-run scores (for git)")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (0,1)")
    p.add_argument("--days", type=int, default=15, help="days per span (15)")
    p.add_argument("--max-steps", type=int, default=2000, help="training steps at most (2000)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws (2000)")
    p.add_argument("--config", choices=("cpu", "tiny"), default="cpu", help="the main study's preset (cpu; tiny: tests)")
    p.add_argument("--region", default="125,145,-40,40", help="LON0,LON1,LAT0,LAT1 of the archive (125,145,-40,40)")
    p.add_argument("--res", type=float, default=0.05, help="P-Tree grid step, degrees (0.05)")
    p.add_argument("--patch", type=int, default=64, help="patch size, pixels (64)")
    p.add_argument("--only", help="comma-separated configurations (default: all of " + ", ".join(CONFIGS) + ")")
    p.add_argument("--results", metavar="MD", help="also write the table between the transfer-study markers of this "
                   "page (docs/RESULTS.md)")
    p.add_argument("--report-only", action="store_true", help="only the table, from the finished runs")
    a = p.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: {a.seeds!r} is not a comma-separated list of integers")
    names = a.only.split(",") if a.only else list(CONFIGS)
    for n in names:
        if n not in CONFIGS:
            p.error(f"--only: unknown configuration {n!r}; choose from {', '.join(CONFIGS)}")
    if a.days < 5 or a.max_steps < 1 or a.n_boot < 40:
        p.error("--days needs >= 5 (a 3,1,1 split cycle), --max-steps >= 1, --n-boot >= 40")
    lr_path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "study", "lr_sweep.json")
    lr = json.load(open(lr_path))["sgmagnet"]["lr"]
    shards = data(a)
    t0 = time.time()
    results = []
    for seed in seeds:
        for n in names:
            if a.report_only and not os.path.exists(os.path.join(a.out, "runs", f"{n}_s{seed}", "transfer_run.json")):
                continue
            r = run(a, n, seed, shards, lr)
            results.append(r)
            print(f"[{time.time() - t0:6.0f} s] {n} seed {seed}: EarthCARE test macro F1 "
                  f"{r['scores']['ec']['overall']['f1']:.3f} (day/twilight/night "
                  + "/".join(f"{r['scores']['ec']['daynight'].get(s, {}).get('f1', float('nan')):.3f}" for s in STRATA)
                  + f"), best val {r['val_macro_f1']:.3f} at step {r['selected_step']}", flush=True)
    if results:
        print(report(a, shards, sorted(results, key=lambda r: (r["name"], r["seed"])), seeds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
