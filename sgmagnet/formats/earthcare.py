"""EarthCARE ATLID-CPR synergistic target classification, `AC__TC__2B` (EARTHCARE.md §1-2), read with h5py.

    ECA_{agency}{latency}{baseline}_AC__TC__2B_{sensing start}Z_{processing start}Z_{orbit}{frame}.h5

Everything is taken from the file itself: the product type (name and `/HeaderData/FixedProductHeader/File_Type`),
orbit and frame (`MainProductHeader`), the `/ScienceData` variables with their own sizes (the joint standard
grid has 242 levels in most files and 241 in some: never assumed), heights above the WGS84 ellipsoid made
heights above mean sea level with `geoid_offset`, the time units, and the class table of the
`definition` attribute, which must list the codes -1..34 of EARTHCARE.md §2.4. The reader returns the raw
profiles; `sgmagnet.labels.jsg_levels` turns them into the 38 levels.
"""
from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass

import numpy as np

from . import FormatError, match_name, name_time

NAME_RE = re.compile(r"^ECA_([EJ])([XNO])([A-Z]{2})_(.{10})_(\d{8}T\d{6})Z_(\d{8}T\d{6})Z_(\d{5})([A-H])\.h5$")
PRODUCT = "AC__TC__2B"
CLASS_VAR = "synergetic_target_classification"
VARIABLES = ("time", "latitude", "longitude", "height", "geoid_offset", "elevation", CLASS_VAR, "quality_status")
CODES = tuple(range(-1, 35))            # EARTHCARE.md §2.4
FILL_FLOAT = 9.969e36                   # netCDF default fill: any |value| at or above it is missing


@dataclass(frozen=True)
class FrameName:
    agency: str            # E (ESA) / J (JAXA)
    latency: str           # N / O / X
    baseline: str          # e.g. BC
    product: str           # e.g. AC__TC__2B
    start: dt.datetime     # sensing (frame) start, UTC
    processed: dt.datetime  # processing start, UTC (not the sensing stop)
    orbit: int
    frame: str             # A..H


def parse_name(path) -> FrameName:
    m = match_name(path, NAME_RE, "an EarthCARE L2 name (ECA_EXBC_AC__TC__2B_YYYYMMDDThhmmssZ_YYYYMMDDThhmmssZ_"
                                  "OOOOOF.h5)")
    start = name_time(path, m.group(5), "%Y%m%dT%H%M%S")
    processed = name_time(path, m.group(6), "%Y%m%dT%H%M%S")
    return FrameName(m.group(1), m.group(2), m.group(3), m.group(4), start, processed, int(m.group(7)), m.group(8))


def frame_filename(start: dt.datetime, orbit: int, frame: str, processed: dt.datetime | None = None,
                   baseline: str = "BC", product: str = PRODUCT) -> str:
    processed = processed or start + dt.timedelta(hours=1, minutes=20)
    return f"ECA_EX{baseline}_{product}_{start:%Y%m%dT%H%M%S}Z_{processed:%Y%m%dT%H%M%S}Z_{orbit:05d}{frame}.h5"


def _text(v) -> str:
    """A header dataset or an attribute (bytes, numpy bytes, 1-element arrays) as text."""
    if hasattr(v, "id") and hasattr(v, "dtype"):        # an h5py dataset
        v = v[()]
    v = np.ravel(v)[0] if isinstance(v, np.ndarray) else v
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def parse_definition(text: str) -> dict[int, str]:
    """`definition` attribute ("N: label" per line; some products use commas) -> {code: label}."""
    out = {}
    for part in re.split(r"[\n,]", text):
        m = re.match(r"\s*(-?\d+)\s*:\s*(.*?)\s*$", part)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def read_frame(path, header_only: bool = False) -> dict:
    """The profiles of an AC__TC__2B frame:
    time [n] datetime64[ns], latitude, longitude [n] degrees, surface_m [n] (elevation above mean sea level),
    classes [n, k] int16 (the file's codes; -1 where the file holds fill), height_m [n, k] (bin heights above
    mean sea level, top-down as stored; NaN for fill), quality [n, k] int16, and the frame's provenance
    (orbit, frame, baseline, product, file, levels = k). Raises FormatError naming the file and the problem."""
    import h5py

    path = str(path)
    name = parse_name(path)
    if name.product != PRODUCT:
        raise FormatError(path, f"product {name.product} in the file name: only {PRODUCT} (the ATLID-CPR synergistic "
                                f"target classification) carries the phase labels read here")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise FormatError(path, f"not a readable HDF5 file ({' '.join(str(e).split())[:120]})") from None
    try:
        with f:
            if "ScienceData" not in f or "HeaderData" not in f:
                raise FormatError(path, "not an EarthCARE L2 file (no /ScienceData and /HeaderData groups)")
            fph = f["HeaderData"].get("FixedProductHeader")
            ftype = _text(fph["File_Type"]) if fph is not None and "File_Type" in fph else None
            if ftype is not None and ftype.strip() != PRODUCT:
                raise FormatError(path, f"header File_Type is {ftype.strip()!r}, not {PRODUCT}")
            mph = f["HeaderData"].get("VariableProductHeader/MainProductHeader")
            orbit, frame = name.orbit, name.frame
            if mph is not None and "orbitNumber" in mph:
                orbit = int(np.ravel(mph["orbitNumber"][()])[0])
            if mph is not None and "frameID" in mph:
                frame = _text(mph["frameID"]).strip()
            if (orbit, frame) != (name.orbit, name.frame):
                raise FormatError(path, f"header says orbit {orbit} frame {frame}, the file name "
                                        f"{name.orbit:05d}{name.frame}")
            sd = f["ScienceData"]
            missing = [v for v in VARIABLES if v not in sd]
            if missing:
                raise FormatError(path, f"missing /ScienceData variable(s): {', '.join(missing)}")
            n = sd["time"].shape[0] if sd["time"].ndim == 1 else -1
            if n < 1:
                raise FormatError(path, f"/ScienceData/time has shape {sd['time'].shape}, expected (along_track,)")
            k = sd[CLASS_VAR].shape[1] if sd[CLASS_VAR].ndim == 2 else -1
            for v in ("latitude", "longitude", "geoid_offset", "elevation"):
                if sd[v].shape != (n,):
                    raise FormatError(path, f"/ScienceData/{v} has shape {sd[v].shape}, expected ({n},)")
            for v in ("height", CLASS_VAR, "quality_status"):
                if sd[v].ndim != 2 or sd[v].shape[0] != n or sd[v].shape[1] != k or k < 2:
                    raise FormatError(path, f"/ScienceData/{v} has shape {sd[v].shape}, expected ({n}, "
                                            f"{k if k > 0 else 'levels'}) like {CLASS_VAR}")
            units = _text(sd["time"].attrs.get("units", b"seconds since 2000-01-01 00:00:00"))
            m = re.match(r"\s*seconds since (\d{4}-\d{2}-\d{2})[ T]?(\d{2}:\d{2}:\d{2}(\.\d+)?)?", units)
            if not m:
                raise FormatError(path, f"/ScienceData/time units {units!r} are not 'seconds since <date>'")
            epoch = np.datetime64(f"{m.group(1)}T{m.group(2) or '00:00:00'}", "ns")
            defs = sd[CLASS_VAR].attrs.get("definition")
            if defs is not None:
                codes = parse_definition(_text(defs))
                if codes and set(codes) != set(CODES):
                    extra = sorted(set(codes) - set(CODES))[:5]
                    lost = sorted(set(CODES) - set(codes))[:5]
                    raise FormatError(path, f"{CLASS_VAR} definition lists another class table (codes beyond "
                                            f"-1..34: {extra}; missing: {lost}): not the table this reader maps")
            t = np.asarray(sd["time"][()], np.float64)
            lat = np.asarray(sd["latitude"][()], np.float64)
            lon = np.asarray(sd["longitude"][()], np.float64)
            geo = np.asarray(sd["geoid_offset"][()], np.float64)
            elev = np.asarray(sd["elevation"][()], np.float64)
            out = {"orbit": orbit, "frame": frame, "baseline": name.baseline, "product": PRODUCT,
                   "file": os.path.basename(path), "levels": k, "n": n}
            bad_t = ~np.isfinite(t) | (np.abs(t) >= FILL_FLOAT)
            tt = np.where(bad_t, 0.0, t)
            if (np.diff(tt[~bad_t]) < 0).any():
                i = int(np.flatnonzero(np.diff(tt[~bad_t]) < 0)[0])
                raise FormatError(path, f"/ScienceData/time goes backwards after profile {i} (a frame is one "
                                        f"pass in time order)")
            time = epoch + np.round(tt * 1e9).astype("timedelta64[ns]")
            out["time"] = np.where(bad_t, np.datetime64("NaT"), time)
            if header_only:
                return out
            fill = lambda a: np.where(np.isfinite(a) & (np.abs(a) < FILL_FLOAT), a, np.nan)  # noqa: E731
            h = fill(np.asarray(sd["height"][()], np.float64)) - fill(geo)[:, None]
            step = np.nanmedian(np.diff(h, axis=1)) if np.isfinite(h).any() else np.nan
            if not step < 0:
                raise FormatError(path, "/ScienceData/height runs bottom-up; AC__TC__2B stores the joint standard "
                                        "grid top-down (index 0 = highest bin)")
            cls = np.asarray(sd[CLASS_VAR][()], np.int16)
            fv = sd[CLASS_VAR].attrs.get("_FillValue")
            if fv is not None:
                cls = np.where(cls == int(np.ravel(fv)[0]), -1, cls)
            odd = np.unique(cls[(cls < CODES[0]) | (cls > CODES[-1])])
            if odd.size:
                raise FormatError(path, f"{CLASS_VAR} holds codes outside the table -1..34: "
                                        f"{odd[:5].tolist()}")
            out.update(latitude=fill(lat), longitude=fill(lon), surface_m=fill(elev) - fill(geo), height_m=h,
                       classes=cls, quality=np.asarray(sd["quality_status"][()], np.int16))
            return out
    except FormatError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise FormatError(path, f"cannot read ({' '.join(str(e).split())[:160]})") from None
