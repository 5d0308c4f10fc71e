"""The reference rows every evaluation scores beside the model (DESIGN.md): the top-layer oracle and the
climatology (and all clear, in evaluate.py's table). See evaluate.py's docstring for what each one means and
why a model should land between them.
"""
from __future__ import annotations

import numpy as np
import torch

from .grid import LEVEL_DZ_KM, N_CLASSES, N_LEVELS
from .metrics import LAT_BANDS, lat_band


def top_layer(prof: np.ndarray):
    """[N, L] labels -> (top level index, phase at it, thickness in levels of the top cloudy run); -1/0/0
    for clear columns. Levels are bottom-up (level k covers 0.5k-0.5(k+1) km)."""
    y = np.asarray(prof).astype(np.int64)
    cloudy = (y >= 1) & (y <= 3)
    has = cloudy.any(1)
    L = y.shape[1]
    top = np.where(has, L - 1 - np.argmax(cloudy[:, ::-1], axis=1), -1)
    phase = np.where(has, y[np.arange(len(y)), np.maximum(top, 0)], 0)
    below_clear = ~cloudy[:, ::-1]                               # top-down
    start = L - 1 - np.maximum(top, 0)                           # top-down index of the top level
    idx = np.arange(L)[None]
    gap = below_clear & (idx > start[:, None])
    first_gap = np.where(gap.any(1), np.argmax(gap, axis=1), L)
    thick = np.where(has, first_gap - start, 0)
    return top, phase, thick


class Climatology:
    """Per-level, per-latitude-band class frequencies of a split -> a reference predictor; it also keeps the
    median thickness of the top cloudy layer (the oracle's layer depth)."""

    def __init__(self, counts: np.ndarray, top_thickness_levels: int = 4):
        self.counts = counts  # [bands, L, C]
        self.top_thickness_levels = int(top_thickness_levels)

    @classmethod
    def from_batches(cls, batches) -> "Climatology":
        counts = np.zeros((len(LAT_BANDS), N_LEVELS, N_CLASSES), np.int64)
        thick = np.zeros(N_LEVELS + 1, np.int64)
        for b in batches:
            y = b["prof"].numpy().astype(np.int64)
            band = lat_band(b["lat"]).numpy()
            for k in range(len(LAT_BANDS)):
                yk = y[band == k]
                for c in range(N_CLASSES):
                    counts[k, :, c] += (yk == c).sum(0)
            _, _, t = top_layer(y)
            thick += np.bincount(t[t > 0], minlength=N_LEVELS + 1)[:N_LEVELS + 1]
        med = int(np.searchsorted(np.cumsum(thick), thick.sum() / 2) if thick.sum() else 4)
        return cls(counts, max(med, 1))

    def table(self, weights) -> np.ndarray:
        """[bands, L] class chosen per band and level."""
        f = self.counts / np.maximum(self.counts.sum(-1, keepdims=True), 1)
        return np.argmax(f * np.asarray(weights, np.float64)[None, None], -1)

    def predict(self, lat: torch.Tensor, weights) -> torch.Tensor:
        return torch.from_numpy(self.table(weights)[lat_band(lat).numpy()])


ORACLE_TOP_ERROR_KM = 1.0


class TopLayerOracle:
    """Knows each labelled column's true cloud-top level (perturbed by a Gaussian error of `error_km`,
    rounded to levels) and its top phase, and predicts one layer of `thickness` levels below it (the
    training split's median top-layer thickness) with that phase, clear elsewhere: the skill available from
    what passive radiances can show at best (DESIGN.md, Metrics). Deterministic (seeded)."""

    def __init__(self, thickness_levels: int, error_km: float = ORACLE_TOP_ERROR_KM, seed: int = 0):
        self.thickness, self.error_km = int(thickness_levels), float(error_km)
        self.rng = np.random.default_rng(seed)

    def __call__(self, b) -> torch.Tensor:
        y = b["prof"].numpy()
        top, phase, _ = top_layer(y)
        err = np.rint(self.rng.normal(0.0, self.error_km / LEVEL_DZ_KM, len(top))).astype(np.int64)
        t = np.clip(top + err, 0, N_LEVELS - 1)
        lev = np.arange(N_LEVELS)[None]
        layer = (top[:, None] >= 0) & (lev <= t[:, None]) & (lev > t[:, None] - self.thickness)
        return torch.from_numpy(np.where(layer, phase[:, None], 0).astype(np.int64))


def reference_predictors(clim: Climatology, weights, oracle_error_km: float = ORACLE_TOP_ERROR_KM) -> dict:
    """The reference rows as predictors for evaluate_batches: top-layer oracle, climatology, all clear."""
    return {"oracle": TopLayerOracle(clim.top_thickness_levels, oracle_error_km),
            "climatology": lambda b: clim.predict(b["lat"], weights),
            "all_clear": lambda b: torch.zeros_like(b["prof"], dtype=torch.long)}
