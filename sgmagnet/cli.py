"""`sgmagnet` command line. A bad argument exits with code 2 and a one-line reason."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default: "(default: X)", written once here (a help text's own
    trailing "(X)" becomes "(default: X)"; flags, required options and empty lists show none)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if (not action.option_strings or action.required or d is None or d is False or d == argparse.SUPPRESS
                or (isinstance(d, (list, tuple)) and not d) or "default" in h):
            return h
        shown = ",".join(map(str, d)) if isinstance(d, (list, tuple)) else f"{d:g}" if isinstance(d, float) else str(d)
        if h.endswith(f"({shown})"):
            return h[: -len(f"({shown})")] + f"(default: {shown})"
        return f"{h} (default: {shown})"


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _floats(s: str, n: int, what: str):
    try:
        v = tuple(float(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated numbers, got {s!r}")
    if len(v) != n:
        raise argparse.ArgumentTypeError(f"{what} must be {n} comma-separated numbers, got {s!r}")
    return v


def _region(s):
    v = _floats(s, 4, "--region")
    if not (v[0] < v[1] and v[2] < v[3] and -90 <= v[2] and v[3] <= 90):
        raise argparse.ArgumentTypeError(f"--region must be LON0,LON1,LAT0,LAT1 with LON0<LON1, LAT0<LAT1, got {s!r}")
    return v


def _positive(cast, what):
    def parse(s):
        try:
            v = cast(s)
        except ValueError:
            v = None
        if v is None or not (0 < v < float("inf")):   # finite: inf minutes or degrees make no sense
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {s!r}")
        return v
    return parse


_positive_int = _positive(int, "integer")
_positive_float = _positive(float, "number")


def _window_min(s):
    v = _positive_float(s)
    if not v <= 60:   # also rejects inf
        raise argparse.ArgumentTypeError(f"expected minutes in (0, 60], got {s!r}")
    return v


def _count0(s):
    try:
        v = int(s)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}")
    return v


def _split_days(s):
    try:
        v = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split-days must be TRAIN,VAL,TEST day counts, got {s!r}")
    if len(v) != 3 or min(v) < 0 or v[0] == 0:
        raise argparse.ArgumentTypeError(f"--split-days must be TRAIN,VAL,TEST day counts (TRAIN > 0), got {s!r}")
    return v


def _date(s):
    import datetime as dt
    try:
        return dt.date.fromisoformat(s).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {s!r}")


def _dates(s):
    """One day or several, comma-separated, each YYYY-MM-DD; no repeats."""
    out = [_date(x.strip()) for x in s.split(",")]
    if len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"a day is repeated in {s!r}")
    return out


def add_build_arguments(p: argparse.ArgumentParser, *, local: bool):
    """The archive-build options, defined once for `build` and `submit build` (defaults from BuildConfig)."""
    from .build import BuildConfig

    d = {f.name: f.default for f in dataclasses.fields(BuildConfig)}
    p.add_argument("--ahi", required=True, help="folder of Himawari AHI L1 files, searched recursively: P-Tree "
                   "gridded NetCDF (NC_H08_*.nc) or Himawari Standard Data segments (HS_H08_*.DAT[.bz2]); the kind "
                   "is detected from the file names")
    p.add_argument("--ahi-format", choices=("auto", "ptree", "hsd"), default=d["ahi_format"],
                   help="which kind of AHI file to read (default: auto; a folder holding both kinds needs a choice)")
    p.add_argument("--cloudsat", default=None, help="folder of CloudSat 2B-CLDCLASS-LIDAR HDF files (searched "
                   "recursively); give --cloudsat, --earthcare or both")
    p.add_argument("--earthcare", default=None, help="folder of EarthCARE AC__TC__2B HDF5 frames (ECA_*.h5, searched "
                   "recursively): day and night labels from 2025")
    p.add_argument("--earthcare-strict", action="store_true", help="strict EarthCARE class table: 'snow / ice "
                   "cloud (possible liquid)' (codes 13, 19) get no label instead of ice (recorded in the manifest)")
    p.add_argument("--out", required=True, help="output folder for shards, records and manifest.json")
    p.add_argument("--window-min", type=_window_min, default=d["window_min"],
                   help=f"max |t_profile - t_pixel| in minutes, (0, 60] (default: {d['window_min']:g})")
    p.add_argument("--patch-size", type=_positive_int, default=d["patch_size"],
                   help=f"patch height/width in pixels (default: {d['patch_size']})")
    p.add_argument("--min-labelled", type=_positive_int, default=d["min_labelled"],
                   help=f"min labelled pixels per patch (default: {d['min_labelled']})")
    p.add_argument("--split-days", type=_split_days, default=d["split_days"],
                   help="TRAIN,VAL,TEST whole-day block lengths of the repeating time split "
                        f"(default: {','.join(map(str, d['split_days']))})")
    p.add_argument("--gap-days", type=_count0, default=d["gap_days"],
                   help=f"gap days dropped after each block (default: {d['gap_days']})")
    p.add_argument("--split-anchor", type=_date, default=d["split_anchor"],
                   help="first day of the split cycle, YYYY-MM-DD (default: the first AHI day)")
    p.add_argument("--shard-maxcount", type=_positive_int, default=d["shard_maxcount"],
                   help=f"max samples per shard (default: {d['shard_maxcount']})")
    if local:
        p.add_argument("--overwrite", action="store_true", help="rebuild an --out made with another configuration "
                       "(its shards, records and manifest are deleted); without it such an --out is refused")


def build_config_from_args(a, cmd: str, absolute: bool = False, check_dirs: bool = True):
    """BuildConfig from the parsed build options, after the checks both commands share; None (after one line
    on stderr) if neither --cloudsat nor --earthcare is given, or if --ahi, --cloudsat or --earthcare is not a
    folder (not checked for a submit --dry-run, which may be written away from the cluster's file system)."""
    from .build import BuildConfig

    if not a.cloudsat and not a.earthcare:
        sys.stderr.write(f"sgmagnet {cmd}: error: no labels: give --cloudsat DIR (2B-CLDCLASS-LIDAR) and/or "
                         f"--earthcare DIR (AC__TC__2B)\n")
        return None
    for d, flag in ((a.ahi, "--ahi"), (a.cloudsat, "--cloudsat"), (a.earthcare, "--earthcare")):
        if d is not None and check_dirs and not os.path.isdir(d):
            sys.stderr.write(f"sgmagnet {cmd}: error: {flag} {d!r} is not a directory\n")
            return None
    path = os.path.abspath if absolute else (lambda x: x)
    opt = lambda x: path(x) if x else None  # noqa: E731
    return BuildConfig(ahi=path(a.ahi), cloudsat=opt(a.cloudsat), out=path(a.out), window_min=a.window_min,
                       patch_size=a.patch_size, min_labelled=a.min_labelled, split_days=tuple(a.split_days),
                       gap_days=a.gap_days, split_anchor=a.split_anchor, shard_maxcount=a.shard_maxcount,
                       ahi_format=a.ahi_format, earthcare=opt(a.earthcare), earthcare_strict=a.earthcare_strict)


def cmd_synth(a):
    from .synth.archive import SynthConfig, format_stats, synthesize

    starts = a.start
    epoch = a.epoch or starts[0]
    if epoch > min(starts):
        sys.stderr.write(f"sgmagnet synth: error: --epoch {epoch} is after --start {min(starts)}\n")
        return 2
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        sys.stderr.write(f"sgmagnet synth: error: --out {a.out!r} is a file, not a folder\n")
        return 2
    import datetime as dt
    try:
        for d in starts:
            dt.date.fromisoformat(d) + dt.timedelta(days=a.days)
    except OverflowError:
        sys.stderr.write(f"sgmagnet synth: error: --days {a.days} from {max(starts)} passes the year 9999\n")
        return 2
    if a.ahi_format != "ptree" and a.track_corridor is None:
        sys.stderr.write(f"sgmagnet synth: error: --ahi-format {a.ahi_format} needs --track-corridor P (HSD is "
                         f"rendered on the native 2 km full disk only near the label tracks)\n")
        return 2
    for d in starts:      # several spans: one world (the same epoch), each span's statistics in its own file
        cfg = SynthConfig(out=a.out, start=d, days=a.days, region=a.region, res=a.res, seed=a.seed,
                          orbit_mode=a.orbit, epoch=epoch if len(starts) > 1 or a.epoch else None,
                          track_corridor=a.track_corridor, ahi_format=a.ahi_format, labels=a.labels,
                          workers=a.workers)
        stats = synthesize(cfg, log=(lambda m: None) if a.quiet else print, progress=not a.quiet,
                           stats_name="synth_stats.json" if len(starts) == 1 else f"synth_stats_{d}.json")
        if len(starts) > 1:
            print(f"span {d} + {a.days} day(s):")
        print(format_stats(stats))
    return 0


def cmd_build(a):
    from .build import BuildFailed, BuildRefused, build, get_comm

    cfg = build_config_from_args(a, "build")
    if cfg is None:
        return 2
    try:
        r = build(cfg, log=(lambda m: None) if a.quiet else print, overwrite=a.overwrite, progress=not a.quiet)
    except (BuildRefused, BuildFailed) as e:   # every rank raises the same; rank 0 says it
        comm = get_comm()
        code = 2 if isinstance(e, BuildRefused) else 1
        return _fail("build", e, code) if comm is None or comm.Get_rank() == 0 else code
    if r["rank"] == 0:
        warn_empty_splits(a.out, cfg)
        if not a.quiet:
            from .inspect import summary
            print(summary(a.out))
    return 0


def warn_empty_splits(out: str, cfg) -> list[str]:
    """A loud warning per split without a sample (train skips validation, evaluate refuses the split)."""
    from .shards import read_manifest

    counts = read_manifest(out).counts
    empty = [s for s in ("train", "val", "test") if not counts.get(s)]
    days = dict(zip(("train", "val", "test"), cfg.split_days))
    cycle = f"--split-days {','.join(map(str, cfg.split_days))} / --gap-days {cfg.gap_days}"
    for s in empty:
        why = (f"its block of the {cycle} cycle is 0 days" if days[s] == 0 else
               f"the archive's days do not reach its block of the {cycle} cycle (or its days gave no patch); "
               "add days or shorten the blocks")
        sys.stderr.write(f"sgmagnet build: WARNING: split {s!r} of {out} is empty (0 samples): {why}\n")
    return empty


def cmd_inspect(a):
    from .inspect import inspect_shards
    from .shards import ManifestError

    try:
        text, bad = inspect_shards(a.shards, verify=a.verify, as_json=a.json)
    except ManifestError as e:
        return _fail("inspect", e)
    print(text)
    if bad:
        sys.stderr.write(f"sgmagnet inspect: error: {len(bad)} shard(s) do not match manifest.json "
                         f"(first: {bad[0]})\n")
        return 1
    return 0


def _fail(cmd: str, e, code: int = 2) -> int:
    """One line on stderr naming the problem (the exception's first line), then the exit code."""
    msg = " ".join(str(e).split()) or type(e).__name__
    sys.stderr.write(f"sgmagnet {cmd}: error: {msg}\n")
    return code


def cmd_train(a):
    from .config import ConfigError, load_config
    from .train import run_training

    if a.config and not os.path.isfile(a.config):
        sys.stderr.write(f"sgmagnet train: error: --config {a.config!r} is not a file\n")
        return 2
    try:
        cfg = load_config(a.config, a.overrides)
        if a.no_progress:
            cfg.train.progress = False
        if a.profile:
            cfg.train.profile = a.profile
        if a.deepspeed:
            if not os.path.isfile(a.deepspeed):
                raise ConfigError(f"--deepspeed {a.deepspeed!r} is not a file")
            cfg.train.deepspeed = a.deepspeed
        if a.print_config:
            from .config import dump, validate
            print(dump(validate(cfg)), end="")
            return 0
        trainer, _, preempted = run_training(cfg, resume=a.resume, overwrite=a.overwrite)
    except (ValueError, FileNotFoundError) as e:   # ConfigError, ManifestError, a bad checkpoint
        return _fail("train", e)
    except OSError as e:                           # the environment: a checkpoint the disk refused (exit 1)
        return _fail("train", e, code=1)
    from . import dist as hdist

    code = preempted.code if preempted else 0
    hdist.shutdown()
    if trainer.env.distributed:  # skip native destructors (rare gloo/DeepSpeed abort at exit, see sgmagnet/dist.py)
        hdist.hard_exit(code)
    return code


def _missing(cmd: str, *paths) -> bool:
    """Report the first (flag, path) whose path does not exist (one line on stderr); True if one is missing."""
    for flag, path in paths:
        if not os.path.exists(path):
            sys.stderr.write(f"sgmagnet {cmd}: error: {flag}{' ' if flag else ''}{path!r} does not exist\n")
            return True
    return False


def cmd_evaluate(a):
    from .evaluate import evaluate_checkpoint
    from .tables import report_markdown

    if _missing("evaluate", ("--checkpoint", a.checkpoint), ("--shards", a.shards)):
        return 2
    if a.out and os.path.exists(a.out) and not os.path.isdir(a.out):
        sys.stderr.write(f"sgmagnet evaluate: error: --out {a.out!r} is a file; give a folder for the results\n")
        return 2
    try:
        res = evaluate_checkpoint(a.checkpoint, a.shards, a.split, a.out, batch_size=a.batch_size,
                                  curtains=a.curtains, device=a.device, verify=not a.no_verify, decision=a.decision)
    except (ValueError, FileNotFoundError) as e:   # ManifestError, ShardError, ConfigError, a bad checkpoint
        return _fail("evaluate", e)
    if not a.quiet:
        print(report_markdown(res))
    return 0


def cmd_report(a):
    from .tables import compare_markdown

    results = []
    for p in a.results:
        try:
            with open(p) as f:
                results.append(json.load(f))
        except (OSError, ValueError) as e:
            sys.stderr.write(f"sgmagnet report: error: {p}: {e}\n")
            return 2
    splits = {r["split"] for r in results}
    if len(splits) > 1:
        sys.stderr.write(f"sgmagnet report: error: results are from different splits {sorted(splits)}\n")
        return 2
    table = compare_markdown(results)
    print(table)
    if a.curves:
        from .plots import loss_curves_png
        logs = {r["model"]: os.path.join(os.path.dirname(p), "log.jsonl") for r, p in zip(results, a.results)}
        loss_curves_png({k: v for k, v in logs.items() if os.path.exists(v)}, a.curves)
    if a.out:
        from .io import write_text
        write_text(a.out, table + "\n")
    return 0


def cmd_submit(a):
    from launch.submit import submit_build, submit_train

    try:
        if a.what == "train":
            return submit_train(a)
        cfg = build_config_from_args(a, "submit build", absolute=True, check_dirs=not a.dry_run)
        return 2 if cfg is None else submit_build(a, cfg)
    except ValueError as e:  # SubmitError and config errors
        sys.stderr.write(f"sgmagnet submit {a.what}: error: {e}\n")
        return 2


def _bbox(s):
    v = _floats(s, 4, "--bbox")
    if not (v[0] < v[1] and v[2] < v[3]):
        raise argparse.ArgumentTypeError(f"--bbox must be LON0,LON1,LAT0,LAT1 with LON0<LON1, LAT0<LAT1, got {s!r}")
    return v


def _batch_or_auto(s: str):
    return s if s == "auto" else _positive_int(s)


def cmd_predict(a):
    from .formats import FormatError
    from .predict import predict_checkpoint

    if _missing("predict", ("--checkpoint", a.checkpoint), ("--ahi", a.ahi)):
        return 2
    if a.overlap % 2 or a.overlap < 0 or a.overlap >= a.tile:
        sys.stderr.write(f"sgmagnet predict: error: --overlap must be even, >= 0 and smaller than --tile {a.tile}\n")
        return 2
    try:
        predict_checkpoint(a.checkpoint, a.ahi, a.out, bbox=a.bbox, tile=a.tile, overlap=a.overlap, batch=a.batch_size,
                           probabilities=a.probabilities, device=a.device, fmt=a.fmt, bf16=a.bf16)
    except (FormatError, ValueError, FileNotFoundError) as e:
        return _fail("predict", e)
    return 0


def cmd_plot(a):
    from . import plots
    from .formats import FormatError

    if _missing("plot", ("", a.cube)):
        return 2
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, os.path.basename(a.cube).rsplit(".", 1)[0])
    try:
        granule, note = a.granule, ""
        if granule is None and a.cloudsat:
            granule, gap = plots.nearest_granule(a.cube, a.cloudsat)
            note = f" (nearest profile {gap:.1f} min from the scene)"
            print(f"curtain granule: {granule}{note}")
        plots.cube_map_png(a.cube, stem + "_top_phase.png", granule)
        done = [stem + "_top_phase.png"]
        for k, line in enumerate(a.section or []):
            plots.cube_section_png(a.cube, line, f"{stem}_section_{k}.png")
            done.append(f"{stem}_section_{k}.png")
        if granule:
            plots.cube_curtain_png(a.cube, granule, stem + "_curtain.png", note)
            done.append(stem + "_curtain.png")
    except (ValueError, KeyError, OSError, FormatError) as e:
        sys.stderr.write(f"sgmagnet plot: error: {str(e).splitlines()[0]}\n")
        return 2
    print("\n".join(done))
    return 0


def cmd_demo(a):
    from .demo import run

    return run(main, a.out, a.ranks)


def parser() -> Parser:
    """The whole command line (every subcommand and its option checks); main() runs what it parses. Drivers
    that run `sgmagnet` as a subprocess (hpc/study_data.py) parse their command lines with it first, so a bad
    option stops them before any work, with the same one-line message."""
    p = Parser(prog="sgmagnet", description="3D cloud-phase benchmark builder and SGMAGNet training.")
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # deepspeed launcher (also LOCAL_RANK)
    from . import __version__
    p.add_argument("--version", action="version", version=f"sgmagnet {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    s = sub.add_parser("synth", help="write a synthetic AHI + CloudSat/EarthCARE archive in the real file formats")
    s.add_argument("--out", required=True, help="archive folder (ahi/, cloudsat/, earthcare/ are created in it)")
    s.add_argument("--start", type=_dates, default=["2018-10-10"], metavar="DAY[,DAY...]",
                   help="first day (UTC), default 2018-10-10 (the first day of 2B-CLDCLASS-LIDAR's C-Train window); "
                        "several days = several spans of --days each, written as one world "
                        "(e.g. 2018-10-10,2025-06-01: CloudSat then EarthCARE)")
    s.add_argument("--days", type=_positive_int, default=1, help="number of days, default 1")
    s.add_argument("--region", type=_region, default=(100.0, 160.0, -60.0, 60.0),
                   help="LON0,LON1,LAT0,LAT1 in degrees east/north, default 100,160,-60,60 (the paper's)")
    s.add_argument("--res", type=_positive_float, default=0.05, help="grid step in degrees, default 0.05")
    s.add_argument("--seed", type=_count0, default=0, help="random seed, >= 0 (the archive is deterministic per seed)")
    s.add_argument("--epoch", type=_date, default=None, help="day the synthetic weather and orbit are anchored "
                   "to (default: --start); give every piece of an archive written in pieces the same epoch, or "
                   "each piece repeats the same weather")
    s.add_argument("--labels", choices=("epochs", "cloudsat", "earthcare", "both"), default="epochs",
                   help="label files to write: epochs (default): each product only where it held radar+lidar "
                        "labels (2B-CLDCLASS-LIDAR 2012-05-15 to 2018-01-12 and 2018-10-10 to 2020-08-26, "
                        "EarthCARE AC__TC__2B from 2025-03-17; EARTHCARE.md §6); cloudsat, earthcare, both: "
                        "those whatever the date")
    s.add_argument("--orbit", choices=("doop", "full"), default="doop",
                   help="doop: daylight-only CloudSat (as since 2011, default); full: day and night passes")
    s.add_argument("--track-corridor", type=_positive_int, default=None, metavar="P",
                   help="write only the pixels a build with --patch-size <= P can read: those within P pixels of "
                        "a CloudSat profile near in time (the rest are fill, and slots no profile is near are not "
                        "written); those pixels are identical to the whole scene's. Default: whole scenes")
    s.add_argument("--ahi-format", choices=("ptree", "hsd", "both"), default="ptree",
                   help="ptree: JAXA P-Tree gridded NetCDF (ahi/, default); hsd: Himawari Standard Data, the 160 "
                        "segment files per slot on the native grid (ahi_hsd/; needs --track-corridor, P in native "
                        "2 km pixels); both: the same world written both ways")
    s.add_argument("--workers", type=_count0, default=0,
                   help="processes writing the AHI slots, 0 = one per core (any number writes the same files)")
    s.add_argument("--quiet", action="store_true", help="no progress bar; print only the final statistics")
    s.set_defaults(func=cmd_synth)

    b = sub.add_parser("build", help="collocate AHI with CloudSat into WebDataset shards (also under mpirun -n K)")
    add_build_arguments(b, local=True)
    b.add_argument("--quiet", action="store_true", help="no progress bar and no summary (warnings and errors only)")
    b.set_defaults(func=cmd_build)

    i = sub.add_parser("inspect", help="print a shard set's statistics (counts, class histogram, bands)")
    i.add_argument("shards", help="shard folder with manifest.json")
    i.add_argument("--verify", action="store_true", help="re-hash every shard against the manifest")
    i.add_argument("--json", action="store_true", help="print the statistics as JSON")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("train", help="train a model (SGMAGNet or a baseline) on benchmark shards",
                       description="Train from a YAML config; any key can be overridden as section.key=value.")
    t.add_argument("--config", help="YAML config (see configs/); omitted keys take the defaults of sgmagnet/config.py")
    t.add_argument("--resume", action="store_true",
                   help="continue exactly from the run folder's latest checkpoint, also on another number of ranks "
                        "with the same global batch (data.batch_size x optim.accum x ranks): the same samples "
                        "follow, none repeated or skipped")
    t.add_argument("--deepspeed", metavar="DS.json", help="wrap the model with deepspeed.initialize using this "
                   "DeepSpeed config (configs/deepspeed/); same as train.deepspeed=DS.json")
    t.add_argument("--overwrite", action="store_true", help="start again in a run folder that already holds "
                   "checkpoints (they and the run's logs are deleted); without it such a folder is refused")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to log.jsonl)")
    t.add_argument("--profile", metavar="START:STEPS", help="profile training steps START..START+STEPS-1 "
                   "(torch.profiler): RUN_DIR/profile/trace.json (Chrome trace) and summary.txt (per-kernel time and "
                   "count, launches per step, host vs device time, device-busy fraction); same as "
                   "train.profile=START:STEPS")
    t.add_argument("--print-config", action="store_true", help="print the resolved config (YAML, after the "
                   "overrides and checks) and exit without training")
    t.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.steps=50 model.name=unet data.batch_size=4")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="score a checkpoint on a split: P/R/F1/IoU per class, macro, stratified")
    e.add_argument("--checkpoint", required=True,
                   help="a run folder (its latest checkpoint), a checkpoint folder (runs/NAME/checkpoints/step_N) or its state.pt")
    e.add_argument("--shards", required=True, help="shard folder with manifest.json")
    e.add_argument("--split", default="test", help="split to score (test)")
    e.add_argument("--out", help="output folder (default: the run folder of the checkpoint)")
    e.add_argument("--batch-size", type=_positive_int, default=8, help="patches per batch (8)")
    e.add_argument("--curtains", type=_count0, default=3, help="number of along-track curtain PNGs, >= 0 (3)")
    e.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to run the model (auto: a GPU when there is one)")
    e.add_argument("--decision", choices=("argmax", "prior"), default="argmax",
                   help="argmax of the phase-gated probabilities (default), or prior: argmax after undoing alpha x "
                        "the loss's class-weight prior, alpha chosen on the validation split (recorded in the JSON)")
    e.add_argument("--quiet", action="store_true", help="do not print the tables (they are in eval_<split>.md)")
    e.add_argument("--no-verify", action="store_true", help="score shards that do not match the manifest's "
                   "sha256 (default: refuse); the mismatches are recorded in the JSON")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="side-by-side table of several eval_<split>.json files")
    r.add_argument("results", nargs="+", help="eval_<split>.json files written by `sgmagnet evaluate`")
    r.add_argument("--out", help="output file: also write the Markdown table to it")
    r.add_argument("--curves", help="also plot the runs' loss and validation curves (log.jsonl beside each JSON) to this PNG")
    r.set_defaults(func=cmd_report)

    pr = sub.add_parser("predict", help="3D cloud phase of a full AHI scene -> CF NetCDF cube (tiled, streamed)")
    pr.add_argument("--checkpoint", required=True, help="run folder, checkpoint folder or state.pt")
    pr.add_argument("--ahi", required=True, help="P-Tree AHI L1 NetCDF file, or a Himawari Standard Data slot: a "
                    "folder holding its segment files, or any one of them (the cube is then on the native 2 km grid)")
    pr.add_argument("--bbox", type=_bbox, help="LON0,LON1,LAT0,LAT1 window (default: the whole file)")
    pr.add_argument("--out", required=True, help="output: the CF cube (written atomically)")
    pr.add_argument("--format", dest="fmt", choices=("netcdf", "zarr"), default="netcdf",
                    help="netcdf (default) or zarr: the same dataset as a Zarr store chunked per tile")
    pr.add_argument("--tile", type=_positive_int, default=128, help="tile size in pixels (128)")
    pr.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels, even (32)")
    pr.add_argument("--batch-size", "--batch", dest="batch_size", type=_batch_or_auto, default=4,
                    help="tiles per forward pass (4), or auto: on CUDA the largest power of two that fits (at most a "
                         "strip of tiles), elsewhere 4")
    pr.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast (the GPU's fast path; "
                    "the class argmax is taken in fp32 from the bf16 logits)")
    pr.add_argument("--probabilities", action="store_true", help="also write p_clear .. p_liquid")
    pr.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="where to run the model (auto: a GPU when there is one)")
    pr.set_defaults(func=cmd_predict)

    pl = sub.add_parser("plot", help="pictures of a prediction cube: cloud-top phase map, sections, curtain")
    pl.add_argument("cube", help="NetCDF written by `sgmagnet predict`")
    pl.add_argument("--out", default=".", help="output folder for the PNGs")
    pl.add_argument("--section", type=lambda s: _floats(s, 4, "--section"), action="append",
                    metavar="LON0,LAT0,LON1,LAT1", help="vertical cross-section along this line (repeatable)")
    pl.add_argument("--granule", help="2B-CLDCLASS-LIDAR granule: along-track curtain, labels vs prediction")
    pl.add_argument("--cloudsat", help="instead of --granule: a folder searched recursively; the curtain uses the "
                    "granule crossing the cube nearest in time (its time gap is printed and in the title)")
    pl.set_defaults(func=cmd_plot)

    dm = sub.add_parser("demo", help="the main job on the embedded default: synth -> shards -> train SGMAGNet and "
                        "UNet -> evaluate -> table and pictures (what `make demo` runs)")
    dm.add_argument("--out", default="demo_out", help="output folder (demo_out)")
    dm.add_argument("--ranks", type=_positive_int, default=2, help="MPI ranks for the build (2; 1 = no mpirun)")
    dm.set_defaults(func=cmd_demo)

    from launch.submit import add_common

    sm = sub.add_parser("submit", help="submit training or an archive build to Slurm through submitit")
    ssub = sm.add_subparsers(dest="what", required=True, parser_class=Parser)
    st = ssub.add_parser("train", help="a (multi-node) training job; preemption-safe (requeues and resumes)")
    st.add_argument("--config", help="YAML run config")
    st.add_argument("--deepspeed", metavar="DS.json", help="DeepSpeed config for the job")
    st.add_argument("--resume", action="store_true",
                    help="continue the run folder's latest checkpoint, on this job's number of tasks (nodes x "
                         "tasks per node) if it differs: same global batch (data.batch_size x optim.accum x "
                         "tasks), checked before anything is queued")
    add_common(st)
    st.add_argument("overrides", nargs="*", metavar="section.key=value",
                    help="config overrides, as for `sgmagnet train` (e.g. train.steps=20000)")
    st.set_defaults(func=cmd_submit)
    sb = ssub.add_parser("build", help="the archive build as one MPI job, or a job array + a merge job")
    add_build_arguments(sb, local=False)
    sb.add_argument("--array", type=_count0, default=0,
                    help="K > 0: a job array of K time chunks + a merge job (default: 0, one MPI job)")
    add_common(sb)
    sb.set_defaults(func=cmd_submit)
    return p


def leave_process_group(code: int, failed: bool = False) -> int:
    """The last step of every command, so that no rank waits forever on one that stopped.

    torch.distributed: a command that ends with its process group still up ended early (an error, an
    interrupt; train destroys the group itself when it ends normally). The other ranks may be waiting in a
    collective, so no barrier: exit at once (os._exit, after flushing). Their next collective fails on the
    closed connection instead of waiting for its timeout, and their launcher (torchrun, srun) ends the step.
    MPI (`build` under mpirun): failures the ranks agree on (BuildRefused, BuildFailed) end every rank by
    itself; an unexpected one (`failed`: the last net below, or an interrupt) on one rank would leave the
    others in a collective and this rank in MPI_Finalize's fence forever, so it aborts the job
    (MPI_Abort: mpirun ends every rank). A single process returns the code."""
    sys.stdout.flush()
    sys.stderr.flush()
    mpi = sys.modules.get("mpi4py.MPI")
    if failed and mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized() and mpi.COMM_WORLD.Get_size() > 1:
        mpi.COMM_WORLD.Abort(code)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        from .dist import hard_exit
        hard_exit(code)
    return code


def _terminated(signum, frame):
    """SIGTERM as an exception (exit 128 + 15): the `finally`/`except BaseException` blocks run, so a command
    stopped by `kill` or Slurm removes what it was half-writing (predict's .partial cube, build's temp shards)
    instead of dying with it on disk. `train` replaces it with its own handler while it fits (a checkpoint,
    exit 3); DataLoader workers replace it with theirs."""
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    import signal

    a = parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminated)
    failed = True
    try:
        code, failed = a.func(a), False
    except KeyboardInterrupt:
        sys.stderr.write(f"sgmagnet {a.cmd}: interrupted\n")
        code = 130
    except Exception as e:  # noqa: BLE001 - the last net: one line, not a traceback (SGMAGNET_DEBUG=1 re-raises)
        if os.environ.get("SGMAGNET_DEBUG"):
            raise
        code = _fail(a.cmd, f"{type(e).__name__}: {e} (an unexpected failure; SGMAGNET_DEBUG=1 shows the "
                            f"traceback)", code=1)
    finally:
        signal.signal(signal.SIGTERM, previous)     # an in-process caller (tests, the demo) gets its own back
    return leave_process_group(code, failed)


if __name__ == "__main__":
    sys.exit(main())
