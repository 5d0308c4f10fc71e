"""Benchmark `sgmagnet synth --track-corridor P` against whole scenes, side by side in one run: synthesis
wall time and bytes on disk per day, and whether the two archives build the same benchmark (the shards'
sha256, the per-split counts, the skipped-file records and the training-split band statistics).

    python hpc/bench/synth_corridor.py [--days 1] [--region 100,160,-60,60] [--patch-size 64]

Both archives are written with the same seed and epoch, then built with the same options (1 rank). Exit 0
when the two builds agree, 1 when they do not (the table is printed either way); the JSON goes to --json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time


def disk_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for sub in ("ahi", "cloudsat")
               for d, _, fs in os.walk(os.path.join(root, sub)) for f in fs)


def timed(cmd: list[str]) -> float:
    """Wall seconds of a command; its output is shown only when it fails (the builds warn of empty splits)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-2000:] + p.stderr[-2000:])
        raise SystemExit(f"synth_corridor: {' '.join(cmd[2:4])} failed with exit code {p.returncode}")
    return time.perf_counter() - t0


def comparable(manifest: dict) -> dict:
    """What a build produced, without the paths of its inputs."""
    return {"shards": sorted((s["path"], s["sha256"]) for s in manifest["shards"]),
            "counts": manifest["counts"], "class_histogram": manifest["class_histogram"],
            "band_stats": manifest["band_stats"], "profiles": manifest["profiles"],
            "skipped": sorted((os.path.basename(s["file"]), s["reason"]) for s in manifest["skipped"])}


def main(argv=None) -> int:
    from sgmagnet.cli import Parser, parser as sgmagnet_parser

    ap = Parser(prog="synth_corridor.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="bench_out/synth_corridor", help="scratch folder (deleted at the end "
                    "unless --keep)")
    ap.add_argument("--days", default="1", help="days to synthesize (1)")
    ap.add_argument("--start", default="2018-10-10")
    ap.add_argument("--region", default="100,160,-60,60", help="LON0,LON1,LAT0,LAT1 (the paper's region)")
    ap.add_argument("--res", default="0.05")
    ap.add_argument("--patch-size", type=int, default=64, help="the build's patch size; also the corridor (64)")
    ap.add_argument("--min-labelled", type=int, default=32, help="the build's --min-labelled (32)")
    ap.add_argument("--json", default="bench_results/synth_corridor.json", help="where to write the results")
    ap.add_argument("--keep", action="store_true", help="keep the archives and shards")
    a = ap.parse_args(argv)
    cli = [sys.executable, "-m", "sgmagnet.cli"]
    sg = sgmagnet_parser()                          # the steps' own option checks first: one line, exit 2
    sg.parse_args(["build", "--ahi", a.workdir, "--cloudsat", a.workdir, "--out", a.workdir,
                   "--patch-size", str(a.patch_size), "--min-labelled", str(a.min_labelled)])
    sg.parse_args(["synth", "--out", a.workdir, "--start", a.start, "--days", a.days, "--region", a.region,
                   "--res", a.res, "--track-corridor", str(a.patch_size)])
    marker = os.path.join(a.workdir, ".synth_corridor_scratch")
    if os.path.isdir(a.workdir) and os.listdir(a.workdir) and not os.path.exists(marker):
        ap.error(f"--workdir {a.workdir}: exists and is not this benchmark's scratch folder (it is deleted "
                 "before and after each run); give a new or empty folder")
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    open(marker, "w").close()
    rows = {}
    for mode in ("whole", "corridor"):
        raw, shards = os.path.join(a.workdir, f"raw_{mode}"), os.path.join(a.workdir, f"shards_{mode}")
        synth = cli + ["synth", "--out", raw, "--start", a.start, "--days", a.days, "--region", a.region,
                       "--res", a.res, "--seed", "0", "--workers", "1", "--quiet"]   # one process: as measured
        if mode == "corridor":
            synth += ["--track-corridor", str(a.patch_size)]
        build = cli + ["build", "--ahi", raw, "--cloudsat", raw, "--out", shards, "--patch-size", str(a.patch_size),
                       "--min-labelled", str(a.min_labelled), "--split-days", "2,1,1", "--gap-days", "0", "--quiet"]
        synth_s = timed(synth)
        build_s = timed(build)
        with open(os.path.join(raw, "synth_stats.json")) as f:
            st = json.load(f)
        with open(os.path.join(shards, "manifest.json")) as f:
            man = json.load(f)
        rows[mode] = {"synth_s": round(synth_s, 1), "build_s": round(build_s, 1), "bytes": disk_bytes(raw),
                      "scenes": st["scenes"], "granules": st["granules"],
                      "written_pixel_fraction": round(st["written_pixel_fraction"], 4),
                      "samples": sum(man["counts"].values()), "synth_command": " ".join(synth[2:]),
                      "build_command": " ".join(build[2:]), "_cmp": comparable(man)}
    w, c = rows["whole"], rows["corridor"]
    same = w.pop("_cmp") == c.pop("_cmp")
    days = float(a.days)
    print(f"{a.days} day(s) from {a.start}, region {a.region} at {a.res} deg, patches of {a.patch_size} px, "
          f"corridor {a.patch_size} px; one process, 2-core machine")
    print(f"{'archive':<10} {'synth s/day':>12} {'MB/day':>8} {'scenes':>7} {'pixels written':>15} "
          f"{'build s':>8} {'samples':>8}")
    for mode, r in rows.items():
        print(f"{mode:<10} {r['synth_s'] / days:12.1f} {r['bytes'] / 1e6 / days:8.1f} {r['scenes']:>7} "
              f"{100 * r['written_pixel_fraction']:14.1f}% {r['build_s']:8.1f} {r['samples']:>8}")
    ratio_t, ratio_b = w["synth_s"] / c["synth_s"], w["bytes"] / c["bytes"]
    print(f"corridor vs whole scenes: synthesis {ratio_t:.2f}x faster, {ratio_b:.2f}x less disk; the two builds "
          f"are {'IDENTICAL' if same else 'DIFFERENT'} (shard sha256, counts, class histogram, band statistics, "
          f"profile counts, skip records)")
    out = {"days": days, "start": a.start, "region": a.region, "res": float(a.res), "patch_size": a.patch_size,
           "runs": rows, "synth_speedup": round(ratio_t, 2), "disk_ratio": round(ratio_b, 2),
           "builds_identical": same}
    if a.json:
        os.makedirs(os.path.dirname(a.json) or ".", exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    if not a.keep:
        shutil.rmtree(a.workdir, ignore_errors=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
