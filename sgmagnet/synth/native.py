"""The synthetic archive's HSD writer: the same world and instrument as the P-Tree scenes, seen on AHI's native
full-disk grid and written as Himawari Standard Data segment files (`synth --ahi-format hsd|both`).

What differs from the P-Tree writer is only the sampling: pixel centres come from the CGMS navigation of
the 2 km grid (formats.hsd.line_col_to_lonlat), each line is scanned at its own time (block 9), the
footprint blur is in native pixels, and the values are quantised to counts with each band's calibration.
A slot's navigation and calibration errors are the P-Tree scene's own (the same draws), so a world written
both ways differs only by the grids. The bands at 0.5 km (B03) and 1 km (B01, B02, B04) carry the 2 km
rendering replicated over their sub-pixels (the world's columns are evaluated once per 2 km pixel): their
block mean is the 2 km value, within quantisation; sub-pixel texture is not simulated.

Only pixels within the track corridor (synth --track-corridor P, in native 2 km pixels) are rendered; every
other pixel of the 160 files of a slot holds the error count 65535 (bz2 compresses runs of 0xFF almost for
free; a segment nobody needs is one cached bz2 stream), off-disk pixels inside the rendered windows hold the
outside-scan count 65534, and a few rendered pixels per segment are error pixels, listed in block 10.
"""
from __future__ import annotations

import bz2
import datetime as dt
import os

import numpy as np

from ..formats import hsd
from ..grid import BAND_VARS
from . import fields, orbit
from .config import SynthConfig
from .instrument import PARALLAX_MAX_KM, blur, dilate, parallax_offset_px, scan_offset_s
from .radiance import forward
from .world import Column, World

BLOCK_LINES = 110                 # 2 km lines rendered together (a fifth of a segment)
NATIVE_KM = 2.0
FOOTPRINT_SIGMA_PX = {"vis": 1.0 / 2.355 / NATIVE_KM, "ir": 2.0 / 2.355 / NATIVE_KM}
HALO_PX = int(np.ceil(PARALLAX_MAX_KM / NATIVE_KM)) + 3
ERROR_PIXELS_PER_SEGMENT = 3
N2 = hsd.RESOLUTIONS["20"][0]      # 5500 lines and columns at 2 km
SEG_LINES = N2 // hsd.N_SEGMENTS  # 550


def line_seconds(lines) -> np.ndarray:
    """Seconds after the slot start at which 2 km line numbers `lines` (1-based) are scanned: the P-Tree
    scenes' scan model (scan_offset_s) at the line's latitude on the central meridian, extended linearly
    past the limb."""
    lines = np.asarray(lines, np.float64)
    _, lat = hsd.line_col_to_lonlat(lines, np.full(lines.shape, 0.5 * (N2 + 1)))
    edge = 81.3 * np.sign(0.5 * (N2 + 1) - lines)
    return scan_offset_s(np.where(np.isfinite(lat), lat, edge))


def corridor_pixels(cfg: SynthConfig, slot: np.datetime64, tracks: list, window_min: float) -> np.ndarray | None:
    """[k, 2] 0-based (row, col) of the 2 km pixels under a profile scanned within `window_min` of it."""
    pts = []
    win = window_min * 60.0
    for t, lat, lon in tracks:
        line, col = hsd.lonlat_to_line_col(lon, lat)
        ok = np.isfinite(line)
        if not ok.any():
            continue
        scan = line_seconds(np.where(ok, line, 1.0))
        dt_s = (t - slot).astype("timedelta64[ns]").astype(np.float64) / 1e9 - scan
        near = ok & (np.abs(dt_s) <= win)
        pts.append(np.stack([np.rint(line[near]) - 1, np.rint(col[near]) - 1], 1).astype(np.int64))
    pts = np.concatenate(pts) if pts else np.zeros((0, 2), np.int64)
    pts = pts[(pts >= 0).all(1) & (pts < N2).all(1)]
    return pts if len(pts) else None


def corridor(pixels: np.ndarray, half: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The pixels within `half` (Chebyshev) of `pixels` ([k, 2] 0-based rows, cols): a mask over the bounding
    window and the window's origin."""
    r0, c0 = np.maximum(pixels.min(0) - half, 0)
    r1, c1 = np.minimum(pixels.max(0) + 1 + half, N2)
    seed = np.zeros((r1 - r0, c1 - c0), bool)
    seed[pixels[:, 0] - r0, pixels[:, 1] - c0] = True
    return dilate(seed, half), (int(r0), int(c0))


def render(world: World, slot: np.datetime64, need: np.ndarray, origin: tuple, errors: tuple) -> dict:
    """Render the 16 bands at the needed 2 km pixels: need [h, w] bool over the full-disk window starting at
    0-based (row, col) `origin`. errors: the slot's (nav, gain, ir_bias) draws. Returns {row: (cols, [16, k])}
    per needed full-disk row (values NaN off the disk)."""
    cfg = world.cfg
    nav, gain, ir_bias = errors
    r_org, c_org = origin
    out = {}
    h, w = need.shape
    for b0 in range(0, h, BLOCK_LINES):
        b1 = min(h, b0 + BLOCK_LINES)
        blk = need[b0:b1]
        if not blk.any():
            continue
        cols = np.flatnonzero(blk.any(0))
        ra, rb = max(0, r_org + b0 - HALO_PX), min(N2, r_org + b1 + HALO_PX)     # full-disk window + halo
        ca, cb = max(0, c_org + int(cols[0]) - HALO_PX), min(N2, c_org + int(cols[-1]) + 1 + HALO_PX)
        rows_w, cols_w = np.arange(ra, rb), np.arange(ca, cb)
        lon, lat = hsd.line_col_to_lonlat(rows_w[:, None] + 1.0, cols_w[None, :] + 1.0)
        t_row = slot + (line_seconds(rows_w + 1.0) * 1e9).astype("timedelta64[ns]")
        on = np.isfinite(lat)
        nw = cb - ca
        rr, cc = np.nonzero(on)
        la_s, lo_s = lat[rr, cc] - nav[0] * cfg.res, lon[rr, cc] + nav[1] * cfg.res
        idx = np.full(lat.shape, -1, np.int64)
        idx[rr, cc] = np.arange(rr.size)
        full = Column(world.bank.points(np.mod(lo_s, 360.0), la_s, world.seconds(t_row[rr])), la_s)
        la, lo, tt = lat[rr, cc], lon[rr, cc], t_row[rr]
        soz, _ = orbit.solar_angles(tt, la, lo)
        saz, _ = orbit.satellite_angles(la, lo)
        top = np.nanmax(np.where(np.isfinite(full.top), full.top, -np.inf), axis=1)
        d_s, d_e = parallax_offset_px(np.where(np.isfinite(top), top, np.nan), saz, la, lo, 1.0)   # degrees
        tl, tc = hsd.lonlat_to_line_col(lo + d_e, la - d_s)
        tr = np.clip(np.rint(np.nan_to_num(tl, nan=1.0)) - 1 - ra, 0, rb - ra - 1).astype(np.int64)
        tcc = np.clip(np.rint(np.nan_to_num(tc, nan=1.0)) - 1 - ca, 0, nw - 1).astype(np.int64)
        src = idx[tr, tcc]
        src = np.where(src >= 0, src, np.arange(rr.size))                       # parallax target off the disk
        col = full.take(np.arange(rr.size), cloud_idx=src)
        noise = np.random.default_rng([cfg.seed, int(world.seconds(np.array([slot]))[0]), 2, ra]).standard_normal(
            (len(BAND_VARS), rr.size))
        bands = forward(col, soz, noise)
        img = np.full((len(BAND_VARS), rb - ra, nw), np.nan, np.float32)
        img[:, rr, cc] = bands
        for b in range(len(BAND_VARS)):
            img[b] = img[b] * np.float32(gain[b]) if b < 6 else img[b] + np.float32(ir_bias[b - 6])
            img[b] = blur(img[b], FOOTPRINT_SIGMA_PX["vis" if b < 4 else "ir"])    # as footprint_sigma_px
        for i in range(b0, b1):
            cs = np.flatnonzero(need[i])
            if cs.size:
                r = r_org + i
                out[r] = (c_org + cs, img[:, r - ra, c_org + cs - ca])
    return out


_FILL_STREAMS: dict = {}


def _fill_stream(res: str) -> bytes:
    """bz2 stream of a whole segment of error counts at resolution `res` (compressed once per process)."""
    if res not in _FILL_STREAMS:
        n = hsd.RESOLUTIONS[res][0]
        _FILL_STREAMS[res] = bz2.compress(np.full((n // hsd.N_SEGMENTS, n), hsd.ERROR_COUNT, "<u2").tobytes(), 9)
    return _FILL_STREAMS[res]


def write_slot(world: World, slot: np.datetime64, root: str, pixels: np.ndarray, errors: tuple,
               platform: str) -> list[str]:
    """Write the 160 segment files of one slot; pixels: [k, 2] 0-based 2 km (row, col) to render (the
    corridor). Returns the paths written."""
    cfg = world.cfg
    need, origin = corridor(pixels, int(cfg.track_corridor))
    rendered = render(world, slot, need, origin, errors)
    sl = slot.astype("datetime64[s]").astype(dt.datetime)
    sub = os.path.join(root, "ahi_hsd", f"{sl:%Y%m}", f"{sl:%d}", f"{sl:%H%M}")
    os.makedirs(sub, exist_ok=True)
    rng = np.random.default_rng([cfg.seed, int(world.seconds(np.array([slot]))[0]), 3])
    segs = sorted({r // SEG_LINES for r in rendered})
    err_px = {}      # segment -> (band, rows, cols) of its error pixels (2 km indices)
    for s in segs:
        rows = [r for r in rendered if r // SEG_LINES == s]
        pick = rng.choice(len(rows), size=min(ERROR_PIXELS_PER_SEGMENT, len(rows)), replace=False)
        er = np.array([rows[k] for k in pick])
        ec = np.array([rng.choice(rendered[r][0]) for r in er])
        err_px[s] = (int(rng.integers(1, 17)), er, ec)
    end = sl + dt.timedelta(minutes=10)
    paths = []
    writer = _Writer()           # bz2 on all cores, a few segments in flight
    try:
        for band in range(1, 17):
            res = hsd.BAND_RES[band]
            f = hsd.FACTOR[res]
            n = hsd.RESOLUTIONS[res][0]
            nl = n // hsd.N_SEGMENTS
            cal = hsd.calibration(band)
            for seg in range(1, hsd.N_SEGMENTS + 1):
                first = (seg - 1) * nl + 1
                l9 = [first + k * nl // 4 for k in range(4)] + [first + nl - 1]
                l9_2km = [(ln - 1) // f + 1 for ln in l9]
                times = [sl + dt.timedelta(seconds=float(x)) for x in line_seconds(np.array(l9_2km, np.float64))]
                start = sl + dt.timedelta(seconds=float(line_seconds(np.array([1.0]))[0]))
                path = os.path.join(sub, hsd.hsd_filename(platform, sl, band, seg))
                s = seg - 1
                if s not in segs:
                    header = hsd.header_bytes(platform, sl, band, seg, list(zip(l9, times)), [], start, end,
                                              end + dt.timedelta(minutes=2), cal)
                    writer.submit(path, header, None, _fill_stream(res))
                    paths.append(path)
                    continue
                counts = np.full((nl, n), hsd.ERROR_COUNT, np.uint16)
                for r, (cs, vals) in rendered.items():
                    if r // SEG_LINES != s:
                        continue
                    v = vals[band - 1]
                    c = hsd.to_counts(band, v, cal)
                    c = np.where(np.isfinite(v), c, hsd.OUTSIDE_COUNT).astype(np.uint16)
                    lr = (r - s * SEG_LINES) * f
                    for dy in range(f):
                        for dx in range(f):
                            counts[lr + dy, cs * f + dx] = c
                errors_b10 = []
                eb, er, ec = err_px[s]
                if eb == band:
                    lines = (er - s * SEG_LINES) * f
                    counts[lines, ec * f] = hsd.ERROR_COUNT
                    ln, k = np.unique(first + lines, return_counts=True)
                    errors_b10 = list(zip(ln.tolist(), k.tolist()))
                header = hsd.header_bytes(platform, sl, band, seg, list(zip(l9, times)), errors_b10, start,
                                          end, end + dt.timedelta(minutes=2), cal)
                writer.submit(path, header, counts)
                paths.append(path)
    finally:
        writer.close()
    return paths


class _Writer:
    """hsd.write_segment on a thread pool (bz2 releases the GIL), at most one segment per core waiting, so
    the counts of a whole slot (GBs) are never held at once. close() waits and raises the first error."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.n = fields.THREADS or len(os.sched_getaffinity(0))
        self.ex = ThreadPoolExecutor(self.n)
        self.pending = []

    def submit(self, path, header, counts, fill_stream=None):
        while len(self.pending) >= 2 * self.n:
            self.pending.pop(0).result()
        self.pending.append(self.ex.submit(hsd.write_segment, path, header, counts, fill_stream))

    def close(self):
        try:
            for f in self.pending:
                f.result()
        finally:
            self.ex.shutdown(wait=True, cancel_futures=True)
