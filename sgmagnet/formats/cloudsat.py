"""CloudSat 2B-CLDCLASS-LIDAR (R04/R05) granules: reader (pyhdf) and HDF-EOS2 writer (FORMATS.md §3).

Reading decodes every field from the file's own attributes, wherever the producer put them:
HDF-EOS swath attributes (`<field>.factor/.offset/.missing/.missop/.valid_range`, stored as Vdata in the
"Swath Attributes" Vgroup), SDS attributes (`_FillValue`, `factor`, `offset`, ...), Vdata attributes.
DPC scaling is the inverse of CF: science = (file - offset) / factor.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass

import numpy as np
import xarray as xr

from . import FormatError, match_name, name_time

SWATH = "2B-CLDCLASS-LIDAR"
NAME_RE = re.compile(r"^(\d{13})_(\d{5})_CS_2B-CLDCLASS-LIDAR_GRANULE_(P\d*)_R(\d+)_E(\d+)(?:_F(\d+))?\.hdf$")

# name: (dtype, dims, fill, units, geolocation?)
LAYER_FIELDS = {
    "CloudLayerBase": (np.float32, "nray,ncloud", -99.0, "km"),
    "CloudLayerTop": (np.float32, "nray,ncloud", -99.0, "km"),
    "CloudFraction": (np.float32, "nray,ncloud", -99.0, "--"),
    "CloudPhase": (np.int8, "nray,ncloud", -9, "--"),
    "CloudPhaseConfidenceLevel": (np.int8, "nray,ncloud", -9, "--"),
    "CloudLayerType": (np.int8, "nray,ncloud", -9, "--"),
    "CloudTypeQuality": (np.float32, "nray,ncloud", -99.0, "--"),
    "LayerBaseFlag": (np.int8, "nray,ncloud", -9, "--"),
    "LayerTopFlag": (np.int8, "nray,ncloud", -9, "--"),
    "Phase_log": (np.int8, "nray,ncloud", -9, "--"),
    "Precipitation_flag": (np.int8, "nray,ncloud", -9, "--"),
    "Water_layer_top": (np.float32, "nray,ncloud", -9.0, "km"),
}
GEO_FIELDS = {
    "Profile_time": (np.float32, "nray", None, "seconds"),
    "UTC_start": (np.float32, "1", None, "seconds"),
    "TAI_start": (np.float64, "1", None, "seconds"),
    "Latitude": (np.float32, "nray", None, "degrees"),
    "Longitude": (np.float32, "nray", None, "degrees"),
    "Height": (np.int16, "nray,nbin", -9999, "m"),
    "Range_to_intercept": (np.float32, "nray", None, "km"),
    "DEM_elevation": (np.int16, "nray", -9999, "m"),
    "Vertical_binsize": (np.float32, "1", -9999.0, "m"),
    "Pitch_offset": (np.float32, "1", None, "degrees"),
    "Roll_offset": (np.float32, "1", None, "degrees"),
}
PROFILE_FIELDS = {
    "Data_quality": (np.uint8, "nray", None, "--"),
    "Data_status": (np.uint8, "nray", None, "--"),
    "Data_targetID": (np.uint8, "nray", None, "--"),
    "Navigation_land_sea_flag": (np.uint8, "nray", None, "--"),
    "Cloudlayer": (np.int8, "nray", -9, "--"),
}
# DPC "missing" conventions (value, operator) used when writing; readers take them from the file.
MISSING = {"CloudLayerBase": (-99.0, "<="), "CloudLayerTop": (-99.0, "<="), "CloudFraction": (-99.0, "<="),
           "CloudTypeQuality": (-99.0, "<="), "Water_layer_top": (-9.0, "=="), "Height": (-9999, "=="),
           "DEM_elevation": (9999, "=="), "Cloudlayer": (-9, "==")}
for _n in ("CloudPhase", "CloudPhaseConfidenceLevel", "CloudLayerType", "LayerBaseFlag", "LayerTopFlag",
           "Phase_log", "Precipitation_flag"):
    MISSING[_n] = (-9, "==")
TAI_EPOCH = np.datetime64("1993-01-01T00:00:00", "ns")


@dataclass(frozen=True)
class GranuleName:
    start: dt.datetime       # UTC of first profile (to the second)
    granule: int
    iteration: str
    release: int
    epoch: int
    fix: int | None

    @property
    def day(self) -> dt.date:
        return self.start.date()


def parse_name(path) -> GranuleName:
    m = match_name(path, NAME_RE, "a 2B-CLDCLASS-LIDAR granule name "
                                  "(YYYYDDDHHMMSS_NNNNN_CS_2B-CLDCLASS-LIDAR_GRANULE_P1_R05_EVV_FNN.hdf)")
    start = name_time(path, m.group(1), "%Y%j%H%M%S", what="date")
    return GranuleName(start, int(m.group(2)), m.group(3), int(m.group(4)), int(m.group(5)),
                       int(m.group(6)) if m.group(6) else None)


def granule_filename(start: dt.datetime, granule: int, release: int = 5, epoch: int = 8, fix: int = 0) -> str:
    stamp = start.strftime("%Y%j%H%M%S")
    if release >= 5:
        return f"{stamp}_{granule:05d}_CS_{SWATH}_GRANULE_P1_R{release:02d}_E{epoch:02d}_F{fix:02d}.hdf"
    return f"{stamp}_{granule:05d}_CS_{SWATH}_GRANULE_P_R{release:02d}_E{epoch:02d}.hdf"


# ----------------------------------------------------------------------------------------------- writer
def write_granule(path, arrays: dict, attrs: dict | None = None, n_bins: int = 125) -> None:
    """Write a granule as a true HDF-EOS2 swath.

    arrays: field name -> numpy array in *file* units (SDS: [nray, 10] / [nray, nbin]; Vdata: [nray];
    scalars: shape () or [1]). Fields not given are written as fill. attrs: optional per-field
    overrides {"<field>": {"factor":..., "offset":..., "missing":..., "missop":..., "fill":..., "dtype":...}}
    so tests can exercise packings other than the defaults.
    """
    from .hdfeos import SwathWriter

    attrs = attrs or {}
    nray = int(np.asarray(arrays["Latitude"]).shape[0])
    ncloud = 10
    tmp = f"{path}.part"
    if os.path.exists(tmp):
        os.remove(tmp)
    with SwathWriter(tmp, SWATH) as w:
        w.dim("nray", nray)
        w.dim("nbin", n_bins)
        w.dim("ncloud", ncloud)
        w.dim("1", 1)
        for table, geo in ((GEO_FIELDS, True), (PROFILE_FIELDS, False), (LAYER_FIELDS, False)):
            for name, (dtype, dims, fill, units) in table.items():
                over = attrs.get(name, {})
                dtype = np.dtype(over.get("dtype", dtype))
                fill = over.get("fill", fill)
                shape = tuple({"nray": nray, "nbin": n_bins, "ncloud": ncloud, "1": 1}[d] for d in dims.split(","))
                if name in arrays:
                    a = np.asarray(arrays[name])
                    a = a.reshape(shape).astype(dtype)
                else:
                    a = np.full(shape, fill if fill is not None else 0, dtype=dtype)
                w.field(name, dims, a, geo=geo, fill=fill)
                w.attr(f"{name}.units", units)
                w.attr(f"{name}.factor", np.float32(over.get("factor", 1.0)))
                w.attr(f"{name}.offset", np.float32(over.get("offset", 0.0)))
                if name in MISSING or "missing" in over:
                    mv, mop = MISSING.get(name, (fill, "=="))
                    mv = over.get("missing", mv)
                    w.attr(f"{name}.missing", np.array([mv], dtype=dtype))
                    w.attr(f"{name}.missop", over.get("missop", mop))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- reader
def _scalar(v):
    a = np.asarray(v)
    if a.dtype.kind in "SU" or isinstance(v, str):
        return str(v).strip("\x00 ")
    return a.ravel()[0].item() if a.size else None


def _swath_attributes(hdf, vs, v) -> dict:
    """All Vdata stored in Vgroups named 'Swath Attributes' -> {name: value}."""
    out = {}
    ref = -1
    while True:
        try:
            ref = v.getid(ref)
        except Exception:
            break
        g = v.attach(ref)
        try:
            if g._name != "Swath Attributes":
                continue
            for tag, r in g.tagrefs():
                if tag != 1962:  # DFTAG_VH (Vdata)
                    continue
                vd = vs.attach(r)
                try:
                    name = vd._name
                    recs = vd[:]
                    vals = [x for rec in recs for x in rec]
                    if vals and isinstance(vals[0], str):
                        out[name] = "".join(vals).strip("\x00 ")
                    else:
                        out[name] = vals[0] if len(vals) == 1 else vals
                finally:
                    vd.detach()
        finally:
            g.detach()
    return out


def _mask(raw: np.ndarray, field: str, meta: dict) -> np.ndarray:
    """Return science values (float64, NaN where missing) using the field's own attributes."""
    x = raw.astype(np.float64)
    bad = np.zeros(x.shape, bool)
    fill = meta.get("_FillValue")
    if fill is not None:
        bad |= x == float(fill)
    miss = meta.get("missing")
    if miss is not None:
        op = str(meta.get("missop", "==")).strip()
        mv = float(np.asarray(miss).ravel()[0])
        bad |= {"<": x < mv, "<=": x <= mv, "==": x == mv, ">=": x >= mv, ">": x > mv}.get(op, x == mv)
    vr = meta.get("valid_range")
    if vr is not None and np.size(vr) == 2:
        lo, hi = np.asarray(vr, dtype=np.float64).ravel()
        bad |= (x < lo) | (x > hi)
    factor = float(meta.get("factor", 1.0) or 1.0)
    offset = float(meta.get("offset", 0.0) or 0.0)
    x = (x - offset) / factor
    x[bad] = np.nan
    return x


WANTED_SDS = ("CloudLayerBase", "CloudLayerTop", "CloudPhase", "CloudPhaseConfidenceLevel", "CloudLayerType",
              "CloudFraction")
WANTED_VD = ("Profile_time", "UTC_start", "TAI_start", "Latitude", "Longitude", "DEM_elevation", "Data_quality",
             "Cloudlayer", "CloudLayer", "Navigation_land_sea_flag")


def read_granule(path, header_only: bool = False) -> xr.Dataset:
    """Read a 2B-CLDCLASS-LIDAR granule into an xarray.Dataset (dims nray, ncloud).

    Variables: time (datetime64[ns] UTC per profile), latitude, longitude, dem_km, n_layers, layer_base,
    layer_top (km), layer_phase (1 ice, 2 mixed, 3 water; NaN missing), layer_type, phase_confidence,
    data_quality, land_sea_flag (1 land, 2 ocean, 3 inland water, 0 unknown/absent). header_only=True reads just the profile count and the first profile time.
    Raises FormatError (naming the file and the problem) on anything unreadable.
    """
    from pyhdf.error import HDF4Error
    import pyhdf.V  # noqa: F401  (HDF.vgstart needs the submodule imported)
    import pyhdf.VS  # noqa: F401
    from pyhdf.HDF import HDF, HC
    from pyhdf.SD import SD, SDC

    path = str(path)
    gname = parse_name(path)
    if not os.path.exists(path):
        raise FormatError(path, "no such file")
    meta: dict[str, dict] = {}
    data: dict[str, np.ndarray] = {}
    try:
        h = HDF(path, HC.READ)
    except HDF4Error as e:
        raise FormatError(path, f"not a readable HDF4 file ({e})") from e
    try:
        vs, v = h.vstart(), h.vgstart()
        try:
            swattrs = _swath_attributes(h, vs, v)
            for name in WANTED_VD:
                if header_only and name not in ("Profile_time", "UTC_start", "Latitude"):
                    continue
                try:
                    vd = vs.attach(name)
                except HDF4Error:
                    continue
                try:
                    recs = vd[:] if vd._nrecs else []
                    data[name] = np.asarray([r[0] for r in recs])
                    m = {}
                    try:
                        for aname, ainfo in vd.attrinfo().items():
                            m[aname] = ainfo[2]
                    except HDF4Error:
                        pass
                    meta[name] = m
                finally:
                    vd.detach()
        finally:
            vs.end()
            v.end()
    finally:
        h.close()
    for name in list(data):
        for key in ("factor", "offset", "missing", "missop", "valid_range"):
            if f"{name}.{key}" in swattrs:
                meta[name].setdefault(key, swattrs[f"{name}.{key}"])
    for req in ("Profile_time", "UTC_start", "Latitude"):
        if req not in data or data[req].size == 0:
            raise FormatError(path, f"missing or empty field {req}")
    nray = int(data["Latitude"].size)
    utc_start = _mask(data["UTC_start"], "UTC_start", meta["UTC_start"])[0]
    ptime = _mask(data["Profile_time"], "Profile_time", meta["Profile_time"])
    if not np.isfinite(utc_start):
        raise FormatError(path, "UTC_start is missing")
    day0 = np.datetime64(gname.start.date(), "ns")
    time = day0 + np.round((utc_start + np.nan_to_num(ptime, nan=-1e12)) * 1e9).astype("timedelta64[ns]")
    time = np.where(np.isfinite(ptime), time, np.datetime64("NaT"))
    if header_only:
        return xr.Dataset(coords={"time": ("nray", time[:1])}, attrs={"nray": nray, "path": path})

    try:
        sd = SD(path, SDC.READ)
    except HDF4Error as e:
        raise FormatError(path, f"cannot open SD interface ({e})") from e
    try:
        present = sd.datasets()
        for name in WANTED_SDS:
            if name not in present:
                continue
            try:
                s = sd.select(name)
                data[name] = np.asarray(s[:])
                m = dict(s.attributes())
                s.endaccess()
            except HDF4Error as e:
                raise FormatError(path, f"cannot read SDS {name} ({e})") from e
            for key in ("factor", "offset", "missing", "missop", "valid_range"):
                if f"{name}.{key}" in swattrs:
                    m.setdefault(key, swattrs[f"{name}.{key}"])
            meta[name] = m
    finally:
        sd.end()
    for req in ("CloudLayerBase", "CloudLayerTop", "CloudPhase", "Longitude"):
        if req not in data:
            raise FormatError(path, f"missing field {req}")
    for name in ("CloudLayerBase", "CloudLayerTop", "CloudPhase"):
        if data[name].ndim != 2 or data[name].shape[0] != nray:
            raise FormatError(path, f"{name} has shape {data[name].shape}, expected ({nray}, ncloud)")
    dec = {k: _mask(v, k, meta.get(k, {})) for k, v in data.items()}
    ncl = "Cloudlayer" if "Cloudlayer" in dec else ("CloudLayer" if "CloudLayer" in dec else None)
    if ncl is not None:
        n_layers = dec[ncl]
    else:  # no layer count in the file: count layers with a valid base and top
        n_layers = (np.isfinite(dec["CloudLayerBase"]) & np.isfinite(dec["CloudLayerTop"])).sum(1).astype(float)
    dem = dec.get("DEM_elevation", np.full(nray, np.nan))
    quality = data.get("Data_quality", np.zeros(nray, np.uint8))
    surface = np.asarray(data.get("Navigation_land_sea_flag", np.zeros(nray, np.uint8))).reshape(-1)
    if surface.size != nray:                 # absent or malformed: 0 = unknown (1 land, 2 ocean, 3 inland water)
        surface = np.zeros(nray, np.uint8)
    lon = dec["Longitude"]
    ds = xr.Dataset(
        {
            "latitude": ("nray", dec["Latitude"].astype(np.float64)),
            "longitude": ("nray", lon.astype(np.float64)),
            "dem_km": ("nray", dem / 1000.0),
            "n_layers": ("nray", n_layers),
            "layer_base": (("nray", "ncloud"), dec["CloudLayerBase"]),
            "layer_top": (("nray", "ncloud"), dec["CloudLayerTop"]),
            "layer_phase": (("nray", "ncloud"), dec["CloudPhase"]),
            "layer_type": (("nray", "ncloud"), dec.get("CloudLayerType", np.full_like(dec["CloudPhase"], np.nan))),
            "data_quality": ("nray", quality.astype(np.int64)),
            "land_sea_flag": ("nray", surface.astype(np.int64)),
        },
        coords={"time": ("nray", time)},
        attrs={"path": path, "file": os.path.basename(path), "granule": gname.granule,
               "release": gname.release, "epoch": gname.epoch},
    )
    return ds
