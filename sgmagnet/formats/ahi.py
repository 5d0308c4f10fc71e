"""Himawari-8/9 AHI L1 gridded NetCDF from JAXA P-Tree (FORMATS.md §1): reader and writer.

The reader never assumes the grid: nlon/nlat come from the file name and are checked against the
`latitude`/`longitude` coordinate variables; packing (scale_factor/add_offset), `_FillValue` or
`missing_value` and `valid_min`/`valid_max`/`valid_range` are applied from each variable's own
attributes; off-disk pixels are masked with SAZ (not finite or >= 89 deg); per-pixel observation time is
date(timeline) + `Hour` hours, with a day added when that falls more than 1 h before the timeline.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ..grid import ANGLE_VARS, BAND_VARS
from . import FormatError, match_name, name_time

NAME_RE = re.compile(r"^NC_H(0[89])_(\d{8})_(\d{4})_([Rr])(\d{2})_FLDK\.(\d{5})_(\d{5})\.nc$")
SAZ_OFF_DISK_DEG = 89.0


@dataclass(frozen=True)
class AhiName:
    satellite: str           # "08" / "09"
    timeline: dt.datetime    # nominal slot start (UTC)
    nlon: int
    nlat: int


def parse_name(path) -> AhiName:
    m = match_name(path, NAME_RE, "a P-Tree AHI L1 name (NC_H08_YYYYMMDD_hhmm_R21_FLDK.xxxxx_yyyyy.nc)")
    t = name_time(path, m.group(2) + m.group(3), "%Y%m%d%H%M")
    return AhiName(m.group(1), t, int(m.group(6)), int(m.group(7)))


def ahi_filename(timeline: dt.datetime, nlon: int, nlat: int, satellite: str = "08") -> str:
    return f"NC_H{satellite}_{timeline:%Y%m%d_%H%M}_R21_FLDK.{nlon:05d}_{nlat:05d}.nc"


# ------------------------------------------------------------------------------------------ packing
# name: (scale_factor, add_offset, valid_min, valid_max, units, long_name)
DEFAULT_PACKING = {}
for _b in range(1, 7):
    DEFAULT_PACKING[f"albedo_{_b:02d}"] = (1e-4, 0.0, 0, 15000, "1",
                                           f"albedo(reflectance*cos(SOZ) of band{_b:02d})")
for _b in range(7, 17):
    DEFAULT_PACKING[f"tbb_{_b:02d}"] = (0.01, 273.15, -12000, 12000, "K", f"Brightness temperature of band{_b:02d}")
for _n in ANGLE_VARS:
    DEFAULT_PACKING[_n] = (0.01, 0.0, -18000, 18000, "degree", _n)
DEFAULT_PACKING["Hour"] = (1e-3, 0.0, 0, 24000, "hour", "observation hours (UT)")
FILL_INT16 = -32768


def write_ahi(path, latitude: np.ndarray, longitude: np.ndarray, fields: dict, timeline: dt.datetime,
              packing: dict | None = None, end_time: dt.datetime | None = None, attrs: dict | None = None) -> None:
    """Write a P-Tree-structured NetCDF4 file.

    fields: variable name -> 2-D physical array [nlat, nlon] (NaN = missing). packing: per-variable
    overrides {"name": {"scale_factor", "add_offset", "fill_value", "fill_attr" ("_FillValue" or
    "missing_value"), "valid_min", "valid_max", "dtype"}} so tests can use other packings than ours.
    attrs: extra global attributes (the synthetic archive's `track_corridor_px`).
    Written to `<path>.part` and renamed, so a killed writer never leaves a half file under the real name.
    """
    from netCDF4 import Dataset

    packing = packing or {}
    nlat, nlon = len(latitude), len(longitude)
    tmp = f"{path}.part"
    ds = Dataset(tmp, "w", format="NETCDF4")
    try:
        ds.createDimension("latitude", nlat)
        ds.createDimension("longitude", nlon)
        ds.createDimension("time", 1)
        lat = ds.createVariable("latitude", "f4", ("latitude",))
        lat[:] = latitude
        lat.units = "degrees_north"
        lat.long_name = "latitude"
        lon = ds.createVariable("longitude", "f4", ("longitude",))
        lon[:] = longitude
        lon.units = "degrees_east"
        lon.long_name = "longitude"
        epoch = dt.datetime(1970, 1, 1)
        for name, t in (("start_time", timeline), ("end_time", end_time or timeline + dt.timedelta(minutes=10))):
            v = ds.createVariable(name, "f8", ("time",))
            v.units = "seconds since 1970-01-01 00:00:00"
            v.long_name = f"observation {name.split('_')[0]} time"
            v[:] = [(t - epoch).total_seconds()]
        g = ds.createDimension("geometry", 6)
        gp = ds.createVariable("geometry_parameters", "f8", ("geometry",))
        gp.long_name = "sub_lon,SSPlon,SSPlat,req,rpol,Rs"
        gp[:] = [140.7, np.deg2rad(140.7), 0.0, 6378.137, 6356.7523, 42164.0]
        del g
        for k, v in (attrs or {}).items():
            ds.setncattr(k, v)
        for name, values in fields.items():
            sf, ao, vmin, vmax, units, long_name = DEFAULT_PACKING[name]
            o = packing.get(name, {})
            sf, ao = o.get("scale_factor", sf), o.get("add_offset", ao)
            vmin, vmax = o.get("valid_min", vmin), o.get("valid_max", vmax)
            dtype = np.dtype(o.get("dtype", np.int16))
            fill = o.get("fill_value", FILL_INT16)
            fill_attr = o.get("fill_attr", "_FillValue")
            kw = dict(zlib=True, complevel=1, shuffle=True,
                      chunksizes=(min(nlat, 600), min(nlon, 600)))
            if fill_attr == "_FillValue":
                kw["fill_value"] = dtype.type(fill)
            v = ds.createVariable(name, dtype, ("latitude", "longitude"), **kw)
            v.set_auto_maskandscale(False)
            if fill_attr == "missing_value":
                v.missing_value = dtype.type(fill)
            v.scale_factor = np.float32(sf)
            v.add_offset = np.float32(ao)
            v.valid_min = dtype.type(vmin)
            v.valid_max = dtype.type(vmax)
            v.units = units
            v.long_name = long_name
            if name.startswith("albedo"):
                v.correction_factor = np.float32(1.0)
                v.correction_offset = np.float32(0.0)
            phys = np.asarray(values, dtype=np.float64)
            raw = np.round((phys - ao) / sf)
            raw = np.where(np.isfinite(raw), np.clip(raw, vmin, vmax), fill)
            v[:] = raw.astype(dtype)
    finally:
        ds.close()
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ reader
def _attr(v, name, default=None):
    if name not in v.ncattrs():
        return default
    a = np.asarray(v.getncattr(name))
    return a.ravel()[0] if a.size else default


def decode(v, raw: np.ndarray) -> np.ndarray:
    """Raw packed values -> float32 physical values with NaN for fill/missing/out-of-range."""
    raw = np.asarray(raw)
    bad = np.zeros(raw.shape, bool)
    for fa in ("_FillValue", "missing_value"):
        f = _attr(v, fa)
        if f is not None:
            bad |= raw == f
    vr = np.asarray(v.getncattr("valid_range")).ravel() if "valid_range" in v.ncattrs() else None
    vmin = _attr(v, "valid_min", vr[0] if vr is not None and vr.size == 2 else None)
    vmax = _attr(v, "valid_max", vr[1] if vr is not None and vr.size == 2 else None)
    if vmin is not None:
        bad |= raw < vmin
    if vmax is not None:
        bad |= raw > vmax
    x = raw.astype(np.float64) * float(_attr(v, "scale_factor", 1.0)) + float(_attr(v, "add_offset", 0.0))
    if np.issubdtype(raw.dtype, np.floating):
        bad |= ~np.isfinite(raw)
    x[bad] = np.nan
    return x.astype(np.float32)


@dataclass
class AhiGrid:
    """Regular lat/lon grid read from a file's coordinate variables (never from constants)."""
    latitude: np.ndarray     # [nlat], descending in P-Tree files
    longitude: np.ndarray    # [nlon], ascending, may exceed 180
    lat0: float
    lon0: float
    dlat: float              # signed step (negative for descending latitude)
    dlon: float

    @property
    def shape(self):
        return (len(self.latitude), len(self.longitude))

    def key(self):
        return (round(self.lat0, 6), round(self.lon0, 6), round(self.dlat, 8), round(self.dlon, 8), *self.shape)

    def nearest(self, lat: np.ndarray, lon: np.ndarray):
        """Nearest pixel (row, col) and a validity mask. Exact half-way points go to the smaller index."""
        lat = np.asarray(lat, np.float64)
        lon = np.asarray(lon, np.float64)
        fi = (lat - self.lat0) / self.dlat
        dlon = np.mod(lon - self.lon0 + 0.5 * abs(self.dlon), 360.0) - 0.5 * abs(self.dlon)
        fj = dlon / self.dlon
        i = np.ceil(fi - 0.5).astype(np.int64)
        j = np.ceil(fj - 0.5).astype(np.int64)
        ok = np.isfinite(fi) & np.isfinite(fj) & (i >= 0) & (i < self.shape[0]) & (j >= 0) & (j < self.shape[1])
        return np.where(ok, i, -1), np.where(ok, j, -1), ok


def read_grid(path) -> AhiGrid:
    """Read and check the grid of a P-Tree file (name counts vs coordinate variables, regular spacing)."""
    from netCDF4 import Dataset

    name = parse_name(path)
    try:
        with Dataset(str(path)) as ds:
            for req in ("latitude", "longitude"):
                if req not in ds.variables:
                    raise FormatError(path, f"missing coordinate variable {req}")
            lat = np.asarray(ds["latitude"][:], np.float64)
            lon = np.asarray(ds["longitude"][:], np.float64)
    except FormatError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise FormatError(path, f"not a readable NetCDF4 file ({e})") from e
    if (lon.size, lat.size) != (name.nlon, name.nlat):
        raise FormatError(path, f"grid is {lon.size}x{lat.size} (lon x lat) but the name says "
                          f"{name.nlon}x{name.nlat}")
    if lat.size < 2 or lon.size < 2:
        raise FormatError(path, "grid has fewer than 2 rows or columns")
    # regular within 1 % of a step: float32 coordinates (P-Tree's) are rounded by up to 1.5e-5 deg near 200E,
    # 0.08 % of the 0.02 deg grid's step, so a tighter test refused real 0.02 deg files; a grid with a missing
    # column or another spacing is still refused
    dlat, dlon = np.diff(lat), np.diff(lon)
    slat, slon = float(np.median(dlat)), float(np.median(dlon))
    if not (np.allclose(dlat, slat, rtol=0, atol=0.01 * abs(slat)) and np.allclose(dlon, slon, rtol=0, atol=0.01 * abs(slon))):
        raise FormatError(path, "latitude/longitude are not a regular grid")
    # anchor on the first value, refined by a least-squares fit of all centres (float32 coordinates)
    k = np.arange(lat.size)
    slat, lat0 = np.polyfit(k, lat, 1)
    k = np.arange(lon.size)
    slon, lon0 = np.polyfit(k, lon, 1)
    return AhiGrid(lat, lon, float(lat0), float(lon0), float(slat), float(slon))


def read_ahi(path, rows: slice | None = None, cols: slice | None = None, bbox=None,
             variables=BAND_VARS + ANGLE_VARS + ("Hour",)) -> xr.Dataset:
    """Read a P-Tree AHI L1 file (or a window of it) into an xarray.Dataset.

    Window: `rows`/`cols` index slices, or `bbox=(lon0, lon1, lat0, lat1)` in degrees.
    Returns float32 variables (NaN = missing/off-disk) named as in the file, plus `obs_time`
    (datetime64[ns] per pixel) and `valid` (on-disk and all bands finite). Attributes carry the file
    name, satellite, timeline and the window's offset in the full grid (`row0`, `col0`), and
    `track_corridor_px` when the file has that attribute (a synthetic scene written only near the tracks).
    Raises FormatError naming the file and the problem.
    """
    from netCDF4 import Dataset

    path = str(path)
    name = parse_name(path)
    grid = read_grid(path)
    if bbox is not None:
        lo0, lo1, la0, la1 = bbox
        i0, j0, _ = grid.nearest(np.array([max(la0, la1)]), np.array([lo0]))
        i1, j1, _ = grid.nearest(np.array([min(la0, la1)]), np.array([lo1]))
        rr = sorted([int(i0[0]) if i0[0] >= 0 else 0, int(i1[0]) if i1[0] >= 0 else grid.shape[0] - 1])
        cc = sorted([int(j0[0]) if j0[0] >= 0 else 0, int(j1[0]) if j1[0] >= 0 else grid.shape[1] - 1])
        rows, cols = slice(rr[0], rr[1] + 1), slice(cc[0], cc[1] + 1)
    rows = rows or slice(0, grid.shape[0])
    cols = cols or slice(0, grid.shape[1])
    r0, r1, _ = rows.indices(grid.shape[0])
    c0, c1, _ = cols.indices(grid.shape[1])
    out = {}
    extra = {}
    try:
        with Dataset(path) as ds:
            ds.set_auto_maskandscale(False)
            if "track_corridor_px" in ds.ncattrs():    # synthetic archives written as track corridors
                raw = np.asarray(ds.getncattr("track_corridor_px")).ravel()
                if raw.size != 1 or raw.dtype.kind not in "iu" or raw[0] < 1:
                    raise FormatError(path, f"global attribute track_corridor_px is {raw.tolist()!r}, expected "
                                            "one positive whole number of pixels")
                extra["track_corridor_px"] = int(raw[0])
            for vname in variables:
                if vname not in ds.variables:
                    if vname == "Hour":
                        continue
                    raise FormatError(path, f"missing variable {vname}")
                v = ds[vname]
                if v.dimensions != ("latitude", "longitude"):
                    raise FormatError(path, f"{vname} has dims {v.dimensions}, expected (latitude, longitude)")
                out[vname] = decode(v, v[r0:r1, c0:c1])
    except FormatError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, IndexError) as e:
        raise FormatError(path, f"cannot read variables ({e})") from e
    shape = (r1 - r0, c1 - c0)
    if "SAZ" in out:
        on_disk = np.isfinite(out["SAZ"]) & (out["SAZ"] < SAZ_OFF_DISK_DEG)
    else:
        on_disk = np.ones(shape, bool)
    tl = np.datetime64(name.timeline, "ns")
    if "Hour" in out:
        day = np.datetime64(name.timeline.date(), "ns")
        hours = out.pop("Hour").astype(np.float64)
        t = day + np.round(np.nan_to_num(hours, nan=0.0) * 3600e9).astype("timedelta64[ns]")
        t = np.where(t < tl - np.timedelta64(1, "h"), t + np.timedelta64(1, "D"), t)
        obs_time = np.where(np.isfinite(hours), t, np.datetime64("NaT"))
        has_hour = True
    else:
        obs_time = np.full(shape, tl)
        has_hour = False
    for vname in list(out):
        out[vname] = np.where(on_disk, out[vname], np.nan).astype(np.float32)
    bands = [out[b] for b in BAND_VARS if b in out]
    valid = on_disk & ~np.isnat(obs_time)
    if bands:
        valid &= np.all(np.isfinite(np.stack(bands)), axis=0)
    dims = ("latitude", "longitude")
    data_vars = {k: (dims, v) for k, v in out.items()}
    data_vars["obs_time"] = (dims, obs_time)
    data_vars["valid"] = (dims, valid)
    return xr.Dataset(
        data_vars,
        coords={"latitude": grid.latitude[r0:r1], "longitude": grid.longitude[c0:c1]},
        attrs={"file": os.path.basename(path), "satellite": name.satellite, "timeline": str(name.timeline),
               "row0": r0, "col0": c0, "has_pixel_time": int(has_hour), **extra},
    )
