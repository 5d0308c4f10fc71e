"""A simple, honest AHI forward model (PHYSICS.md §4-5).

Visible/NIR (bands 1-6): layer reflectance R_c = tau/(tau+7.7), reduced at 1.6/2.3 um by phase-dependent
absorption (ice darker), stacked over the surface with the adding formula; P-Tree "albedo" is
reflectance x cos(SOZ), zero at night.
Infrared (bands 7-16): L = eps B(T_c) + (1-eps) L_below, bottom-up; eps_11 = 1-exp(-tau_abs) with
tau_abs = tau/2 (ice) or tau (water); other bands eps_b = 1-(1-eps_11)^beta_b with phase-dependent beta
(gives split-window and 8.6-11 um phase signals); water-vapour and CO2 bands only see clouds above their
weighting level; 3.9 um adds reflected sunlight (much more from water clouds) by day.
Noise: NEdT 0.1 K at 300 K (0.25 K for 13.3 um) scaled by dB/dT; visible 0.003 + 1 %.
Thin cirrus (tau < 0.3) is nearly invisible and a layer below tau > ~5 is hidden, as in real data.
"""
from __future__ import annotations

import numpy as np

from ..grid import BAND_WAVELENGTH_UM, ICE, LIQUID, MIXED
from .world import Column

C1, C2 = 1.191042e-5, 1.4387752   # mW/(m2 sr cm-4), cm K
NU = 1e4 / np.asarray(BAND_WAVELENGTH_UM)     # cm-1


def planck(nu, t):
    return C1 * nu ** 3 / np.expm1(C2 * nu / np.maximum(t, 1.0))


def inv_planck(nu, rad):
    return C2 * nu / np.log1p(C1 * nu ** 3 / np.maximum(rad, 1e-9))


SFC_ALB_OCEAN = np.array([0.045, 0.04, 0.03, 0.025, 0.015, 0.01])
SFC_ALB_LAND = np.array([0.06, 0.07, 0.09, 0.28, 0.25, 0.17])
RAYLEIGH = np.array([0.07, 0.05, 0.025, 0.008, 0.0, 0.0])
K_ABS = {ICE: (1, 1, 1, 1, 0.45, 0.25), MIXED: (1, 1, 1, 1, 0.6, 0.4), LIQUID: (1, 1, 1, 1, 0.75, 0.55)}
# beta_b relative to 11.2 um, per phase (bands 7..16)
BETA = {ICE: (1.0, 1.0, 1.0, 1.0, 1.28, 1.0, 0.95, 1.0, 1.2, 1.05),
        MIXED: (1.0, 1.0, 1.0, 1.0, 1.05, 1.0, 0.96, 1.0, 1.1, 1.03),
        LIQUID: (1.0, 1.0, 1.0, 1.0, 0.8, 1.0, 0.97, 1.0, 1.05, 1.0)}
NEDT = np.array([0.1] * 9 + [0.25])
WV_LEVEL_KM = {8: 8.5, 9: 6.5, 10: 4.5, 16: 2.0}   # bands whose weighting peak hides lower clouds


def forward(col: Column, soz_deg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Calibrated AHI bands [16, N]: albedo (bands 1-6) and brightness temperature in K (7-16)."""
    n = col.lat.size
    mu0 = np.cos(np.deg2rad(np.clip(soz_deg, 0, 90)))
    day = np.nan_to_num(soz_deg, nan=180) < 89.0
    present = np.isfinite(col.top)
    tau = np.where(present, col.tau, 0.0)
    ph = col.phase
    out = np.empty((16, n), np.float32)
    # ---------------------------------------------------------------- visible / NIR
    rc_cons = tau / (tau + 7.7)
    for b in range(6):
        kb = np.select([ph == ICE, ph == MIXED, ph == LIQUID],
                       [K_ABS[ICE][b], K_ABS[MIXED][b], K_ABS[LIQUID][b]], 1.0)
        r = np.where(col.land, SFC_ALB_LAND[b], SFC_ALB_OCEAN[b])
        for k in range(col.top.shape[1] - 1, -1, -1):          # bottom-up
            rc, tc = rc_cons[:, k] * kb[:, k], 1 - rc_cons[:, k]
            r = np.where(present[:, k], rc + tc * tc * r / (1 - rc * r), r)
        refl = r + RAYLEIGH[b] / np.maximum(mu0, 0.1) ** 0.5
        refl = refl + rng.normal(0, 1, n) * (0.003 + 0.01 * refl)
        out[b] = np.where(day, np.clip(refl * mu0, 0, 1.2), 0.0)
    # ---------------------------------------------------------------- infrared
    t_sfc_ground = col.temperature(col.dem_km)
    eps11 = 1 - np.exp(-np.where(ph == LIQUID, tau, np.where(ph == MIXED, 0.75 * tau, 0.5 * tau)))
    # emitting level: at the top for water, 0.3-1 km below it for ice
    depth = np.where(ph == LIQUID, 0.0, np.minimum(0.8, 0.3 * (col.top - col.base)))
    t_cloud = col.temperature(np.where(present, col.top - np.nan_to_num(depth), 0.0))
    rh = 0.5 + 0.5 * np.clip((col.t_sfc - 265) / 35, 0, 1)       # crude moisture: warm = moist
    for i, band in enumerate(range(7, 17)):
        nu = NU[band - 1]
        if band in WV_LEVEL_KM:
            z_w = WV_LEVEL_KM[band] + (1.0 if band != 16 else 0.0) * (rh - 0.75)
            lbg = planck(nu, col.temperature(np.broadcast_to(z_w, (n,)).astype(float)))
            visible = present & (col.top > np.asarray(z_w)[..., None] if np.ndim(z_w) else col.top > z_w)
        else:
            dep = {7: 0.8, 11: 2.0 + 2.5 * col.land, 12: 1.0, 13: 0.7 * rh, 14: 1.2 * rh, 15: 3.5 * rh}[band]
            lbg = planck(nu, t_sfc_ground - dep)
            visible = present
        lrad = lbg
        beta = np.select([ph == ICE, ph == MIXED, ph == LIQUID],
                         [BETA[ICE][i], BETA[MIXED][i], BETA[LIQUID][i]], 1.0)
        for k in range(col.top.shape[1] - 1, -1, -1):
            eps = 1 - (1 - eps11[:, k]) ** beta[:, k]
            lrad = np.where(visible[:, k], eps * planck(nu, t_cloud[:, k]) + (1 - eps) * lrad, lrad)
        if band == 12:      # ozone: part of the signal comes from the warm-ish stratosphere
            lrad = 0.78 * lrad + 0.22 * planck(nu, np.full(n, 235.0))
        if band == 7:       # reflected sunlight at 3.9 um by day (water clouds reflect far more)
            r39 = np.where(col.land, 0.08, 0.03)
            for k in range(col.top.shape[1] - 1, -1, -1):
                rk = np.where(ph[:, k] == LIQUID, 0.16, np.where(ph[:, k] == MIXED, 0.09, 0.035)) * rc_cons[:, k] / 0.5
                rk = np.clip(rk, 0, 0.2)
                r39 = np.where(present[:, k], rk + (1 - rc_cons[:, k]) * r39 * (1 - eps11[:, k]), r39)
            lrad = lrad + np.where(day, 14.6 * mu0 * r39 / np.pi, 0.0)
        dbdt = planck(nu, 300.5) - planck(nu, 299.5)
        lrad = lrad + rng.normal(0, 1, n) * NEDT[i] * dbdt
        out[6 + i] = inv_planck(nu, lrad)
    return out
