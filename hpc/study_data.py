"""The study's archive: synthesise and build a multi-week benchmark in chunks of days, within a small disk.

    python hpc/study_data.py --out study_data [--start 2018-10-10 --days 45 --chunk 3 --jobs 1]
                             [--region 125,145,-60,60 --res 0.05 --seed 0]
                             [--patch-size 64 --min-labelled 32 --split-days 10,2,2 --gap-days 1] [--np 2]
                             [--track-corridor]

For each chunk of days: `sgmagnet synth` writes its AHI and CloudSat files under <out>/raw/chunk_NNN/ (all
chunks with `--epoch` = --start, so they are pieces of one synthetic world, not copies of its first days),
`sgmagnet build` (under mpirun -n NP when NP > 1) collocates them into <out>/shards (one split cycle anchored
at --start for every chunk, so every chunk shares one configuration hash), the chunk's granule records are
checked (record present, shards' sha256 intact), and only then the chunk's AHI files (~90 % of the raw
volume) are deleted; the CloudSat files stay (small; the build's plan lists every granule, and granules of
earlier chunks are skipped because their records are intact). A marker <out>/raw/chunk_NNN/done makes a
rerun skip finished chunks: a killed run continues where it stopped. A CloudSat granule that crosses a
chunk boundary only sees the AHI scenes of its own chunk (a few patches lost per boundary, said in the log).
With --track-corridor, synth writes only the pixels within --patch-size of the tracks (the rest is fill):
the shards are the same, byte for byte (the manifest differs only in the input paths and the number of AHI
scenes); for the study's 45 days it took 251 s instead of 1,343 s and 820 MiB of raw files instead of
9,780 MiB.

Writes <out>/study_data.json: the commands, per-chunk wall times, disk use and the manifest's sha256.
Exit 2 with one line on a bad option or a failed step (the step's own message is in <out>/logs/).
Its child processes (synth, build, mpirun) never outlive it: however it ends -- a failed step while other
chunks are synthesising, SIGTERM, Ctrl-C -- it terminates them (SIGKILL after 10 s) before exiting
(SIGTERM: exit 143; a rerun continues from the last finished chunk).
"""
from __future__ import annotations

import datetime as dt
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from sgmagnet.io import write_json

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fail(msg: str):
    sys.stderr.write(f"study_data: error: {msg}\n")
    raise SystemExit(2)


def du_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total / 2 ** 20


CHILDREN: list[subprocess.Popen] = []     # every process started, so that none outlives this one


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, **kw)
    CHILDREN.append(proc)
    return proc


def stop_children(grace_s: float = 10.0):
    """Terminate the children still running, SIGKILL those that are still there after grace_s."""
    live = [c for c in CHILDREN if c.poll() is None]
    for c in live:
        c.terminate()
    deadline = time.time() + grace_s
    for c in live:
        try:
            c.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
    CHILDREN.clear()


def _terminated(signum, frame):
    raise SystemExit(128 + signum)          # unwinds through main's finally, which stops the children


def step(cmd: list[str], log_path: str, what: str) -> float:
    """Run one command, its output appended to log_path; exit 2 naming the step when it fails."""
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = spawn(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=HERE).wait()
    if rc != 0:
        fail(f"{what} failed (exit {rc}); see {log_path}")
    return time.time() - t0


def chunk_intact(shards: str, cloudsat_dir: str) -> tuple[int, list[str]]:
    """(records checked, problems) for the granules of one chunk: each needs an intact record."""
    from sgmagnet.build import sha256

    problems, n = [], 0
    for g in sorted(glob.glob(os.path.join(cloudsat_dir, "**", "*.hdf"), recursive=True)):
        stem = os.path.splitext(os.path.basename(g))[0]
        rp = os.path.join(shards, "_records", stem + ".json")
        n += 1
        if not os.path.exists(rp):
            problems.append(f"{stem}: no record")
            continue
        with open(rp) as f:
            rec = json.load(f)
        for s in rec.get("shards", []):
            p = os.path.join(shards, s["path"])
            if not os.path.exists(p) or sha256(p) != s["sha256"]:
                problems.append(f"{s['path']}: missing or sha256 differs")
    return n, problems


def main(argv=None) -> int:
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return run(argv)
    finally:
        stop_children()
        signal.signal(signal.SIGTERM, previous)


def run(argv=None) -> int:
    from sgmagnet.cli import Parser, parser as sgmagnet_parser

    p = Parser(prog="study_data.py", description=__doc__.split("\n\n")[0])   # bad option: one line, exit 2
    p.add_argument("--out", required=True, help="folder: raw/, shards/, logs/, study_data.json")
    p.add_argument("--start", default="2018-10-10", help="first day (UTC) and split anchor")
    p.add_argument("--days", type=int, default=45, help="number of days; 45 = 3 cycles of 10,2,2 + 1 gap")
    p.add_argument("--chunk", type=int, default=3, help="days per chunk; small, so a killed run loses little")
    p.add_argument("--region", default="125,145,-60,60",
                   help="LON0,LON1,LAT0,LAT1; the default spans the paper's latitudes, a 20-degree band of its "
                        "longitudes")
    p.add_argument("--res", default="0.05", help="grid step in degrees (0.05)")
    p.add_argument("--seed", type=int, default=0, help="synthetic archive seed (0)")
    p.add_argument("--patch-size", type=int, default=64, help="patch size in pixels (64)")
    p.add_argument("--min-labelled", type=int, default=32, help="min labelled pixels per patch (32)")
    p.add_argument("--split-days", default="10,2,2", help="TRAIN,VAL,TEST block lengths (10,2,2)")
    p.add_argument("--gap-days", type=int, default=1, help="gap days after each block (1)")
    p.add_argument("--np", type=int, default=2, help="MPI ranks for the build; 1 = no mpirun")
    p.add_argument("--jobs", type=int, default=1, help="chunks synthesised at once; each needs one core")
    p.add_argument("--track-corridor", action="store_true",
                   help="synthesise only the pixels the build reads (synth --track-corridor = --patch-size): the "
                        "same shards from a fraction of the synthesis time and disk (hpc/bench/synth_corridor.py)")
    a = p.parse_args(argv)
    try:
        start = dt.date.fromisoformat(a.start)
    except ValueError:
        fail(f"--start: {a.start!r} is not a date YYYY-MM-DD")
    if a.days < 1 or a.chunk < 1 or a.np < 1 or a.jobs < 1:
        fail("--days, --chunk, --np and --jobs must be >= 1")
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        fail(f"--out {a.out!r} is a file, not a folder")
    if a.np > 1 and shutil.which("mpirun") is None:
        fail("--np > 1 needs mpirun on PATH (or use --np 1)")
    shards = os.path.join(a.out, "shards")
    sg_parser = sgmagnet_parser()
    corridor = ["--track-corridor", str(a.patch_size)] if a.track_corridor else []
    for args in (build_args(a, shards), ["synth", "--out", os.path.join(a.out, "raw"), "--start", a.start,
                                         "--region", a.region, "--res", a.res, "--seed", str(a.seed), *corridor]):
        sg_parser.parse_args(args)              # the steps' own option checks, before any work (one line, exit 2)
    for d in ("raw", "logs"):
        os.makedirs(os.path.join(a.out, d), exist_ok=True)
    exe = os.path.join(os.path.dirname(sys.executable), "sgmagnet")
    sg = [exe] if os.path.exists(exe) else [sys.executable, "-m", "sgmagnet.cli"]
    info_path = os.path.join(a.out, "study_data.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {"chunks": {}}
    info["options"] = vars(a)
    t_all = time.time()
    chunks = []
    for k, first in enumerate(range(0, a.days, a.chunk)):
        n = min(a.chunk, a.days - first)
        day0 = start + dt.timedelta(days=first)
        raw = os.path.join(a.out, "raw", f"chunk_{k:03d}")
        synth = sg + ["synth", "--out", raw, "--start", day0.isoformat(), "--days", str(n), "--region", a.region,
                      "--res", a.res, "--seed", str(a.seed), "--epoch", start.isoformat(), *corridor, "--quiet",
                      *(["--workers", "1"] if a.jobs > 1 else [])]
        chunks.append((k, n, day0, raw, synth, os.path.join(a.out, "logs", f"chunk_{k:03d}.log")))
    todo = [c for c in chunks if not os.path.exists(os.path.join(c[3], "done"))]
    for c in chunks:
        if c not in todo:
            print(f"chunk {c[0]}: {c[2]} +{c[1]} d already built", flush=True)
    t_synth = {}
    for g in range(0, len(todo), a.jobs):       # synthesise up to --jobs chunks at once, then build in order
        group = [c for c in todo[g:g + a.jobs] if not os.path.exists(os.path.join(c[3], "synth_done"))]
        procs = []
        for k, n, day0, raw, synth, log in group:
            shutil.rmtree(raw, ignore_errors=True)            # a half-written chunk is synthesised again
            os.makedirs(raw)
            fh = open(log, "a")
            fh.write("$ " + " ".join(synth) + "\n")
            fh.flush()
            env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")   # one core per chunk
            procs.append((k, raw, log, fh, time.time(),
                          spawn(synth, stdout=fh, stderr=subprocess.STDOUT, cwd=HERE, env=env)))
        for k, raw, log, fh, t0, proc in procs:
            rc = proc.wait()
            fh.close()
            if rc != 0:
                fail(f"chunk {k} synth failed (exit {rc}); see {log}")
            t_synth[k] = time.time() - t0
            with open(os.path.join(raw, "synth_done"), "w") as f:
                f.write(f"{t_synth[k]:.1f}\n")
        for k, n, day0, raw, synth, log in todo[g:g + a.jobs]:
            build_chunk(a, sg, shards, info, info_path, k, n, day0, raw, synth, log,
                        t_synth.get(k, float(open(os.path.join(raw, "synth_done")).read())))
    from sgmagnet.shards import manifest_sha256, read_manifest

    m = read_manifest(shards)
    info.update(manifest_sha256=manifest_sha256(shards), counts=m.counts, shards_mb=round(du_mb(shards), 1),
                last_run_s=round(time.time() - t_all, 1))
    write_json(info_path, info)
    print(f"shards {shards}: {m.counts}; manifest sha256 {info['manifest_sha256']}", flush=True)
    return 0


def build_args(a, shards: str) -> list[str]:
    """The `sgmagnet build` arguments of every chunk (one configuration: one split cycle anchored at --start)."""
    return ["build", "--ahi", os.path.join(a.out, "raw"), "--cloudsat", os.path.join(a.out, "raw"),
            "--out", shards, "--patch-size", str(a.patch_size), "--min-labelled", str(a.min_labelled),
            "--split-days", a.split_days, "--gap-days", str(a.gap_days), "--split-anchor", a.start, "--quiet"]


def build_chunk(a, sg, shards, info, info_path, k, n, day0, raw, synth, log, t_synth):
    """Build one synthesised chunk into the shards, verify its granules, then delete its AHI files."""
    build = sg + build_args(a, shards)
    if a.np > 1:
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        build = ["mpirun", *root, "--oversubscribe", "-n", str(a.np)] + build
    t_build = step(build, log, f"chunk {k} build")
    checked, problems = chunk_intact(shards, os.path.join(raw, "cloudsat"))
    if problems:
        fail(f"chunk {k}: {len(problems)} problem(s) after the build, raw files kept: {problems[0]}")
    raw_mb = du_mb(raw)
    shutil.rmtree(os.path.join(raw, "ahi"), ignore_errors=True)
    info["chunks"][str(k)] = {"first_day": day0.isoformat(), "days": n, "synth_s": round(t_synth, 1),
                              "build_s": round(t_build, 1), "raw_mb": round(raw_mb, 1),
                              "raw_mb_kept": round(du_mb(raw), 1), "granules_checked": checked,
                              "synth_command": " ".join(synth), "build_command": " ".join(build)}
    with open(os.path.join(raw, "done"), "w") as f:
        f.write("ok\n")
    write_json(info_path, info)
    print(f"chunk {k}: {day0} +{n} d: synth {t_synth:.0f} s, build {t_build:.0f} s, raw {raw_mb:.0f} MB "
          f"(AHI deleted), {checked} granules verified", flush=True)


if __name__ == "__main__":
    sys.exit(main())
