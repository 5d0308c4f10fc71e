"""The synthetic generator's physics, effect by effect (benchmark realism v2, PHYSICS.md): what AHI sees is
not the label, no fixed spectral constants per phase, geometry (parallax, navigation, footprint), backgrounds."""
import numpy as np
import pytest

from sgmagnet.grid import ICE, LIQUID, MIXED
from sgmagnet.synth import orbit
from sgmagnet.synth.instrument import KM_PER_DEG, blur, parallax_offset_px
from sgmagnet.synth.fields import FieldBank
from sgmagnet.synth.radiance import forward, nir_absorption
from sgmagnet.synth.world import AS, CU, DC, FIELD_NAMES, NS, SC, ST, STATIC_FIELDS, Column


@pytest.fixture(scope="module")
def col():
    """20,000 columns over the paper's region at one time."""
    rng = np.random.default_rng(0)
    n = 20000
    lat, lon = rng.uniform(-60, 60, n), rng.uniform(100, 160, n)
    f = FieldBank(5, FIELD_NAMES, static=STATIC_FIELDS).points(lon, lat, np.zeros(n))
    return Column(f, lat)


def test_parallax_moves_a_high_cloud_by_the_expected_pixels():
    res = 0.05
    # on the equator, 20 deg east of the sub-satellite point: the satellite is due west
    dr, dc = parallax_offset_px(np.array([12.0]), np.array([45.0]), np.array([0.0]), np.array([orbit.SUB_LON + 20]), res)
    assert abs(dr[0]) < 1e-6 and dc[0] == pytest.approx(-12.0 / (res * KM_PER_DEG), rel=1e-6)   # 2.16 px west
    # 30 N on the sub-satellite meridian: the satellite is due south (rows grow southward)
    dr, dc = parallax_offset_px(np.array([15.0]), np.array([40.0]), np.array([30.0]), np.array([orbit.SUB_LON]), res)
    assert dc[0] == pytest.approx(0.0, abs=1e-6) and dr[0] == pytest.approx(15 * np.tan(np.deg2rad(40)) / (res * KM_PER_DEG))
    # a low cloud barely moves; a clear column not at all; never more than 30 km
    assert abs(parallax_offset_px(np.array([0.5]), np.array([45.0]), np.array([0.0]), np.array([150.0]), res)[1][0]) < 0.1
    assert parallax_offset_px(np.array([np.nan]), np.array([60.0]), np.array([0.0]), np.array([150.0]), res)[1][0] == 0
    big = parallax_offset_px(np.array([18.0]), np.array([80.0]), np.array([0.0]), np.array([170.0]), res)[1][0]
    assert abs(big) == pytest.approx(30 / (res * KM_PER_DEG))


def test_parallax_moves_clouds_not_the_surface(col):
    idx = np.arange(100)
    src = idx[::-1].copy()
    seen = col.take(idx, cloud_idx=src)
    assert np.array_equal(seen.dem_km, col.dem_km[idx]) and np.array_equal(seen.t_sfc, col.t_sfc[idx])
    assert np.array_equal(np.nan_to_num(seen.top, nan=-1), np.nan_to_num(col.top[src], nan=-1))
    assert np.array_equal(seen.rad_phase, col.rad_phase[src])


def test_what_ahi_sees_at_the_top_is_not_the_label(col):
    present = np.isfinite(col.top)
    t_top = col.temperature(col.top)
    deep = present & np.isin(col.ctype, (NS, DC))
    cold = deep & (t_top < 235.15)
    assert cold.sum() > 20 and (col.rad_phase[cold] == ICE).all()          # a DC/Ns top below -38 C radiates as ice
    assert (col.phase[cold] == MIXED).any()                                 # ... though labelled mixed
    mixed = present & (col.phase == MIXED) & ~deep
    assert (col.rad_phase[mixed] == LIQUID).mean() > 0.2                    # supercooled-liquid tops look liquid
    assert (col.rad_phase[present & (col.phase == LIQUID)] == LIQUID).all()


def test_effective_radius_varies_and_darkens_the_absorbing_bands(col):
    present = np.isfinite(col.top)
    liq = present & (col.rad_phase == LIQUID)
    ice = present & (col.rad_phase == ICE)
    assert 6 < np.median(col.re[liq]) < 14 and 30 < np.median(col.re[ice]) < 60        # PHYSICS §1b
    # the 1.6 um signatures of the two phases overlap (no fixed constant per phase)
    k_liq, k_ice = nir_absorption(LIQUID, col.re[liq], 5), nir_absorption(ICE, col.re[ice], 5)
    assert np.percentile(k_liq, 1) < np.percentile(k_ice, 99)
    # larger particles absorb more: darker at 1.6 and 2.3 um (documented direction), same at 0.64 um
    for band in (5, 6):
        assert nir_absorption(np.array([LIQUID]), np.array([20.0]), band) < nir_absorption(np.array([LIQUID]), np.array([8.0]), band)
        assert nir_absorption(np.array([ICE]), np.array([60.0]), band) < nir_absorption(np.array([ICE]), np.array([20.0]), band)
    assert nir_absorption(np.array([LIQUID]), np.array([10.0]), 5)[0] == pytest.approx(0.75, abs=0.01)
    assert nir_absorption(np.array([ICE]), np.array([40.0]), 6)[0] == pytest.approx(0.25, abs=0.01)
    sel = np.flatnonzero(liq.any(1) & (np.nan_to_num(col.tau) > 5).any(1))[:500]
    small, large = col.take(sel), col.take(sel)
    small.re, large.re = np.where(np.isfinite(small.re), 6.0, np.nan), np.where(np.isfinite(large.re), 25.0, np.nan)
    soz = np.full(len(sel), 30.0)
    a, b = forward(small, soz, np.random.default_rng(1)), forward(large, soz, np.random.default_rng(1))
    assert (b[4] < a[4]).mean() > 0.9 and np.allclose(a[2], b[2])


def test_backgrounds(col):
    assert col.dem_km.max() <= 4.5 and np.percentile(col.dem_km[col.land], 90) < 2.0    # no 11 km mountains
    assert abs(np.corrcoef(col.rh, col.t_sfc)[0, 1]) < 0.3                           # vapour is its own field
    low = np.isfinite(col.top) & np.isin(col.ctype, (ST, SC, CU))
    dz, tau = (col.top - col.base)[low], col.tau[low]
    assert np.corrcoef(np.log(dz), np.log(tau))[0, 1] > 0.5                            # thicker = optically thicker
    inv = np.isfinite(col.z_inv)
    assert inv.sum() > 50
    i = np.flatnonzero(inv)[:200]
    z = col.z_inv[i] + 0.5
    no_inv = col.t_sfc[i] - col.lapse[i] * np.minimum(z, col.z_trop[i])
    assert np.allclose(col.take(i).temperature(z) - no_inv, col.dt_inv[i])
    assert ((col.dt_inv[i] >= 1) & (col.dt_inv[i] <= 3)).all()                          # +1-3 K (PHYSICS §3)
    clear = ~np.isfinite(col.top).any(1) & col.land
    b4 = forward(col.take(np.flatnonzero(clear)[:400]), np.full(min(400, clear.sum()), 20.0), np.random.default_rng(0))[3]
    assert b4.std() / b4.mean() > 0.2                                                   # land albedo varies


def test_footprint_blur_keeps_the_mean_and_smooths():
    rng = np.random.default_rng(0)
    img = rng.normal(280, 5, (60, 80)).astype(np.float32)
    out = blur(img, 0.8)
    assert out.shape == img.shape and abs(out.mean() - img.mean()) < 0.05 and out.std() < 0.7 * img.std()
    assert blur(img, 0.05) is img


def test_broken_clouds_fill_part_of_the_pixel_and_dc_is_mixed_or_ice(col):
    present = np.isfinite(col.top)
    cu, deep = present & (col.ctype == CU), present & np.isin(col.ctype, (NS, DC))
    assert col.frac[cu].mean() < 0.8 and (col.frac[deep] == 1).all()
    sel = np.flatnonzero(cu.any(1) & (present.sum(1) == 1))[:300]
    full, part = col.take(sel), col.take(sel)
    full.frac = np.where(np.isfinite(full.frac), 1.0, np.nan)
    soz = np.full(len(sel), 30.0)
    a, b = forward(full, soz, np.random.default_rng(2)), forward(part, soz, np.random.default_rng(2))
    assert (b[2] <= a[2] + 1e-3).mean() > 0.95 and (b[13] >= a[13] - 0.3).mean() > 0.95   # darker VIS, warmer IR
    dc = present & (col.ctype == DC)
    assert 0.2 < (col.phase[dc] == ICE).mean() < 0.8 and (col.phase[dc] == MIXED).any()


def test_top_phase_probe_runs_on_shards(tiny_shards):
    from hpc.bench.probe_top_phase import probe, top_phase

    y = np.full((3, 38), 255, np.uint8)
    y[0, :10], y[0, 10:14], y[0, 3:5] = 0, 2, 3
    y[1, :] = 0
    y[2, 20] = 1
    assert top_phase(y).tolist() == [2, 0, 1]
    root, _ = tiny_shards
    r = probe(str(root), "train", "test")
    assert r["train_pixels"] > 0 and 0 <= r["all"]["accuracy"] <= 1 and r["all"]["pixels"] > 0


def test_cloud_fields_vary_below_the_pixel_scale():
    from sgmagnet.synth.world import FINE_FIELDS

    bank = FieldBank(0, ["smooth", "fine"], fine=("fine",))
    lam = {k: 2 * np.pi / np.hypot(v[0], v[1]) for k, v in bank.params.items()}
    assert lam["smooth"].min() >= 0.15 and lam["fine"].min() < 0.1
    # neighbours 0.05 deg apart differ more in a fine field
    lon = np.linspace(120, 140, 4001)
    f = bank.points(lon, np.zeros_like(lon), np.zeros_like(lon))
    d = {k: np.abs(np.diff(v[::10])).mean() for k, v in f.items()}
    assert d["fine"] > 1.5 * d["smooth"]
    # cloudy chords of a fine occurrence field are tens of km (East Asia, 2B-CLDCLASS-LIDAR: 82 km mean)
    c = f["fine"][::10] > 0.3
    chord_km = 0.05 * KM_PER_DEG / max((c[1:] != c[:-1]).mean(), 1e-9)
    assert 30 < chord_km < 200
    assert {"hi_p", "mid_p", "low_p", "frac"} <= set(FINE_FIELDS)


def test_label_rules_v21_deep_layers_and_altostratus(col):
    """v2.1 (PHYSICS §1b, §2 recipe 3): Ns is mixed while its top is warmer than a glaciation temperature
    between -30 and -10 C and ice above it; DC is mixed or ice; As is ice-dominated and ice or mixed; the label
    is decided by fields the radiances do not see (mixed As radiate as ice)."""
    present = np.isfinite(col.top)
    t_top, t_base = col.temperature(col.top), col.temperature(col.base)
    ns = present & (col.ctype == NS) & (t_base > 268)
    assert ns.sum() > 100
    assert (col.phase[ns & (t_top < 243.1)] == ICE).all()            # colder than -30 C: glaciated
    assert (col.phase[ns & (t_top > 263.2)] == MIXED).all()          # warmer than -10 C: mixed
    between = ns & (t_top > 248) & (t_top < 258)
    assert 0.1 < (col.phase[between] == MIXED).mean() < 0.9           # a varying glaciation temperature
    dc = present & (col.ctype == DC) & (t_base > 268)
    assert 0.45 < (col.phase[dc] == MIXED).mean() < 0.75              # "DC: mixed or ice", 60 % mixed
    as_ = present & (col.ctype == AS)
    cold = as_ & (t_top < 258)
    assert (col.phase[cold] != LIQUID).mean() > 0.5                   # ice-dominated where Hu would say liquid
    mixed_as = as_ & (col.phase == MIXED) & (col.rad_phase == ICE)
    ice_topped_warm_base = as_ & (col.phase != LIQUID) & (col.rad_phase == ICE) & (t_base > 268) & (t_top < 273)
    assert 0.25 < mixed_as.sum() / max(ice_topped_warm_base.sum(), 1) < 0.75   # "As: ice or mixed"


def test_seeder_feeder_mixes_supercooled_layers_under_ice(col):
    present = np.isfinite(col.top)
    t_top = col.temperature(col.top)
    ice = present & (col.phase == ICE)
    ice_above = np.cumsum(ice, axis=1) - ice > 0
    under = present & ice_above & (t_top < 273.15) & np.isin(col.ctype, (ST, SC, CU)) & (col.phase != ICE)
    assert under.sum() > 50
    assert (col.phase[under] == MIXED).mean() > 0.75                  # 90 % of the columns (a smooth field)
    alone = present & ~ice_above & (t_top < 273.15) & (t_top > 268) & np.isin(col.ctype, (ST, SC, CU))
    assert (col.phase[alone] == MIXED).mean() < 0.3                   # without ice above: mostly liquid
