"""Write a synthetic archive in the real formats: AHI scenes (P-Tree NetCDF and/or HSD) + label files
(2B-CLDCLASS-LIDAR granules, EarthCARE AC__TC__2B frames).

Layout (as the providers serve them):
  <out>/ahi/YYYYMM/DD/NC_H08_YYYYMMDD_hhmm_R21_FLDK.xxxxx_yyyyy.nc
  <out>/cloudsat/2B-CLDCLASS-LIDAR.P1_R05/YYYY/DDD/YYYYDDDHHMMSS_NNNNN_CS_2B-CLDCLASS-LIDAR_GRANULE_P1_R05_E08_F00.hdf
  <out>/earthcare/AC__TC__2B/YYYY/MM/DD/ECA_EXBC_AC__TC__2B_YYYYMMDDThhmmssZ_YYYYMMDDThhmmssZ_OOOOOF.h5
Which label products are written follows the operations epochs by default (`labels="epochs"`,
formats.epochs.LABEL_WINDOWS): 2B-CLDCLASS-LIDAR only in the A-Train/C-Train windows, AC__TC__2B from its L2
release, nothing in between, and the Himawari platform by date, so an archive spanning 2018-2025 mixes them
as reality did. A real archive holds every 10-min slot; the synthetic one writes only the slots a label pass
over the region can match (the builder reads only those anyway), skipping the 02:40/14:40 house-keeping slots.
With track_corridor = P (`synth --track-corridor P`) it also writes, in each of those scenes, only the pixels
within P of a profile near in time (what a build with patches of <= P px reads; the rest is fill, the scan
time kept) and no scene for a slot no profile is near: the pixels written are bit-identical to the whole
scene's, so the build is the same (hpc/bench/synth_corridor.py measures both).
Granules are cut to the region (+1 deg), as matchers cut profiles to the scan window. In "doop" orbit
mode (Daylight-Only Operations, CloudSat since 2011, so the paper's Oct-Dec 2018) only sunlit profiles
exist; "full" also has the night passes.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict

import numpy as np

from ..grid import LEVEL_CENTRE_KM, N_LEVELS
from . import orbit
from .config import SynthConfig
from .instrument import dilate, scan_offset_s
from .world import World
from ..formats.epochs import himawari_for, label_operational
from . import earthcare, native
from .writers import granule_profiles, region_grid, scene_errors, write_granule, write_scene

__all__ = ["SynthConfig", "World", "synthesize", "format_stats", "physics_table", "needed_slots", "corridor_mask"]


MISSING_SLOTS = {(2, 40), (14, 40)}
CORRIDOR_WINDOW_MIN = 6.0    # profiles this close to a pixel's scan time count for the corridor (> the build's 5)


def corridor_mask(cfg: SynthConfig, slot: np.datetime64, tracks: list) -> np.ndarray | None:
    """Pixels of the scene at `slot` that a build with patches of cfg.track_corridor px can read: those
    within that many pixels (Chebyshev) of a profile whose time is within CORRIDOR_WINDOW_MIN of the
    pixel's scan time. A P x P patch is centred on a matched profile's pixel, or shifted inward at the
    scene's edge, so each of its pixels lies within P - 1 of it. None when no profile is near in time."""
    lat_g, lon_g = region_grid(cfg)
    track = np.zeros((lat_g.size, lon_g.size), bool)
    win = np.timedelta64(int(CORRIDOR_WINDOW_MIN * 60e9), "ns")
    for t, lat, lon in tracks:
        scan = slot + (scan_offset_s(lat) * 1e9).astype("timedelta64[ns]")
        near = np.abs((t - scan).astype(np.int64)) <= win.astype(np.int64)
        r = np.rint((cfg.region[3] - lat[near]) / cfg.res).astype(np.int64)
        c = np.rint((np.mod(lon[near], 360.0) - cfg.region[0]) / cfg.res).astype(np.int64)
        ok = (r >= 0) & (r < lat_g.size) & (c >= 0) & (c < lon_g.size)
        track[r[ok], c[ok]] = True
    if not track.any():
        return None
    return dilate(track, int(cfg.track_corridor))


def needed_slots(t_min: np.datetime64, t_max: np.datetime64) -> list[np.datetime64]:
    ten = np.timedelta64(10, "m")
    first = (t_min - np.timedelta64(16, "m")).astype("datetime64[m]")
    first = first - np.timedelta64(int(first.astype(np.int64) % 10), "m")
    slots = []
    s = first
    while s <= t_max + np.timedelta64(5, "m"):
        sd = s.astype(dt.datetime)
        if (sd.hour, sd.minute) not in MISSING_SLOTS:
            slots.append(s.astype("datetime64[ns]"))
        s = s + ten
    return slots


def synthesize(cfg: SynthConfig, log=print, progress: bool = False, stats_name: str = "synth_stats.json") -> dict:
    """Write the archive; return (and write to <out>/synth_stats.json) its statistics. progress: a tqdm bar
    with ETA over the AHI scenes (the slow part) instead of one log line per scene."""
    if cfg.ahi_format not in ("ptree", "hsd", "both"):
        raise ValueError(f"ahi_format {cfg.ahi_format!r}: expected ptree, hsd or both")
    if cfg.labels not in ("epochs", "cloudsat", "earthcare", "both"):
        raise ValueError(f"labels {cfg.labels!r}: expected epochs, cloudsat, earthcare or both")
    if cfg.ahi_format != "ptree" and cfg.track_corridor is None:
        raise ValueError("--ahi-format hsd/both needs --track-corridor P: the native 2 km full disk is rendered "
                         "only near the CloudSat tracks")
    os.makedirs(cfg.out, exist_ok=True)
    world = World(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    t_start = np.datetime64(cfg.start, "ns")
    if t_start < world.t0:
        raise ValueError(f"start {cfg.start} is before the epoch {cfg.epoch}")
    t_end = t_start + np.timedelta64(cfg.days, "D")
    offset = world.seconds(np.array([t_start]))[0]
    n0 = int(np.floor((offset / orbit.PERIOD_S) - world.u0 / (2 * np.pi))) - 1
    n1 = int(np.ceil((offset + cfg.days * 86400.0) / orbit.PERIOD_S)) + 1
    granules, slots, tracks = [], set(), []
    hist = np.zeros(4, np.int64)
    prof = cloudy = multi = 0
    struct = None
    for n in range(n0, n1 + 1):
        g = granule_profiles(world, n)
        if g is None:
            continue
        t_node, t, lat, lon = g
        if t[0] < t_start or t[0] >= t_end:
            continue
        if not wants(cfg, "2B-CLDCLASS-LIDAR", t[0]):
            continue
        path, st = write_granule(world, n, t, lat, lon, cfg.out, rng)
        tracks.append((t, lat, lon))
        granules.append(os.path.relpath(path, cfg.out))
        hist += np.asarray(st["hist"])
        prof += st["profiles"]
        cloudy += st["cloudy_profiles"]
        multi += st["multilayer_profiles"]
        struct = st["structure"] if struct is None else _add(struct, st["structure"])
        if st["t_min"]:
            slots.update(needed_slots(np.datetime64(st["t_min"]), np.datetime64(st["t_max"])))
        log(f"granule {os.path.basename(path)}: {t.size} profiles ({st['profiles']} in region)")
    frames, ec_prof, ec_day = [], 0, 0
    for path, st in earthcare.write_frames(world, t_start, t_end, cfg.out,
                                           lambda s: wants(cfg, "AC__TC__2B", np.datetime64(s, "ns")), log):
        tracks.append(st["track"])
        frames.append(os.path.relpath(path, cfg.out))
        hist += np.asarray(st["hist"])
        ec_prof += st["profiles"]
        ec_day += st["day_profiles"]
        if st["t_min"]:
            slots.update(needed_slots(np.datetime64(st["t_min"]), np.datetime64(st["t_max"])))
    scenes, day_scenes, written_px, no_profile = [], 0, 0, 0
    scene_px = int(np.prod([g.size for g in region_grid(cfg)]))
    lat_c = 0.5 * (cfg.region[2] + cfg.region[3])
    lon_c = 0.5 * (cfg.region[0] + cfg.region[1])
    hsd_slots = []
    for r in _map_slots(world, cfg, tracks, sorted(slots), progress):
        if r["hsd"] is not None:
            hsd_slots.append(os.path.relpath(r["hsd"], cfg.out))
        if r["no_profile"]:
            no_profile += 1
        if r["scene"] is None:
            continue
        written_px += scene_px if r["kept_px"] is None else r["kept_px"]
        scenes.append(os.path.relpath(r["scene"], cfg.out))
        soz, _ = orbit.solar_angles(np.array([r["slot"]]), np.array([lat_c]), np.array([lon_c]))
        day_scenes += int(soz[0] < 85)
        if not progress:
            log(f"scene {os.path.basename(r['scene'])}")
    tot = max(int(hist.sum()), 1)
    cl = max(int(hist[1:].sum()), 1)
    stats = {
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("stats", "workers")},
        "granules": len(granules), "earthcare_frames": len(frames), "earthcare_profiles_in_region": ec_prof,
        "earthcare_day_profiles": ec_day, "scenes": len(scenes), "day_scenes": day_scenes,
        "night_scenes": len(scenes) - day_scenes, "profiles_in_region": prof,
        "track_corridor_px": cfg.track_corridor,
        "written_pixel_fraction": written_px / max(len(scenes) * scene_px, 1),
        "slots_without_profiles_skipped": no_profile,
        "labelled_voxels": int(hist.sum()), "class_histogram": hist.tolist(),
        "clear_fraction": hist[0] / tot,
        "phase_fractions_of_cloudy": {"ice": hist[1] / cl, "mixed": hist[2] / cl, "liquid": hist[3] / cl},
        "cloudy_profile_fraction": cloudy / max(prof, 1), "multilayer_fraction_of_cloudy": multi / max(cloudy, 1),
        "structure": struct or {},
        "levels": {"n": N_LEVELS, "centres_km": [float(LEVEL_CENTRE_KM[0]), float(LEVEL_CENTRE_KM[-1])]},
        "hsd_slots": len(hsd_slots),
        "files": {"granules": granules, "earthcare_frames": frames, "scenes": scenes, "hsd_slots": hsd_slots},
    }
    with open(os.path.join(cfg.out, stats_name), "w") as f:
        json.dump(stats, f, indent=1, default=float)
    return stats


_SLOT_JOB: tuple = ()      # (world, cfg, tracks) for the slot workers (forked: nothing is pickled)


def _slot_files(slot: np.datetime64) -> dict:
    """Write one slot's AHI files (HSD segments and/or the P-Tree scene); what the statistics need."""
    world, cfg, tracks = _SLOT_JOB
    out = {"slot": slot, "hsd": None, "scene": None, "kept_px": None, "no_profile": False}
    if cfg.ahi_format in ("hsd", "both"):
        pixels = native.corridor_pixels(cfg, slot, tracks, CORRIDOR_WINDOW_MIN)
        if pixels is not None:
            sl = slot.astype("datetime64[s]").astype(dt.datetime)
            paths = native.write_slot(world, slot, cfg.out, pixels, scene_errors(world, slot)[1],
                                      cfg.satellite or himawari_for(sl))
            out["hsd"] = os.path.dirname(paths[0])
    if cfg.ahi_format == "hsd":
        return out
    keep = None
    if cfg.track_corridor is not None:
        keep = corridor_mask(cfg, slot, tracks)
        if keep is None:            # no profile within CORRIDOR_WINDOW_MIN of this slot's scan
            out["no_profile"] = True
            return out
        out["kept_px"] = int(keep.sum())
    out["scene"] = write_scene(world, slot, cfg.out, keep)
    return out


def _one_thread():
    """In a slot worker: the processes share the cores, so no threads within them (ours, and BLAS's: a
    forked OpenBLAS pool per process, 2 threads each, made 2 workers barely faster than 1)."""
    from threadpoolctl import threadpool_limits

    from . import fields

    fields.THREADS = 1
    threadpool_limits(1)


def _map_slots(world, cfg: SynthConfig, tracks, slots: list, progress: bool):
    """_slot_files over the slots in order, on `cfg.workers` processes (0: one per core). Every slot's files
    depend only on the world and the slot, so the archive is the same for any number of workers."""
    from tqdm import tqdm

    global _SLOT_JOB
    _SLOT_JOB = (world, cfg, tracks)
    workers = min(cfg.workers or len(os.sched_getaffinity(0)), len(slots))
    bar = dict(total=len(slots), desc="AHI scenes", unit="scene", disable=not progress, mininterval=2,
               dynamic_ncols=True)
    try:
        if workers < 2:
            yield from tqdm(map(_slot_files, slots), **bar)
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_one_thread) as ex:
            yield from tqdm(ex.map(_slot_files, slots), **bar)
    finally:
        _SLOT_JOB = ()


def wants(cfg: SynthConfig, product: str, t) -> bool:
    """Whether the archive writes `product` for a pass starting at `t`: by the epochs table, or always when
    cfg.labels names it (or "both")."""
    if cfg.labels == "epochs":
        return label_operational(product, np.datetime64(t, "s").astype(dt.datetime))
    return cfg.labels == "both" or {"cloudsat": "2B-CLDCLASS-LIDAR", "earthcare": "AC__TC__2B"}[cfg.labels] == product


def _add(a, b):
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) for k in a}
    if isinstance(a, list):
        return [x + y for x, y in zip(a, b)]
    return a + b


# PHYSICS.md targets shown beside the archive's own statistics: (label, value, target, source)


def physics_table(st: dict) -> list[tuple[str, float, str, str]]:
    n = max(st.get("profiles", 0), 1)
    lay = st.get("layers", [0] * 5)
    cl = max(sum(lay[1:]), 1)
    ml = max(sum(lay[2:]), 1)
    g = st.get("groups", {})
    mt = max(st.get("mixed_top", 0), 1)
    return [
        ("clear profiles", lay[0] / n, "0.20-0.30 (global ~0.24; East Asia ~0.34)", "§1a, §6 [V/I]"),
        ("1 / 2 / 3 / >=4 layers (of cloudy)", ", ".join(f"{v / cl:.3f}" for v in (lay[1], lay[2], lay[3], lay[4])),
         "0.69 / 0.26 / 0.045 / 0.005", "§6 [I]"),
        ("ice-only (of all)", g.get("ice-only", 0) / n, "0.286 (SE Asia)", "§1a Hong & Di Girolamo [V]"),
        ("ice-above-liquid", g.get("ice-above-liquid", 0) / n, "0.201", "§1a [V]"),
        ("liquid-only", g.get("liquid-only", 0) / n, "0.160", "§1a [V]"),
        ("ice-above-mixed", g.get("ice-above-mixed", 0) / n, "0.093", "§1a [V]"),
        ("mixed-only", g.get("mixed-only", 0) / n, "0.067", "§1a [V]"),
        ("profiles with a mixed layer", st.get("with_mixed", 0) / n, "0.10-0.16", "§2 [I]"),
        ("thin cirrus top (tau < 0.3, of cloudy)", st.get("thin_cirrus_top", 0) / cl, "0.10-0.15", "§6 [I]"),
        ("multilayer with top tau > 3 (lower hidden)", st.get("multilayer_top_tau_gt3", 0) / ml, "0.30-0.40",
         "§6 [I]"),
        ("top seen as another phase than labelled (of cloudy)", st.get("top_seen_as_other_phase", 0) / cl,
         "mixed tops 48 % wrong in SEVIRI", "§6 Mayer 2024 [V]"),
        ("mixed tops that look liquid", st.get("mixed_top_seen_as_liquid", 0) / mt, "supercooled tops", "§2 [V]"),
    ]


def format_stats(s: dict) -> str:
    pf = s["phase_fractions_of_cloudy"]
    rows = [f"  {lab:<52} {v if isinstance(v, str) else f'{v:.3f}':>28}   target {t}  ({src})"
            for lab, v, t, src in physics_table(s.get("structure", {}))]
    return "\n".join([
        f"granules {s['granules']}" + (f", EarthCARE frames {s['earthcare_frames']} ({s['earthcare_profiles_in_region']} "
                                       f"profiles in region, {s['earthcare_day_profiles']} sunlit)"
                                       if s.get("earthcare_frames") else "") + f", AHI scenes {s['scenes']} (day {s['day_scenes']}, night {s['night_scenes']})",
        f"profiles in region {s['profiles_in_region']}, labelled voxels {s['labelled_voxels']}",
        f"clear fraction of labelled voxels {100 * s['clear_fraction']:.1f} % (paper, real data: 89.3 %)",
        f"cloudy voxels: ice {100 * pf['ice']:.1f} %, mixed {100 * pf['mixed']:.1f} %, liquid {100 * pf['liquid']:.1f} %",
        *([f"CloudSat: cloudy profiles {100 * s['cloudy_profile_fraction']:.1f} %, multi-layer among cloudy "
           f"{100 * s['multilayer_fraction_of_cloudy']:.1f} %"] if s["profiles_in_region"] else []),
    ] + ([f"track corridor {s['track_corridor_px']} px: {100 * s['written_pixel_fraction']:.1f} % of the scenes' "
          f"pixels written, {s['slots_without_profiles_skipped']} slot(s) with no profile near skipped"]
         if s.get("track_corridor_px") else []) + [
    ] + (["profile structure (reported layers) vs PHYSICS.md targets:"] + rows if s["profiles_in_region"] else []))
