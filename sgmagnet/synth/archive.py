"""Write a synthetic archive in the real formats: P-Tree AHI NetCDF scenes + 2B-CLDCLASS-LIDAR granules.

Layout (as the providers serve them):
  <out>/ahi/YYYYMM/DD/NC_H08_YYYYMMDD_hhmm_R21_FLDK.xxxxx_yyyyy.nc
  <out>/cloudsat/2B-CLDCLASS-LIDAR.P1_R05/YYYY/DDD/YYYYDDDHHMMSS_NNNNN_CS_2B-CLDCLASS-LIDAR_GRANULE_P1_R05_E08_F00.hdf
A real archive holds every 10-min slot; the synthetic one writes only the slots a CloudSat pass over the
region can match (the builder reads only those anyway), skipping the 02:40/14:40 house-keeping slots.
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
from dataclasses import asdict, dataclass, field

import numpy as np

from ..formats import ahi as ahi_fmt
from ..formats import cloudsat as cs_fmt
from ..grid import BAND_VARS, IGNORE, LEVEL_CENTRE_KM, N_LEVELS
from ..labels import profile_levels
from . import orbit
from .fields import FieldBank
from .radiance import forward
from .world import FIELD_NAMES, FINE_FIELDS, STATIC_FIELDS, Column

CLOUDSAT_LAUNCH = np.datetime64("2006-04-28T10:02:16", "ns")
LEAP_S_SINCE_1993 = 10           # valid from 2017-01-01
MISSING_SLOTS = {(2, 40), (14, 40)}
BIN_KM = 0.24


@dataclass
class SynthConfig:
    out: str
    start: str = "2018-10-01"
    days: int = 1
    region: tuple = (100.0, 160.0, -60.0, 60.0)    # lon0, lon1, lat0, lat1
    res: float = 0.05
    seed: int = 0
    orbit_mode: str = "doop"
    epoch: str | None = None     # day the fields and the orbit are anchored to (default: start); archives
                                 # written in pieces must share it, or every piece repeats the same weather
    satellite: str = "08"
    track_corridor: int | None = None   # write only pixels within this many px of a profile near in time
                                        # (the build's --patch-size); None: whole scenes
    bad_profile_fraction: float = 0.003
    stats: dict = field(default_factory=dict)


class World:
    """Fields + orbit for one seed; t=0 of the fields and of the orbit is the epoch day (default: the archive
    start) 00:00 UTC, so two runs with the same seed and epoch describe one world at every instant."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.t0 = np.datetime64(cfg.epoch or cfg.start, "ns")
        self.bank = FieldBank(cfg.seed, FIELD_NAMES, static=STATIC_FIELDS, fine=FINE_FIELDS)
        self.u0 = float(np.random.default_rng(cfg.seed + 7919).uniform(0, 2 * np.pi))

    def seconds(self, t):
        return (t - self.t0).astype("timedelta64[ns]").astype(np.float64) / 1e9

    def columns_at(self, lat, lon, t):
        return Column(self.bank.points(np.mod(lon, 360.0), lat, self.seconds(t)), lat)


def _in_region(lat, lon, region, margin=0.0):
    lo0, lo1, la0, la1 = region
    lon360 = np.mod(lon, 360.0)
    return (lat >= la0 - margin) & (lat <= la1 + margin) & (lon360 >= lo0 - margin) & (lon360 <= lo1 + margin)


def granule_profiles(world: World, n: int):
    """Profiles of orbit n (descending node n), cut to the region; None when it never crosses it."""
    cfg = world.cfg
    t_node = world.t0 + np.timedelta64(int(round((np.pi + 2 * np.pi * n - world.u0) / (2 * np.pi) * orbit.PERIOD_S * 1e9)), "ns")
    k = np.arange(int((orbit.PERIOD_S + 40.0) / orbit.PROFILE_DT_S))
    t = t_node - np.timedelta64(20, "s") + (k * orbit.PROFILE_DT_S * 1e9).astype("timedelta64[ns]")
    lat, lon, _ = orbit.track(t, world.u0, world.t0)
    keep = _in_region(lat, lon, cfg.region, margin=1.0)
    if cfg.orbit_mode == "doop":
        soz, _ = orbit.solar_angles(t, lat, lon)
        keep &= soz < 90.0
    if not keep.any():
        return None
    return t_node, t[keep], lat[keep], lon[keep]


def write_granule(world: World, n: int, t, lat, lon, root: str, rng) -> tuple[str, dict]:
    col = world.columns_at(lat, lon, t)
    nray = t.size
    rep = col.reported
    # write layers lowest first, boundaries on the radar's ~240 m bins
    order = np.argsort(np.where(rep, col.base, np.inf), axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
    rep_s = take(rep)
    base = np.round(take(col.base) / BIN_KM) * BIN_KM
    top = np.maximum(np.round(take(col.top) / BIN_KM) * BIN_KM, base + BIN_KM)
    nl = rep_s.sum(1)
    def pad(a, fill, dtype):
        o = np.full((nray, 10), fill, dtype=dtype)
        o[:, : a.shape[1]] = np.where(rep_s, a, fill)
        return o
    arrays = {
        "Latitude": lat.astype(np.float32), "Longitude": lon.astype(np.float32),
        "CloudLayerBase": pad(base, -99.0, np.float32), "CloudLayerTop": pad(top, -99.0, np.float32),
        "CloudPhase": pad(take(col.phase), -9, np.int8), "CloudLayerType": pad(take(col.ctype), -9, np.int8),
        "CloudPhaseConfidenceLevel": pad(np.full(base.shape, 10), -9, np.int8),
        "CloudFraction": pad(np.ones(base.shape), -99.0, np.float32),
        "CloudTypeQuality": pad(np.ones(base.shape), -99.0, np.float32),
        "Cloudlayer": nl.astype(np.int8),
        "DEM_elevation": np.round(col.dem_km * 1000).astype(np.int16),
        "Navigation_land_sea_flag": np.where(col.land, 1, 2).astype(np.uint8),
        "Data_quality": np.zeros(nray, np.uint8), "Data_status": np.zeros(nray, np.uint8),
        "Data_targetID": np.zeros(nray, np.uint8),
        "Range_to_intercept": np.full(nray, 705.0, np.float32),
        "Height": np.tile((24960 - 240 * np.arange(125)).astype(np.int16), (nray, 1)),
        "Vertical_binsize": np.array([239.8], np.float32),
        "Pitch_offset": np.array([0.0], np.float32), "Roll_offset": np.array([0.0], np.float32),
    }
    # a few profiles with missing layer data or a bad quality flag, as in real granules
    bad = rng.random(nray) < world.cfg.bad_profile_fraction
    arrays["Cloudlayer"][bad & (rng.random(nray) < 0.5)] = -9
    arrays["Data_quality"][bad & (arrays["Cloudlayer"] != -9)] = 4
    t_first = t[0]
    day = t_first.astype("datetime64[D]")
    utc_start = (t_first - day).astype("timedelta64[ns]").astype(np.float64) / 1e9
    arrays["UTC_start"] = np.array([utc_start], np.float32)
    arrays["Profile_time"] = ((t - t_first).astype("timedelta64[ns]").astype(np.float64) / 1e9).astype(np.float32)
    tai = (t_first - np.datetime64("1993-01-01", "ns")).astype("timedelta64[ns]").astype(np.float64) / 1e9
    arrays["TAI_start"] = np.array([tai + LEAP_S_SINCE_1993], np.float64)
    start = t_first.astype("datetime64[s]").astype(dt.datetime)
    granule_no = int((world.t0 - CLOUDSAT_LAUNCH).astype("timedelta64[s]").astype(np.int64) / orbit.PERIOD_S) + n
    fname = cs_fmt.granule_filename(start, granule_no, release=5, epoch=8, fix=0)
    sub = os.path.join(root, "cloudsat", "2B-CLDCLASS-LIDAR.P1_R05", f"{start:%Y}", f"{start:%j}")
    os.makedirs(sub, exist_ok=True)
    path = os.path.join(sub, fname)
    cs_fmt.write_granule(path, arrays)
    # statistics over profiles inside the region (what the benchmark can label)
    inreg = _in_region(lat, lon, world.cfg.region) & ~bad
    with np.errstate(invalid="ignore"):
        lev = profile_levels(nl[inreg], np.where(rep_s, base, np.nan)[inreg], np.where(rep_s, top, np.nan)[inreg],
                             np.where(rep_s, take(col.phase), 0)[inreg], col.dem_km[inreg])
    hist = np.bincount(lev[lev != IGNORE].astype(np.int64), minlength=4)
    st = {"profiles": int(inreg.sum()), "hist": hist.tolist(), "structure": profile_structure(col, inreg),
          "cloudy_profiles": int((nl[inreg] > 0).sum()), "multilayer_profiles": int((nl[inreg] > 1).sum()),
          "t_min": str(t[inreg].min()) if inreg.any() else None, "t_max": str(t[inreg].max()) if inreg.any() else None}
    return path, st


GROUPS = ("ice-only", "ice-above-liquid", "liquid-only", "ice-above-mixed", "mixed-only")


def profile_structure(col: Column, sel: np.ndarray) -> dict:
    """Counts behind PHYSICS.md's targets, over the selected profiles' reported layers (top-down)."""
    rep = col.reported[sel]
    ph = np.where(rep, col.phase[sel], 0)
    tau = np.where(rep, col.tau[sel], np.nan)
    n = rep.sum(1)
    first = np.argmax(rep, axis=1)
    rows = np.arange(len(n))
    top_ph, top_tau = ph[rows, first], tau[rows, first]
    top_rad = np.where(rep, col.rad_phase[sel], 0)[rows, first]
    has = lambda c: (ph == c).any(1)  # noqa: E731
    only = lambda c: (n > 0) & ((ph == c) | ~rep).all(1)  # noqa: E731
    lower = lambda c: ((ph == c) & rep & (np.arange(ph.shape[1])[None] > first[:, None])).any(1)  # noqa: E731
    groups = {"ice-only": only(1), "liquid-only": only(3), "mixed-only": only(2),
              "ice-above-liquid": (n > 1) & (top_ph == 1) & lower(3) & ~lower(2),
              "ice-above-mixed": (n > 1) & (top_ph == 1) & lower(2)}
    cloudy, multi = n > 0, n > 1
    return {"profiles": int(len(n)), "layers": [int((n == k).sum()) for k in range(4)] + [int((n >= 4).sum())],
            "groups": {g: int(groups[g].sum()) for g in GROUPS}, "with_mixed": int(has(2).sum()),
            "thin_cirrus_top": int((cloudy & (top_ph == 1) & (top_tau < 0.3)).sum()),
            "multilayer_top_tau_gt3": int((multi & (top_tau > 3)).sum()),
            "top_seen_as_other_phase": int((cloudy & (top_rad != top_ph)).sum()),
            "mixed_top": int((cloudy & (top_ph == 2)).sum()),
            "mixed_top_seen_as_liquid": int((cloudy & (top_ph == 2) & (top_rad == 3)).sum())}


def region_grid(cfg: SynthConfig):
    lo0, lo1, la0, la1 = cfg.region
    nlat = int(round((la1 - la0) / cfg.res)) + 1
    nlon = int(round((lo1 - lo0) / cfg.res)) + 1
    lat = la1 - cfg.res * np.arange(nlat)
    lon = lo0 + cfg.res * np.arange(nlon)
    return lat, lon


def scan_offset_s(lat):
    """Seconds after the slot start at which AHI scans latitude `lat` (full disk, north to south)."""
    return 20.0 + (81.3 - np.asarray(lat, np.float64)) / 162.6 * 580.0


KM_PER_DEG = 111.2
PARALLAX_MAX_KM = 30.0
NAV_ERROR_PX = 0.3          # navigation error per scene, standard deviation in pixels (PHYSICS §5: < 1 km)
# calibration per scene (PHYSICS §5, Okuyama et al. 2018): B1-B4 unbiased to ~1 %, B5-B6 biased ~+-5 %,
# IR bias < 0.2-0.3 K
CAL_GAIN_SD = (0.01, 0.01, 0.01, 0.01, 0.05, 0.05)
CAL_IR_BIAS_SD_K = 0.2
FOOTPRINT_KM = {"vis": 1.0, "ir": 2.0}   # AHI sampling at nadir (B1, B2, B4: 1 km; B5-B16: 2 km; PHYSICS §5)


def parallax_offset_px(top_km, saz_deg, lat, lon, res):
    """(d_row, d_col) in pixels from a pixel to the column whose cloud top (at top_km) it sees: AHI looks
    at a cloud of height h along a slanted line, so the cloud appears h tan(SAZ) farther from the
    sub-satellite point; the pixel therefore sees the clouds of the column h tan(SAZ) closer to it.
    Rows run north -> south. Clear columns (top NaN) and off-disk pixels get no offset."""
    h = np.nan_to_num(np.asarray(top_km, np.float64), nan=0.0)
    d = np.clip(h * np.tan(np.deg2rad(np.nan_to_num(saz_deg, nan=0.0))), 0.0, PARALLAX_MAX_KM)
    phi, dlam = np.deg2rad(lat), np.deg2rad(orbit.SUB_LON - np.asarray(lon, np.float64))
    bearing = np.arctan2(np.sin(dlam), -np.sin(phi) * np.cos(dlam))        # toward the sub-satellite point
    north, east = d * np.cos(bearing), d * np.sin(bearing)
    return -north / (res * KM_PER_DEG), east / (res * KM_PER_DEG * np.maximum(np.cos(phi), 0.05))


def blur_radius(sigma_px: float) -> int:
    """Half-width in pixels of blur()'s kernel (0: blur is a no-op)."""
    return 0 if sigma_px < 0.1 else max(1, int(np.ceil(3 * sigma_px)))


def footprint_sigma_px(band: int, res: float) -> float:
    """Standard deviation in pixels of band `band`'s (0-based) footprint blur on a grid of step `res` degrees."""
    return FOOTPRINT_KM["vis" if band in (0, 1, 2, 3) else "ir"] / 2.355 / (res * KM_PER_DEG)


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Separable Gaussian (instrument footprint), edges replicated; no-op below 0.1 px. NaN spreads only
    to pixels within blur_radius of it."""
    r = blur_radius(sigma_px)
    if r == 0:
        return img
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma_px) ** 2)
    k /= k.sum()
    out = img.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        out = sum(k[i] * np.take(p, np.arange(i, i + out.shape[axis]), axis=axis) for i in range(2 * r + 1))
    return out.astype(img.dtype)


def dilate(mask: np.ndarray, half: int) -> np.ndarray:
    """Pixels within Chebyshev distance `half` of a True pixel of `mask` (a box sum of cumulative sums)."""
    if half <= 0:
        return mask.copy()
    out = mask.astype(np.int32)
    for axis in (0, 1):
        c = np.cumsum(out, axis=axis)
        n = out.shape[axis]
        hi = np.take(c, np.minimum(np.arange(n) + half, n - 1), axis=axis)
        lo_idx = np.arange(n) - half - 1
        lo = np.where((lo_idx >= 0).reshape([-1 if a == axis else 1 for a in (0, 1)]),
                      np.take(c, np.maximum(lo_idx, 0), axis=axis), 0)
        out = hi - lo
    return out > 0


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


def write_scene(world: World, slot: np.datetime64, root: str, keep: np.ndarray | None = None,
                block_rows: int = 128) -> str:
    """One P-Tree scene of the region. What AHI sees differs from the columns CloudSat labels: each scene
    has a navigation error (a sub-pixel shift) and its own calibration error, every pixel sees the clouds
    along its slanted line of sight (parallax), and the bands are blurred by the instrument footprint.

    keep: [nlat, nlon] bool, the only pixels to write (the track corridor); the others are fill (bands,
    angles) but keep their scan time. The written pixels are bit-identical to the whole scene's: the same
    random draws are made for every pixel, and each written pixel is computed from a window that holds
    every column it sees (parallax) and every neighbour its footprint blur reads."""
    cfg = world.cfg
    lat, lon = region_grid(cfg)
    nlat, nlon = lat.size, lon.size
    t_row = slot + (scan_offset_s(lat) * 1e9).astype("timedelta64[ns]")
    rng = np.random.default_rng([cfg.seed, int(world.seconds(np.array([slot]))[0])])
    nav = rng.normal(0.0, NAV_ERROR_PX, 2)                        # rows, cols
    gain = 1.0 + rng.normal(0.0, 1.0, 6) * np.asarray(CAL_GAIN_SD)
    ir_bias = rng.normal(0.0, CAL_IR_BIAS_SD_K, 10)
    halo = int(np.ceil(PARALLAX_MAX_KM / (cfg.res * KM_PER_DEG))) + 1
    sigmas = [footprint_sigma_px(b, cfg.res) for b in range(len(BAND_VARS))]
    need = None if keep is None else dilate(keep, max(blur_radius(s) for s in sigmas))
    out = {name: np.full((nlat, nlon), np.nan, np.float32) for name in BAND_VARS + ("SOZ", "SOA", "SAZ", "SAA")}
    out["Hour"] = np.broadcast_to(orbit.ut_hours(t_row).astype(np.float32)[:, None], (nlat, nlon)).copy()
    for r0 in range(0, nlat, block_rows):
        r1 = min(nlat, r0 + block_rows)
        noise = rng.standard_normal((len(BAND_VARS), (r1 - r0) * nlon))   # every pixel's draws, written or not
        if need is None:
            c0, c1 = 0, nlon
        else:
            cols_needed = np.flatnonzero(need[r0:r1].any(0))
            if cols_needed.size == 0:
                continue
            c0, c1 = int(cols_needed[0]), int(cols_needed[-1]) + 1
        ra, rb = max(0, r0 - halo), min(nlat, r1 + halo)           # rows whose clouds the block may see
        # columns whose clouds the block may see: the east-west offset grows as 1/cos(lat)
        coslat = max(float(np.cos(np.deg2rad(np.abs(lat[ra:rb]).max()))), 0.05)
        chalo = int(np.ceil(PARALLAX_MAX_KM / (cfg.res * KM_PER_DEG * coslat))) + 1
        wa, wb = max(0, c0 - chalo), min(nlon, c1 + chalo)
        nw = wb - wa
        f = world.bank.grid(lon[wa:wb] + nav[1] * cfg.res, lat[ra:rb] - nav[0] * cfg.res, world.seconds(t_row[ra:rb]))
        full = Column({k: v.ravel() for k, v in f.items()}, np.repeat(lat[ra:rb] - nav[0] * cfg.res, nw))
        rows = np.repeat(np.arange(r0, r1), c1 - c0)
        cols = np.tile(np.arange(c0, c1), r1 - r0)
        la, lo = lat[rows], lon[cols]
        tt = t_row[rows]
        soz, soa = orbit.solar_angles(tt, la, lo)
        saz, saa = orbit.satellite_angles(la, lo)
        own = (rows - ra) * nw + (cols - wa)
        top = np.nanmax(np.where(np.isfinite(full.top[own]), full.top[own], -np.inf), axis=1)
        dr, dc = parallax_offset_px(np.where(np.isfinite(top), top, np.nan), saz, la, lo, cfg.res)
        sr = np.clip(np.rint(rows + dr).astype(np.int64), ra, rb - 1)
        sc = np.clip(np.rint(cols + dc).astype(np.int64), wa, wb - 1)     # the scene's edge, or the window's
        col = full.take(own, cloud_idx=(sr - ra) * nw + (sc - wa))
        nb = len(BAND_VARS)
        bands = forward(col, soz, noise.reshape(nb, r1 - r0, nlon)[:, :, c0:c1].reshape(nb, -1))
        for b, name in enumerate(BAND_VARS):
            out[name][r0:r1, c0:c1] = bands[b].reshape(r1 - r0, c1 - c0)
        for name, v in (("SOZ", soz), ("SOA", soa), ("SAZ", saz), ("SAA", saa)):
            out[name][r0:r1, c0:c1] = v.reshape(r1 - r0, c1 - c0)
    for b, name in enumerate(BAND_VARS):                              # calibration, instrument footprint
        out[name] = out[name] * np.float32(gain[b]) if b < 6 else out[name] + np.float32(ir_bias[b - 6])
        out[name] = blur(out[name], sigmas[b])
    attrs = {}
    if keep is not None:
        for name in BAND_VARS + ("SOZ", "SOA", "SAZ", "SAA"):
            out[name][~keep] = np.nan
        attrs["track_corridor_px"] = np.int32(cfg.track_corridor)
    sl = slot.astype("datetime64[s]").astype(dt.datetime)
    sub = os.path.join(root, "ahi", f"{sl:%Y%m}", f"{sl:%d}")
    os.makedirs(sub, exist_ok=True)
    path = os.path.join(sub, ahi_fmt.ahi_filename(sl, nlon, nlat, cfg.satellite))
    ahi_fmt.write_ahi(path, lat, lon, out, sl, attrs=attrs)
    return path


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


def synthesize(cfg: SynthConfig, log=print, progress: bool = False) -> dict:
    """Write the archive; return (and write to <out>/synth_stats.json) its statistics. progress: a tqdm bar
    with ETA over the AHI scenes (the slow part) instead of one log line per scene."""
    from tqdm import tqdm

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
    scenes, day_scenes, written_px, no_profile = [], 0, 0, 0
    scene_px = int(np.prod([g.size for g in region_grid(cfg)]))
    lat_c = 0.5 * (cfg.region[2] + cfg.region[3])
    lon_c = 0.5 * (cfg.region[0] + cfg.region[1])
    for slot in tqdm(sorted(slots), desc="AHI scenes", unit="scene", disable=not progress, mininterval=2,
                     dynamic_ncols=True):
        keep = None
        if cfg.track_corridor is not None:
            keep = corridor_mask(cfg, slot, tracks)
            if keep is None:            # no profile within CORRIDOR_WINDOW_MIN of this slot's scan
                no_profile += 1
                continue
        written_px += scene_px if keep is None else int(keep.sum())
        path = write_scene(world, slot, cfg.out, keep)
        scenes.append(os.path.relpath(path, cfg.out))
        soz, _ = orbit.solar_angles(np.array([slot]), np.array([lat_c]), np.array([lon_c]))
        day_scenes += int(soz[0] < 85)
        if not progress:
            log(f"scene {os.path.basename(path)}")
    tot = max(int(hist.sum()), 1)
    cl = max(int(hist[1:].sum()), 1)
    stats = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "stats"},
        "granules": len(granules), "scenes": len(scenes), "day_scenes": day_scenes,
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
        "files": {"granules": granules, "scenes": scenes},
    }
    with open(os.path.join(cfg.out, "synth_stats.json"), "w") as f:
        json.dump(stats, f, indent=1, default=float)
    return stats


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
        f"granules {s['granules']}, AHI scenes {s['scenes']} (day {s['day_scenes']}, night {s['night_scenes']})",
        f"profiles in region {s['profiles_in_region']}, labelled voxels {s['labelled_voxels']}",
        f"clear fraction of labelled voxels {100 * s['clear_fraction']:.1f} % (paper, real data: 89.3 %)",
        f"cloudy voxels: ice {100 * pf['ice']:.1f} %, mixed {100 * pf['mixed']:.1f} %, liquid {100 * pf['liquid']:.1f} %",
        f"cloudy profiles {100 * s['cloudy_profile_fraction']:.1f} %, multi-layer among cloudy "
        f"{100 * s['multilayer_fraction_of_cloudy']:.1f} %",
    ] + ([f"track corridor {s['track_corridor_px']} px: {100 * s['written_pixel_fraction']:.1f} % of the scenes' "
          f"pixels written, {s['slots_without_profiles_skipped']} slot(s) with no profile near skipped"]
         if s.get("track_corridor_px") else []) + [
        "profile structure (reported layers) vs PHYSICS.md targets:",
    ] + rows)
