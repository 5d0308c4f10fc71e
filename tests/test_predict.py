"""Full-scene prediction to CF NetCDF, exact tiling/stitching, determinism, and the cube plots."""
import datetime as dt
import glob
import os

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from helpers import make_scene
from sgmagnet import cli
from sgmagnet.data import Normaliser
from sgmagnet.grid import BAND_VARS
from sgmagnet.losses import argmax
from sgmagnet.models.common import STEM_CHANNELS, InputStem, to_volume
from sgmagnet.plots import nearest_granule as plots_nearest
from sgmagnet.predict import cores, predict_scene, tile_starts
from ci import ROOT

NORM = Normaliser(np.zeros(16, np.float32), np.ones(16, np.float32))


class Local3x3(nn.Module):
    """Translation-equivariant with a receptive field of 1 pixel in each direction."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.conv = InputStem(), nn.Conv2d(STEM_CHANNELS, 4 * 38, 3, padding=1)

    def forward(self, x, geom=None):
        return to_volume(self.conv(self.stem(x, geom)), 38)


def scene(tmp_path, n=32, off_disk=False):
    rng = np.random.default_rng(0)
    bands = [rng.uniform(0.0, 1.0, (n, n)) if k < 6 else rng.uniform(200, 300, (n, n)) for k in range(16)]
    saz = np.full((n, n), 30.0)
    if off_disk:
        saz[:, -5:] = 95.0
    return make_scene(tmp_path, dt.datetime(2018, 10, 1, 3, 0), lat0=5.0, lon0=130.0, step=0.05, nlat=n, nlon=n,
                      bands=bands, saz=saz)


def test_tiles_cover_exactly_once():
    for n, t, o in ((100, 32, 8), (32, 32, 8), (33, 16, 4), (10, 16, 4)):
        s = tile_starts(n, t, o)
        c = cores(s, t, n)
        assert c[0][0] == 0 and c[-1][1] == n and all(c[i][1] == c[i + 1][0] for i in range(len(c) - 1))
        for st, (lo, hi) in zip(s, c):   # every core pixel is >= o/2 from an inner tile edge
            assert st <= lo and hi <= st + t
            assert (lo == 0 or lo - st >= o // 2) and (hi == n or st + t - hi >= o // 2)


def test_tiled_equals_single_pass_for_a_local_model(tmp_path):
    ahi = scene(tmp_path)
    m = Local3x3()
    predict_scene(m, NORM, ahi, str(tmp_path / "whole.nc"), tile=32, overlap=0, log=None, probabilities=True)
    predict_scene(m, NORM, ahi, str(tmp_path / "tiled.nc"), tile=16, overlap=4, batch=2, log=None, probabilities=True)
    with xr.open_dataset(tmp_path / "whole.nc") as a, xr.open_dataset(tmp_path / "tiled.nc") as b:
        assert np.array_equal(a["cloud_phase"].values, b["cloud_phase"].values)   # classes: exactly
        # probabilities are quantised to 1/100: a different tiling sums the convolution in another order, so a
        # value on a quantisation boundary may land one step away -- never more
        for c in ("p_clear", "p_ice", "p_mixed", "p_liquid"):
            pa, pb = a[c].values, b[c].values
            assert np.isnan(pa).sum() == np.isnan(pb).sum() == 0
            assert np.abs(pa - pb).max() <= 1 / 100 + 1e-6, c
            assert (pa != pb).mean() < 1e-3, c
    # deterministic: the same call again gives the same bytes of data
    predict_scene(m, NORM, ahi, str(tmp_path / "again.nc"), tile=16, overlap=4, batch=2, log=None)
    with xr.open_dataset(tmp_path / "again.nc") as c, xr.open_dataset(tmp_path / "tiled.nc") as b:
        assert np.array_equal(c["cloud_phase"].values, b["cloud_phase"].values)


def test_cf_netcdf_and_masking(tmp_path):
    ahi = scene(tmp_path, n=24, off_disk=True)
    r = predict_scene(Local3x3(), NORM, ahi, str(tmp_path / "cube.nc"), tile=16, overlap=4, log=None,
                      probabilities=True, attrs={"model": "local3x3"})
    assert r["valid_pixels"] == 24 * 19
    with xr.open_dataset(tmp_path / "cube.nc", mask_and_scale=False) as ds:
        assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["model"] == "local3x3"
        assert dict(ds["cloud_phase"].sizes) == {"time": 1, "level": 38, "latitude": 24, "longitude": 24}
        lev = ds["level"]
        assert lev.attrs["units"] == "m" and lev.attrs["positive"] == "up" and float(lev[0]) == 250.0
        assert float(lev[-1]) == 18750.0
        assert ds["latitude"].attrs["units"] == "degrees_north" and ds["longitude"].attrs["standard_name"] == "longitude"
        cp = ds["cloud_phase"]
        assert cp.dtype == np.int8 and list(cp.attrs["flag_values"]) == [0, 1, 2, 3]
        assert cp.attrs["flag_meanings"] == "clear ice mixed liquid" and cp.attrs["_FillValue"] == -1
        v = cp.values[0]
        assert (v[:, :, -5:] == -1).all() and (v[:, :, :-5] >= 0).all()
    with xr.open_dataset(tmp_path / "cube.nc") as ds:      # CF decoding: probabilities as floats summing to ~1
        s = sum(ds[f"p_{c}"] for c in ("clear", "ice", "mixed", "liquid")).values[0][:, :, :-5]
        assert np.allclose(s, 1.0, atol=4 / 100)
        assert np.isnan(ds["p_ice"].values[0][:, :, -5:]).all()
        # latitude ascends (south to north): label-based selection works as users expect
        lat = ds["latitude"].values
        assert (np.diff(lat) > 0).all() and "south to north" in ds.attrs["orientation"]
        sub = ds.sel(latitude=slice(float(lat[2]), float(lat[6])))
        assert sub.sizes["latitude"] == 5
        for k in ("institution", "source", "references", "history"):
            assert ds.attrs[k], k
        bounds = ds["level_bounds"].values
        assert ds["level"].attrs["bounds"] == "level_bounds" and bounds.shape == (38, 2)
        assert np.allclose(bounds[:, 1] - bounds[:, 0], 500.0) and bounds[0, 0] == 0.0
        assert "mixed" in ds["cloud_phase"].attrs["comment"] and ds["cloud_phase"].attrs["long_name"]
    with xr.open_dataset(tmp_path / "cube.nc", mask_and_scale=False) as ds:
        p = ds["p_ice"]
        assert p.dtype == np.int8 and p.attrs["_FillValue"] == -127      # CF §8.1: packed as byte, not ubyte
        assert abs(float(p.attrs["scale_factor"]) - 0.01) < 1e-9 and list(p.attrs["valid_range"]) == [0, 100]


def test_cube_orientation_matches_the_input(tmp_path):
    """The north-to-south input rows appear flipped in the cube: a pixel keeps its latitude."""
    from sgmagnet.formats import ahi as ahi_fmt

    ahi = scene(tmp_path, n=24)
    predict_scene(Local3x3(), NORM, ahi, str(tmp_path / "cube.nc"), tile=16, overlap=4, log=None)
    src = ahi_fmt.read_ahi(ahi, variables=BAND_VARS + ("SOZ", "SAZ"))
    assert src["latitude"].values[0] > src["latitude"].values[-1]          # the file runs north to south
    x = torch.from_numpy(NORM(np.stack([src[b].values for b in BAND_VARS]).astype(np.float32)))[None]
    g = torch.from_numpy(np.stack([src["SOZ"].values, src["SAZ"].values]).astype(np.float32))[None]
    with torch.no_grad():
        want = argmax(Local3x3()(x, g))[0].numpy()      # [L, H, W] in file order (north first)
    with xr.open_dataset(tmp_path / "cube.nc", mask_and_scale=False) as ds:
        assert np.allclose(src["latitude"].values[::-1], ds["latitude"].values)
        assert np.array_equal(ds["cloud_phase"].values[0][:, ::-1, :], want)


def test_cf_checker_passes(tmp_path):
    """The CF checker (cfchecker, with a standard-name table shipped in tests/data) finds no error; skipped
    where cfchecker or its UDUNITS-2 library is missing (it is not a dependency)."""
    try:
        from cfchecker.cfchecks import CFChecker
    except Exception as e:  # noqa: BLE001 - ImportError, or FileNotFoundError for a missing libudunits2
        pytest.skip(f"cfchecker unavailable: {type(e).__name__}: {str(e)[:80]}")
    ahi = scene(tmp_path, n=24, off_disk=True)
    predict_scene(Local3x3(), NORM, ahi, str(tmp_path / "cube.nc"), tile=16, overlap=4, log=None, probabilities=True)
    table = os.path.join(ROOT, "tests", "data", "cf-standard-name-table.xml")
    res = CFChecker(cfStandardNamesXML=table, version="1.8", silent=True).checker(str(tmp_path / "cube.nc"))
    assert res["global"]["FATAL"] == [] and res["global"]["ERROR"] == []
    for var, r in res["variables"].items():
        assert r["FATAL"] == [] and r["ERROR"] == [], (var, r["ERROR"])


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run


def test_cli_predict_and_plot(checkpoint, tiny_archive, tiny_shards, tmp_path, capsys):
    """Predict the window of a test patch, then plot the map, a section and the curtain of its granule."""
    from sgmagnet.shards import iter_shard, shard_paths

    archive, _ = tiny_archive
    root, _ = tiny_shards
    meta = next(iter_shard(shard_paths(str(root), "test")[0]))["meta"]
    ahi = glob.glob(str(archive / "ahi" / "**" / meta["ahi_file"]), recursive=True)[0]
    gran = glob.glob(str(archive / "cloudsat" / "**" / meta["granule"]), recursive=True)[0]
    c = meta["corners"]
    bbox = f"{c['nw'][1]},{c['ne'][1]},{c['sw'][0]},{c['nw'][0]}"
    cube = tmp_path / "cube.nc"
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--ahi", ahi, "--bbox", bbox,
                     "--out", str(cube), "--tile", "32", "--overlap", "8", "--probabilities"]) == 0
    with xr.open_dataset(cube) as ds:
        assert ds.attrs["model"] == "unet/tiny" and len(ds.attrs["checkpoint_sha256"]) == 64
        assert ds.sizes["latitude"] == 32 and ds.sizes["longitude"] == 32
    line = f"{c['sw'][1]},{c['sw'][0]},{c['ne'][1]},{c['ne'][0]}"
    assert cli.main(["plot", str(cube), "--out", str(tmp_path), "--section", line, "--granule", gran]) == 0
    # without --granule: the granule crossing the cube nearest in time is found in a folder, gap printed
    capsys.readouterr()
    assert cli.main(["plot", str(cube), "--out", str(tmp_path / "auto"), "--cloudsat", str(archive / "cloudsat")]) == 0
    out = capsys.readouterr().out
    assert f"curtain granule: {gran}" in out and " min from the scene" in out
    assert (tmp_path / "auto" / "cube_curtain.png").exists()
    gpath, gap = plots_nearest(str(cube), str(archive / "cloudsat"))
    assert gpath == gran and 0 <= gap <= 5.0 + 1e-6        # the patch's own granule, inside the +-5 min window
    assert cli.main(["plot", str(cube), "--out", str(tmp_path), "--cloudsat", str(tmp_path / "auto")]) == 2
    assert "no 2B-CLDCLASS-LIDAR granule crosses the cube" in capsys.readouterr().err
    import matplotlib.image as mpimg

    from sgmagnet import plots
    from sgmagnet.plots import top_phase
    for f in ("cube_top_phase.png", "cube_section_0.png", "cube_curtain.png"):
        img = mpimg.imread(tmp_path / f)                   # a decodable picture with content, not a blank
        assert img.ndim == 3 and min(img.shape[:2]) > 200 and img[..., :3].std() > 0.05, f
    # what the pictures show is the cube's content (and the granule's labels)
    with xr.open_dataset(cube, mask_and_scale=False) as ds:
        phase = ds["cloud_phase"].values[0]
    m = plots.cube_map_png(str(cube), str(tmp_path / "m.png"))
    assert np.array_equal(m["top_phase"], top_phase(phase))
    sec = plots.cube_section_png(str(cube), tuple(map(float, line.split(","))), str(tmp_path / "s.png"))
    want = np.where(phase[:, sec["rows"], sec["cols"]].T < 0, 255, phase[:, sec["rows"], sec["cols"]].T)
    assert np.array_equal(sec["columns"], want) and sec["distance_km"][-1] > 50
    assert sec["rows"][0] == 0 and sec["rows"][-1] == len(phase[0]) - 1   # sw -> ne: south row (first) to north row
    mt = plots.cube_map_png(str(cube), str(tmp_path / "mt.png"), gran)           # with the track, by surface
    with xr.open_dataset(cube) as ds:
        la, lo = ds["latitude"].values, ds["longitude"].values
    from sgmagnet.formats.cloudsat import read_granule
    g = read_granule(gran)
    ins = ((g["latitude"] >= la.min()) & (g["latitude"] <= la.max()) & (g["longitude"] >= lo.min())
           & (g["longitude"] <= lo.max())).values
    assert sum(mt["track"].values()) == ins.sum() > 0
    assert mt["track"]["land"] == int((ins & (g["land_sea_flag"].values == 1)).sum())
    fig, ax = plots.plt.subplots()
    label = plots._track_ticks(ax, np.array([0.0, 5.0, 10.0]), np.array([-1.0, 0.0, 1.0]), np.array([130.0] * 3),
                               np.array(["2018-10-01T03:04:05"] * 3, "datetime64[ns]"))
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    plots.plt.close(fig)
    assert "time (UTC)" in label and ticks[0] == "0\n1.0°S 130.0°E\n03:04:05" and len(ticks) == 3
    cur = plots.cube_curtain_png(str(cube), gran, str(tmp_path / "c.png"))
    assert (cur["truth"] != 255).sum() > 0 and (cur["truth"] > 0).sum() > 0       # labels, some cloudy
    assert np.array_equal(cur["pred"], np.where(phase[:, cur["rows"], cur["cols"]].T < 0, 255,
                                                phase[:, cur["rows"], cur["cols"]].T))
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"not a netcdf file")
    capsys.readouterr()
    assert cli.main(["plot", str(junk), "--out", str(tmp_path)]) == 2
    assert cli.main(["plot", str(cube), "--out", str(tmp_path), "--granule", str(junk)]) == 2
    err = capsys.readouterr().err
    assert err.count("junk.nc") == 2 and len(err.strip().splitlines()) == 2
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--ahi", str(tmp_path / "none.nc"),
                     "--out", str(cube)]) == 2
    assert cli.main(["predict", "--checkpoint", str(checkpoint), "--ahi", ahi, "--out", str(cube),
                     "--overlap", "7"]) == 2


def test_failed_write_leaves_no_partial_and_keeps_the_old_cube(tmp_path, monkeypatch):
    """A failure in the middle of writing (here: the second strip's read raises) leaves neither a half cube nor
    a .partial file, and an existing cube of the same name is untouched."""
    from sgmagnet.formats import ahi as ahi_fmt

    ahi = scene(tmp_path, n=40)
    out = tmp_path / "cube.nc"
    out.write_bytes(b"an earlier cube")
    real, calls = ahi_fmt.read_ahi, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 3:            # header, first strip, then the second strip fails
            raise OSError(28, "No space left on device")
        return real(*a, **k)
    monkeypatch.setattr(ahi_fmt, "read_ahi", flaky)
    with pytest.raises(OSError):
        predict_scene(Local3x3(), NORM, ahi, str(out), tile=16, overlap=4, log=None)
    assert len(calls) == 3 and out.read_bytes() == b"an earlier cube"
    assert not os.path.exists(str(out) + ".partial")


def test_out_of_training_range_flag(tmp_path):
    """The cube flags the pixels whose solar zenith lies outside the checkpoint's training range, writes the
    prediction there all the same, and flags nothing for an infrared model or an old checkpoint."""
    n = 24
    soz = np.broadcast_to(np.linspace(0.0, 120.0, n)[None, :], (n, n)).copy()      # day -> night across the scene
    ahi = make_scene(tmp_path, dt.datetime(2018, 10, 10, 3, 0), lat0=5.0, lon0=130.0, step=0.05, nlat=n, nlon=n,
                     soz=soz)
    m = Local3x3()
    r = predict_scene(m, NORM, ahi, str(tmp_path / "day.nc"), tile=16, overlap=4, log=None,
                      trained_on={"bands": "all", "solar_zenith": [20.0, 80.0]})
    with xr.open_dataset(tmp_path / "day.nc") as ds:
        f = ds["outside_training_range"].values[0]
        assert ds["outside_training_range"].attrs["flag_meanings"] == "inside_training_range outside_training_range"
        s = soz[::-1] if ds.latitude.values[0] < ds.latitude.values[-1] else soz        # rows as written
        assert np.array_equal(f == 1, (s < 20.0) | (s > 80.0))
        assert (ds["cloud_phase"].values >= 0).all()                                  # complete: not hidden
    assert r["outside_training_range"] == int(((soz < 20.0) | (soz > 80.0)).sum()) > 0
    r = predict_scene(m, NORM, ahi, str(tmp_path / "ir.nc"), tile=16, overlap=4, log=None,
                      trained_on={"bands": "ir", "solar_zenith": [20.0, 80.0]})
    with xr.open_dataset(tmp_path / "ir.nc") as ds:
        assert (ds["outside_training_range"].values == 0).all() and r["outside_training_range"] == 0
    r = predict_scene(m, NORM, ahi, str(tmp_path / "old.nc"), tile=16, overlap=4, log=None, trained_on={})
    with xr.open_dataset(tmp_path / "old.nc") as ds:
        assert "outside_training_range" not in ds and r["training_range"] is None


@pytest.mark.parametrize("name", ["unet", "sgmagnet", "transformer", "segnet", "unet3d"])
def test_band_set_ir_ignores_the_visible_bands_and_the_sun(name):
    from sgmagnet.models import build_model

    torch.manual_seed(0)
    x, g = torch.randn(1, 16, 32, 32), torch.rand(1, 2, 32, 32) * 80
    x2, g2 = x.clone(), g.clone()
    x2[:, :6] = torch.randn(1, 6, 32, 32)
    g2[:, 0] = 110.0                                                                  # night
    for bands, same in (("ir", True), ("all", False)):
        torch.manual_seed(1)
        m = build_model(name, "tiny", bands=bands).eval()
        with torch.no_grad():
            a, b = m(x, g), m(x2, g2)
        assert torch.equal(a, b) == same, (name, bands)
    with pytest.raises(ValueError, match="unknown band set"):
        build_model(name, "tiny", bands="vis")


def test_checkpoint_records_what_it_was_trained_on(tiny_run, tiny_shards):
    from sgmagnet.checkpoint import load_saved

    ck = load_saved(str(tiny_run))
    man = tiny_shards[1]
    assert ck.trained_on["bands"] == "all" and ck.trained_on["solar_zenith"] == man.solar_zenith["train"]
    lo, hi = man.solar_zenith["train"]
    assert 0.0 <= lo <= hi < 90.0                # CloudSat (daylight only): the training split holds no night


def test_writer_thread_writes_the_same_cube_and_raises_its_errors(tmp_path, monkeypatch):
    """The writer thread (StripWriter) gives the cube the loop gives, byte for byte; an error inside it (the disk
    refusing a strip) reaches the caller, and neither a partial file nor a changed old cube is left."""
    import netCDF4

    from sgmagnet import predict as pred

    ahi = scene(tmp_path, n=40)
    for threaded in (True, False):
        predict_scene(Local3x3(), NORM, ahi, str(tmp_path / f"c{threaded}.nc"), tile=16, overlap=4, log=None,
                      probabilities=True, writer_thread=threaded)
    with xr.open_dataset(tmp_path / "cTrue.nc") as a, xr.open_dataset(tmp_path / "cFalse.nc") as b:
        for v in ("cloud_phase", "p_ice"):
            assert np.array_equal(a[v].values, b[v].values, equal_nan=True)
    out = tmp_path / "cube.nc"
    out.write_bytes(b"an earlier cube")
    real = pred.StripWriter._run

    def failing(self):
        item = self.q.get()
        self.error = OSError(28, "No space left on device")
        while item is not None:                       # drain as the real one does after an error
            item = self.q.get()
    monkeypatch.setattr(pred.StripWriter, "_run", failing)
    with pytest.raises(OSError, match="No space"):
        predict_scene(Local3x3(), NORM, ahi, str(out), tile=16, overlap=4, log=None)
    monkeypatch.setattr(pred.StripWriter, "_run", real)
    assert out.read_bytes() == b"an earlier cube" and not os.path.exists(str(out) + ".partial")
    assert netCDF4 is not None


def test_predict_bf16_and_auto_batch(tmp_path):
    """--bf16 runs under bf16 autocast (recorded in the cube); --batch-size auto takes min(4, tiles per strip)
    off CUDA (on CUDA the largest power of two that fits)."""
    ahi = scene(tmp_path, n=40)
    logs = []
    predict_scene(Local3x3(), NORM, ahi, str(tmp_path / "b.nc"), tile=16, overlap=4, batch="auto", log=logs.append,
                  rt=__import__("sgmagnet.runtime", fromlist=["Runtime"]).Runtime.resolve("cpu", bf16=True))
    assert any("--batch-size auto: 3 tiles" in m for m in logs), logs   # min(4, 3 tiles per strip)
    with xr.open_dataset(tmp_path / "b.nc") as c:
        assert c.attrs["precision"] == "bf16 autocast" and "3 tiles per batch" in c.attrs["tiling"]
        assert set(np.unique(c["cloud_phase"].values[~np.isnan(c["cloud_phase"].values)])) <= {0, 1, 2, 3}
