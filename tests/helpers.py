"""Small hand-built files for tests."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess

import numpy as np
import pytest

from sgmagnet.formats import ahi as ahi_fmt
from sgmagnet.formats import cloudsat as cs_fmt
from sgmagnet.grid import BAND_VARS

from ci import IN_CI, require  # noqa: F401  (re-exported: tests import them from here too)


def live_processes() -> dict[int, tuple[str, int, int]]:
    """Every live (not zombie) process, from /proc: pid -> (name, ppid, process group). A zombie holds no file
    and no lock: for these tests it is gone."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                text = f.read()
            name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        except (OSError, ValueError):
            continue                                   # gone while we read it
        if rest[0] != "Z":                             # state, ppid, pgrp
            out[int(entry)] = (name, int(rest[1]), int(rest[2]))
    return out


def have_mpirun() -> bool:
    return shutil.which("mpirun") is not None and subprocess.run(
        [os.environ.get("PYTHON", "python"), "-c", "import mpi4py"], capture_output=True).returncode == 0


def make_scene(folder, timeline: dt.datetime, lat0=10.0, lon0=130.0, step=0.5, nlat=9, nlon=11,
               hour=None, saz=None, bands=None, packing=None, name_counts=None, drop=(), soz=None):
    """A small P-Tree file. hour: [nlat,nlon] decimal UT hours (default: timeline + 5 min)."""
    lat = lat0 - step * np.arange(nlat)
    lon = lon0 + step * np.arange(nlon)
    shape = (nlat, nlon)
    fields = {}
    for k, b in enumerate(BAND_VARS):
        fields[b] = np.full(shape, 0.3 if k < 6 else 280.0 - k) if bands is None else bands[k]
    fields["SOZ"] = np.full(shape, 30.0) if soz is None else soz
    fields["SOA"] = np.full(shape, 100.0)
    fields["SAZ"] = np.full(shape, 20.0) if saz is None else saz
    fields["SAA"] = np.full(shape, 50.0)
    if hour is None:
        hour = np.full(shape, timeline.hour + (timeline.minute + 5) / 60.0)
    fields["Hour"] = hour
    for d in drop:
        fields.pop(d)
    nlon_n, nlat_n = name_counts or (nlon, nlat)
    path = os.path.join(str(folder), ahi_fmt.ahi_filename(timeline, nlon_n, nlat_n))
    ahi_fmt.write_ahi(path, lat, lon, fields, timeline, packing=packing)
    return path


def make_granule(folder, start: dt.datetime, lat, lon, profile_time, layers=(), dem_m=None, n_layers=None,
                 granule=1000, quality=None, attrs=None):
    """layers: list of (base_km, top_km, phase) applied to every profile (or arrays [N] each)."""
    n = len(lat)
    base = np.full((n, 10), -99.0, np.float32)
    top = np.full((n, 10), -99.0, np.float32)
    ph = np.full((n, 10), -9, np.int8)
    for k, (b, t, p) in enumerate(layers):
        base[:, k], top[:, k], ph[:, k] = b, t, p
    arrays = {
        "Latitude": np.asarray(lat, np.float32), "Longitude": np.asarray(lon, np.float32),
        "Profile_time": np.asarray(profile_time, np.float32),
        "UTC_start": np.array([start.hour * 3600 + start.minute * 60 + start.second], np.float32),
        "TAI_start": np.array([0.0]), "DEM_elevation": np.zeros(n, np.int16) if dem_m is None else np.asarray(dem_m),
        "Cloudlayer": np.full(n, len(layers), np.int8) if n_layers is None else np.asarray(n_layers),
        "CloudLayerBase": base, "CloudLayerTop": top, "CloudPhase": ph,
    }
    if quality is not None:
        arrays["Data_quality"] = np.asarray(quality, np.uint8)
    path = os.path.join(str(folder), cs_fmt.granule_filename(start, granule))
    cs_fmt.write_granule(path, arrays, attrs=attrs)
    return path
