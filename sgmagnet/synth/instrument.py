"""The AHI instrument model of the synthetic archive: scan timing, parallax, navigation and calibration errors,
the band footprints (PHYSICS.md §5), and the image operations they need (blur, dilate)."""
from __future__ import annotations

import numpy as np

from . import orbit


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
