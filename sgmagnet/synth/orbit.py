"""Geometry: CloudSat ground track (sun-synchronous, ascending node 13:30 LT), solar and Himawari angles."""
from __future__ import annotations

import numpy as np

PERIOD_S = 5932.0              # granule = one orbit (FORMATS §3.1)
INCLINATION_DEG = 98.2
PROFILE_DT_S = 0.16
LTAN_H = 13.5                  # A-Train/C-Train ascending node local time
SUB_LON = 140.7                # Himawari-8 sub-satellite longitude
RE_RS = 6378.137 / 42164.0


def ut_hours(t: np.ndarray) -> np.ndarray:
    """datetime64 -> UT hours of day."""
    day = t.astype("datetime64[D]")
    return (t - day).astype("timedelta64[ns]").astype(np.float64) / 3.6e12


def doy(t: np.ndarray) -> np.ndarray:
    d = t.astype("datetime64[D]")
    return (d - d.astype("datetime64[Y]")).astype(np.int64) + 1


def track(t: np.ndarray, u0: float, t0: np.datetime64, period_s: float = PERIOD_S,
          inclination_deg: float = INCLINATION_DEG, ltan_h: float = LTAN_H):
    """Sub-satellite lat/lon (deg, lon in -180..180) and argument of latitude u (rad) at times t of a circular
    sun-synchronous orbit (CloudSat's by default; `synth.earthcare` passes EarthCARE's).

    u = u0 + 2 pi (t - t0)/P; the ascending node follows the mean sun at LTAN, so
    lon = lon_subsolar + 15 (LTAN - 12) + atan2(cos i sin u, cos u).
    """
    dt_s = (t - t0).astype("timedelta64[ns]").astype(np.float64) / 1e9
    u = u0 + 2 * np.pi * dt_s / period_s
    inc = np.deg2rad(inclination_deg)
    lat = np.rad2deg(np.arcsin(np.sin(inc) * np.sin(u)))
    lon_ss = 180.0 - 15.0 * ut_hours(t)
    lon = lon_ss + 15.0 * (ltan_h - 12.0) + np.rad2deg(np.arctan2(np.cos(inc) * np.sin(u), np.cos(u)))
    lon = (lon + 180.0) % 360.0 - 180.0
    return lat, lon, u


def solar_angles(t: np.ndarray, lat: np.ndarray, lon: np.ndarray):
    """Solar zenith and azimuth (deg) from a mean-sun model (declination by day of year)."""
    decl = np.deg2rad(23.44) * np.sin(2 * np.pi * (doy(t) - 81) / 365.0)
    h = np.deg2rad((ut_hours(t) - 12.0) * 15.0 + lon)
    la = np.deg2rad(lat)
    cosz = np.sin(la) * np.sin(decl) + np.cos(la) * np.cos(decl) * np.cos(h)
    soz = np.rad2deg(np.arccos(np.clip(cosz, -1, 1)))
    az = np.rad2deg(np.arctan2(np.sin(h), np.cos(h) * np.sin(la) - np.tan(decl) * np.cos(la))) + 180.0
    return soz, az % 360.0


def satellite_angles(lat: np.ndarray, lon: np.ndarray):
    """Himawari satellite zenith/azimuth (deg); zenith NaN off the Earth disk."""
    la = np.deg2rad(lat)
    dl = np.deg2rad(lon - SUB_LON)
    cosg = np.cos(la) * np.cos(dl)
    sing = np.sqrt(np.clip(1 - cosg ** 2, 0, 1))
    saz = np.rad2deg(np.arctan2(sing, cosg - RE_RS))
    saz = np.where(cosg > RE_RS, saz, np.nan)
    saa = np.rad2deg(np.arctan2(np.sin(dl), -np.sin(la) * np.cos(dl))) % 360.0
    return saz, saa
