"""Collocation of label profiles (CloudSat 2B-CLDCLASS-LIDAR, EarthCARE AC__TC__2B) with AHI scenes, and patches
along the track (DESIGN.md, normative).

Both products become `Profiles` (time, position, validity, and the 38 levels of any subset), so the matching
below is one code path for both. A profile goes to the nearest grid pixel of a scene and matches it when |t_profile - t_pixel| <= window,
t_pixel being the pixel's own scan time (`Hour`; the nominal slot time only when the file has none).
When several scenes qualify the nearer in time wins (ties: the earlier). Off-disk or invalid pixels
(any band missing) match nothing. Several profiles in one pixel are merged by a per-level majority vote.
Patches: P x P windows centred on the track, stepped along it so that neighbours overlap by at most a
quarter; a patch keeps >= min_labelled labelled pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import xarray as xr

from .formats import FormatError
from .formats import imager
from .grid import BAND_VARS, IGNORE
from .labels import jsg_levels, profile_is_valid, profile_levels, vote
from .solar import stratum


@dataclass
class Scene:
    path: str
    timeline: np.datetime64


@dataclass
class Match:
    """Labelled pixels of one scene: grid rows/cols, labels [n,38], first profile time, profile counts."""
    scene: Scene
    grid: object          # formats.ahi.AhiGrid or formats.hsd_slot.NativeGrid
    rows: np.ndarray
    cols: np.ndarray
    labels: np.ndarray
    t_first: np.ndarray
    n_profiles: np.ndarray
    top_type: np.ndarray | None = None   # CloudLayerType of the highest layer of the pixel's first profile (0 = none)
    product: str = "2B-CLDCLASS-LIDAR"   # the label product, its satellite, and the file's id in sample keys
    source: str = "CloudSat"
    key: str = ""


def top_layer_type(n_layers, top, ctype) -> np.ndarray:
    """[N] cloud type (2B-CLDCLASS-LIDAR CloudLayerType: 1 Ci .. 8 DC) of each profile's highest valid layer;
    0 for clear profiles or when the file has no usable type."""
    k = top.shape[1]
    n = np.nan_to_num(np.asarray(n_layers, np.float64), nan=0).clip(0, k).astype(np.int64)
    use = (np.arange(k)[None, :] < n[:, None]) & np.isfinite(top)
    h = np.where(use, top, -np.inf)
    best = np.argmax(h, axis=1)
    t = np.take_along_axis(np.nan_to_num(np.asarray(ctype, np.float64), nan=0), best[:, None], 1)[:, 0]
    return np.where(use.any(1) & (t >= 1) & (t <= 8), t, 0).astype(np.uint8)


@dataclass
class GranuleMatch:
    matches: list = field(default_factory=list)
    skipped: list = field(default_factory=list)      # (file, reason)
    n_profiles: int = 0
    n_valid: int = 0
    n_matched: int = 0
    profile_index: np.ndarray | None = None     # [n_matched] granule index of each matched profile ...
    profile_pixel: np.ndarray | None = None     # [n_matched, 3] ... and its (scene in `scenes`, row, col)


@dataclass
class Profiles:
    """The label profiles of one granule (CloudSat) or frame (EarthCARE), as collocation needs them."""
    time: np.ndarray                 # [n] datetime64[ns]
    latitude: np.ndarray             # [n] degrees
    longitude: np.ndarray
    valid: np.ndarray                # [n] bool: can be labelled honestly (and before the next file's cutoff)
    levels: Callable                 # profile indices -> labels [k, 38] uint8
    top_type: Callable               # profile indices -> [k] uint8 cloud type of the top layer (0: none/unknown)
    product: str                     # "2B-CLDCLASS-LIDAR" / "AC__TC__2B"
    source: str                      # "CloudSat" / "EarthCARE"
    key: str                         # the file's id in sample keys: granule "NNNNN", or orbit+frame "OOOOOF"

    @property
    def n(self) -> int:
        return int(self.time.size)


def cloudsat_profiles(g: xr.Dataset, cutoff=None, quality_mask: int = 0xFF) -> Profiles:
    return Profiles(
        g.time.values, g.latitude.values, g.longitude.values, valid_profiles(g, cutoff, quality_mask),
        lambda sel: profile_levels(g.n_layers.values[sel], g.layer_base.values[sel], g.layer_top.values[sel],
                                   g.layer_phase.values[sel], g.dem_km.values[sel]),
        lambda sel: top_layer_type(g.n_layers.values[sel], g.layer_top.values[sel], g.layer_type.values[sel]),
        "2B-CLDCLASS-LIDAR", "CloudSat", f"{int(g.attrs['granule']):05d}")


def earthcare_profiles(frame: dict, cutoff=None, strict: bool = False) -> Profiles:
    """An AC__TC__2B frame (formats.earthcare.read_frame): its bins on the 38 levels (labels.jsg_levels); a
    profile is valid when its time and position are finite and at least one level is labelled."""
    lev = jsg_levels(frame["classes"], frame["height_m"], frame["surface_m"], frame["quality"], strict)
    t = frame["time"]
    ok = ~np.isnat(t) & np.isfinite(frame["latitude"]) & np.isfinite(frame["longitude"]) & (lev != IGNORE).any(1)
    if cutoff is not None:
        ok &= t < cutoff
    return Profiles(t, frame["latitude"], frame["longitude"], ok, lambda sel: lev[sel],
                    lambda sel: np.zeros(np.size(sel), np.uint8), "AC__TC__2B", "EarthCARE",
                    f"{frame['orbit']:05d}{frame['frame']}")


def valid_profiles(g: xr.Dataset, cutoff: np.datetime64 | None = None, quality_mask: int = 0xFF) -> np.ndarray:
    ok = profile_is_valid(g.n_layers.values, g.layer_base.values, g.layer_top.values, g.layer_phase.values,
                          (g.data_quality.values & quality_mask) == 0)
    t = g.time.values
    ok &= ~np.isnat(t) & np.isfinite(g.latitude.values) & np.isfinite(g.longitude.values)
    if cutoff is not None:
        ok &= t < cutoff          # the next granule owns the overlapping profiles
    return ok


def collocate(g: xr.Dataset | Profiles, scenes: list[Scene], window_min: float = 5.0, cutoff=None,
              quality_mask: int = 0xFF, patch_size: int | None = None) -> GranuleMatch:
    """Match the profiles of `g` (a CloudSat granule from formats.cloudsat.read_granule, or any `Profiles`;
    cutoff and quality_mask apply to a granule) with the scenes. patch_size: of the patches cut next
    (make_patches); a reader keeps half of it around the track's window, which holds every patch centred on
    the track."""
    p = g if isinstance(g, Profiles) else cloudsat_profiles(g, cutoff, quality_mask)
    out = GranuleMatch(n_profiles=p.n)
    ok = p.valid
    out.n_valid = int(ok.sum())
    idx = np.nonzero(ok)[0]
    if idx.size == 0:
        return out
    t = p.time[idx]
    lat, lon = p.latitude[idx], p.longitude[idx]
    win = np.timedelta64(int(window_min * 60e9), "ns")
    cands = [s for s in scenes if t.min() - win - np.timedelta64(60, "m") <= s.timeline <= t.max() + win]
    cands.sort(key=lambda s: s.timeline)
    big = np.iinfo(np.int64).max
    best_dt = np.full(idx.size, big, np.int64)
    best_sc = np.full(idx.size, -1, np.int64)
    best_ij = np.full((idx.size, 2), -1, np.int64)
    grids = {}
    keep_px = None if patch_size is None else patch_size // 2
    # first where each scene scans the track within the window (cheap: its grid, and one variable or header
    # block 9 for the scan times), then the bands of those windows, scene after scene: an HSD slot's segment
    # files are decompressed in the background while the scene before it is computed
    plans = {}
    for si, sc in enumerate(cands):
        try:
            plan = _scan_window(sc, lat, lon, t, win)
        except FormatError as e:
            out.skipped.append((e.path, e.problem))
            plan = None
        finally:
            out.skipped += [x for x in imager.skipped(sc.path) if x not in out.skipped]
        if plan is None:
            imager.set_aside(sc.path)         # the scenes with a window stay open until they are read
            continue
        plans[si] = plan
        if len(plans) == 1:
            _prefetch(sc, plan, keep_px)
    order = sorted(plans)
    for k, si in enumerate(order):
        sc = cands[si]
        try:
            if k + 1 < len(order):
                _prefetch(cands[order[k + 1]], plans[order[k + 1]], keep_px)
            grid, i, j, near, (r0, r1, c0, c1) = plans[si]
            ds = imager.read_window(sc.path, slice(r0, r1), slice(c0, c1), angles=False, keep_px=keep_px)
        except FormatError as e:
            out.skipped.append((e.path, e.problem))
            continue
        finally:
            out.skipped += [x for x in imager.skipped(sc.path) if x not in out.skipped]
        grids[si] = grid
        ii, jj = np.where(near, i - r0, 0), np.where(near, j - c0, 0)
        tp = ds.obs_time.values[ii, jj]
        dt_ns = np.abs((t - tp).astype("timedelta64[ns]").astype(np.int64))
        in_time = near & ~np.isnat(tp) & (dt_ns <= win.astype(np.int64))
        if not in_time.any():         # the scene scans the track outside the window: nothing can match
            continue
        finite = np.zeros(ds.valid.shape, bool)
        for b in BAND_VARS:
            finite |= np.isfinite(ds[b].values)
        if not finite[ii[in_time], jj[in_time]].any():
            out.skipped.append((sc.path, f"no finite band value under the {p.source} track where it is scanned "
                                         "within the window: all 16 bands are fill/NaN (or off-disk) there"))
            continue
        good = in_time & ds.valid.values[ii, jj] & (dt_ns < best_dt)
        best_dt[good] = dt_ns[good]
        best_sc[good] = si
        best_ij[good, 0], best_ij[good, 1] = i[good], j[good]
    matched = best_sc >= 0
    out.n_matched = int(matched.sum())
    out.profile_index = idx[matched]
    pos = {id(sc): k for k, sc in enumerate(scenes)}
    cand_pos = np.array([pos[id(sc)] for sc in cands] or [0], np.int64)
    out.profile_pixel = np.stack([cand_pos[best_sc[matched]], best_ij[matched, 0], best_ij[matched, 1]], 1)
    if not matched.any():
        return out
    sel = idx[matched]
    labels = p.levels(sel)
    ttype = p.top_type(sel)
    sc_m, ij_m, t_m = best_sc[matched], best_ij[matched], t[matched]
    for si in np.unique(sc_m):
        m = sc_m == si
        grid = grids[int(si)]
        flat = ij_m[m, 0] * grid.shape[1] + ij_m[m, 1]
        uniq, inv = np.unique(flat, return_inverse=True)
        lab = vote(labels[m], inv, uniq.size)
        order = np.argsort(t_m[m], kind="stable")
        _, first = np.unique(inv[order], return_index=True)   # earliest profile of each pixel
        t_first = t_m[m][order[first]]
        out.matches.append(Match(cands[int(si)], grid, uniq // grid.shape[1], uniq % grid.shape[1], lab, t_first,
                                 np.bincount(inv, minlength=uniq.size), ttype[m][order[first]], p.product, p.source,
                                 p.key))
    return out


def _scan_window(sc: Scene, lat, lon, t, win):
    """(grid, rows, cols, near, (r0, r1, c0, c1)): the track's nearest pixels in the scene, those it scans within
    `win` of the profile times (`near`), and their bounding window; None where there are none."""
    grid = imager.read_grid(sc.path)
    i, j, inside = grid.nearest(lat, lon)
    if not inside.any():
        return None
    # only the part of the track the scene scans within the window is read
    tp0 = np.full(i.shape, np.datetime64("NaT"), "datetime64[ns]")
    tp0[inside] = imager.pixel_times(sc.path, i[inside], j[inside])
    near = inside & ~np.isnat(tp0)
    near[near] = np.abs((t[near] - tp0[near]).astype("timedelta64[ns]").astype(np.int64)) <= win.astype(np.int64)
    if not near.any():        # the scene scans the track outside the window: nothing can match
        return None
    return grid, i, j, near, (int(i[near].min()), int(i[near].max()) + 1, int(j[near].min()), int(j[near].max()) + 1)


def _prefetch(sc: Scene, plan, keep_px):
    r0, r1, c0, c1 = plan[4]
    try:
        imager.prefetch_window(sc.path, slice(r0, r1), slice(c0, c1), keep_px=keep_px)
    except FormatError:
        pass                  # read_window meets it again and records it


def patch_windows(rows: np.ndarray, cols: np.ndarray, t_first: np.ndarray, shape: tuple, size: int) -> list:
    """Window origins (row0, col0) of P x P patches centred on the track, in along-track order.

    Centres are track pixels: the first is the first pixel at Chebyshev distance >= P/2 from the
    track start (or the last pixel of a short track), each next one the first pixel at distance
    >= ceil(3P/4) from the previous centre, so neighbouring windows overlap by at most a quarter.
    """
    nlat, nlon = shape
    if nlat < size or nlon < size or rows.size == 0:
        return []
    order = np.argsort(t_first, kind="stable")
    r, c = rows[order], cols[order]
    stride = math.ceil(0.75 * size)
    half = size // 2
    dist0 = np.maximum(np.abs(r - r[0]), np.abs(c - c[0]))
    k = int(np.argmax(dist0 >= half)) if (dist0 >= half).any() else r.size - 1
    centres = []
    while True:
        centres.append((int(r[k]), int(c[k])))
        d = np.maximum(np.abs(r[k:] - r[k]), np.abs(c[k:] - c[k]))
        nxt = np.nonzero(d >= stride)[0]
        if nxt.size == 0:
            break
        k = k + int(nxt[0])
    wins = []
    for rc, cc in centres:
        w = (int(np.clip(rc - half, 0, nlat - size)), int(np.clip(cc - half, 0, nlon - size)))
        if w not in wins:
            wins.append(w)
    return wins


def corners(ds: xr.Dataset) -> dict:
    """[lat, lon] of a window's corner pixels, from 1-D (P-Tree) or 2-D (native grid) coordinates."""
    lat, lon = ds.latitude.values, ds.longitude.values
    if lat.ndim == 1:
        lat, lon = np.broadcast_to(lat[:, None], (lat.size, lon.size)), np.broadcast_to(lon[None, :], (lat.size, lon.size))
    pick = {"nw": (0, 0), "ne": (0, -1), "sw": (-1, 0), "se": (-1, -1)}
    return {k: [float(lat[i, j]), float(lon[i, j])] for k, (i, j) in pick.items()}


def make_patches(match: Match, size: int, min_labelled: int = 64):
    """Yield (sample dict of numpy arrays + meta) for each kept patch of a scene's labelled pixels."""
    wins = patch_windows(match.rows, match.cols, match.t_first, match.grid.shape, size)
    for k, (r0, c0) in enumerate(wins):
        inwin = (match.rows >= r0) & (match.rows < r0 + size) & (match.cols >= c0) & (match.cols < c0 + size)
        inwin &= (match.labels != IGNORE).any(1)
        if inwin.sum() < min_labelled:
            continue
        ds = imager.read_window(match.scene.path, slice(r0, r0 + size), slice(c0, c0 + size))
        corridor = ds.attrs.get("track_corridor_px")
        if corridor is not None and corridor < size:
            raise FormatError(match.scene.path, f"holds only the pixels within {corridor} px of the CloudSat "
                              f"tracks (synth --track-corridor {corridor}): patches of {size} px would have "
                              f"fill in them; build with --patch-size <= {corridor}")
        x = np.stack([ds[b].values for b in BAND_VARS]).astype(np.float32)
        geom = np.stack([ds["SOZ"].values, ds["SAZ"].values]).astype(np.float32)
        o = np.argsort(match.t_first[inwin], kind="stable")
        pix = np.stack([match.rows[inwin] - r0, match.cols[inwin] - c0], 1)[o].astype(np.int16)
        prof = match.labels[inwin][o].astype(np.uint8)
        ctype = (match.top_type[inwin][o] if match.top_type is not None else np.zeros(len(prof))).astype(np.uint8)
        h = size // 2
        soz_pix = ds["SOZ"].values[pix[:, 0], pix[:, 1]].astype(np.float64)
        soz_pix = soz_pix[np.isfinite(soz_pix)]
        sza = float(np.median(soz_pix)) if soz_pix.size else None
        meta = {
            "scene_time": str(match.scene.timeline.astype("datetime64[s]")),
            "ahi_file": ds.attrs["file"], "row0": int(r0), "col0": int(c0), "patch_size": int(size),
            "platform": f"H{ds.attrs['satellite']}", "grid": ds.attrs.get("grid", "ptree-latlon"),
            "corners": corners(ds),
            "solar_zenith_centre": float(ds["SOZ"].values[h, h]) if np.isfinite(ds["SOZ"].values[h, h]) else None,
            "label_product": match.product, "label_source": match.source,
            "solar_zenith_labelled": ([round(float(soz_pix.min()), 2), round(sza, 2), round(float(soz_pix.max()), 2)]
                                      if sza is not None else None),
            "day_night": stratum(sza) if sza is not None else "unknown",
            "n_labelled_pixels": int(pix.shape[0]), "n_profiles": int(match.n_profiles[inwin].sum()),
            "window_index": k,
        }
        yield {"input": x, "pix": pix, "prof": prof, "geom": geom, "meta": meta, "ctype": ctype}
