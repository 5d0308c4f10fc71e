"""`synth --track-corridor P`: only the pixels a build with patches of <= P px can read are written, they are
bit-identical to the whole scene's, and the build from either archive is the same benchmark."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import build_cfg

from sgmagnet.synth.archive import SynthConfig, synthesize
from sgmagnet.synth.instrument import dilate

# 40-60N: the parallax shift across columns grows as 1/cos(lat), the case a too-narrow window would get wrong
REGION = dict(start="2018-10-10", days=1, region=(130.0, 140.0, 40.0, 60.0), res=0.1, seed=5)
FILL = -32768


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("corridor")
    whole = synthesize(SynthConfig(out=str(root / "whole"), **REGION), log=lambda m: None)
    corr = synthesize(SynthConfig(out=str(root / "corr"), track_corridor=16, **REGION), log=lambda m: None)
    return root, whole, corr


def test_dilate_is_the_chebyshev_neighbourhood():
    rng = np.random.default_rng(0)
    m = rng.random((23, 17)) < 0.03
    for half in (0, 1, 4):
        r, c = np.nonzero(m)
        rr, cc = np.mgrid[:23, :17]
        want = np.zeros_like(m)
        for i, j in zip(r, c):
            want |= (np.abs(rr - i) <= half) & (np.abs(cc - j) <= half)
        assert (dilate(m, half) == want).all(), half


def test_corridor_pixels_equal_the_whole_scene(archives):
    from netCDF4 import Dataset

    root, whole, corr = archives
    assert corr["scenes"] >= 1 and corr["scenes"] <= whole["scenes"]
    assert 0 < corr["written_pixel_fraction"] < 0.9 and whole["written_pixel_fraction"] == 1.0
    assert corr["track_corridor_px"] == 16 and whole["track_corridor_px"] is None
    from sgmagnet.synth.archive import format_stats
    assert "track corridor 16 px" in format_stats(corr) and "track corridor" not in format_stats(whole)
    for f in sorted(glob.glob(str(root / "corr" / "ahi" / "*" / "*" / "*.nc"))):
        with Dataset(f) as c, Dataset(f.replace(os.sep + "corr" + os.sep, os.sep + "whole" + os.sep)) as w:
            c.set_auto_maskandscale(False)
            w.set_auto_maskandscale(False)
            assert int(c.getncattr("track_corridor_px")) == 16 and "track_corridor_px" not in w.ncattrs()
            kept = c["tbb_13"][:] != FILL
            assert 0 < kept.mean() < 1
            for v in w.variables:
                a, b = w[v][:], c[v][:]
                if a.ndim == 2 and v != "Hour":
                    assert (b[~kept] == FILL).all(), v                  # fill outside the corridor
                    assert np.array_equal(a[kept], b[kept]), v          # bit-identical inside
                else:
                    assert np.array_equal(a, b), v                      # Hour (scan time), coordinates


@pytest.mark.parametrize("res", [0.05, 0.1])
def test_any_kept_pixels_equal_the_whole_scene(tmp_path, res):
    """The bit-identity holds for any kept set, with tight windows (blocks of 4 rows; a diagonal and a vertical
    3-px band; 55-62N, 100-110E, where the parallax shifts columns most): a window one column too narrow for
    the parallax (0.1 deg) or without the footprint blur's margin (0.05 deg) fails here."""
    from sgmagnet.formats import ahi as ahi_fmt
    from sgmagnet.synth.world import World
    from sgmagnet.synth.writers import region_grid, write_scene

    cfg = SynthConfig(out=str(tmp_path), region=(100.0, 110.0, 55.0, 62.0), res=res, seed=2, track_corridor=3)
    world = World(cfg)
    lat, lon = region_grid(cfg)
    rr, cc = np.mgrid[:lat.size, :lon.size]
    keep = (np.abs(cc - rr * lon.size // lat.size) <= 1) | (np.abs(cc - 12) <= 1)
    slot = np.datetime64("2018-10-10T03:00", "ns")
    a = ahi_fmt.read_ahi(write_scene(world, slot, str(tmp_path / "w"), None, block_rows=4))
    b = ahi_fmt.read_ahi(write_scene(world, slot, str(tmp_path / "c"), keep, block_rows=4))
    assert b.attrs["track_corridor_px"] == 3 and "track_corridor_px" not in a.attrs
    for v in a.data_vars:
        x, y = a[v].values, b[v].values
        if v in ("obs_time",):
            assert np.array_equal(x, y)
        elif v == "valid":
            assert (y == keep).all()
        else:
            assert np.array_equal(x[keep], y[keep]), v
            assert np.isnan(y[~keep]).all(), v


def test_builds_from_both_archives_are_identical(archives, tmp_path):
    from hpc.mpi_build import build

    root, _, _ = archives
    man = {}
    for k in ("whole", "corr"):
        m = build(build_cfg(root / k, tmp_path / k, patch_size=16, min_labelled=8, split_days=(1, 0, 0)),
                  log=lambda m: None)["manifest"]
        man[k] = m
    assert sum(man["whole"].counts.values()) > 0
    for key in ("counts", "class_histogram", "band_stats", "profiles"):
        assert getattr(man["whole"], key) == getattr(man["corr"], key), key
    assert sorted(s["sha256"] for s in man["whole"].shards) == sorted(s["sha256"] for s in man["corr"].shards)
    assert man["corr"].skipped == [] == man["whole"].skipped


def test_patches_wider_than_the_corridor_are_a_recorded_skip(archives, tmp_path):
    """Every scene is skipped with the reason (manifest), so nothing is built: exit 2, one line that says why."""
    import json

    root, _, _ = archives
    out = tmp_path / "s"
    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "build", "--ahi", str(root / "corr"), "--cloudsat",
                          str(root / "corr"), "--out", str(out), "--patch-size", "32", "--min-labelled", "8",
                          "--quiet"], capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "--patch-size <= 16" in res.stderr
    with open(out / "manifest.json") as f:
        reasons = {s["reason"] for s in json.load(f)["skipped"]}
    assert reasons and all("--track-corridor 16" in r and "--patch-size <= 16" in r for r in reasons), reasons


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_cli_refuses_a_bad_corridor(value, tmp_path):
    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "synth", "--out", str(tmp_path / "a"),
                          "--track-corridor", value], capture_output=True, text=True)
    assert res.returncode == 2 and "--track-corridor" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()


@pytest.mark.parametrize("value", ["abc", 0, [16, 32]])
def test_a_bad_corridor_attribute_is_a_format_error(archives, tmp_path, value):
    import shutil

    from netCDF4 import Dataset

    from sgmagnet.formats import FormatError
    from sgmagnet.formats import ahi as ahi_fmt

    root, _, _ = archives
    src = sorted(glob.glob(str(root / "corr" / "ahi" / "*" / "*" / "*.nc")))[0]
    path = tmp_path / os.path.basename(src)
    shutil.copy(src, path)
    with Dataset(path, "r+") as ds:
        ds.setncattr("track_corridor_px", value)
    with pytest.raises(FormatError) as e:
        ahi_fmt.read_ahi(str(path), rows=slice(0, 4), cols=slice(0, 4))
    assert e.value.path == str(path) and "track_corridor_px" in e.value.problem


def test_benchmark_runs_and_guards_its_scratch_folder(tmp_path, capsys):
    """hpc/bench/synth_corridor.py on a tiny archive: exit 0, identical builds, the JSON written; a --workdir
    that holds other files is refused (the benchmark deletes its scratch folder) and left as it was."""
    import json

    from hpc.bench import synth_corridor

    out = tmp_path / "r.json"
    args = ["--region", "130,140,40,60", "--res", "0.1", "--patch-size", "16", "--min-labelled", "8",
            "--json", str(out)]
    assert synth_corridor.main(["--workdir", str(tmp_path / "w"), *args]) == 0
    r = json.load(open(out))
    assert r["builds_identical"] and r["runs"]["whole"]["samples"] == r["runs"]["corridor"]["samples"] > 0
    assert r["runs"]["corridor"]["bytes"] < r["runs"]["whole"]["bytes"] and not (tmp_path / "w").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        synth_corridor.main(["--workdir", str(mine), *args])
    assert e.value.code == 2 and "--workdir" in capsys.readouterr().err and (mine / "keep.txt").exists()


def test_any_number_of_slot_workers_writes_the_same_files(tmp_path):
    """synth writes the AHI slots on several processes (--workers, default one per core): each slot depends only
    on the world and the slot, so one worker and two write byte-identical files (P-Tree here, for time; the HSD
    slots go through the same per-slot function, and test_hsd compares the ones written by workers with the
    world)."""
    import hashlib

    from sgmagnet.synth.archive import SynthConfig, synthesize

    digests = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        stats = synthesize(SynthConfig(out=str(out), days=1, region=(125.0, 145.0, -30.0, 30.0), res=0.1,
                                       track_corridor=16, ahi_format="ptree", workers=workers), log=lambda m: None)
        files = sorted(p for sub in ("ahi", "ahi_hsd") for p in (out / sub).rglob("*") if p.is_file())
        digests.append({str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
        assert stats["scenes"] >= 2, stats
    assert digests[0] == digests[1]
