import datetime as dt
import os

import numpy as np
import pytest
from helpers import make_granule, make_scene

from sgmagnet.formats import FormatError
from sgmagnet.formats import ahi as ahi_fmt
from sgmagnet.formats import cloudsat as cs_fmt
from sgmagnet.grid import BAND_VARS

T = dt.datetime(2018, 10, 1, 4, 0)


def close_t(a, b, tol_s):
    d = (np.asarray(a, "datetime64[ns]") - np.datetime64(b, "ns")).astype(np.int64) / 1e9
    return bool(np.all(np.abs(d) <= tol_s))


# ------------------------------------------------------------------------------------------------ AHI
def test_ahi_roundtrip_default_packing(tmp_path):
    rng = np.random.default_rng(0)
    bands = [rng.uniform(0, 1, (9, 11)) if k < 6 else rng.uniform(200, 300, (9, 11)) for k in range(16)]
    p = make_scene(tmp_path, T, bands=bands)
    ds = ahi_fmt.read_ahi(p)
    for k, b in enumerate(BAND_VARS):
        tol = 1e-4 if k < 6 else 0.01
        np.testing.assert_allclose(ds[b].values, bands[k], atol=tol)
    assert ds.latitude.values[0] == 10.0 and ds.latitude.values[-1] == 6.0   # descending
    assert ds.valid.values.all()
    # Hour is packed at 1e-3 h (3.6 s): times agree to within half a step
    assert close_t(ds.obs_time.values, "2018-10-01T04:05", 1.8)


@pytest.mark.parametrize("fill_attr", ["_FillValue", "missing_value"])
def test_ahi_foreign_packing_fill_and_valid_range(tmp_path, fill_attr):
    """Packing chosen by the test, not the writer's defaults: the reader must use each file's attributes."""
    bands = [np.full((9, 11), 0.5 if k < 6 else 250.0) for k in range(16)]
    bands[13][2, 3] = np.nan                     # -> fill
    bands[12][4, 4] = 400.0                      # outside the valid range -> clipped by writer to valid_max...
    packing = {b: {"scale_factor": 0.002, "add_offset": 200.0 if k >= 6 else -1.0, "fill_value": -999,
                   "fill_attr": fill_attr, "valid_min": -500, "valid_max": 30000} for k, b in enumerate(BAND_VARS)}
    packing["Hour"] = {"scale_factor": 0.0005, "add_offset": 2.0, "valid_min": -4000, "valid_max": 30000}
    p = make_scene(tmp_path, T, bands=bands, packing=packing)
    ds = ahi_fmt.read_ahi(p)
    np.testing.assert_allclose(ds["albedo_01"].values, 0.5, atol=0.002)
    np.testing.assert_allclose(ds["tbb_10"].values, 250.0, atol=0.002)
    assert np.isnan(ds["tbb_14"].values[2, 3]) and not ds.valid.values[2, 3]
    assert (ds.obs_time.values[0, 0] - np.datetime64("2018-10-01T04:05")) < np.timedelta64(2, "s")
    # a raw value below valid_min is missing even though it is not the fill value
    from netCDF4 import Dataset
    with Dataset(p, "a") as nc:
        nc["tbb_07"].set_auto_maskandscale(False)
        nc["tbb_07"][0, 0] = -600
    assert np.isnan(ahi_fmt.read_ahi(p)["tbb_07"].values[0, 0])


def test_ahi_off_disk_masked_by_saz(tmp_path):
    saz = np.full((9, 11), 30.0)
    saz[0, :] = np.nan           # fill
    saz[1, :] = 89.5             # beyond the limb
    p = make_scene(tmp_path, T, saz=saz)
    ds = ahi_fmt.read_ahi(p)
    assert not ds.valid.values[:2].any() and ds.valid.values[2:].all()
    assert np.isnan(ds["tbb_13"].values[0]).all()


def test_ahi_hour_midnight_rollover(tmp_path):
    t = dt.datetime(2018, 10, 1, 23, 50)
    hour = np.full((9, 11), 23.95)
    hour[5:] = 0.02               # southern rows scanned after midnight
    ds = ahi_fmt.read_ahi(make_scene(tmp_path, t, hour=hour))
    assert close_t(ds.obs_time.values[0, 0], "2018-10-01T23:57", 1.8)
    assert close_t(ds.obs_time.values[8, 0], "2018-10-02T00:01:12", 1.8)


def test_ahi_no_hour_uses_nominal_slot(tmp_path):
    ds = ahi_fmt.read_ahi(make_scene(tmp_path, T, drop=("Hour",)))
    assert (ds.obs_time.values == np.datetime64(T)).all() and ds.attrs["has_pixel_time"] == 0


def test_ahi_window_and_bbox(tmp_path):
    p = make_scene(tmp_path, T)
    w = ahi_fmt.read_ahi(p, rows=slice(2, 5), cols=slice(3, 7))
    assert w["tbb_13"].shape == (3, 4) and w.attrs["row0"] == 2 and w.attrs["col0"] == 3
    b = ahi_fmt.read_ahi(p, bbox=(131.0, 132.0, 8.0, 9.0))
    np.testing.assert_allclose(b.longitude.values, [131.0, 131.5, 132.0])
    np.testing.assert_allclose(b.latitude.values, [9.0, 8.5, 8.0])


def test_ahi_grid_checked_against_name(tmp_path):
    p = make_scene(tmp_path, T, name_counts=(2401, 2401))
    with pytest.raises(FormatError, match="name says"):
        ahi_fmt.read_ahi(p)


def test_ahi_float32_fine_grid_is_regular_and_a_gap_is_not(tmp_path):
    """P-Tree's 0.02 deg files store float32 coordinates up to 205E, rounded by up to 1.5e-5 deg: still a
    regular grid (found building the 0.02 deg archive of docs/scale.md); a missing column is not."""
    p = make_scene(tmp_path, T, lat0=59.0, lon0=199.0, step=0.02, nlat=5, nlon=300)
    g = ahi_fmt.read_grid(p)
    assert abs(g.dlon - 0.02) < 1e-6 and abs(g.lon0 - 199.0) < 1e-4
    lat, lon = 10.0 - 0.02 * np.arange(5), 130.0 + 0.02 * np.delete(np.arange(301), 150)
    fields = {b: np.full((5, 300), 280.0) for b in BAND_VARS + ("SOZ", "SOA", "SAZ", "SAA", "Hour")}
    q = os.path.join(str(tmp_path), "gap", ahi_fmt.ahi_filename(T, 300, 5))
    os.makedirs(os.path.dirname(q))
    ahi_fmt.write_ahi(q, lat, lon, fields, T)
    with pytest.raises(FormatError, match="not a regular grid"):
        ahi_fmt.read_grid(q)


def test_ahi_bad_name_and_corrupt_file(tmp_path):
    with pytest.raises(FormatError, match="not a P-Tree"):
        ahi_fmt.parse_name(tmp_path / "foo.nc")
    p = tmp_path / ahi_fmt.ahi_filename(T, 11, 9)
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 100)
    with pytest.raises(FormatError) as e:
        ahi_fmt.read_ahi(p)
    assert str(p) in str(e.value)


def test_ahi_longitudes_above_180_and_nearest():
    g = ahi_fmt.AhiGrid(latitude=np.array([1.0, 0.5, 0.0]), longitude=np.array([179.5, 180.0, 180.5, 181.0]),
                        lat0=1.0, lon0=179.5, dlat=-0.5, dlon=0.5)
    i, j, ok = g.nearest(np.array([0.6, 0.75, 0.0, 2.0]), np.array([-179.1, 179.75, -179.0, 180.0]))
    assert ok.tolist() == [True, True, True, False]
    assert (i[:3].tolist(), j[:3].tolist()) == ([1, 0, 2], [3, 0, 3])   # 0.75/179.75 are half-way -> smaller index


# ------------------------------------------------------------------------------------------- CloudSat
S = dt.datetime(2018, 10, 1, 3, 59, 30)


def test_cloudsat_roundtrip_and_time(tmp_path):
    n = 30
    p = make_granule(tmp_path, S, np.linspace(-1, 1, n), np.linspace(140, 141, n), np.arange(n) * 0.16,
                     layers=[(1.0, 2.0, 3), (8.0, 10.0, 1)], dem_m=np.full(n, 250))
    g = cs_fmt.read_granule(p)
    assert g.sizes["nray"] == n
    assert g.time.values[0] == np.datetime64("2018-10-01T03:59:30")
    assert close_t(g.time.values[10], "2018-10-01T03:59:31.600", 1e-4)
    np.testing.assert_allclose(g.layer_top.values[:, :2], [[2.0, 10.0]] * n)
    assert np.isnan(g.layer_base.values[:, 2:]).all()
    np.testing.assert_allclose(g.dem_km.values, 0.25)
    assert (g.n_layers.values == 2).all()


def test_cloudsat_foreign_factor_offset_missing(tmp_path):
    """DPC scaling science = (file - offset)/factor, with values chosen by the test."""
    n = 5
    attrs = {"CloudLayerBase": {"factor": 1000.0, "offset": 10.0, "missing": -5000.0, "missop": "<", "fill": -9999.0},
             "CloudLayerTop": {"factor": 1000.0, "offset": 10.0, "missing": -5000.0, "missop": "<", "fill": -9999.0}}
    lat, lon = np.zeros(n), np.full(n, 140.0)
    # file values = science * factor + offset
    p = make_granule(tmp_path, S, lat, lon, np.arange(n) * 0.16,
                     layers=[(1010.0, 2010.0, 2)], attrs=attrs)
    g = cs_fmt.read_granule(p)
    np.testing.assert_allclose(g.layer_base.values[:, 0], 1.0)
    np.testing.assert_allclose(g.layer_top.values[:, 0], 2.0)
    # unused slots hold file value -99, which these attributes do NOT flag (missing is "< -5000"):
    # it decodes to (-99 - 10)/1000, proving the reader follows the file, not the DPC defaults
    np.testing.assert_allclose(g.layer_base.values[:, 1], -0.109, rtol=1e-5)


def test_cloudsat_file_written_without_hdfeos(tmp_path):
    """A granule written independently with plain pyhdf (no StructMetadata, attributes on the SDS and Vdata)."""
    from pyhdf.HDF import HC, HDF
    from pyhdf.SD import SD, SDC
    import pyhdf.VS  # noqa: F401

    path = str(tmp_path / cs_fmt.granule_filename(S, 4242, release=4))
    n = 4
    sd = SD(path, SDC.WRITE | SDC.CREATE)
    for name, val in (("CloudLayerBase", 1.5), ("CloudLayerTop", 3.0), ("CloudPhase", 2)):
        kind = SDC.FLOAT32 if isinstance(val, float) else SDC.INT8
        s = sd.create(name, kind, (n, 10))
        a = np.full((n, 10), -99.0 if kind == SDC.FLOAT32 else -9, np.float32 if kind == SDC.FLOAT32 else np.int8)
        a[:, 0] = val * (2 if kind == SDC.FLOAT32 else 1)      # stored with factor 2 for floats
        s.setfillvalue(a.flat[-1].item())
        s.factor = 2.0 if kind == SDC.FLOAT32 else 1.0
        s.offset = 0.0
        s[:] = a
        s.endaccess()
    sd.end()
    h = HDF(path, HC.WRITE | HC.CREATE)
    vs = h.vstart()
    for name, t, vals in (("Latitude", HC.FLOAT32, [0.0] * n), ("Longitude", HC.FLOAT32, [140.0] * n),
                          ("Profile_time", HC.FLOAT32, [0.0, 0.16, 0.32, 0.48]), ("UTC_start", HC.FLOAT32, [14370.0]),
                          ("Cloudlayer", HC.INT8, [1] * n)):
        v = vs.create(name, ((name, t, 1),))
        v.write([[x] for x in vals])
        v.detach()
    vs.end()
    h.close()
    g = cs_fmt.read_granule(path)
    np.testing.assert_allclose(g.layer_base.values[:, 0], 1.5)
    np.testing.assert_allclose(g.layer_top.values[:, 0], 3.0)
    assert (g.layer_phase.values[:, 0] == 2).all() and np.isnan(g.layer_phase.values[:, 1]).all()
    assert g.time.values[0] == np.datetime64("2018-10-01T03:59:30")


def test_cloudsat_opened_by_ccplot(tmp_path):
    """Synthetic granules are true HDF-EOS2 swaths: the community client ccplot opens them."""
    from helpers import require
    try:
        from ccplot.hdfeos import HDFEOS
    except ImportError:
        HDFEOS = None
    require(HDFEOS is not None, "ccplot")
    n = 12
    p = make_granule(tmp_path, S, np.linspace(-1, 1, n), np.full(n, 140.0), np.arange(n) * 0.16,
                     layers=[(1.0, 2.0, 3)])
    sw = HDFEOS(p)["2B-CLDCLASS-LIDAR"]
    np.testing.assert_allclose(sw["CloudLayerTop"][:][:, 0], 2.0)
    np.testing.assert_allclose(sw["Latitude"][:], np.linspace(-1, 1, n), atol=1e-6)
    np.testing.assert_allclose(sw["CloudLayerBase"][:][:, 0], 1.0)
    assert (np.asarray(sw["CloudPhase"][:])[:, 0] == 3).all() and (np.asarray(sw["CloudPhase"][:])[:, 1] < 1).all()


def test_cloudsat_truncated_and_bad_name(tmp_path):
    n = 10
    p = make_granule(tmp_path, S, np.zeros(n), np.full(n, 140.0), np.arange(n) * 0.16, layers=[(1, 2, 1)])
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 3])
    with pytest.raises(FormatError) as e:
        cs_fmt.read_granule(p)
    assert os.path.basename(p) in str(e.value)
    with pytest.raises(FormatError, match="granule name"):
        cs_fmt.read_granule(tmp_path / "x.hdf")
