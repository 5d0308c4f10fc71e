"""Day, twilight and night by solar zenith angle: one definition for the builder's provenance, `evaluate`'s strata
and `predict`'s out-of-range flag.

day: SZA < 80 deg (the visible and near-infrared bands carry the cloud signal the models learn from);
twilight: 80 <= SZA < 90 deg (grazing light: reflectances weak and 3-D effects strong); night: SZA >= 90 deg
(the sun is below the horizon: the visible bands hold nothing).
"""
from __future__ import annotations

import numpy as np

DAY_MAX_SZA = 80.0
NIGHT_MIN_SZA = 90.0
STRATA = ("day", "twilight", "night")


def stratum(sza: float) -> str:
    """"day", "twilight" or "night" for one solar zenith angle in degrees."""
    return STRATA[int(strata(np.array([sza]))[0])]


def strata(sza: np.ndarray) -> np.ndarray:
    """Index into STRATA (0 day, 1 twilight, 2 night) of each angle; NaN counts as night (no sun known)."""
    sza = np.nan_to_num(np.asarray(sza, np.float64), nan=180.0)
    return np.where(sza < DAY_MAX_SZA, 0, np.where(sza < NIGHT_MIN_SZA, 1, 2)).astype(np.int8)
