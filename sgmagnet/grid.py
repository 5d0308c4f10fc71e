"""Normative definitions shared by every stage (DESIGN.md "Definitions").

Vertical grid: level k (0..37) covers [0.5k, 0.5(k+1)) km above mean sea level.
Classes: 0 clear, 1 ice, 2 mixed, 3 liquid; 255 = no label.
"""
from __future__ import annotations

from kernels import IGNORE  # noqa: F401  (255 = no label: defined once, beside the kernels that skip it)

N_LEVELS = 38
LEVEL_DZ_KM = 0.5


def __getattr__(name):
    """LEVEL_BOTTOM_KM, LEVEL_TOP_KM, LEVEL_CENTRE_KM: numpy arrays, made on first use (the benchmarks import
    this module on the lent GPU machine, whose python has torch and triton only)."""
    if name not in ("LEVEL_BOTTOM_KM", "LEVEL_TOP_KM", "LEVEL_CENTRE_KM"):
        raise AttributeError(name)
    import numpy as np

    bottom = LEVEL_DZ_KM * np.arange(N_LEVELS)
    arrays = {"LEVEL_BOTTOM_KM": bottom, "LEVEL_TOP_KM": bottom + LEVEL_DZ_KM, "LEVEL_CENTRE_KM": bottom + LEVEL_DZ_KM / 2}
    globals().update(arrays)
    return arrays[name]

CLEAR, ICE, MIXED, LIQUID = 0, 1, 2, 3
N_CLASSES = 4
CLASS_NAMES = ("clear", "ice", "mixed", "liquid")

N_BANDS = 16
N_GEOM = 2          # geometry channels of a sample: solar and satellite zenith angle (deg)
BAND_VARS = tuple([f"albedo_{b:02d}" for b in range(1, 7)] + [f"tbb_{b:02d}" for b in range(7, 17)])
BAND_WAVELENGTH_UM = (0.47, 0.51, 0.64, 0.85, 1.6, 2.3, 3.9, 6.2, 6.9, 7.3, 8.6, 9.6, 10.4, 11.2, 12.4, 13.3)
ANGLE_VARS = ("SOZ", "SOA", "SAZ", "SAA")
