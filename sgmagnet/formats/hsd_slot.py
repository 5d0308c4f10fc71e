"""One Himawari Standard Data slot (the 160 segment files of a 10-min full disk) read through satpy's `ahi_hsd`.

satpy does the calibration (reflectance, brightness temperature), the masking of error / outside-scan
counts, and the area definition; this module decides what to read. A build needs a few 128-px windows of a
slot, so only the segments those windows cross are decompressed (each once, on worker threads, into a
temporary folder, where its header is checked: formats.hsd.check_header; `prefetch` starts the next slot's
while this one is computed) and handed to satpy's file handlers, which mask and calibrate the segment's counts
cut to the window (`_SatpyArrays`); off-disk pixels are masked with the area's longitudes/latitudes. Planning
(the grid, the line times) reads headers only: each file's first bz2 block. Bands at 0.5 km (B03) and 1 km
(B01, B02, B04) are aggregated to the 2 km grid of B05-B16 by block means (4 x 4 and 2 x 2 pixels; a 2 km
pixel with any sub-pixel missing is missing). Per-line observation times come from header block 9; solar and satellite
zenith angles are computed with pyorbital (satpy's astronomy) at each pixel's line time.

A segment that is missing or unreadable (truncated bz2, a header whose lengths disagree with the file,
zero calibration, a name its header contradicts) leaves its pixels missing for that band and is listed in
`skipped`; everything else reads.
"""
from __future__ import annotations

import atexit
import glob
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict

import numpy as np
import xarray as xr

from ..grid import BAND_VARS
from . import FormatError
from . import hsd

os.environ.setdefault("SATPY_DOWNLOAD_AUX", "False")     # never reach the network for auxiliary data
N2 = hsd.RESOLUTIONS["20"][0]
SEG2 = N2 // hsd.N_SEGMENTS
# what a process decompressed: the benchmark shows that a build decodes a few segments, not whole slots
STATS = {"segments_decompressed": 0, "bytes_decompressed": 0}
_STATS_LOCK = threading.Lock()
CACHE_MARGIN = 128        # pixels kept around a window read without a margin (patches up to 256 px)
DASK_CHUNK = "4MiB"       # satpy's chunks (B03: 1100 x 1100 pixels): a 128 px window computes a few of them


def copy_folder() -> str | None:
    """Where the decompressed copies of segment files go: $SGMAGNET_HSD_TMP, else the system's temporary folder
    (None). A setting that is not a writable folder is a ValueError naming it (build and predict check it
    before they start)."""
    d = os.environ.get("SGMAGNET_HSD_TMP") or None
    if d is not None and not (os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK)):
        raise ValueError(f"SGMAGNET_HSD_TMP={d!r} is not a writable directory (decompressed HSD segments go there)")
    return d


def slot_id(path) -> str:
    """The id of the slot a segment file belongs to: <folder>/HS_Hpp_YYYYMMDD_hhmm."""
    n = hsd.parse_name(path)
    return os.path.join(os.path.dirname(os.path.abspath(str(path))), n.slot)


def is_slot_id(path) -> bool:
    b = os.path.basename(str(path))
    return len(b) == 20 and b.startswith("HS_H0") and b[6] == "_" and b[15] == "_"


def slot_files(sid: str) -> list[str]:
    return sorted(glob.glob(glob.escape(sid) + "_B[0-9][0-9]_FLDK_R[0-9][0-9]_S[0-9][0-9][0-9][0-9].DAT*"))


class NativeGrid:
    """AHI's 2 km full-disk grid (5500 x 5500): satpy's area definition, and the nearest pixel of a point by
    the area's inverse projection (pyresample)."""

    def __init__(self, area):
        self.area = area
        self.shape = (int(area.height), int(area.width))

    def key(self):
        return ("hsd", self.area.crs.to_string(), tuple(round(v, 3) for v in self.area.area_extent), *self.shape)

    def nearest(self, lat, lon):
        lat = np.asarray(lat, np.float64)
        lon = np.asarray(lon, np.float64)
        ok = np.isfinite(lat) & np.isfinite(lon)
        cols, rows = self.area.get_array_indices_from_lonlat(np.where(ok, lon, 0.0), np.where(ok, lat, 0.0))
        mask = np.ma.getmaskarray(rows) | np.ma.getmaskarray(cols) | ~ok
        i = np.where(mask, -1, np.ma.filled(rows, -1)).astype(np.int64)
        j = np.where(mask, -1, np.ma.filled(cols, -1)).astype(np.int64)
        return i, j, ~mask


class HsdSlot:
    """The files of one slot. `skipped`: [(file, reason)] of segments that are missing or could not be read."""

    def __init__(self, sid: str, files: list[str] | None = None, keep_files: bool = False):
        self.sid = sid
        self.files: dict[int, dict[int, str]] = {}
        names = []
        for f in files if files is not None else slot_files(sid):
            n = hsd.parse_name(f)
            names.append(n)
            self.files.setdefault(n.band, {})[n.segment] = f
        if not names:
            raise FormatError(sid, "no HSD segment file of this slot")
        self.platform, self.timeline = names[0].platform, names[0].timeline
        self.skipped: list[tuple[str, str]] = []
        self._bad: set[str] = set()
        self._headers: dict[str, hsd.SegmentHeader] = {}
        self._local: dict[str, tuple] = {}   # path -> (local copy, the region it holds: None = whole file)
        self._tmp = None
        self._lock = threading.Lock()         # _load runs on the prefetch threads
        self._pending: dict = {}              # path -> (Future of _load, its cover), while it runs in the background
        self._grid = None
        self._sat = None                      # the satellite's position (satpy's orbital_parameters)
        self._cache = None
        self.keep_files = keep_files          # False: drop the decompressed copies once a region is computed
        self.cache_margin = CACHE_MARGIN

    # -------------------------------------------------------------------- files
    def missing_bands(self) -> list[int]:
        return [b for b in range(1, 17) if b not in self.files]

    def _open(self, path: str, cover: tuple | None = None) -> str | None:
        """Decompressed, checked local copy of a segment file, or None (recorded in `skipped`); waits for it
        when a background decompression (`prefetch`) has it in hand. cover: the 2 km region (r0, r1, c0, c1)
        the caller reads; the copy holds at least those pixels (None: the whole file)."""
        with self._lock:
            if path in self._local and _covers(self._local[path][1], cover):
                return self._local[path][0]
            if path in self._bad:
                return None
            job = self._pending.get(path)
        if job is not None:
            local = job[0].result()
            if local is None or _covers(job[1], cover):      # (None: unreadable, recorded in `skipped`)
                return local
        return self._load(path, cover)          # (over a copy of a smaller region: decompressed again)

    def _load(self, path: str, cover: tuple | None = None) -> str | None:
        """Decompress and check a segment file, and write the local copy satpy reads: the header and, with a
        `cover`, only the pixels of that region (the rest of the file is a hole, never read: read_window cuts
        every band to the region it was decompressed for, and a read beyond it decompresses again)."""
        try:
            data = hsd.read_segment_bytes(path)
            with _STATS_LOCK:                   # _load runs on several threads (prefetch)
                STATS["segments_decompressed"] += 1
                STATS["bytes_decompressed"] += len(data)
            name = hsd.parse_name(path)
            header = hsd.check_header(path, data, name)
        except FormatError as e:
            with self._lock:
                self._skip(e.path, e.problem)
            return None
        if not name.compressed:
            local, cover = path, None
        else:
            with self._lock:
                if self._tmp is None:
                    self._tmp = tempfile.mkdtemp(prefix="sgmagnet-hsd-", dir=copy_folder())
                    # removed when released or closed, when the slot is garbage, and at exit, whichever is first
                    self._rm = weakref.finalize(self, shutil.rmtree, self._tmp, True)
                local = os.path.join(self._tmp, os.path.basename(path)[:-4])
            _write_copy(local, data, header, name, cover)
        with self._lock:
            self._headers[path] = header
            self._local[path] = (local, cover)
        return local

    def prefetch(self, paths: list[str], cover: tuple | None = None) -> list:
        """Start decompressing and checking segment files in the background, on all cores (bz2 releases the
        GIL): the collocation asks for the next slot's window while it computes this one. cover: as `_open`'s.
        [futures]."""
        cover = self._cover(cover)
        futs = []
        with self._lock:
            for p in paths:
                if p in self._bad or (p in self._local and _covers(self._local[p][1], cover)):
                    continue
                if p not in self._pending:     # (one job per file: _open redoes a copy too small for it)
                    self._pending[p] = (_executor().submit(self._load, p, cover), cover)
                futs.append(self._pending[p][0])
        return futs

    def prefetch_window(self, rows: slice, cols: slice, margin: int | None = None):
        """`prefetch` the segment files that `read_window(rows, cols, margin=margin)` will read."""
        region = self._window(rows, cols, margin)[1]
        if region is not None:
            self.prefetch(self._region_files(*region[:2]), region)

    def _prefetch(self, paths: list[str], cover: tuple | None = None):
        for f in self.prefetch(paths, cover):
            f.result()

    def _cover(self, region: tuple | None) -> tuple | None:
        """What a copy decompressed for `region` holds: the region, or the whole file (None) for a slot that
        keeps its files for many windows (prediction's)."""
        return None if self.keep_files else region

    def _segment(self, band: int, seg: int, cover: tuple | None = None) -> str | None:
        f = self.files.get(band, {}).get(seg)
        if f is None:
            name = hsd.hsd_filename(self.platform, self.timeline, band, seg)
            self._skip(os.path.join(os.path.dirname(self.sid), name), "missing segment")
            return None
        return self._open(f, self._cover(cover))

    def _head(self, band: int, seg: int) -> hsd.SegmentHeader | None:
        """The checked header of a segment file (decompressing only its first bz2 block, unless the whole file
        is already in hand), or None (recorded in `skipped`). The file's length is checked when it is read."""
        f = self.files.get(band, {}).get(seg)
        if f is None:
            self._segment(band, seg)               # records the missing segment
            return None
        with self._lock:
            if f in self._headers or f in self._bad:
                return self._headers.get(f)
        try:
            h = hsd.check_header(f, hsd.read_segment_head(f), hsd.parse_name(f), whole=False)
        except FormatError as e:
            with self._lock:
                self._skip(e.path, e.problem)
            return None
        with self._lock:
            return self._headers.setdefault(f, h)

    def _release(self):
        """Drop the decompressed copies (headers and the computed region stay), once the background
        decompressions of this slot have finished (or been cancelled before they started)."""
        with self._lock:
            pending, self._pending = [f for f, _ in self._pending.values()], {}
        for f in pending:
            if not f.cancel():
                f.exception()       # waits; a job's error (disk full, ...) was raised to the read that needed it
        with self._lock:
            if self._tmp:
                self._rm()
                self._tmp = None
            self._local.clear()

    def close(self):
        self._release()
        self._cache = None

    # --------------------------------------------------------------------- grid
    def grid(self) -> NativeGrid:
        """The 2 km full-disk area. satpy's, built once per process for each platform, projection block (header
        block 3) and segment from the first 2 km segment whose header reads (satpy pads the others): slots of
        one satellite share it, and a slot that finds it built reads one header for it, not a whole file."""
        if self._grid is None:
            for band in (13, 14, 15, 16, 7, 8, 9, 10, 11, 12, 5, 6):
                for seg in sorted(self.files.get(band, {})):
                    h = self._head(band, seg)
                    if h is None:
                        continue
                    key = (self.platform, h.projection, band, seg)
                    if key not in _GRIDS:
                        local = self._segment(band, seg)
                        if local is None:
                            continue
                        scn = _scene([local])
                        name = f"B{band:02d}"
                        scn.load([name], pad_data=True)
                        _GRIDS[key] = NativeGrid(scn[name].attrs["area"])
                    self._grid = _GRIDS[key]
                    return self._grid
            raise FormatError(self.sid, "no readable 2 km segment (B05-B16) to take the grid from")
        return self._grid

    def line_times(self, rows: np.ndarray) -> np.ndarray:
        """datetime64[ns] observation time of 0-based 2 km rows (NaT where no segment's block 9 covers them):
        linear between block 9's entries of the segment holding the row (2 km bands first)."""
        rows = np.asarray(rows, np.int64)
        out = np.full(rows.shape, np.datetime64("NaT"), "datetime64[ns]")
        for s in np.unique(rows // SEG2):
            sel = rows // SEG2 == s
            for band in (13, 14, 15, 16, 7, 8, 9, 10, 11, 12, 5, 6, 1, 2, 4, 3):
                h = self._head(band, int(s) + 1)
                if h is None or h.line_numbers.size == 0:
                    continue
                x = (h.line_numbers - 1) / hsd.FACTOR[hsd.BAND_RES[band]]   # 0-based 2 km row (fractional finer)
                y = h.line_times.astype(np.int64).astype(np.float64)
                out[sel] = np.interp(rows[sel], x, y).astype(np.int64).astype("datetime64[ns]")
                break
        return out

    # ------------------------------------------------------------------- window
    def read_window(self, rows: slice, cols: slice, angles: bool = True, margin: int | None = None) -> xr.Dataset:
        """The 16 bands on 2 km rows x cols of the full disk (the P-Tree reader's layout: albedo_XX as a
        fraction, tbb_XX in K, SOZ, SAZ, obs_time, valid; latitude/longitude as 2-D coordinates). The solar
        and satellite zenith angles are computed for the window asked for, and only with `angles`.

        The region computed last (the window plus `margin` pixels around it, default `cache_margin`) is kept:
        the collocation reads a track's bounding box first, with half the patch side as margin, and the
        patches along the track are cut from it. A margin that crosses into another segment costs that
        segment's 16 files, so it is no larger than the patches need."""
        (r0, r1, c0, c1), region = self._window(rows, cols, margin)
        if region is not None:
            self._cache = self._compute(*region)
            if not self.keep_files:   # the region is in memory: the decompressed files go until a window leaves it
                self._release()
        c = self._cache
        y0, x0 = r0 - c.attrs["row0"], c0 - c.attrs["col0"]
        out = c.isel(y=slice(y0, y0 + r1 - r0), x=slice(x0, x0 + c1 - c0)).copy()
        out.attrs.update(row0=r0, col0=c0)
        if angles:      # from the float64 longitudes/latitudes of the region (the coordinates are float32)
            lon, lat = (v[y0:y0 + r1 - r0, x0:x0 + c1 - c0] for v in self._lonlat)
            soz, saz = _angles(out.obs_time.values, lon, lat, self._sat)
            out["SOZ"] = (("y", "x"), soz.astype(np.float32))
            out["SAZ"] = (("y", "x"), saz.astype(np.float32))
        return out

    def _window(self, rows: slice, cols: slice, margin: int | None):
        """(r0, r1, c0, c1) of the window, and the region to compute for it (the window and `margin` pixels
        around it, default `cache_margin`), or None where the region computed last holds the window."""
        grid = self.grid()
        r0, r1, _ = rows.indices(grid.shape[0])
        c0, c1, _ = cols.indices(grid.shape[1])
        c = self._cache
        if c is not None and _covers((c.attrs["row0"], c.attrs["row0"] + c.sizes["y"],
                                      c.attrs["col0"], c.attrs["col0"] + c.sizes["x"]), (r0, r1, c0, c1)):
            return (r0, r1, c0, c1), None
        m = self.cache_margin if margin is None else margin
        return (r0, r1, c0, c1), (max(0, r0 - m), min(grid.shape[0], r1 + m),
                                  max(0, c0 - m), min(grid.shape[1], c1 + m))

    def _region_files(self, r0: int, r1: int) -> list[str]:
        """The segment files holding 2 km rows r0:r1, all bands."""
        return [self.files[b][s] for b in self.files for s in _segments(r0, r1) if s in self.files[b]]

    def _compute(self, r0: int, r1: int, c0: int, c1: int) -> xr.Dataset:
        grid = self.grid()
        region = (r0, r1, c0, c1)
        self._prefetch(self._region_files(r0, r1), region)
        local = {b: [(s, p) for s, p in ((s, self._segment(b, s, region)) for s in _segments(r0, r1)) if p]
                 for b in range(1, 17)}
        shape = (r1 - r0, c1 - c0)
        out = {var: np.full(shape, np.nan, np.float32) for var in BAND_VARS}
        pieces = self._window_pieces(local, r0, r1, c0, c1)
        if pieces:
            import dask

            values = dask.compute(*[x for _, _, x in pieces])
            for (b, y, _), a in zip(pieces, values):
                f = hsd.FACTOR[hsd.BAND_RES[b]]
                a = np.asarray(a, np.float32)
                if f > 1:     # block means to the 2 km grid (a pixel with any sub-pixel missing is missing)
                    a = a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3))
                out[BAND_VARS[b - 1]][y:y + a.shape[0]] = a / 100.0 if b <= 6 else a
        lon, lat = grid.area[r0:r1, c0:c1].get_lonlats()
        lon = np.where(np.isfinite(lon) & (np.abs(lon) <= 360), lon, np.nan)
        lat = np.where(np.isfinite(lat) & (np.abs(lat) <= 90), lat, np.nan)
        self._lonlat = (lon, lat)
        t_row = self.line_times(np.arange(r0, r1))
        t = np.broadcast_to(t_row[:, None], shape)
        on = np.isfinite(lat)
        valid = on & ~np.isnat(t) & np.all(np.isfinite(np.stack([out[v] for v in BAND_VARS])), axis=0)
        dims = ("y", "x")
        data = {k: (dims, np.where(on, v, np.nan).astype(np.float32)) for k, v in out.items()}
        data.update(obs_time=(dims, np.where(on, t, np.datetime64("NaT"))), valid=(dims, valid))
        return xr.Dataset(data, coords={"latitude": (dims, lat.astype(np.float32)),
                                        "longitude": (dims, lon.astype(np.float32))},
                          attrs={"file": os.path.basename(self.sid), "satellite": self.platform,
                                 "timeline": str(self.timeline), "row0": r0, "col0": c0, "has_pixel_time": 1,
                                 "grid": "hsd-2km"})

    def _window_pieces(self, local: dict, r0: int, r1: int, c0: int, c1: int) -> list:
        """[(band, first 2 km row in the window, calibrated array)] for each segment file the window crosses:
        satpy's ahi_hsd file handler per segment (its calibration and masking of error and outside-scan
        counts) on the segment's counts cut to the window (`_read_cut`). The handlers come without
        satpy's space mask (computed from the area for every chunk, 9x the window's cost) and without the
        Scene's padding of every band to the full disk (a dask graph over 5500-22000 rows per band): the
        window's off-disk pixels are masked from the same area's longitudes/latitudes in `_compute`."""
        paths = [p for ps in local.values() for _, p in ps]
        if not paths:
            return []
        import dask

        reader = _reader(paths)
        handlers = {os.path.abspath(fh.filename): fh for fhs in reader.file_handlers.values() for fh in fhs}
        pieces, sat = [], {}
        with dask.config.set({"array.chunk-size": DASK_CHUNK}):       # small chunks: a window reads little
            for b, segs in local.items():
                f = hsd.FACTOR[hsd.BAND_RES[b]]
                nl = SEG2 * f                          # a segment's lines at this band's resolution
                for s, p in segs:
                    fh = handlers.get(os.path.abspath(p))
                    if fh is None:                     # satpy did not take the file (name pattern): no pixels
                        self._skip(p, "satpy's ahi_hsd reader does not recognise the file name")
                        continue
                    ya, yb = max(r0 * f, (s - 1) * nl), min(r1 * f, s * nl)
                    if ya < yb:
                        x, attrs = _read_cut(fh, reader, b, slice(ya - (s - 1) * nl, yb - (s - 1) * nl),
                                             slice(c0 * f, c1 * f))
                        pieces.append((b, (ya - r0 * f) // f, x))
                        sat.setdefault(b, attrs["orbital_parameters"])
        # the satellite's position for the zenith angles: a 2 km band's, as satpy reads it from the header
        self._sat = next((sat[b] for b in (13, 14, 15, 16, 7, 8, 9, 10, 11, 12, 5, 6, 1, 2, 4, 3) if b in sat),
                         self._sat)
        return pieces

    def _skip(self, path: str, problem: str):
        if path not in self._bad:
            self._bad.add(path)
            self.skipped.append((path, problem + " (its pixels get no sample)"))


def _segments(r0: int, r1: int) -> range:
    """The (1-based) segment numbers holding 2 km rows r0:r1."""
    return range(r0 // SEG2 + 1, (r1 - 1) // SEG2 + 2)


def _covers(have: tuple | None, want: tuple | None) -> bool:
    """Does region `have` (r0, r1, c0, c1; None: the whole file) hold region `want`?"""
    return have is None or (want is not None and have[0] <= want[0] and want[1] <= have[1]
                            and have[2] <= want[2] and want[3] <= have[3])


def _write_copy(local: str, data: bytes, header: hsd.SegmentHeader, name: hsd.HsdName, cover: tuple | None):
    """The decompressed segment as the file satpy opens: all of it, or (cover = 2 km rows r0:r1, columns c0:c1)
    its header and those pixels in a sparse file of the full length (a track's window is a few hundred of
    5500 columns: the rest is never written)."""
    if cover is None:
        with open(local, "wb") as f:
            f.write(data)
        return
    f = hsd.FACTOR[hsd.BAND_RES[header.band]]
    hdr = len(data) - header.nlines * header.ncols * 2
    first = (name.segment - 1) * header.nlines               # the segment's first line at this resolution
    ya, yb = max(cover[0] * f - first, 0), min(cover[1] * f - first, header.nlines)
    with open(local, "wb") as out:
        out.write(memoryview(data)[:hdr])
        out.truncate(len(data))
    if ya < yb:
        src = np.frombuffer(data, "<u2", header.nlines * header.ncols, hdr).reshape(header.nlines, header.ncols)
        dst = np.memmap(local, "<u2", "r+", hdr, (header.nlines, header.ncols))
        dst[ya:yb, cover[2] * f:cover[3] * f] = src[ya:yb, cover[2] * f:cover[3] * f]
        del dst


class _MemmapView:
    """A segment's counts on disk, as dask reads them chunk by chunk (satpy's lazy path). satpy's ahi_hsd reader
    hands dask a numpy memmap of the whole segment, and dask.array.from_array (since 2024.12, dask#11524)
    copies any array that has a .copy() before chunking it: every load read and copied whole segments (B03:
    97 MB each) although a build computes a few windows. This view has no .copy(), so dask slices it lazily;
    its token names the file region, so dask does not hash (or pickle) the data."""

    def __init__(self, m: np.memmap):
        self._m = m
        self.shape, self.dtype, self.ndim = m.shape, m.dtype, m.ndim

    def __getitem__(self, idx):
        return np.asarray(self._m[idx])

    def __dask_tokenize__(self):
        return ("hsd-segment", str(self._m.filename), int(self._m.offset), self.shape, str(self.dtype))


_CUT = threading.local()      # .cut: the (rows, cols) of a segment that this thread's satpy read is cut to


class _SatpyArrays:
    """What satpy's ahi_hsd module calls `da`: dask.array, with two changes.

    - from_array takes memmaps as `_MemmapView`s (no copy of the segment).
    - Inside `_cut_to(rows, cols)` (this thread only), from_array cuts the segment's counts to that window and
      the array functions are numpy's: satpy's own masking and calibration (the element-wise operations dask
      would run chunk by chunk) run on the window at once, without a dask graph over the whole segment. A
      build reads ~40 windows per slot, and the graphs (about 16 operations per band, optimised and run in
      4 MiB chunks) cost more than the arithmetic."""

    def __getattr__(self, name):
        if getattr(_CUT, "cut", None) is not None:
            return getattr(np, name)
        import dask.array

        return getattr(dask.array, name)

    @staticmethod
    def from_array(x, *args, **kw):
        cut = getattr(_CUT, "cut", None)
        if cut is not None and isinstance(x, np.memmap):
            return np.array(x[cut])
        import dask.array

        return dask.array.from_array(_MemmapView(x) if isinstance(x, np.memmap) else x, *args, **kw)


class _cut_to:
    def __init__(self, rows: slice, cols: slice):
        self.cut = (rows, cols)

    def __enter__(self):
        _CUT.cut = self.cut

    def __exit__(self, *exc):
        _CUT.cut = None


def _satpy_reads_lazily():
    """Point satpy's ahi_hsd module at `_SatpyArrays` (once; a no-op if the module changes how it imports dask)."""
    from satpy.readers import ahi_hsd

    if getattr(ahi_hsd, "da", None) is not None and not isinstance(ahi_hsd.da, _SatpyArrays):
        ahi_hsd.da = _SatpyArrays()


def _read_cut(fh, reader, band: int, rows: slice, cols: slice):
    """Band `band` of segment file handler `fh`, calibrated by satpy, on rows x cols of the segment, and its
    attributes: numpy, computed inside `_cut_to`; where satpy's module did not take that path (another
    satpy's internals), the lazy dask array sliced to the window."""
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    try:
        with _cut_to(rows, cols):
            x = fh.get_dataset(*_dataset(reader, band))
        if isinstance(x.data, np.ndarray) and x.shape == shape:
            return x.data, x.attrs
    except (AttributeError, TypeError, ValueError):
        pass
    x = fh.get_dataset(*_dataset(reader, band))
    return x.data[rows, cols], x.attrs


_DATASETS: dict = {}
_GRIDS: dict = {}
_EXECUTOR = None


def _executor():
    """The threads that decompress segment files, one per core, shared by the slots of a process (a forked
    child starts its own)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(len(os.sched_getaffinity(0)), thread_name_prefix="hsd-bz2")
    return _EXECUTOR


def _forget_executor():
    global _EXECUTOR
    _EXECUTOR = None


os.register_at_fork(after_in_child=_forget_executor)


def _reader(files: list[str]):
    """satpy's ahi_hsd reader over `files` (their file handlers read headers only), without the space mask."""
    import warnings

    from satpy.readers.core.loading import load_readers

    _satpy_reads_lazily()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_readers(filenames=list(files), reader="ahi_hsd", reader_kwargs={"mask_space": False})["ahi_hsd"]


def _dataset(reader, band: int):
    """satpy's (DataID, dataset info) of a band in the calibration a Scene loads by default: reflectance for
    B01-B06, brightness temperature for B07-B16."""
    if band not in _DATASETS:
        cal = "reflectance" if band <= 6 else "brightness_temperature"
        key = reader.get_dataset_key(f"B{band:02d}", calibration=cal)
        _DATASETS[band] = (key, reader.all_ids[key])
    return _DATASETS[band]


def _scene(files: list[str]):
    import warnings

    from satpy import Scene

    _satpy_reads_lazily()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Scene(filenames=list(files), reader="ahi_hsd")


def _angles(t, lon, lat, sat: dict | None):
    """Solar and satellite zenith angles (degrees) with pyorbital, NaN off the disk (and everywhere when no
    segment of the window could be read: `sat` None)."""
    from pyorbital.astronomy import sun_zenith_angle
    from pyorbital.orbital import get_observer_look

    on = np.isfinite(lat) & ~np.isnat(t)
    soz = np.full(lat.shape, np.nan)
    saz = np.full(lat.shape, np.nan)
    if on.any() and sat is not None:
        tt, lo, la = t[on], lon[on], lat[on]
        soz[on] = sun_zenith_angle(tt, lo, la)
        _, elev = get_observer_look(np.full(tt.shape, sat["satellite_actual_longitude"]),
                                    np.full(tt.shape, sat["satellite_actual_latitude"]),
                                    np.full(tt.shape, sat["satellite_actual_altitude"] / 1000.0),
                                    tt, lo, la, np.zeros(tt.shape))
        saz[on] = 90.0 - elev
    return soz, saz


# ------------------------------------------------------------------ slots kept open while a build reads them
_OPEN: OrderedDict = OrderedDict()
KEEP_OPEN = 4          # slots a granule reads (about 3); each keeps its last region in memory


def open_slot(sid: str) -> HsdSlot:
    """The slot `sid`, kept open (headers, the last region read) for the next few reads."""
    if sid in _OPEN:
        _OPEN.move_to_end(sid)
        return _OPEN[sid]
    s = HsdSlot(sid)
    _OPEN[sid] = s
    while len(_OPEN) > KEEP_OPEN:
        _OPEN.popitem(last=False)[1].close()
    return s


def set_aside(sid: str):
    """Make an open slot the first to close when a slot is opened beyond KEEP_OPEN."""
    if sid in _OPEN:
        _OPEN.move_to_end(sid, last=False)


def close_all():
    while _OPEN:
        _OPEN.popitem()[1].close()


atexit.register(close_all)


def skipped(sid: str) -> list[tuple[str, str]]:
    """What an open slot could not read so far ([] for a slot that is not open)."""
    s = _OPEN.get(sid)
    return list(s.skipped) if s is not None else []
