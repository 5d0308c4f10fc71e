"""A year of synthetic archive, measured: synthesis and builds at 7, 30, 91 and 365 days, the cost model
fitted on the small spans and checked on the year, and the year built again through a Slurm job array with
faults injected (hpc/scale_faults.py), whose shards must equal the fault-free build's.

    python hpc/scale.py --work /path/scale_out [--region 125,145,-60,60] [--days 365] [--ranks 2]
    python hpc/scale.py --work ... --report [--docs docs]   # docs/scale/*.json records, the cost model, the figure

Resumable: every finished step is recorded in <work>/state.json and skipped on a re-run (a session that ends
mid-way loses at most the step in flight). The archive is written in pieces -- [0, 7), [7, 30), [30, 91),
[91, 365) days -- each by `--ranks` concurrent `sgmagnet synth` processes over disjoint days of one world
(`--epoch` fixed), so the synthesis wall time at 7, 30, 91 and 365 days is the sum of the pieces so far.
A span's archive is a folder of links to its day folders; each span is built by `mpirun -n RANKS sgmagnet
build` with the same options and split anchor, so a granule's shards are the same in every span holding it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

START = dt.date(2018, 10, 10)
SPANS = (7, 30, 91, 365)            # synthesis pieces end here; builds also at 45 days (the study archive's length)
BUILDS = (7, 30, 45, 91, 365)
CORRUPT_DAY = 200                    # a granule of this day is made permanently unreadable (half its bytes)
BUILD_OPTS = ["--patch-size", "64", "--min-labelled", "32", "--split-anchor", START.isoformat(), "--quiet"]


def load_state(work: str) -> dict:
    p = os.path.join(work, "state.json")
    if os.path.exists(p):
        with open(p) as f:
            return json.load(f)
    return {}


def save_state(work: str, state: dict):
    p = os.path.join(work, "state.json")
    with open(p + ".tmp", "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
    os.replace(p + ".tmp", p)


def sgmagnet() -> list[str]:
    return [sys.executable, "-m", "sgmagnet.cli"]


def run(cmd: list[str], log: str) -> float:
    """Wall seconds of a command (its output goes to `log`); a failure stops the study."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode:
        raise SystemExit(f"scale: {' '.join(cmd[:6])} ... failed with exit code {p.returncode} (see {log})")
    return time.perf_counter() - t0


def pieces(days: int) -> list[tuple[int, int]]:
    edges = [0] + [s for s in SPANS if s < days] + [days]
    return list(zip(edges[:-1], edges[1:]))


def synth_piece(work: str, a: int, b: int, ranks: int, region: str) -> dict:
    """Days [a, b) by `ranks` concurrent synth processes (contiguous day ranges); wall = the slowest."""
    cuts = [a + (b - a) * i // ranks for i in range(ranks + 1)]
    procs, t0 = [], time.perf_counter()
    log = open(os.path.join(work, "synth.log"), "a")
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        if hi <= lo:
            continue
        out = os.path.join(work, "raw", f"d{lo:03d}_{hi:03d}")
        cmd = sgmagnet() + ["synth", "--out", out, "--start", (START + dt.timedelta(lo)).isoformat(),
                            "--days", str(hi - lo), "--epoch", START.isoformat(), "--region", region,
                            "--track-corridor", "64", "--workers", "1", "--quiet"]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, "OMP_NUM_THREADS": "1"}), out))
    for p, out in procs:
        if p.wait():
            raise SystemExit(f"scale: synth of {out} failed (see {work}/synth.log)")
    return {"days": [a, b], "wall_s": round(time.perf_counter() - t0, 1), "processes": len(procs)}


def day_folders(work: str) -> dict[dt.date, list[tuple[str, str]]]:
    """day -> [(link path inside an archive, target)] over every piece written so far."""
    out: dict[dt.date, list] = {}
    raw = os.path.join(work, "raw")
    for piece in sorted(os.listdir(raw)):
        base = os.path.join(raw, piece)
        for ym in sorted(os.listdir(os.path.join(base, "ahi"))):
            for dd in sorted(os.listdir(os.path.join(base, "ahi", ym))):
                d = dt.date(int(ym[:4]), int(ym[4:]), int(dd))
                out.setdefault(d, []).append((os.path.join("ahi", ym, dd), os.path.join(base, "ahi", ym, dd)))
        cs = os.path.join(base, "cloudsat")
        for prod in sorted(os.listdir(cs)):
            for yy in sorted(os.listdir(os.path.join(cs, prod))):
                for doy in sorted(os.listdir(os.path.join(cs, prod, yy))):
                    d = dt.date(int(yy), 1, 1) + dt.timedelta(int(doy) - 1)
                    out.setdefault(d, []).append((os.path.join("cloudsat", prod, yy, doy),
                                                  os.path.join(cs, prod, yy, doy)))
    return out


def span_archive(work: str, days: int) -> str:
    """A folder of links to the first `days` days' folders (AHI and CloudSat)."""
    root = os.path.join(work, f"span{days:03d}")
    for d, links in day_folders(work).items():
        if (d - START).days >= days:
            continue
        for rel, target in links:
            p = os.path.join(root, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if not os.path.islink(p):
                os.symlink(target, p)
    return root


def shard_digest(out: str) -> dict:
    """What identifies a build: the sha256 of its manifest file and the digest of its sorted shard sha256 list."""
    with open(os.path.join(out, "manifest.json"), "rb") as f:
        raw = f.read()
    m = json.loads(raw)
    lines = sorted(f"{s['path']} {s['sha256']}" for s in m["shards"])
    return {"manifest_sha256": hashlib.sha256(raw).hexdigest(), "shards": len(lines),
            "shard_list_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            "counts": m["counts"], "skipped": len(m["skipped"]),
            "granules": len(os.listdir(os.path.join(out, "_records"))),
            "profiles": m.get("profiles")}


def build_span(work: str, days: int, ranks: int) -> dict:
    src, out = span_archive(work, days), os.path.join(work, f"shards{days:03d}")
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(ranks)] + sgmagnet() + [
        "build", "--ahi", src, "--cloudsat", src, "--out", out, "--overwrite"] + BUILD_OPTS
    wall = run(cmd, os.path.join(work, f"build{days:03d}.log"))
    rec = {"days": days, "ranks": ranks, "build_wall_s": round(wall, 1), **shard_digest(out)}
    rec["shard_bytes"] = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs
                             if f.endswith(".tar"))
    return rec


def main(argv=None) -> int:
    from hpc.bench import benchcli

    ap = benchcli.parser("scale.py", __doc__, raw=True)
    ap.add_argument("--work", required=True, help="scratch folder (tens of GB for a year; kept)")
    ap.add_argument("--days", type=benchcli.positive, default=365)
    ap.add_argument("--region", default="125,145,-60,60")
    ap.add_argument("--ranks", type=benchcli.positive, default=2)
    ap.add_argument("--steps", default="synth,corrupt,spans,overheads,slurm",
                    help="comma list of synth, corrupt, spans, overheads, slurm, factors (factors: not by default)")
    ap.add_argument("--tasks", type=benchcli.positive, default=8, help="array tasks of the Slurm build (8)")
    ap.add_argument("--report", action="store_true", help="only write the records, the cost model and the figure")
    ap.add_argument("--docs", default="docs", help="where docs/scale/ and docs/img/scale.png go (docs)")
    a = ap.parse_args(argv)
    unknown = set(a.steps.split(",")) - {"synth", "corrupt", "spans", "overheads", "slurm", "factors"}
    if unknown:
        raise ValueError(f"--steps: unknown step(s) {sorted(unknown)} (synth, corrupt, spans, overheads, slurm, "
                         f"factors)")
    if a.report:
        st = load_state(a.work)
        if not any(k.startswith("build_") for k in st):
            raise ValueError(f"{a.work}/state.json: no measured build to report (run the steps first)")
        report(st, a.docs)
        return 0
    os.makedirs(os.path.join(a.work, "raw"), exist_ok=True)
    st = load_state(a.work)
    st.setdefault("config", {"start": START.isoformat(), "days": a.days, "region": a.region, "ranks": a.ranks,
                             "res": 0.05, "track_corridor": 64, "build": BUILD_OPTS})
    steps = a.steps.split(",")
    if "synth" in steps:
        for lo, hi in pieces(a.days):
            key = f"synth_{lo:03d}_{hi:03d}"
            if key not in st:
                print(f"synth days [{lo}, {hi}) ...", flush=True)
                st[key] = synth_piece(a.work, lo, hi, a.ranks, a.region)
                save_state(a.work, st)
                print(f"  {st[key]['wall_s']} s", flush=True)
    if "corrupt" in steps and "corrupt" not in st and a.days > CORRUPT_DAY:
        st["corrupt"] = corrupt_granule(a.work)
        save_state(a.work, st)
    if "spans" in steps:
        for n in [s for s in BUILDS if s <= a.days]:
            key = f"build_{n:03d}"
            if key not in st:
                print(f"build {n} days ...", flush=True)
                st[key] = build_span(a.work, n, a.ranks)
                save_state(a.work, st)
                print(f"  {st[key]['build_wall_s']} s, {st[key]['granules']} granules", flush=True)
    if "overheads" in steps:
        for n in [s for s in BUILDS if s <= a.days]:
            key = f"overheads_{n:03d}"
            if key not in st and f"build_{n:03d}" in st:
                st[key] = overheads(a.work, n)
                save_state(a.work, st)
                print(f"overheads {n} days: {st[key]}", flush=True)
    if "factors" in steps and "factors" not in st:
        st["factors"] = factors(a.work)
        save_state(a.work, st)
    if "slurm" in steps and "slurm" not in st:
        st["slurm"] = slurm_build(a.work, a.days, a.tasks, st)
        save_state(a.work, st)
    return 0


FACTOR_CASES = (("125,145,-60,60", "0.05"), ("100,160,-60,60", "0.05"), ("125,145,-60,60", "0.02"))


def factors(work: str, days: int = 2) -> dict:
    """What the extrapolation to the paper's region and grid rests on, measured: `days` days synthesized and
    built (1 process each) for this study's band at 0.05 deg, the paper's 100-160E at 0.05 deg, and this band
    at the paper's 0.02 deg."""
    out = {}
    for region, res in FACTOR_CASES:
        name = f"{region.split(',')[0]}_{region.split(',')[1]}_{res}"
        raw, shards = os.path.join(work, "factors", name), os.path.join(work, "factors", name + "_shards")
        log = os.path.join(work, "factors.log")
        for d in (raw, shards):                # measured from scratch (a build would resume from its records)
            shutil.rmtree(d, ignore_errors=True)
        os.makedirs(os.path.dirname(raw), exist_ok=True)
        ts = run(sgmagnet() + ["synth", "--out", raw, "--start", START.isoformat(), "--days", str(days), "--region",
                               region, "--res", res, "--track-corridor", "64", "--quiet"], log)
        tb = run(sgmagnet() + ["build", "--ahi", raw, "--cloudsat", raw, "--out", shards, "--overwrite"] + BUILD_OPTS,
                 log)
        d = shard_digest(shards)
        out[name] = {"region": region, "res": float(res), "days": days, "synth_s": round(ts, 1), "build_s": round(tb, 1),
                     "granules": d["granules"], "samples": sum(d["counts"].values()), "profiles": d["profiles"]}
        print(name, out[name], flush=True)
    return out


def build_config(work: str, days: int, out: str):
    from sgmagnet.build import BuildConfig

    src = span_archive(work, days)
    return BuildConfig(ahi=src, cloudsat=src, out=out, patch_size=64, min_labelled=32, split_anchor=START.isoformat())


def corrupt_granule(work: str) -> dict:
    """The first granule of day CORRUPT_DAY loses the second half of its bytes: permanently unreadable, in
    every build of the year (a recorded skip)."""
    day = START + dt.timedelta(CORRUPT_DAY)
    links = dict(day_folders(work))[day]
    folder = [t for rel, t in links if rel.startswith("cloudsat")][0]
    f = os.path.join(folder, sorted(os.listdir(folder))[0])
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    return {"file": os.path.basename(f), "day": day.isoformat(), "bytes_before": size, "bytes_after": size // 2}


def overheads(work: str, days: int) -> dict:
    """The steps that see the whole archive at once: planning (every file listed and its header read),
    the manifest merge (every record), reading the manifest and listing the shards (a trainer's start-up)."""
    from sgmagnet.build import merge_manifest, plan
    from sgmagnet.shards import read_manifest, split_urls

    out = os.path.join(work, f"shards{days:03d}")
    cfg = build_config(work, days, out)
    t0 = time.perf_counter()
    p = plan(cfg)
    t1 = time.perf_counter()
    merge_manifest(cfg, p)
    t2 = time.perf_counter()
    m = read_manifest(out)
    t3 = time.perf_counter()
    urls = split_urls(out, "train")
    t4 = time.perf_counter()
    return {"plan_s": round(t1 - t0, 2), "merge_s": round(t2 - t1, 2), "read_manifest_s": round(t3 - t2, 3),
            "list_shards_s": round(t4 - t3, 3), "granules": len(p.granules), "scenes": len(p.scenes),
            "shards": len(m.shards), "train_shards": len(urls)}


def slurm_build(work: str, days: int, ntasks: int, st: dict) -> dict:
    """The year through `sgmagnet submit build --array` on the local Slurm, with faults injected while it runs:
    scancel one task mid-chunk, SIGKILL another's Python process, drain the node while tasks wait and resume
    it; the unreadable granule (corrupt_granule) is in the archive. Then the operator's recovery -- the same
    submission again -- and the shards' sha256 list against the fault-free mpirun build of the same days."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base = os.path.join(work, "slurm")
    r = subprocess.run(["bash", os.path.join(root, "slurm", "local", "up.sh")], env={**os.environ, "BASE": base},
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"scale: the local Slurm did not start: {r.stdout[-500:]} {r.stderr[-500:]}")
    os.environ["SLURM_CONF"] = os.path.join(base, "etc", "slurm.conf")
    try:
        return _slurm_build(work, days, ntasks, st)
    finally:            # the cluster's daemons hold Slurm's ports: a test suite's own cluster could not start
        subprocess.run(["bash", os.path.join(root, "slurm", "local", "down.sh")], env={**os.environ, "BASE": base},
                       capture_output=True)


def _slurm_build(work: str, days: int, ntasks: int, st: dict) -> dict:
    import re

    from hpc import slurm_faults as sf
    from hpc.mpi_build import chunk_of
    from sgmagnet.build import plan, record_path

    out = os.path.join(work, f"shards{days:03d}_slurm")
    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config(work, days, out)
    p = plan(cfg)
    chunks = [[record_path(cfg, p.granules[i].path) for i in chunk_of(len(p.granules), t, ntasks)]
              for t in range(ntasks)]

    def done(t):
        return sum(os.path.exists(f) for f in chunks[t])

    src = span_archive(work, days)
    argv = sgmagnet() + ["submit", "build", "--ahi", src, "--cloudsat", src, "--out", out, *BUILD_OPTS[:-1],
                         "--array", str(ntasks), "--partition", "debug", "--time", "02:00:00", "--cluster", "slurm",
                         "--folder", os.path.join(work, "slurm_logs")]
    t0 = time.perf_counter()
    sub = subprocess.run(argv, capture_output=True, text=True)
    m = re.search(r"submitted array (\d+) .* merge job (\d+)", sub.stdout)
    if not m:
        raise SystemExit(f"scale: submit failed: {sub.stdout[-500:]} {sub.stderr[-500:]}")
    job, merge_job = m.group(1), m.group(2)
    faults = []
    st["slurm_job"] = job

    def running_mid(exclude=()):
        for t, s in sf.tasks(job).items():
            if s == "RUNNING" and t not in exclude and 1 <= done(t) < len(chunks[t]):
                return t
        return None

    print(f"array {job}, merge {merge_job}", flush=True)
    sf.wait(lambda: running_mid() is not None, 1800, "a task mid-chunk")
    t = running_mid()
    n = done(t)
    sf.cancel(job, t)
    faults.append({"fault": "scancel", "task": t, "granules_done": n, "chunk": len(chunks[t])})
    print(faults[-1], flush=True)
    sf.wait(lambda: running_mid(exclude=(t,)) is not None, 1800, "another task mid-chunk")
    t2 = running_mid(exclude=(t,))
    n = done(t2)
    pids = sf.kill_python(job, t2)
    faults.append({"fault": "SIGKILL", "task": t2, "pids": pids, "granules_done": n, "chunk": len(chunks[t2])})
    print(faults[-1], flush=True)
    node = sf.node()
    sf.wait(lambda: "PENDING" in sf.tasks(job).values(), 600, "a pending task")
    before = sf.tasks(job)
    sf.drain(node)
    time.sleep(45)
    during = sf.tasks(job)
    started = sorted(t for t, s in during.items() if before.get(t) == "PENDING" and s != "PENDING")
    drained_state = sf.node_state()
    sf.resume(node)
    faults.append({"fault": "drain", "node": node, "seconds": 45, "node_state": drained_state,
                   "pending_before": sorted(t for t, s in before.items() if s == "PENDING"),
                   "started_while_drained": started})
    print(faults[-1], flush=True)
    sf.wait(lambda: sf.finished(sf.tasks(job)), 7200, "the array to finish")
    first = sf.tasks(job)          # tasks that ended more than MinJobAge (300 s) ago are gone from this list
    for f in faults:
        if "task" in f:
            f["outcome"] = sf.task_log_evidence(os.path.join(work, "slurm_logs"), job, f["task"])
    merge_state = sf.job_state(merge_job)
    sf.cancel_job(merge_job)
    t_first = time.perf_counter() - t0
    print(f"array done in {t_first:.0f} s: {first}; merge job {merge_state}", flush=True)
    sub2 = subprocess.run(argv + ["--wait"], capture_output=True, text=True)
    if sub2.returncode:
        raise SystemExit(f"scale: the re-submission failed: {sub2.stdout[-800:]} {sub2.stderr[-800:]}")
    wall = time.perf_counter() - t0
    got, ref = shard_digest(out), st.get(f"build_{days:03d}", {})
    with open(os.path.join(out, "manifest.json")) as f:
        skipped = [s for s in json.load(f)["skipped"] if st.get("corrupt", {}).get("file", "?") in s["file"]]
    return {"days": days, "tasks": ntasks, "faults": faults, "first_states": {str(k): v for k, v in first.items()},
            "first_merge_job": merge_state, "first_wall_s": round(t_first, 1), "wall_s": round(wall, 1),
            "unreadable_granule_skip": skipped, **got,
            "equal_to_mpirun": bool(ref) and got["shard_list_sha256"] == ref.get("shard_list_sha256")}


def synth_wall(st: dict, days: int) -> float | None:
    """Synthesis wall seconds of the first `days` days: the pieces up to there (None between piece ends)."""
    total = 0.0
    for k in sorted(x for x in st if x.startswith("synth_")):
        lo, hi = st[k]["days"]
        if hi > days:
            break
        total += st[k]["wall_s"]
        if hi == days:
            return total
    return None


def fit_line(xs, ys) -> tuple[float, float]:
    """Least-squares a + b x."""
    import numpy as np

    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(a), float(b)


def cost_model(st: dict) -> dict:
    """Wall time = a + b days, fitted on the spans shorter than the longest and checked on the longest."""
    spans = sorted(int(k[6:]) for k in st if k.startswith("build_"))
    longest, small = spans[-1], spans[:-1]
    out = {"fitted_on_days": small, "checked_on_days": longest}
    for what, get in (("build", lambda d: st[f"build_{d:03d}"]["build_wall_s"]), ("synth", lambda d: synth_wall(st, d))):
        pts = [(d, get(d)) for d in small if get(d) is not None]
        if len(pts) < 2 or get(longest) is None:
            continue
        a, b = fit_line(*zip(*pts))
        pred, meas = a + b * longest, get(longest)
        out[what] = {"a_s": round(a, 2), "b_s_per_day": round(b, 3), "predicted_s": round(pred, 1),
                     "measured_s": round(meas, 1), "error": round(pred / meas - 1, 3)}
    g = {d: st[f"build_{d:03d}"] for d in spans}
    ranks = st["config"]["ranks"]
    out["core_s_per_granule"] = {d: round(g[d]["build_wall_s"] * ranks / max(1, g[d]["granules"]), 3) for d in spans}
    return out


def report(st: dict, docs: str):
    """One JSON record per measured build under docs/scale/, the cost model (docs/scale/cost_model.json) and
    the figure docs/img/scale.png (wall time and cost per day against archive length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.join(docs, "scale"), exist_ok=True)
    cfg = st["config"]
    spans = sorted(int(k[6:]) for k in st if k.startswith("build_"))
    for d in spans:
        b = dict(st[f"build_{d:03d}"])
        rec = {"days": d, "start": cfg["start"], "region": cfg["region"], "res_deg": cfg["res"],
               "track_corridor_px": cfg["track_corridor"], "build_options": cfg["build"],
               "launcher": f"mpirun -n {b.pop('ranks')}", "faults": [], "synth_wall_s": synth_wall(st, d),
               **b, "overheads": st.get(f"overheads_{d:03d}")}
        if d == cfg["days"] and "corrupt" in st:
            rec["faults"] = [{"fault": "unreadable granule", **st["corrupt"], "outcome": "recorded skip"}]
        with open(os.path.join(docs, "scale", f"build_{d:03d}d_mpirun.json"), "w") as f:
            json.dump(rec, f, indent=1)
    if "slurm" in st:
        s = st["slurm"]
        rec = {"start": cfg["start"], "region": cfg["region"], "res_deg": cfg["res"], "build_options": cfg["build"],
               "launcher": f"sgmagnet submit build --array {s['tasks']} (local Slurm, 2 cores)",
               **s, "faults": s["faults"] + ([{"fault": "unreadable granule", **st["corrupt"],
                                               "outcome": s["unreadable_granule_skip"]}] if "corrupt" in st else [])}
        with open(os.path.join(docs, "scale", f"build_{s['days']:03d}d_slurm_faults.json"), "w") as f:
            json.dump(rec, f, indent=1)
    cm = cost_model(st)
    with open(os.path.join(docs, "scale", "cost_model.json"), "w") as f:
        json.dump(cm, f, indent=1)
    if "factors" in st:
        with open(os.path.join(docs, "scale", "factors.json"), "w") as f:
            json.dump(st["factors"], f, indent=1)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    bw = [st[f"build_{d:03d}"]["build_wall_s"] for d in spans]
    sw = [(d, synth_wall(st, d)) for d in spans if synth_wall(st, d) is not None]
    ax[0].plot(spans, bw, "o-", label=f"build (mpirun -n {cfg['ranks']})")
    ax[0].plot(*zip(*sw), "s-", label=f"synthesis ({cfg['ranks']} processes)")
    if "build" in cm:
        xs = [0, spans[-1]]
        ax[0].plot(xs, [cm["build"]["a_s"] + cm["build"]["b_s_per_day"] * x for x in xs], "k:", lw=1,
                   label=f"build model from {cm['fitted_on_days']} d")
    if "slurm" in st:
        ax[0].plot([st["slurm"]["days"]], [st["slurm"]["wall_s"]], "r*", ms=10, label="Slurm array with faults")
    ax[0].set(xlabel="archive length (days)", ylabel="wall time (s)", title="wall time")
    ax[0].legend(fontsize=7)
    ax[1].plot(spans, [w / d for w, d in zip(bw, spans)], "o-", label="build")
    ax[1].plot([d for d, _ in sw], [w / d for d, w in sw], "s-", label="synthesis")
    ax[1].set(xlabel="archive length (days)", ylabel="wall seconds per day", title="cost per day", ylim=(0, None))
    ax[1].legend(fontsize=7)
    fig.suptitle(f"a year of synthetic archive, {cfg['region']} at {cfg['res']} deg, 2 cores", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.join(docs, "img"), exist_ok=True)
    fig.savefig(os.path.join(docs, "img", "scale.png"), dpi=110)
    print(json.dumps(cm, indent=1))


if __name__ == "__main__":
    from hpc.bench import benchcli

    sys.exit(benchcli.run(main, "scale.py"))
