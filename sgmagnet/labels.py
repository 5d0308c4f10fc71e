"""CloudSat profile -> 38-level labels, EarthCARE bins -> 38-level labels, and per-pixel majority vote (DESIGN.md,
normative).

Profile to levels: each valid layer (base/top not fill, phase in 1..3) labels every level whose centre
lies in [base, top] with its phase (1 ice, 2 mixed, 3 water -> liquid). Where layers overlap a level,
the phase covering more of the level wins (ties: the lower class id). Levels with no layer are clear.
Levels wholly below the surface are 255. Profiles with missing / bad layer data are dropped (the caller
uses `profile_is_valid`).

Vote: several profiles in one pixel -> per level the most frequent class among labelled (!= 255)
profiles; ties go to a cloudy class over clear, then to the lower class id.
"""
from __future__ import annotations

import numpy as np

from .grid import IGNORE, LEVEL_BOTTOM_KM, LEVEL_CENTRE_KM, LEVEL_TOP_KM, N_CLASSES, N_LEVELS

MAX_LAYER_KM = 30.0


def profile_is_valid(n_layers: np.ndarray, base: np.ndarray, top: np.ndarray, phase: np.ndarray,
                     quality_ok: np.ndarray | None = None) -> np.ndarray:
    """True for profiles whose layer data can be labelled honestly.

    n_layers [N] (NaN/negative = missing), base/top [N,K] km (NaN = fill), phase [N,K] (<=0 or NaN = not valid).
    A profile is dropped when its layer count is missing or any of its first n layers lacks a valid
    base, top (base <= top) or a phase in 1..3.
    """
    n = np.asarray(n_layers, dtype=np.float64)
    k = base.shape[1]
    ok = np.isfinite(n) & (n >= 0) & (n <= k)
    n_int = np.where(ok, n, 0).astype(np.int64)
    claimed = np.arange(k)[None, :] < n_int[:, None]
    good_layer = (np.isfinite(base) & np.isfinite(top) & (base <= top) & (base >= -1.0)
                  & (top <= MAX_LAYER_KM) & np.isin(np.nan_to_num(phase, nan=-9).astype(np.int64), (1, 2, 3)))
    ok &= np.all(good_layer | ~claimed, axis=1)
    if quality_ok is not None:
        ok &= quality_ok
    return ok


def profile_levels(n_layers: np.ndarray, base: np.ndarray, top: np.ndarray, phase: np.ndarray,
                   surface_km: np.ndarray) -> np.ndarray:
    """Labels [N, 38] uint8 for (already validated) profiles.

    Only the first n_layers layers of each profile are used. surface_km: surface elevation (km);
    NaN = unknown -> treated as sea level.
    """
    n_prof, k = base.shape
    n_int = np.nan_to_num(np.asarray(n_layers, dtype=np.float64), nan=0).clip(0, k).astype(np.int64)
    use = np.arange(k)[None, :] < n_int[:, None]
    b = np.where(use, base, np.nan)[:, :, None]        # [N,K,1]
    t = np.where(use, top, np.nan)[:, :, None]
    ph = np.where(use, np.nan_to_num(phase, nan=0), 0).astype(np.int64)  # [N,K]
    centre = LEVEL_CENTRE_KM[None, None, :]
    covers = (b <= centre) & (centre <= t)              # [N,K,L]; NaN compares False
    overlap = np.clip(np.minimum(t, LEVEL_TOP_KM) - np.maximum(b, LEVEL_BOTTOM_KM), 0, None)
    overlap = np.where(covers, overlap, 0.0)
    # coverage per phase 1..3: [N,3,L]
    cov = np.stack([(overlap * (ph == c)[:, :, None]).sum(axis=1) for c in (1, 2, 3)], axis=1)
    anycov = np.stack([(covers & (ph == c)[:, :, None]).any(axis=1) for c in (1, 2, 3)], axis=1)
    cov = np.where(anycov, cov, -1.0)
    best = np.argmax(cov, axis=1)                        # first max -> lower class id on ties
    labels = np.where(anycov.any(axis=1), best + 1, 0).astype(np.uint8)
    sfc = np.nan_to_num(np.asarray(surface_km, dtype=np.float64), nan=0.0)
    below = LEVEL_TOP_KM[None, :] <= sfc[:, None]
    labels[below] = IGNORE
    return labels


def vote(labels: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-level majority vote of profile labels [N,38] into [n_groups,38].

    group[i] in [0, n_groups) is the pixel of profile i. Ties: cloudy over clear, then lower class id.
    A level with no labelled profile stays 255.
    """
    counts = np.zeros((n_groups, N_LEVELS, N_CLASSES), dtype=np.int64)
    valid = labels != IGNORE
    gi, li = np.nonzero(valid)
    np.add.at(counts, (group[gi], li, labels[gi, li].astype(np.int64)), 1)
    # score: count first, then prefer cloudy (class>0), then lower id: encode as count*8 + bonus
    bonus = np.array([0, 3, 2, 1], dtype=np.int64)      # cloudy > clear; among cloudy lower id first
    score = counts * 8 + bonus[None, None, :]
    out = np.argmax(score, axis=2).astype(np.uint8)
    out[counts.sum(axis=2) == 0] = IGNORE
    return out


# ------------------------------------------------------------------------------ EarthCARE AC__TC__2B classes
# synergetic_target_classification code -> phase (EARTHCARE.md §3, the proposal; IGNORE = no label). Non-cloud
# targets (aerosols, insects) are clear; unobservable or ambiguous bins (surface, clutter, unknown, "possible
# liquid" without a detection, PSCs) carry no label; precipitation takes the phase of its hydrometeors.
AC_TC_PHASE = {
    -1: IGNORE, 0: IGNORE, 1: 0, 2: IGNORE, 3: IGNORE, 4: IGNORE,
    5: 3, 6: 2, 7: IGNORE, 8: 3, 9: 3, 10: 3, 11: 3, 12: 2,
    13: 1, 14: 1, 15: 2, 16: 2, 17: 2, 18: 3, 19: 1, 20: 2, 21: 1, 22: 1,
    23: IGNORE, 24: IGNORE, 25: 0, **{c: 0 for c in range(26, 35)},
}
AC_TC_STRICT_NO_LABEL = (13, 19)   # "snow / ice cloud (possible liquid)": no label in the strict variant
# quality_status kept (EARTHCARE.md §2.7, baseline BC, proposal): high- or moderate-confidence clear,
# hydrometeor, aerosol; low confidence, artefacts, extinguished, surface and no data are no label
AC_TC_QUALITY_OK = (1, 2, 3, 4, 6, 8, 9)
JSG_MIN_LABELLED = 0.5             # a level needs half of its bins labelled


def ac_tc_table(strict: bool = False) -> np.ndarray:
    """Lookup [code + 128] -> phase class or IGNORE (codes outside the table are IGNORE)."""
    lut = np.full(256, IGNORE, np.uint8)
    for code, ph in AC_TC_PHASE.items():
        lut[code + 128] = IGNORE if strict and code in AC_TC_STRICT_NO_LABEL else ph
    return lut


def jsg_levels(classes: np.ndarray, height_m: np.ndarray, surface_m: np.ndarray, quality: np.ndarray | None = None,
               strict: bool = False) -> np.ndarray:
    """EarthCARE bins -> labels [N, 38] uint8: each ~100 m bin of the joint standard grid goes to the level
    holding its height above mean sea level (its phase by `ac_tc_table`; bad-quality bins no label), and each
    level takes the per-level vote of `vote` (most frequent class; ties: cloudy over clear, then the lower
    id) over its labelled bins, provided they are at least half of its bins. Levels wholly below the surface
    and levels without enough labelled bins are IGNORE. Works for any number of bins per profile."""
    n, k = classes.shape
    phase = ac_tc_table(strict)[np.clip(classes.astype(np.int64), -128, 127) + 128]
    if quality is not None:
        phase = np.where(np.isin(quality, AC_TC_QUALITY_OK), phase, IGNORE)
    lev = np.floor(np.asarray(height_m, np.float64) / (1000.0 * (LEVEL_TOP_KM[0] - LEVEL_BOTTOM_KM[0])))
    inside = np.isfinite(lev) & (lev >= 0) & (lev < N_LEVELS)
    lev = np.where(inside, lev, 0).astype(np.int64)
    prof = np.broadcast_to(np.arange(n)[:, None], (n, k))
    bins = np.zeros((n, N_LEVELS), np.int64)
    np.add.at(bins, (prof[inside], lev[inside]), 1)
    voting = inside & (phase != IGNORE)
    counts = np.zeros((n, N_LEVELS, N_CLASSES), np.int64)
    np.add.at(counts, (prof[voting], lev[voting], phase[voting].astype(np.int64)), 1)
    bonus = np.array([0, 3, 2, 1], np.int64)                     # the tie rule of `vote`
    out = np.argmax(counts * 8 + bonus[None, None, :], axis=2).astype(np.uint8)
    nv = counts.sum(axis=2)
    out[(nv == 0) | (nv < JSG_MIN_LABELLED * bins)] = IGNORE
    sfc_km = np.nan_to_num(np.asarray(surface_m, np.float64), nan=0.0) / 1000.0
    out[LEVEL_TOP_KM[None, :] <= sfc_km[:, None]] = IGNORE
    return out
