"""The benchmark study: SGMAGNet vs the baselines and its ablations, same data, protocol and selection rule.

    python hpc/study.py --shards study_data/shards --out docs/study [--runs study_out] [--config cpu|gpu|tiny]
                        [--seeds 0,1,2] [--only NAME,...] [--phase sweep|main|all] [--report-only]
                        [--results docs/RESULTS.md] [--pack-logs]

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
last checkpoint; --report-only rebuilds the tables and figures from what is finished; --pack-logs moves the
runs' log.jsonl files into one archive per study (<out>/logs.tar.gz), which the report reads. Run order: the sweep,
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

import json
import os
import sys
import time

from hpc.study_logs import StudyLogs, log_wall_s  # noqa: F401  (log_wall_s: re-exported for the tests)
from hpc.study_protocol import ABLATIONS, MATCHED, MIN_BOOT, MODELS, PRESETS, RUNS
from hpc.study_report import RESULTS_BEGIN, RESULTS_END, report, results_problem  # noqa: F401  (re-exported)
from hpc.study_runner import run_one, sweep, train_days
from hpc.study_stats import selected_variant  # noqa: F401  (re-exported)


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
    p.add_argument("--pack-logs", action="store_true", help="move the runs' loose log.jsonl files under --out into "
                   "<out>/logs.tar.gz (read from there by the report), then report")
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

    val = preset.get("val_split", "val")
    if not a.report_only:                  # the report reads only the finished runs' files, never the shards
        try:
            man = read_manifest(a.shards)
        except ManifestError as e:
            p.error(f"--shards: {e}")
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
    if a.pack_logs:
        archive, n = StudyLogs(a.out).pack()
        print(f"packed {n} log(s) into {archive}", flush=True)
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
