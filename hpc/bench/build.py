"""Benchmark `sgmagnet build`: granules/s and profiles/s with 1 vs 2 MPI ranks, measured in one run
(archive-scale figures -- a year built, the cost model, faults -- are measured by hpc/scale.py: docs/scale.md).

    python hpc/bench/build.py [--workdir bench_out] [--days 4] [--ranks 1,2]
    python hpc/bench/build.py --ahi-format hsd [--days 1] [--patch-size 64]

--ahi-format hsd writes one world both ways (synth --ahi-format both --track-corridor P) and builds it from
P-Tree and from HSD (through satpy) in this process, one after the other: profiles/s of each, their ratio,
and how much of the slots' HSD data the build decompressed, with the floor: decompressing those segments alone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from hpc.bench import benchcli  # noqa: E402  (one bad-input convention for the benchmarks)


def run_build(archive, out, n, patch):
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", str(n), sys.executable, "-m", "sgmagnet.cli",
           "build", "--ahi", f"{archive}/ahi", "--cloudsat", f"{archive}/cloudsat", "--out", out,
           "--patch-size", str(patch), "--min-labelled", "32", "--split-days", "2,1,1", "--quiet"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    with open(os.path.join(out, "manifest.json")) as f:
        m = json.load(f)
    with open(os.path.join(out, "build_stats.json")) as f:
        ranks = json.load(f)["ranks"]
    return wall, m, max(r["seconds"] for r in ranks), [r["profiles"] for r in ranks]


def hsd_vs_ptree(a):
    """P-Tree and HSD builds of the same world, side by side."""
    import glob

    from sgmagnet.build import BuildConfig, build
    from sgmagnet.formats import hsd_slot

    archive = os.path.join(a.workdir, f"archive_both_{a.days}d_p{a.patch_size}")
    if not os.path.exists(os.path.join(archive, "synth_stats.json")):
        subprocess.run([sys.executable, "-m", "sgmagnet.cli", "synth", "--out", archive, "--days", str(a.days),
                        "--region", "125,145,-30,30", "--res", "0.05", "--seed", "1", "--ahi-format", "both",
                        "--track-corridor", str(a.patch_size), "--quiet"], check=True, stdout=subprocess.DEVNULL)
    from sgmagnet.formats import hsd as hsd_fmt

    decompressed, lock = [], __import__("threading").Lock()
    read_bytes = hsd_fmt.read_segment_bytes

    def recording(path):                 # which segments the HSD build decompresses (for the floor below)
        with lock:
            decompressed.append(path)
        return read_bytes(path)
    hsd_fmt.read_segment_bytes = recording
    # the imports a fresh build process pays once: timed apart, so that the table compares each format's work
    t0 = time.perf_counter()
    import netCDF4  # noqa: F401
    import webdataset  # noqa: F401

    import sgmagnet.shards  # noqa: F401
    common = time.perf_counter() - t0
    t0 = time.perf_counter()
    import dask.array  # noqa: F401
    import pyorbital.orbital  # noqa: F401
    import pyresample  # noqa: F401
    import satpy.readers.ahi_hsd  # noqa: F401
    hsd_imports = time.perf_counter() - t0
    rows = {}
    for kind, sub in (("ptree", "ahi"), ("hsd", "ahi_hsd")):
        out = os.path.join(a.workdir, f"shards_{kind}")
        shutil.rmtree(out, ignore_errors=True)
        cfg = BuildConfig(ahi=os.path.join(archive, sub), cloudsat=os.path.join(archive, "cloudsat"), out=out,
                          patch_size=a.patch_size, min_labelled=32, split_days=(2, 1, 1))
        t0 = time.perf_counter()
        m = build(cfg, log=lambda msg: None)["manifest"]
        rows[kind] = (time.perf_counter() - t0, m.profiles["profiles"], m.profiles["matched_profiles"],
                      sum(m.counts.values()))
    hsd_fmt.read_segment_bytes = read_bytes
    # the floor of any HSD build: bz2-decompressing the segments it needs, alone, on all cores
    from concurrent.futures import ThreadPoolExecutor

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as ex:
        list(ex.map(lambda p: len(read_bytes(p)), decompressed))
    floor = time.perf_counter() - t0
    files = glob.glob(os.path.join(archive, "ahi_hsd", "**", "*.DAT.bz2"), recursive=True)
    slots = len({os.path.dirname(p) for p in files})
    from sgmagnet.formats import hsd
    total = sum(hsd.RESOLUTIONS[hsd.parse_name(p).res][0] ** 2 // hsd.N_SEGMENTS * 2 for p in files)
    st = hsd_slot.STATS
    print(f"one world (region 125-145E 30S-30N, {a.days} day(s)), written as P-Tree at 0.05 deg and as HSD "
          f"(native 2 km), track corridor {a.patch_size} px; builds with --patch-size {a.patch_size}, 1 process "
          f"({len(os.sched_getaffinity(0))} cores)")
    print(f"{'format':>6} {'wall s':>7} {'profiles':>9} {'matched':>8} {'samples':>8} {'profiles/s':>11}")
    for kind, (wall, prof, matched, samples) in rows.items():
        print(f"{kind:>6} {wall:7.1f} {prof:>9} {matched:>8} {samples:>8} {prof / wall:11.0f}")
    ratio = (rows["hsd"][1] / rows["hsd"][0]) / (rows["ptree"][1] / rows["ptree"][0])
    print(f"HSD speed / P-Tree speed = {ratio:.2f} (goal >= 0.50); imports not counted: {common:.1f} s common "
          f"to both (torch, webdataset, netCDF4), {hsd_imports:.1f} s HSD's readers (satpy, pyresample, dask, "
          f"pyorbital)")
    fresh = (rows["ptree"][0] + common) / (rows["hsd"][0] + common + hsd_imports)
    print(f"one build in a fresh process (each paying its imports): HSD / P-Tree = {fresh:.2f}")
    print(f"floor: bz2-decompressing the {len(decompressed)} segment files that build read, alone on "
          f"{len(os.sched_getaffinity(0))} cores, takes {floor:.1f} s = {floor / rows['ptree'][0]:.1f} x the whole "
          f"P-Tree build: no HSD build of these slots can exceed {rows['ptree'][0] / floor:.2f} x P-Tree's speed")
    print(f"HSD decompressed {st['segments_decompressed']} of {len(files)} segment files "
          f"({100 * st['segments_decompressed'] / max(len(files), 1):.1f} %) in {slots} slot(s): "
          f"{st['bytes_decompressed'] / 1e9:.2f} GB of {total / 1e9:.1f} GB")


def main():
    ap = benchcli.parser("build.py", __doc__, raw=True)
    ap.add_argument("--workdir", default="bench_out")
    ap.add_argument("--days", type=benchcli.positive, default=4)
    ap.add_argument("--ranks", type=benchcli.int_list, default=[1, 2], help="MPI rank counts, comma-separated")
    ap.add_argument("--patch-size", type=benchcli.positive, default=64)
    ap.add_argument("--ahi-format", choices=("ptree", "hsd"), default="ptree",
                    help="hsd: compare HSD (through satpy) with P-Tree builds of the same world")
    a = ap.parse_args()
    if a.ahi_format == "hsd":
        return hsd_vs_ptree(a)
    archive = os.path.join(a.workdir, f"archive_{a.days}d")
    if not os.path.exists(os.path.join(archive, "synth_stats.json")):
        subprocess.run([sys.executable, "-m", "sgmagnet.cli", "synth", "--out", archive, "--days", str(a.days),
                        "--region", "120,150,-40,40", "--res", "0.05", "--seed", "1", "--quiet"], check=True)
    with open(os.path.join(archive, "synth_stats.json")) as f:
        st = json.load(f)
    rows = []
    for n in a.ranks:
        wall, m, work, loads = run_build(archive, os.path.join(a.workdir, f"shards_n{n}"), n, a.patch_size)
        prof = m["profiles"]["profiles"]
        rows.append((n, wall, work, st["granules"], prof, sum(m["counts"].values()), loads))
    print(f"archive: {st['granules']} granules, {st['scenes']} AHI scenes, region 120-150E 40S-40N at 0.05 deg, "
          f"patch {a.patch_size}")
    print("wall = whole command (mpirun + interpreter start, planning, manifest merge); "
          "work = granule processing, slowest rank")
    print(f"{'ranks':>5} {'wall s':>7} {'work s':>7} {'granules/s':>11} {'profiles/s':>11} {'samples':>8} "
          f"{'speed-up wall':>14} {'speed-up work':>14}  profiles per rank")
    base, base_w = rows[0][1], rows[0][2]
    for n, wall, work, g, p, s, loads in rows:
        print(f"{n:>5} {wall:7.1f} {work:7.1f} {g / wall:11.3f} {p / wall:11.0f} {s:>8} {base / wall:13.2f}x "
              f"{base_w / work:13.2f}x  {loads}")
    print("a year's build, its cost model and the extrapolation to 5 years: docs/scale.md (python hpc/scale.py)")


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "build.py"))
