"""A simple, honest AHI forward model (PHYSICS.md §4-5).

Everything a layer shows is driven by its RADIATIVE top phase (`col.rad_phase`, not the label: a
supercooled-liquid-topped mixed layer looks liquid, a deep layer with a top below -38 C looks ice) and
by the effective radius r_e of its top (`col.re`): no fixed spectral constants per phase.
Visible/NIR (bands 1-6): layer reflectance R_c = tau/(tau+7.7), reduced at 1.6/2.3 um by absorption
k_b = exp(-A_b(phase) sqrt(r_e)) (calibrated to PHYSICS §4a: water r_e 10 um -> 0.75 / 0.55, ice r_e 40 um
-> 0.45 / 0.25; large drops and small ice overlap, as in real data), stacked over a surface whose albedo
varies within each surface type, with the adding formula; P-Tree "albedo" is reflectance x cos(SOZ),
zero at night.
Infrared (bands 7-16): L = eps B(T_c) + (1-eps) L_below, bottom-up; eps_11 = 1-exp(-tau_abs) with
tau_abs = tau/2 (ice) or tau (water); other bands eps_b = 1-(1-eps_11)^beta_b with beta depending on
phase AND r_e (small particles widen the split-window and 8.6-11 um differences); water-vapour and CO2
bands only see clouds above their weighting level, whose height follows the column's own water vapour
field; 3.9 um adds reflected sunlight by day, r_sat = 0.35 exp(-A_3.9(phase) sqrt(r_e)).
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
# absorption at 1.6 / 2.3 / 3.9 um: k = exp(-A sqrt(r_e)) (asymptotic theory: 1 - R ~ sqrt(absorption * r_e))
A_ABS = {ICE: (0.1263, 0.2192, 0.364), MIXED: (0.108, 0.204, 0.306), LIQUID: (0.091, 0.189, 0.2475)}
# beta_b relative to 11.2 um, per phase (bands 7..16), for bands whose beta does not depend on r_e
BETA = {ICE: (1.0, 1.0, 1.0, 1.0, 1.2, 1.0, 0.95, 1.0, 1.15, 1.05),
        MIXED: (1.0, 1.0, 1.0, 1.0, 1.05, 1.0, 0.96, 1.0, 1.1, 1.03),
        LIQUID: (1.0, 1.0, 1.0, 1.0, 0.85, 1.0, 0.97, 1.0, 1.05, 1.0)}


def by_phase(ph, table: dict, i: int):
    return np.select([ph == ICE, ph == MIXED, ph == LIQUID], [table[ICE][i], table[MIXED][i], table[LIQUID][i]], 1.0)


def nir_absorption(ph, re, band: int):
    """Factor k_b of the conservative reflectance at 1.6 (band 5) / 2.3 (band 6) um, from phase and r_e."""
    return np.exp(-by_phase(ph, A_ABS, band - 5) * np.sqrt(np.nan_to_num(re, nan=10.0)))


def beta_of(ph, re, band: int):
    """Emissivity exponent of `band` relative to 11.2 um. 8.6 and 12.4 um depend on r_e: small particles
    absorb relatively more at 12.4 (larger split window) and at 8.6 um (for ice)."""
    re = np.nan_to_num(re, nan=15.0)
    small = 20.0 / (re + 20.0)
    if band == 15:
        return 1.0 + 0.45 * small * np.where(ph == ICE, 1.0, np.where(ph == MIXED, 0.6, 0.35))
    if band == 11:
        return np.where(ph == ICE, 0.95 + 0.5 * small, np.where(ph == MIXED, 0.85 + 0.3 * small, 0.7 + 0.3 * small))
    return by_phase(ph, BETA, band - 7)
NEDT = np.array([0.1] * 9 + [0.25])
WV_LEVEL_KM = {8: 8.5, 9: 6.5, 10: 4.5, 16: 2.0}   # bands whose weighting peak hides lower clouds


def forward(col: Column, soz_deg: np.ndarray, noise: np.random.Generator | np.ndarray) -> np.ndarray:
    """Calibrated AHI bands [16, N]: albedo (bands 1-6) and brightness temperature in K (7-16).
    noise: standard normal draws [16, N] for the instrument noise of each band, or a Generator to draw them
    from (the same draws, in band order)."""
    n = col.lat.size
    if isinstance(noise, np.random.Generator):
        noise = noise.standard_normal((16, n))
    mu0 = np.cos(np.deg2rad(np.clip(soz_deg, 0, 90)))
    day = np.nan_to_num(soz_deg, nan=180) < 89.0
    present = np.isfinite(col.top)
    tau = np.where(present, col.tau, 0.0)
    ph = col.rad_phase                      # what the radiances see (not the label)
    re = col.re
    frac = np.nan_to_num(getattr(col, "frac", np.ones_like(col.top)), nan=1.0)   # horizontal cover per layer
    out = np.empty((16, n), np.float32)
    # ---------------------------------------------------------------- visible / NIR
    rc_cons = tau / (tau + 7.7)
    # surface albedo varies within each type: ocean +-25 % (wind, glint-free), land +-45 % (cover, soil)
    sfc_scale = np.where(col.land, np.exp(0.45 * col.alb_u), np.exp(0.25 * col.alb_u))
    for b in range(6):
        kb = nir_absorption(ph, re, b + 1) if b >= 4 else np.ones_like(tau)
        r = np.clip(np.where(col.land, SFC_ALB_LAND[b], SFC_ALB_OCEAN[b]) * sfc_scale, 0.005, 0.6)
        for k in range(col.top.shape[1] - 1, -1, -1):          # bottom-up; a broken layer covers frac
            rc, tc = rc_cons[:, k] * kb[:, k], 1 - rc_cons[:, k]
            r = np.where(present[:, k], frac[:, k] * (rc + tc * tc * r / (1 - rc * r)) + (1 - frac[:, k]) * r, r)
        refl = r + RAYLEIGH[b] / np.maximum(mu0, 0.1) ** 0.5
        refl = refl + noise[b] * (0.003 + 0.01 * refl)
        out[b] = np.where(day, np.clip(refl * mu0, 0, 1.2), 0.0)
    # ---------------------------------------------------------------- infrared
    t_sfc_ground = col.temperature(col.dem_km)
    eps11 = 1 - np.exp(-np.where(ph == LIQUID, tau, np.where(ph == MIXED, 0.75 * tau, 0.5 * tau)))
    # emitting level: at the top for water, 0.3-1 km below it for ice
    depth = np.where(ph == LIQUID, 0.0, np.minimum(0.8, 0.3 * (col.top - col.base)))
    t_cloud = col.temperature(np.where(present, col.top - np.nan_to_num(depth), 0.0))
    rh = col.rh                                                   # the column's own water-vapour field
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
        beta = beta_of(ph, re, band)
        for k in range(col.top.shape[1] - 1, -1, -1):
            eps = frac[:, k] * (1 - (1 - eps11[:, k]) ** beta[:, k])     # cover x emissivity
            lrad = np.where(visible[:, k], eps * planck(nu, t_cloud[:, k]) + (1 - eps) * lrad, lrad)
        if band == 12:      # ozone: part of the signal comes from the warm-ish stratosphere
            lrad = 0.78 * lrad + 0.22 * planck(nu, np.full(n, 235.0))
        if band == 7:       # reflected sunlight at 3.9 um by day (water clouds reflect far more)
            r39 = np.where(col.land, 0.08, 0.03)
            for k in range(col.top.shape[1] - 1, -1, -1):
                r_sat = 0.35 * np.exp(-by_phase(ph[:, k], A_ABS, 2) * np.sqrt(np.nan_to_num(re[:, k], nan=10.0)))
                rk = np.clip(r_sat * rc_cons[:, k] / 0.5, 0, 0.25)
                new = rk + (1 - rc_cons[:, k]) * r39 * (1 - eps11[:, k])
                r39 = np.where(present[:, k], frac[:, k] * new + (1 - frac[:, k]) * r39, r39)
            lrad = lrad + np.where(day, 14.6 * mu0 * r39 / np.pi, 0.0)
        dbdt = planck(nu, 300.5) - planck(nu, 299.5)
        lrad = lrad + noise[6 + i] * NEDT[i] * dbdt
        out[6 + i] = inv_planck(nu, lrad)
    return out
