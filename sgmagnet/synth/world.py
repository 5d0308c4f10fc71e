"""Atmosphere and cloud layers at any set of points (PHYSICS.md §1-3).

Every quantity is a pointwise function of smooth fields, so the same column is seen by AHI (on its
grid) and by CloudSat (at its profile points). Layers come from four regimes -- high (Ci), middle (As /
Ac), low (St / Sc / Cu) and deep (Ns / DC) -- whose cover varies with latitude; overlapping layers are
resolved so that a column holds at most 3 separated layers plus deep convection. Each layer gets a
phase from its temperatures (Hu et al. 2010 liquid fraction, ice below -38 C, liquid above 0 C,
mixed for deep layers and, with a probability growing with cold and depth, for liquid-topped layers
colder than -5 C) and an optical depth. Layer types follow the 2B-CLDCLASS-LIDAR codes (1 Ci, 2 As,
3 Ac, 4 St, 5 Sc, 6 Cu, 7 Ns, 8 DC). v2 adds what AHI sees (radiative top phase, effective radius,
horizontal cover) apart from the label, and the backgrounds (docs/realism.md).
"""
from __future__ import annotations

import numpy as np

from ..grid import ICE, LIQUID, MIXED
from .config import SynthConfig
from .fields import FieldBank

FIELD_NAMES = ["land", "oro", "tsfc", "lapse",
               "hi_p", "hi_top", "hi_dz", "hi_tau", "hi_u",
               "mid_p", "mid_base", "mid_dz", "mid_tau", "mid_kind", "mid_u",
               "low_p", "low_base", "low_dz", "low_tau", "low_kind", "low_u",
               "deep_p", "deep_kind", "deep_top", "deep_tau", "miss_u",
               # v2: particle size, surface brightness, water vapour, inversions, radiative top phase
               "re_liq", "re_ice", "alb", "wv", "inv", "rad_u", "frac", "dc_ice", "mix_u"]
STATIC_FIELDS = ("land", "oro", "alb")
# cloud occurrence and optical properties vary down to ~4 km (a few AHI pixels at 0.05 deg), as real cloud
# fields do; the collocated CloudSat profile and the pixel centre then need not see the same cloud
FINE_FIELDS = ("hi_p", "mid_p", "low_p", "hi_tau", "mid_tau", "low_tau", "frac", "hi_dz", "low_dz")
CLOUD_ATTRS = ("base", "top", "tau", "ctype", "phase", "rad_phase", "re", "frac", "reported")   # what parallax moves
K_MAX = 4
CI, AS, AC, ST, SC, CU, NS, DC = 1, 2, 3, 4, 5, 6, 7, 8


def phi(x):
    """Standard normal CDF (logistic approximation, |err| < 0.01)."""
    return 1.0 / (1.0 + np.exp(-1.702 * x))


def quantile(p):
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p)) / 1.702


def f_liquid(t_k):
    """Hu et al. (2010) CALIOP liquid fraction vs temperature (PHYSICS.md §2)."""
    tc = np.clip(t_k - 273.16, -46, 46)
    p = 7.6725 + 1.0118 * tc + 0.1422 * tc ** 2 + 0.0106 * tc ** 3 + 0.000339 * tc ** 4 + 0.00000395 * tc ** 5
    return 1.0 / (1.0 + np.exp(-p))


class Column:
    """Columns at N points. Arrays: [N] for the atmosphere, [N, K_MAX] for layers (top-down, NaN = none)."""

    def __init__(self, f: dict, lat: np.ndarray):
        lat = np.asarray(lat, np.float64)
        n = lat.size
        self.lat = lat
        w_t = np.exp(-(lat / 22.0) ** 2)           # tropical weight
        w_m = 1 - w_t
        # --- surface, temperature
        self.land = f["land"] > 0.55
        # terrain of the region (Australia < 2.2 km, New Guinea / Borneo peaks 4-4.8 km): mostly < 1.5 km
        self.dem_km = np.where(self.land, np.clip(np.clip(0.45 * (f["oro"] + 0.6), 0, None) ** 1.6, 0, 4.5), 0.0)
        # surface brightness varies within each surface type (PHYSICS §4a: ocean 0.03-0.06, land by cover)
        self.alb_u = f["alb"]
        # column water vapour: its own field, not a function of surface temperature
        self.rh = np.clip(0.6 + 0.22 * f["wv"], 0.15, 1.0)
        absl = np.abs(lat)
        t_sfc = 301.0 - 26.0 * np.clip((absl - 15) / 45, 0, 1) ** 1.3
        t_sfc -= np.where(lat > 20, 6.0 * np.clip((lat - 20) / 25, 0, 1), 0.0)   # boreal autumn/winter
        self.t_sfc = t_sfc + 2.5 * f["tsfc"]                                      # synoptic noise (sea level)
        self.lapse = 6.3 + 0.35 * f["lapse"]                                     # K/km
        self.z_trop = np.clip(16.5 - 6.5 * np.clip((absl - 25) / 20, 0, 1), 9.5, 16.5) - 0.3 * np.clip((absl - 45) / 15, 0, 1)

        def p_of(frac, field):
            return field > quantile(1 - frac)

        # --- regimes
        hi = p_of(0.42 * w_t + 0.32 * w_m, f["hi_p"])
        mid = p_of(0.14 * w_t + 0.22 * w_m, f["mid_p"])
        low = p_of(np.where(self.land, 0.22, 0.34 * w_t + 0.45 * w_m), f["low_p"])
        deep = p_of(0.06 * w_t + 0.08 * w_m, f["deep_p"])

        u = lambda x: phi(x)  # noqa: E731  uniform(0,1) from a normal field
        # high: cirrus
        hi_top = np.where(absl < 30, self.z_trop - 0.3 - 3.0 * u(f["hi_top"]), 8.5 + 3.5 * u(f["hi_top"]))
        hi_top = np.minimum(hi_top, self.z_trop + 0.5)
        hi_dz = 0.6 + 3.2 * u(f["hi_dz"]) ** 1.2
        hi_tau = 0.5 * hi_dz * 10 ** (0.75 * f["hi_tau"])         # optical depth grows with thickness
        # middle: As (thick, deep) or Ac (thin)
        is_as = f["mid_kind"] > 0
        mid_base = self.dem_km + 2.0 + 4.5 * u(f["mid_base"])
        mid_dz = np.where(is_as, 1.5 + 2.5 * u(f["mid_dz"]), 0.4 + 1.1 * u(f["mid_dz"]))
        mid_tau = mid_dz * np.where(is_as, 5.0, 5.0) * np.exp(0.45 * f["mid_tau"])
        # low: St / Sc / Cu
        is_cu = (f["low_kind"] > 0.4) & (absl < 35)
        low_base = self.dem_km + 0.3 + 1.4 * u(f["low_base"])
        low_dz = np.where(is_cu, 0.8 + 2.2 * u(f["low_dz"]), 0.3 + 1.0 * u(f["low_dz"]))
        low_tau = np.clip(12.0 * low_dz * np.exp(0.4 * f["low_tau"]), 1.0, 60.0)
        low_type = np.where(is_cu, CU, np.where(low_base - self.dem_km < 0.5, ST, SC))
        # deep: DC (tropics) / Ns
        is_dc = (f["deep_kind"] > -0.3) & (absl < 30)
        deep_base = self.dem_km + 0.5 + 1.0 * u(f["low_base"])
        deep_top = np.where(is_dc, self.z_trop - 2.0 * u(f["deep_top"]), 6.0 + 3.0 * u(f["deep_top"]))
        deep_tau = np.where(is_dc, 50 + 100 * u(f["deep_tau"]), 30 + 50 * u(f["deep_tau"]))

        nan = np.full(n, np.nan)
        L = {  # slot: (present, base, top, tau, type)
            "hi": [hi, hi_top - hi_dz, hi_top, hi_tau, np.full(n, CI)],
            "mid": [mid & ~deep, mid_base, mid_base + mid_dz, mid_tau, np.where(is_as, AS, AC)],
            "low": [low & ~deep, low_base, low_base + low_dz, low_tau, low_type],
            "deep": [deep, deep_base, deep_top, deep_tau, np.where(is_dc, DC, NS)],
        }
        # cirrus touching deep convection becomes its anvil top
        merge = L["hi"][0] & deep & (L["hi"][1] < deep_top + 0.5)
        L["deep"][2] = np.where(merge, np.maximum(deep_top, hi_top), deep_top)
        L["hi"][0] = L["hi"][0] & ~merge
        # keep >= 0.5 km gaps between stacked layers: clip the lower one, drop it when too thin
        for upper, lower in (("hi", "mid"), ("hi", "low"), ("mid", "low"), ("hi", "deep")):
            both = L[upper][0] & L[lower][0]
            new_top = np.where(both, np.minimum(L[lower][2], L[upper][1] - 0.5), L[lower][2])
            L[lower][2] = new_top
            L[lower][0] = L[lower][0] & (new_top - L[lower][1] >= 0.25)
        order = ["hi", "deep", "mid", "low"]
        base = np.stack([np.where(L[k][0], L[k][1], nan) for k in order], 1)
        top = np.stack([np.where(L[k][0], L[k][2], nan) for k in order], 1)
        tau = np.stack([np.where(L[k][0], L[k][3], nan) for k in order], 1)
        ctype = np.stack([np.where(L[k][0], L[k][4], 0) for k in order], 1)
        # sort top-down by top height
        key = np.where(np.isfinite(top), -top, np.inf)
        idx = np.argsort(key, axis=1, kind="stable")
        take = lambda a: np.take_along_axis(a, idx, 1)  # noqa: E731
        self.base, self.top, self.tau, self.ctype = take(base), take(top), take(tau), take(ctype)
        # --- a trade/subtropical inversion capping stratocumulus over the ocean (PHYSICS §3: +1-3 K)
        sc = L["low"][0] & np.isin(L["low"][4], (ST, SC)) & ~self.land & (absl > 10) & (absl < 40)
        self.z_inv = np.where(sc, L["low"][2], np.inf)
        self.dt_inv = np.where(sc, 1.0 + 2.0 * u(f["inv"]), 0.0)
        # --- phase per layer
        u_slot = np.stack([u(f["hi_u"]), u(f["low_u"]), u(f["mid_u"]), u(f["low_u"])], 1)
        u_slot = take(u_slot)
        t_top, t_base = self.temperature(self.top), self.temperature(self.base)
        shift = np.where(lat < 0, 3.0, 0.0)[:, None] + np.where(self.land, 0.0, 1.5)[:, None]
        # As is deep and ice-dominated, Ac shallow and liquid-topped (PHYSICS §1b, Sassen & Wang 2012): an As
        # top is liquid with 0.3 x the Hu et al. probability, so ice tops are common between -5 and -38 C
        is_as_l = self.ctype == AS
        liquid = u_slot < f_liquid(t_top + shift) * np.where(is_as_l, 0.3, 1.0)
        # a liquid-topped layer colder than -5 C holds ice below its top (mixed) with a probability that grows
        # with cold and with depth (Hu et al. 2010: the ice fraction rises as T falls), not by a hard
        # thickness threshold that brightness would give away
        dz = self.top - self.base
        p_mix = np.clip((268.0 - t_top) / 20.0, 0, 1) * np.clip(0.35 + 0.65 * dz / 1.5, 0, 1)
        phase = np.where(liquid, LIQUID, ICE)
        phase = np.where(liquid & (t_top < 268) & (u(f["mix_u"])[:, None] < p_mix), MIXED, phase)
        phase = np.where(~liquid & ~is_as_l & (t_base > 273.15), MIXED, phase)    # ice top, liquid base
        # thick As reaching below -5 C may hold liquid under its ice top ("As: ice or mixed", PHYSICS §1b,
        # §2 recipe 3): mixed for half of them (a smooth field, independent of the radiances), looks ice
        as_mix = u(0.7 * f["mix_u"] + 0.7 * f["dc_ice"])[:, None] < 0.5
        phase = np.where(is_as_l & ~liquid & (t_base > 268.0) & as_mix, MIXED, phase)
        phase = np.where(t_top >= 273.15, LIQUID, phase)
        phase = np.where(t_top < 235.15, np.where(t_base > 268, MIXED, ICE), phase)
        deep_l = np.isin(self.ctype, (NS, DC))
        phase = np.where(deep_l, np.where(t_base > 268, MIXED, ICE), phase)
        # Ns crossing the freezing level is mixed while its top is warmer than the glaciation temperature
        # ("mixed between 0 and about -20 C and ice above", PHYSICS §2 recipe 3), which varies between -10
        # and -30 C from a smooth field: a cold-topped Ns is labelled ice, a warm-topped one mixed
        t_glac = 243.15 + 20.0 * u(0.7 * f["mix_u"] - 0.7 * f["deep_tau"])[:, None]
        phase = np.where((self.ctype == NS) & (t_top <= t_glac), ICE, phase)
        # deep convection is labelled "mixed or ice" (PHYSICS §1b): the same-looking tower may be either
        dc_ice = (self.ctype == DC) & (u(f["dc_ice"])[:, None] < 0.4)
        phase = np.where(dc_ice, ICE, phase)
        present = np.isfinite(self.top)
        # seeder-feeder: ice falling from a layer above glaciates part of a supercooled liquid layer below
        # (Bergeron-Findeisen), so a supercooled layer under ice is mixed for 90 % of the columns (a smooth
        # field); this touches hidden lower layers only (PHYSICS §1a: ice-above-mixed 9 % of profiles)
        is_ice = present & (phase == ICE)
        ice_above = np.cumsum(is_ice, axis=1) - is_ice > 0
        seeded = ice_above & (phase == LIQUID) & (t_top < 273.15) & (u(f["mix_u"] - f["hi_u"])[:, None] < 0.9)
        phase = np.where(seeded, MIXED, phase)
        self.phase = np.where(present, phase, 0).astype(np.int64)
        # --- what AHI sees at each layer top is not the lidar/radar label (v2): the radiative top phase.
        # A mixed layer with a supercooled-liquid top looks liquid (or in between); a mixed layer whose ice
        # top sits over liquid looks ice; deep layers (Ns, DC) radiate as ice when their top is colder than
        # -38 C and, above that, as liquid or ice as the Hu et al. top fraction decides.
        r = take(np.stack([u(f["rad_u"]), u(-f["rad_u"]), u(f["rad_u"] * 0.7 + f["low_u"] * 0.3),
                           u(f["mid_u"] * 0.5 - f["rad_u"] * 0.5)], 1))
        liquid_top = liquid & ~deep_l & (phase == MIXED)
        rad = np.where(phase == MIXED, ICE, phase)
        rad = np.where(liquid_top, np.where(r < 0.6, LIQUID, MIXED), rad)
        deep_liq = u_slot < f_liquid(t_top + shift)
        rad = np.where(deep_l, np.where(t_top < 235.15, ICE, np.where(deep_liq, LIQUID, ICE)), rad)
        self.rad_phase = np.where(present, rad, 0).astype(np.int64)
        # --- effective radius (um) of the radiating top: water 5-20 (smaller over land: more aerosol),
        # ice 15-80 growing with temperature (PHYSICS §1b: ice mean ~48 um)
        re_liq = np.exp(np.log(np.where(self.land, 8.5, 12.0))[:, None] + 0.35 * f["re_liq"][:, None]
                        + 0.3 * (r - 0.5))
        re_ice = np.clip(36.0 + 1.0 * (t_top - 210.0), 12.0, 90.0) * np.exp(0.35 * f["re_ice"][:, None])
        re = np.where(self.rad_phase == LIQUID, re_liq, np.where(self.rad_phase == ICE, re_ice,
                                                                 0.5 * (re_liq + re_ice)))
        self.re = np.where(present, np.clip(re, 4.0, 90.0), np.nan)
        # --- horizontal cover within a ~2 km AHI pixel: broken Cu / Sc / Ac fill only part of it, while the
        # CloudSat profile under the track either hits the cloud or not
        fu = u(f["frac"])[:, None]
        frac = np.select([self.ctype == CU, self.ctype == SC, self.ctype == AC, self.ctype == CI],
                         [0.3 + 0.6 * fu, 0.7 + 0.3 * fu, 0.55 + 0.45 * fu, 0.75 + 0.25 * fu], 1.0)
        self.frac = np.where(present, frac, np.nan)
        # --- what CloudSat/CALIPSO report (label blind spots, PHYSICS §1c): low tops < 1.2 km are
        # clutter for the CPR and hidden from the lidar under tau > 5, so they are often missed.
        tau_above = np.nancumsum(np.nan_to_num(self.tau), axis=1) - np.nan_to_num(self.tau)
        low_top = (self.top - self.dem_km[:, None]) < 1.2
        miss = low_top & ((tau_above > 5) | (u(f["miss_u"])[:, None] < 0.43))
        self.reported = np.isfinite(self.top) & ~miss

    def temperature(self, z_km):
        """T(z): lapse rate to the tropopause, isothermal above, plus the inversion above a capped Sc top."""
        z = np.asarray(z_km, np.float64)
        col = (lambda a: a) if z.ndim == 1 else (lambda a: a[:, None])
        t = col(self.t_sfc) - col(self.lapse) * np.minimum(z, col(self.z_trop))
        z_inv = getattr(self, "z_inv", None)
        if z_inv is not None:
            t = t + col(self.dt_inv) * np.clip((z - col(z_inv)) / 0.3, 0.0, 1.0)
        return t

    def take(self, idx: np.ndarray, cloud_idx: np.ndarray | None = None) -> "Column":
        """Columns `idx`; with cloud_idx, their surface and atmosphere carry the cloud layers of columns
        `cloud_idx` instead (parallax: a pixel sees the clouds of another column along its line of sight)."""
        n = self.lat.size
        out = object.__new__(Column)
        for k, v in self.__dict__.items():
            if isinstance(v, np.ndarray) and v.ndim and v.shape[0] == n:
                v = v[cloud_idx if cloud_idx is not None and k in CLOUD_ATTRS else idx]
            setattr(out, k, v)
        return out

    def cloudy(self):
        return np.isfinite(self.top).any(1)


class World:
    """Fields + orbit for one seed; t=0 of the fields and of the orbit is the epoch day (default: the archive
    start) 00:00 UTC, so two runs with the same seed and epoch describe one world at every instant."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.t0 = np.datetime64(cfg.epoch or cfg.start, "ns")
        self.bank = FieldBank(cfg.seed, FIELD_NAMES, static=STATIC_FIELDS, fine=FINE_FIELDS)
        self.u0 = float(np.random.default_rng(cfg.seed + 7919).uniform(0, 2 * np.pi))

    def seconds(self, t):
        return (t - self.t0).astype("timedelta64[ns]").astype(np.float64) / 1e9

    def columns_at(self, lat, lon, t):
        return Column(self.bank.points(np.mod(lon, 360.0), lat, self.seconds(t)), lat)
