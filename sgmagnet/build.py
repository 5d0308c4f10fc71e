"""`sgmagnet build`: collocate an AHI archive with CloudSat and/or EarthCARE labels into WebDataset shards (+ manifest).

Label files: 2B-CLDCLASS-LIDAR granules (--cloudsat) and EarthCARE AC__TC__2B frames (--earthcare), each found by
its file name; a file dated outside its product's windows (formats.epochs.LABEL_WINDOWS) is a recorded skip.
Every sample records its imager platform, label product and source, and the solar zenith at its labelled pixels
(day / twilight / night, sgmagnet.solar); the manifest counts them per split.

Work unit = one label file (a "granule": a CloudSat granule or an EarthCARE frame). Each granule's samples go to its own shards `<out>/<split>/<granule>-NNN.tar`
(written under `_tmp/` and renamed when complete), then a record `<out>/_records/<granule>.json`
is written last. A re-run skips granules whose record and shards (sha256) are intact, so a killed build
resumes and gives byte-identical shards; any rank count gives the same files. The manifest is merged
from the records in granule order, so it is identical too. Under mpirun/srun (`build`, below) rank 0
plans, granules are balanced over ranks by profile count, and rank 0 merges after a barrier.

Failures. Bad input files (FormatError: unreadable, truncated, missing variables, all fill, ...) never
stop the build: they are listed in `skipped` with the file and the reason. Anything else (disk full,
permissions, memory, a bug) is not a property of the input: the build stops with BuildFailed on every
rank, that granule gets no record (a re-run retries it) and the previous manifest is left as it was.
Each record carries the hash of the configuration that shaped its samples; an `--out` built with another
configuration is refused (BuildRefused) unless `overwrite=True` rebuilds it from scratch.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import glob
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass

import numpy as np

from .collocate import Scene, cloudsat_profiles, collocate, earthcare_profiles, make_patches
from .formats import FormatError
from .formats import ahi as ahi_fmt
from .formats import cloudsat as cs_fmt
from .formats import earthcare as ec_fmt
from .formats import hsd as hsd_fmt
from .formats import hsd_slot
from .formats.epochs import (LABEL_WINDOWS, himawari_operational, himawari_window_text, label_operational,
                             label_window_text)
from .grid import BAND_VARS, CLASS_NAMES, IGNORE, LEVEL_BOTTOM_KM, LEVEL_DZ_KM, N_BANDS, N_LEVELS
from .io import write_json
from .shards import MANIFEST_FORMAT, Manifest, encode_sample, sha256, write_dali_index

SPLITS = ("train", "val", "test")
SHAPING = ("window_min", "patch_size", "min_labelled", "split_days", "gap_days", "split_anchor", "shard_maxcount",
           "quality_mask", "dali_index")   # the BuildConfig fields that shape the samples and shards


class BuildRefused(ValueError):
    """Bad input or options: nothing was built (one line naming the option or folder and the problem)."""


class BuildFailed(RuntimeError):
    """An environment failure (disk, permissions, memory, unexpected error) stopped the build."""


@dataclass
class BuildConfig:
    ahi: str
    cloudsat: str | None                 # 2B-CLDCLASS-LIDAR folder; None: EarthCARE labels only
    out: str
    window_min: float = 5.0
    patch_size: int = 128
    min_labelled: int = 64
    split_days: tuple = (10, 2, 2)       # train, val, test days per cycle, a gap day after each block
    gap_days: int = 1
    split_anchor: str | None = None      # first day of the cycle; default: earliest AHI day
    shard_maxcount: int = 200
    quality_mask: int = 0xFF
    dali_index: bool = True
    ahi_format: str = "auto"             # "auto" (from the file names), "ptree" or "hsd"
    earthcare: str | None = None         # AC__TC__2B folder (beside or instead of --cloudsat)
    earthcare_strict: bool = False       # the strict class table (labels.AC_TC_STRICT_NO_LABEL: no label)


def split_of_day(day: dt.date, anchor: dt.date, split_days, gap: int) -> str | None:
    """Time-blocked split: [train x a][gap][val x b][gap][test x c][gap] repeating; gap days -> None."""
    blocks = []
    for name, n in zip(SPLITS, split_days):
        blocks += [name] * int(n) + [None] * int(gap)
    k = (day - anchor).days % len(blocks)
    return blocks[k]


def find_files(root: str, pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))


@dataclass
class GranuleEntry:
    """A label granule of the archive: its profile count and first profile time; `cutoff`: the next granule's
    first profile time (the next granule owns the profiles from there on)."""
    path: str
    nray: int
    t_first: str
    cutoff: str | None = None
    product: str = "2B-CLDCLASS-LIDAR"   # or "AC__TC__2B"


@dataclass
class SceneEntry:
    """An AHI scene of the archive and its nominal time (from the file name)."""
    path: str
    timeline: str


@dataclass
class BuildPlan:
    """What rank 0 indexes and every rank builds from (sent between ranks as JSON)."""
    granules: list[GranuleEntry]
    scenes: list[SceneEntry]
    skipped: list[dict]          # [{"file", "reason"}] inputs that could not be read
    split_anchor: str            # the day the split cycle counts from
    config_hash: str             # hash of the options that shape the samples (`shaping`)
    ahi_format: str = "ptree"    # what --ahi holds: "ptree" or "hsd"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "BuildPlan":
        return cls([GranuleEntry(**g) for g in d["granules"]], [SceneEntry(**s) for s in d["scenes"]],
                   list(d["skipped"]), d["split_anchor"], d["config_hash"], d.get("ahi_format", "ptree"))


def plan(cfg: BuildConfig) -> BuildPlan:
    """Index the archive: granules (profile count, first profile time) and AHI scenes (timeline)."""
    skipped, granules, scenes = [], [], []
    for p in find_files(cfg.cloudsat, "*.hdf") if cfg.cloudsat else []:
        try:
            h = cs_fmt.read_granule(p, header_only=True)
            granules.append(GranuleEntry(p, int(h.attrs["nray"]), str(h.time.values[0])))
        except FormatError as e:
            skipped.append({"file": e.path, "reason": e.problem})
    for p in find_files(cfg.earthcare, "*.h5") if cfg.earthcare else []:
        try:
            h = ec_fmt.read_frame(p, header_only=True)
            t = h["time"][~np.isnat(h["time"])]
            if t.size == 0:
                raise FormatError(p, "no valid profile time in /ScienceData/time")
            granules.append(GranuleEntry(p, int(h["n"]), str(t[0]), product=ec_fmt.PRODUCT))
        except FormatError as e:
            skipped.append({"file": e.path, "reason": e.problem})
    kept = []
    for g in granules:          # a label file outside its product's windows holds no labels to trust
        try:
            t = dt.datetime.fromisoformat(g.t_first[:26])
        except ValueError:
            skipped.append({"file": g.path, "reason": f"first profile time {g.t_first!r} is not a time"})
            continue
        if label_operational(g.product, t):
            kept.append(g)
        else:
            skipped.append({"file": g.path, "reason": f"{g.product} dated {t:%Y-%m-%d %H:%M} UTC, outside its "
                            f"windows with radar+lidar phase labels ({label_window_text(g.product)}; "
                            f"EARTHCARE.md §6)"})
    granules = kept
    nc_files, hsd_files = ahi_files(cfg.ahi)    # one walk of the archive for both kinds
    kind = cfg.ahi_format = ahi_kind(cfg, nc_files, hsd_files)   # resolved once; the plan carries it to every rank
    if kind == "hsd":
        try:
            hsd_slot.copy_folder()
        except ValueError as e:
            raise BuildRefused(str(e)) from None
    if kind == "ptree":
        for p, n in named(nc_files, ahi_fmt.parse_name, skipped):
            if not himawari_operational(n.satellite, n.timeline):
                skipped.append({"file": p, "reason": not_operational(n.satellite, n.timeline)})
                continue
            scenes.append(SceneEntry(p, n.timeline.isoformat()))
    else:
        hs, hskip = hsd_scenes(hsd_files)
        scenes += hs
        skipped += hskip
    if not granules:
        why = f" ({len(skipped)} unreadable or outside their windows: {skipped[0]['reason']})" if skipped else ""
        what = " and ".join(x for x in (f"--cloudsat {cfg.cloudsat!r}" if cfg.cloudsat else "",
                                        f"--earthcare {cfg.earthcare!r}" if cfg.earthcare else "") if x)
        kinds = " or ".join(k for k, on in (("2B-CLDCLASS-LIDAR granule (*.hdf)", cfg.cloudsat),
                                            ("AC__TC__2B frame (ECA_*.h5)", cfg.earthcare)) if on)
        raise BuildRefused(f"{what}: no readable {kinds} in its product's windows{why}")
    if not scenes:
        what = ("no complete Himawari Standard Data slot (HS_H0[89]_YYYYMMDD_hhmm_Bbb_FLDK_Rjj_Skkll.DAT[.bz2])"
                if kind == "hsd" else "no P-Tree AHI L1 file (NC_H0[89]_YYYYMMDD_hhmm_R21_FLDK.xxxxx_yyyyy.nc)")
        why = f" ({len(skipped)} skipped: {skipped[0]['reason']})" if skipped and kind == "hsd" else ""
        raise BuildRefused(f"--ahi {cfg.ahi!r}: {what}{why}")
    side = (HSD_SIDE if kind == "hsd" else
            max(min(ahi_fmt.parse_name(s.path).nlat, ahi_fmt.parse_name(s.path).nlon) for s in scenes))
    if cfg.patch_size > side:
        raise BuildRefused(f"--patch-size {cfg.patch_size} is larger than every AHI grid (the largest has "
                           f"{side} pixels on its short side)")
    granules.sort(key=lambda g: (g.t_first, g.path))
    for prod in LABEL_WINDOWS:          # the next file of the same product owns profiles from its first one on
        same = [g for g in granules if g.product == prod]
        for k, g in enumerate(same):
            g.cutoff = same[k + 1].t_first if k + 1 < len(same) else None
    anchor = cfg.split_anchor or min(s.timeline for s in scenes)[:10]
    return BuildPlan(granules, scenes, skipped, anchor, config_hash(cfg, anchor), kind)


def shaping(cfg: BuildConfig, anchor: str) -> dict:
    d = {k: getattr(cfg, k) for k in SHAPING}
    d["split_days"], d["split_anchor"] = list(d["split_days"]), anchor
    if cfg.ahi_format == "hsd":       # only then, so P-Tree builds keep the hashes they had
        d["grid"] = "hsd-2km"
    if cfg.earthcare:
        d["earthcare_strict"] = bool(cfg.earthcare_strict)
    d["sample_meta"] = 2              # 2: samples carry their label provenance and day/night (sgmagnet.solar)
    return d


HSD_SIDE = hsd_fmt.RESOLUTIONS["20"][0]


def named(files: list[str], parse, skipped: list[dict]):
    """(path, parsed name) of the files whose names parse; the others go to `skipped` with the reason."""
    for p in files:
        try:
            yield p, parse(p)
        except FormatError as e:
            skipped.append({"file": e.path, "reason": e.problem})


def ahi_files(root: str) -> tuple[list[str], list[str]]:
    """The *.nc files (P-Tree candidates) and the HS_H*.DAT* files (HSD) under `root`, sorted, in one walk."""
    nc, hs = [], []
    for folder, dirs, names in os.walk(root, followlinks=True):     # as glob's "**": links followed, no hidden
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for n in names:
            if n.startswith("."):
                continue
            if fnmatch.fnmatch(n, "*.nc"):
                nc.append(os.path.join(folder, n))
            elif fnmatch.fnmatch(n, "HS_H*.DAT*") and not n.endswith(".part"):
                hs.append(os.path.join(folder, n))
    return sorted(nc), sorted(hs)


def ahi_kind(cfg: BuildConfig, nc_files: list[str], hsd_files: list[str]) -> str:
    """"ptree" or "hsd": --ahi-format, or what the file names under --ahi say (both kinds: refused)."""
    if cfg.ahi_format in ("ptree", "hsd"):
        return cfg.ahi_format
    has_nc = any(ahi_fmt.NAME_RE.match(os.path.basename(p)) for p in nc_files)
    has_hsd = bool(hsd_files)
    if has_nc and has_hsd:
        raise BuildRefused(f"--ahi {cfg.ahi!r} holds both P-Tree (NC_H*.nc) and HSD (HS_H*.DAT*) files: choose one "
                           f"with --ahi-format ptree|hsd")
    return "hsd" if has_hsd else "ptree"


def not_operational(platform: str, t: dt.datetime) -> str:
    return (f"Himawari-{int(platform)} was not the operational imager at {t:%Y-%m-%d %H:%M} UTC "
            f"(its windows: {himawari_window_text(platform)}; EARTHCARE.md §6.1)")


def hsd_scenes(files: list[str]) -> tuple[list[SceneEntry], list[dict]]:
    """The complete HSD slots among `files` (one per folder and time), and the skips: files that are not HSD
    names, slots that mix platforms, miss a band or fall outside their platform's window, missing segments."""
    groups: dict = {}
    skipped = []
    for p, n in named(files, hsd_fmt.parse_name, skipped):
        groups.setdefault((os.path.dirname(p), n.timeline), []).append((p, n))
    scenes = []
    for (folder, t), files in sorted(groups.items()):
        plats = sorted({n.platform for _, n in files})
        where = os.path.join(folder, f"*_{t:%Y%m%d_%H%M}_*")
        if len(plats) > 1:
            skipped.append({"file": where, "reason": f"slot {t:%Y-%m-%d %H:%M} mixes "
                            + " and ".join(f"HS_H{p}" for p in plats) + " files (one platform per slot)"})
            continue
        if not himawari_operational(plats[0], t):
            skipped.append({"file": where, "reason": not_operational(plats[0], t)})
            continue
        have = {(n.band, n.segment) for _, n in files}
        bands = sorted({b for b, _ in have})
        missing = [b for b in range(1, 17) if b not in bands]
        if missing:
            skipped.append({"file": where, "reason": f"slot {t:%Y-%m-%d %H:%M} has no file of band(s) "
                            + ", ".join(f"B{b:02d}" for b in missing) + " (all 16 are needed)"})
            continue
        for b in range(1, 17):
            for seg in range(1, hsd_fmt.N_SEGMENTS + 1):
                if (b, seg) not in have:
                    skipped.append({"file": os.path.join(folder, hsd_fmt.hsd_filename(plats[0], t, b, seg)),
                                    "reason": "missing segment (its pixels get no sample)"})
        sid = os.path.join(folder, f"HS_H{plats[0]}_{t:%Y%m%d_%H%M}")
        scenes.append(SceneEntry(sid, t.isoformat()))
    return scenes, skipped


def config_hash(cfg: BuildConfig, anchor: str) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(shaping(cfg, anchor), sort_keys=True).encode()).hexdigest()[:16]


def check_out(cfg: BuildConfig, p: BuildPlan, overwrite: bool = False, log=print):
    """Refuse an --out whose records were made with another configuration, or clear it with overwrite."""
    recs = sorted(glob.glob(os.path.join(cfg.out, "_records", "*.json")))
    other = None
    for rp in recs:
        try:
            with open(rp) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            continue                     # a broken record is redone by the resume logic
        if rec.get("config_hash") != p.config_hash:
            other = rec
            break
    if other is None:
        return
    if overwrite:
        log(f"--overwrite: removing the shards, records and manifest in {cfg.out}")
        for d in list(SPLITS) + ["_records", "_tmp"]:
            shutil.rmtree(os.path.join(cfg.out, d), ignore_errors=True)
        for f in ("manifest.json", "build_stats.json"):
            if os.path.exists(os.path.join(cfg.out, f)):
                os.remove(os.path.join(cfg.out, f))
        return
    old = other.get("config") or {}
    new = shaping(cfg, p.split_anchor)
    diff = ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in SHAPING if old.get(k) != new[k]) or \
        "a record without a configuration hash"
    raise BuildRefused(f"--out {cfg.out!r} was built with another configuration ({diff}): use a new --out, "
                       f"or --overwrite to rebuild it")


def assign(granules: list[GranuleEntry], n_ranks: int) -> list[list[int]]:
    """Longest-processing-time assignment of granules to ranks, balanced by profile count."""
    load = [0] * n_ranks
    out = [[] for _ in range(n_ranks)]
    for k in sorted(range(len(granules)), key=lambda k: (-granules[k].nray, k)):
        r = min(range(n_ranks), key=lambda r: (load[r], r))
        out[r].append(k)
        load[r] += granules[k].nray
    return [sorted(x) for x in out]


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def record_path(cfg: BuildConfig, granule_path: str) -> str:
    return os.path.join(cfg.out, "_records", _stem(granule_path) + ".json")


def _record_intact(cfg: BuildConfig, rp: str, chash: str) -> bool:
    try:
        with open(rp) as f:
            rec = json.load(f)
        return rec.get("config_hash") == chash and all(os.path.exists(os.path.join(cfg.out, s["path"])) and sha256(os.path.join(cfg.out, s["path"])) == s["sha256"]
                   for s in rec["shards"])
    except (OSError, ValueError, KeyError):
        return False


def process_granule(cfg: BuildConfig, g: dict, scenes: list[Scene], anchor: dt.date) -> dict:
    import webdataset as wds

    stem = _stem(g["path"])
    rec = {"granule": os.path.basename(g["path"]), "status": "ok", "skipped": [], "shards": [],
           "config_hash": g["config_hash"], "config": g["config"],
           "samples": {s: 0 for s in SPLITS}, "hist": {s: [0] * 4 for s in SPLITS},
           "band_sum": [0.0] * N_BANDS, "band_sumsq": [0.0] * N_BANDS, "band_count": [0] * N_BANDS,
           "profiles": 0, "valid_profiles": 0, "matched_profiles": 0, "labelled_pixels": 0}
    # clean leftovers of an interrupted run of this granule
    for s in SPLITS:
        for p in glob.glob(os.path.join(cfg.out, s, stem + "-*.tar*")) + glob.glob(os.path.join(cfg.out, "_tmp", s, stem + "-*")):
            os.remove(p)
    cutoff = np.datetime64(g["cutoff"]) if g.get("cutoff") else None
    try:
        if g.get("product", "2B-CLDCLASS-LIDAR") == ec_fmt.PRODUCT:
            prof = earthcare_profiles(ec_fmt.read_frame(g["path"]), cutoff, cfg.earthcare_strict)
        else:
            prof = cloudsat_profiles(cs_fmt.read_granule(g["path"]), cutoff, cfg.quality_mask)
    except FormatError as e:
        rec.update(status="skipped")
        rec["skipped"].append({"file": e.path, "reason": e.problem})
        return rec
    rec["product"], rec["key"] = prof.product, prof.key     # key: the granule / orbit+frame id in sample keys
    rec["provenance"] = {s: {} for s in SPLITS}
    rec["solar_zenith"] = {}
    gm = collocate(prof, scenes, cfg.window_min, patch_size=cfg.patch_size)
    rec["profiles"], rec["valid_profiles"], rec["matched_profiles"] = gm.n_profiles, gm.n_valid, gm.n_matched
    rec["skipped"] += [{"file": f, "reason": r} for f, r in gm.skipped]
    if gm.n_valid == 0:
        rec["status"] = "skipped"
        rec["skipped"].append({"file": g["path"], "reason": "no valid profile (all fill, missing layer data or bad quality)"})
        return rec
    if gm.n_matched == 0:
        rec["status"] = "skipped"
        rec["skipped"].append({"file": g["path"], "reason": f"no AHI scene within +-{cfg.window_min:g} min of any profile"})
        return rec
    writers = {}
    try:
        for m in gm.matches:
            split = split_of_day(m.scene.timeline.astype("datetime64[D]").astype(dt.date), anchor, cfg.split_days, cfg.gap_days)
            if split is None:
                continue
            try:
                for k, s in enumerate(make_patches(m, cfg.patch_size, cfg.min_labelled)):
                    key = f"{m.scene.timeline.astype('datetime64[m]').astype(dt.datetime):%Y%m%dT%H%M}_{m.key}_{s['meta']['window_index']:03d}"
                    s["meta"].update(granule=rec["granule"], split=split)
                    pk = f"{m.product}/{s['meta']['day_night']}/{s['meta']['platform']}"
                    rec["provenance"][split][pk] = rec["provenance"][split].get(pk, 0) + 1
                    z = s["meta"]["solar_zenith_labelled"]
                    if z is not None:
                        lo, hi = rec["solar_zenith"].get(split, [z[0], z[2]])
                        rec["solar_zenith"][split] = [min(lo, z[0]), max(hi, z[2])]
                    if split not in writers:
                        tmpd = os.path.join(cfg.out, "_tmp", split)
                        os.makedirs(tmpd, exist_ok=True)
                        writers[split] = wds.ShardWriter(os.path.join(tmpd, f"{stem}-%03d.tar"), maxcount=cfg.shard_maxcount,
                                                         verbose=0, mtime=0.0, encoder=False)
                    writers[split].write(encode_sample(key, s))
                    rec["samples"][split] += 1
                    lab = s["prof"][s["prof"] != IGNORE]
                    rec["hist"][split] = (np.asarray(rec["hist"][split]) + np.bincount(lab, minlength=4)).tolist()
                    rec["labelled_pixels"] += int(s["pix"].shape[0])
                    if split == "train":
                        x = s["input"].reshape(N_BANDS, -1).astype(np.float64)
                        fin = np.isfinite(x)
                        xs = np.where(fin, x, 0.0)
                        rec["band_sum"] = (np.asarray(rec["band_sum"]) + xs.sum(1)).tolist()
                        rec["band_sumsq"] = (np.asarray(rec["band_sumsq"]) + (xs * xs).sum(1)).tolist()
                        rec["band_count"] = (np.asarray(rec["band_count"]) + fin.sum(1)).tolist()
            except FormatError as e:
                rec["skipped"].append({"file": e.path, "reason": e.problem})
    finally:
        for w in writers.values():
            w.close()
    for split in SPLITS:
        for tmp in sorted(glob.glob(os.path.join(cfg.out, "_tmp", split, f"{stem}-*.tar"))):
            final = os.path.join(cfg.out, split, os.path.basename(tmp))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)
            entry = {"path": os.path.relpath(final, cfg.out), "split": split, "sha256": sha256(final)}
            if cfg.dali_index:
                entry["dali_index"] = os.path.relpath(write_dali_index(final), cfg.out)
            rec["shards"].append(entry)
    if sum(rec["samples"].values()) == 0:
        rec["status"] = "empty"
    return rec


def run_rank(cfg: BuildConfig, p: BuildPlan, my: list[int], log=print, progress: bool = False) -> dict:
    """Process this rank's granules; progress: a tqdm bar with ETA (rank 0's share) instead of a line each."""
    from tqdm import tqdm

    scenes = [Scene(s.path, np.datetime64(s.timeline, "ns")) for s in p.scenes]
    anchor = dt.date.fromisoformat(p.split_anchor)
    stats = {"granules": 0, "resumed": 0, "profiles": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    bar = tqdm(total=len(my), desc="granules", unit="granule", disable=not progress, mininterval=2,
               dynamic_ncols=True)
    for k in my:
        bar.update(1)
        g = dict(asdict(p.granules[k]), config_hash=p.config_hash, config=shaping(cfg, p.split_anchor))
        rp = record_path(cfg, g["path"])
        if os.path.exists(rp) and _record_intact(cfg, rp, p.config_hash):
            stats["resumed"] += 1
            continue
        try:   # input problems are FormatErrors, recorded in the record; anything else stops this rank
            rec = process_granule(cfg, g, scenes, anchor)
            write_json(rp, rec, sort_keys=True)
        except Exception as e:  # noqa: BLE001 - disk full, permissions, memory, a bug: not the input's fault
            stats["error"] = (f"{os.path.basename(g['path'])}: {type(e).__name__}: {' '.join(str(e).split())[:200]}"
                              f" (no record written: a re-run retries it)")
            log(f"FAILED {stats['error']}")
            break
        stats["granules"] += 1
        stats["profiles"] += g["nray"]
        if not progress:
            log(f"{rec['granule']}: {rec['status']} " + " ".join(f"{s}={n}" for s, n in rec.get("samples", {}).items()))
    bar.close()
    stats["seconds"] = time.perf_counter() - t0
    return stats


def merge_manifest(cfg: BuildConfig, p: BuildPlan) -> Manifest:
    """The manifest from every granule's record; two records for one granule (two label files of one name,
    or two files of one granule id, e.g. two releases of it side by side) are refused: their samples would
    share keys and be counted twice."""
    recs, names, ids = [], {}, {}
    for g in p.granules:
        stem = _stem(g.path)
        if stem in names:
            raise BuildRefused(f"{g.path}: a second label file named {stem} (the first is {names[stem]}); both would "
                               f"write the record _records/{stem}.json: keep one and build again")
        names[stem] = g.path
        rp = record_path(cfg, g.path)
        if os.path.exists(rp):
            with open(rp) as f:
                r = json.load(f)
            gid = (r.get("product"), r.get("key"))
            if gid[1] and gid in ids:
                raise BuildRefused(f"{g.path}: two records for {gid[0]} granule {gid[1]} ({ids[gid]} and "
                                   f"{os.path.basename(g.path)}): their samples would share keys; keep one of the "
                                   f"files, remove the other's record and shards (or --overwrite), and merge again")
            ids[gid] = os.path.basename(g.path)
            recs.append(r)
    counts = {s: 0 for s in SPLITS}
    hist = {s: np.zeros(4, np.int64) for s in SPLITS}
    bs, bq, bc = np.zeros(N_BANDS), np.zeros(N_BANDS), np.zeros(N_BANDS, np.int64)
    shards, skipped = [], list(p.skipped)
    prov = {s: {} for s in SPLITS}
    sza = {}
    for r in recs:
        for s, (lo, hi) in r.get("solar_zenith", {}).items():
            a, b = sza.get(s, [lo, hi])
            sza[s] = [min(a, lo), max(b, hi)]
        for s, d in r.get("provenance", {}).items():
            for k, n in d.items():
                prov[s][k] = prov[s].get(k, 0) + n
        for s in SPLITS:
            counts[s] += r.get("samples", {}).get(s, 0)
            hist[s] += np.asarray(r.get("hist", {}).get(s, [0] * 4), np.int64)
        if "band_sum" in r:
            bs += np.asarray(r["band_sum"])
            bq += np.asarray(r["band_sumsq"])
            bc += np.asarray(r["band_count"], np.int64)
        shards += r.get("shards", [])
        skipped += r.get("skipped", [])
    seen, uniq_skipped = set(), []
    for s in skipped:
        k = (s["file"], s["reason"])
        if k not in seen:
            seen.add(k)
            uniq_skipped.append(s)
    mean = np.where(bc > 0, bs / np.maximum(bc, 1), np.nan)
    std = np.sqrt(np.maximum(np.where(bc > 0, bq / np.maximum(bc, 1), np.nan) - mean ** 2, 0))
    tot = hist["train"].sum()
    freq = hist["train"] / max(tot, 1)
    man = Manifest(
        format=MANIFEST_FORMAT,
        levels={"n": N_LEVELS, "bottom_km": float(LEVEL_BOTTOM_KM[0]), "dz_km": LEVEL_DZ_KM},
        classes=list(CLASS_NAMES), ignore_label=IGNORE, bands=list(BAND_VARS),
        sources={"ahi": cfg.ahi, "cloudsat": cfg.cloudsat, "earthcare": cfg.earthcare,
                 "granules": sum(g.product != ec_fmt.PRODUCT for g in p.granules),
                 "earthcare_frames": sum(g.product == ec_fmt.PRODUCT for g in p.granules), "scenes": len(p.scenes)},
        config=asdict(cfg), split_anchor=p.split_anchor, config_hash=p.config_hash,
        counts=counts,
        class_histogram={s: hist[s].tolist() for s in SPLITS},
        train_class_frequency=freq.tolist(),
        band_stats={"mean": mean.tolist(), "std": std.tolist(), "count": bc.tolist()},
        shards=sorted(shards, key=lambda s: s["path"]),
        skipped=uniq_skipped,
        profiles={k: int(sum(r.get(k, 0) for r in recs)) for k in ("profiles", "valid_profiles", "matched_profiles")},
        provenance={s: dict(sorted(d.items())) for s, d in prov.items()},
        solar_zenith={s: sza[s] for s in SPLITS if s in sza},
    )
    man.write(cfg.out)
    shutil.rmtree(os.path.join(cfg.out, "_tmp"), ignore_errors=True)
    return man


# ------------------------------------------------------------------------------- MPI ranks (mpi4py)
def get_comm():
    """COMM_WORLD when launched under mpirun/srun with more than one rank, else None."""
    import os

    if not any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _bcast(comm, obj):
    return json.loads(comm.bcast(json.dumps(obj), root=0)) if comm else obj


def build(cfg: BuildConfig, log=print, overwrite: bool = False, progress: bool = False) -> dict:
    """Every rank returns, or every rank raises the same BuildRefused (bad input/options; nothing built) or
    BuildFailed (an environment failure on some rank: the manifest is not rewritten; re-run to retry)."""
    comm = get_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    p, refused = None, None
    if rank == 0:
        try:
            p = plan(cfg)
            check_out(cfg, p, overwrite, log)
        except BuildRefused as e:
            refused = str(e)
    if comm:
        d, refused = _bcast(comm, [p.to_json() if p else None, refused])
        p = BuildPlan.from_json(d) if d else None
    if refused:
        raise BuildRefused(refused)
    cfg.ahi_format = p.ahi_format
    my = assign(p.granules, size)[rank]
    stats = run_rank(cfg, p, my, log=(lambda m: log(f"[rank {rank}] {m}")) if comm else log,
                     progress=progress and rank == 0)
    ranks = [json.loads(s) for s in comm.allgather(json.dumps(stats))] if comm else [stats]
    errors = [r["error"] for r in ranks if "error" in r]
    if errors:
        raise BuildFailed(errors[0] + (f" (and {len(errors) - 1} more rank(s) failed)" if len(errors) > 1 else ""))
    man, refused = None, None
    if rank == 0:
        try:
            man = merge_manifest(cfg, p)
            write_json(f"{cfg.out}/build_stats.json", {"ranks": ranks})    # timing only; not part of the manifest
        except BuildRefused as e:
            refused = str(e)
    total, refused = _bcast(comm, [sum(man.counts.values()) if man else None, refused])
    if refused:
        raise BuildRefused(refused)
    if total == 0:
        first = man.skipped[:1] if man else []
        why = f"; first skipped input: {first[0].get('file')}: {first[0].get('reason')}" if first and first[0] else ""
        raise BuildRefused(f"no sample was produced from {len(p.granules)} granule(s) and {len(p.scenes)} "
                           f"scene(s) (manifest.json lists the skipped inputs{why})")
    return {"rank": rank, "size": size, "stats": stats, "manifest": man}
