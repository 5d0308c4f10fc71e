"""A year of synthetic archive, measured: synthesis and builds at 7, 30, 91 and 365 days, the cost model
fitted on the small spans and checked on the year, and the year built again through a Slurm job array with
faults injected (hpc/scale_faults.py), whose shards must equal the fault-free build's.

    python hpc/scale.py --work /path/scale_out [--region 125,145,-60,60] [--days 365] [--ranks 2]
    python hpc/scale.py --work ... --report            # docs/scale/*.json + docs/scale.md figures only

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
import subprocess
import sys
import time

START = dt.date(2018, 10, 10)
SPANS = (7, 30, 91, 365)
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
                            "--track-corridor", "64", "--quiet"]
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="scratch folder (tens of GB for a year; kept)")
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--region", default="125,145,-60,60")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", default="synth,spans", help="comma list of synth, spans")
    a = ap.parse_args(argv)
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
    if "spans" in steps:
        for n in [s for s in SPANS if s <= a.days]:
            key = f"build_{n:03d}"
            if key not in st:
                print(f"build {n} days ...", flush=True)
                st[key] = build_span(a.work, n, a.ranks)
                save_state(a.work, st)
                print(f"  {st[key]['build_wall_s']} s, {st[key]['granules']} granules", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
