"""Smooth random fields f(lon, lat, t) = sum_m a_m cos(kx_m lon + ky_m lat - c_m t + phi_m), unit variance.

Each field drifts with a wind and evolves (c_m = k.U - omega_m), so AHI (scene time) and CloudSat
(profile time) see the same, moving clouds. On a grid whose time depends only on the row (AHI scans
north -> south), the sum is separable and evaluates as two matrix products.
"""
from __future__ import annotations

import os

import numpy as np

DEG_PER_S_PER_MS = 1.0 / 111_000.0
PARALLEL_POINTS = 20_000     # points from which `points` evaluates the fields on several threads
THREADS: int | None = None   # threads synthesis may use in a process (None: one per core; slot workers set 1)


class FieldBank:
    def __init__(self, seed: int, names: list[str], n_modes: int = 40, static: tuple[str, ...] = (),
                 scale_deg: tuple[float, float] = (0.15, 8.0), fine: tuple[str, ...] = (),
                 fine_scale_deg: tuple[float, float] = (0.04, 8.0)):
        self.names = list(names)
        rng = np.random.default_rng(seed)
        self.params = {}
        for name in self.names:
            lo, hi = fine_scale_deg if name in fine else scale_deg     # cloud fields vary below the AHI pixel
            lam = np.exp(rng.uniform(np.log(lo), np.log(hi), n_modes))   # wavelength, deg
            ang = rng.uniform(0, 2 * np.pi, n_modes)
            k = 2 * np.pi / lam
            kx, ky = k * np.cos(ang), k * np.sin(ang)
            # red spectrum: larger scales carry more variance (flatter for fine fields, so the small scales
            # carry enough of it to matter from one AHI pixel to the next)
            amp = lam ** (0.5 if name in fine else 0.8)
            amp = amp / np.sqrt(0.5 * np.sum(amp ** 2))
            phi = rng.uniform(0, 2 * np.pi, n_modes)
            if name in static:
                c = np.zeros(n_modes)
            else:
                u, v = rng.uniform(-15, 15), rng.uniform(-6, 6)          # m/s
                omega = 2 * np.pi / rng.uniform(1.0, 3.0, n_modes) / 86400.0  # evolve over 1-3 days
                c = (kx * u + ky * v) * DEG_PER_S_PER_MS - omega
            self.params[name] = (kx, ky, c, phi, amp)

    def points(self, lon, lat, t_s) -> dict[str, np.ndarray]:
        """Evaluate every field at points; t_s = seconds since an arbitrary epoch. Many points: the fields
        on all cores (numpy's cos and BLAS release the GIL; each field's arithmetic is the same either way)."""
        lon = np.asarray(lon, np.float64)[:, None]
        lat = np.asarray(lat, np.float64)[:, None]
        t = np.asarray(t_s, np.float64)[:, None]

        def one(name):
            kx, ky, c, phi, amp = self.params[name]
            return np.cos(kx * lon + ky * lat - c * t + phi) @ amp

        workers = min(len(self.names), THREADS or len(os.sched_getaffinity(0)))
        if workers < 2 or lon.shape[0] < PARALLEL_POINTS:
            return {name: one(name) for name in self.names}
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            return dict(zip(self.names, ex.map(one, self.names)))

    def grid(self, lon, lat, t_row) -> dict[str, np.ndarray]:
        """Evaluate on a grid [nlat, nlon]; t_row[nlat] = time of each row (seconds)."""
        lon = np.asarray(lon, np.float64)[:, None]
        lat = np.asarray(lat, np.float64)[:, None]
        t = np.asarray(t_row, np.float64)[:, None]
        out = {}
        for name, (kx, ky, c, phi, amp) in self.params.items():
            ax = kx * lon + phi                 # [nlon, M]
            by = ky * lat - c * t               # [nlat, M]
            out[name] = (np.cos(by) * amp) @ np.cos(ax).T - (np.sin(by) * amp) @ np.sin(ax).T
        return out
