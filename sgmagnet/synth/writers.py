"""The two writers of the synthetic archive, in the real formats: 2B-CLDCLASS-LIDAR granules (HDF-EOS2) along the
orbit, and P-Tree AHI scenes (NetCDF) through the instrument model."""
from __future__ import annotations

import datetime as dt
import os

import numpy as np

from ..formats import ahi as ahi_fmt
from ..formats import cloudsat as cs_fmt
from ..formats.epochs import himawari_for
from ..grid import BAND_VARS, IGNORE
from ..labels import profile_levels
from . import orbit
from .config import SynthConfig
from .instrument import (CAL_GAIN_SD, CAL_IR_BIAS_SD_K, KM_PER_DEG, NAV_ERROR_PX, PARALLAX_MAX_KM, blur, blur_radius,
                         dilate, footprint_sigma_px, parallax_offset_px, scan_offset_s)
from .radiance import forward
from .world import Column, World


CLOUDSAT_LAUNCH = np.datetime64("2006-04-28T10:02:16", "ns")
LEAP_S_SINCE_1993 = 10           # valid from 2017-01-01
BIN_KM = 0.24


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


def scene_errors(world: World, slot: np.datetime64):
    """The slot's generator and its first draws: the navigation error (rows, cols, in P-Tree pixels of
    cfg.res degrees), the VIS/NIR gain and IR bias errors. Both writers (P-Tree, HSD) use the same ones."""
    rng = np.random.default_rng([world.cfg.seed, int(world.seconds(np.array([slot]))[0])])
    nav = rng.normal(0.0, NAV_ERROR_PX, 2)                        # rows, cols
    gain = 1.0 + rng.normal(0.0, 1.0, 6) * np.asarray(CAL_GAIN_SD)
    ir_bias = rng.normal(0.0, CAL_IR_BIAS_SD_K, 10)
    return rng, (nav, gain, ir_bias)


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
    rng, (nav, gain, ir_bias) = scene_errors(world, slot)
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
    path = os.path.join(sub, ahi_fmt.ahi_filename(sl, nlon, nlat, cfg.satellite or himawari_for(sl)))
    ahi_fmt.write_ahi(path, lat, lon, out, sl, attrs=attrs)
    return path
