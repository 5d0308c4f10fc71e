"""Shards, manifest, resume, bad inputs, MPI equality, CLI -- on the tiny synthetic archive."""
import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import build_cfg
from helpers import have_mpirun, make_granule, make_scene, require

from hpc.mpi_build import build
from sgmagnet.grid import IGNORE
from sgmagnet.shards import iter_shard, read_manifest, sha256, shard_paths


def checksums(root):
    m = read_manifest(str(root))
    return {s["path"]: s["sha256"] for s in m.shards}, m


def test_synth_statistics(tiny_archive):
    _, s = tiny_archive
    assert s["granules"] >= 2 and s["scenes"] >= 4
    assert 0.85 <= s["clear_fraction"] <= 0.94          # paper 89.3 %; target 89 +- 3 % on bigger archives
    pf = s["phase_fractions_of_cloudy"]
    assert min(pf.values()) > 0.05                       # every phase occurs
    assert 0.15 < s["multilayer_fraction_of_cloudy"] < 0.5


def test_synth_is_deterministic(tmp_path):
    from sgmagnet.formats import ahi as ahi_fmt
    from sgmagnet.synth.archive import SynthConfig, synthesize
    kw = dict(start="2018-10-10", days=1, region=(125.0, 135.0, -10.0, 10.0), res=0.25, seed=11)
    a = synthesize(SynthConfig(out=str(tmp_path / "a"), **kw), log=lambda m: None)
    b = synthesize(SynthConfig(out=str(tmp_path / "b"), **kw), log=lambda m: None)
    assert a["files"] == b["files"] and a["class_histogram"] == b["class_histogram"]
    for f in a["files"]["scenes"]:
        x, y = ahi_fmt.read_ahi(tmp_path / "a" / f), ahi_fmt.read_ahi(tmp_path / "b" / f)
        np.testing.assert_array_equal(x["tbb_13"].values, y["tbb_13"].values)


def test_shards_read_back(tiny_shards):
    out, man = tiny_shards
    n = {"train": 0, "test": 0, "val": 0}
    hist = np.zeros(4, np.int64)
    for split in n:
        for p in shard_paths(str(out), split):
            assert os.path.exists(p + ".idx")                      # DALI index next to every shard
            for s in iter_shard(p):
                n[split] += 1
                assert s["input"].dtype == np.float32 and s["input"].shape == (16, 32, 32)
                assert s["geom"].shape == (2, 32, 32) and s["pix"].dtype == np.int16
                assert s["prof"].dtype == np.uint8 and s["prof"].shape == (s["pix"].shape[0], 38)
                assert s["pix"].shape[0] >= 16 and s["pix"].min() >= 0 and s["pix"].max() < 32
                assert "." not in s["__key__"] and s["meta"]["split"] == split
                if split == "train":
                    lab = s["prof"][s["prof"] != IGNORE]
                    hist += np.bincount(lab, minlength=4)
    assert n == man.counts and n["train"] > 0 and n["test"] > 0
    assert hist.tolist() == man.class_histogram["train"]
    assert len(man.band_stats["mean"]) == 16 and 150 < man.band_stats["mean"][13] < 320
    for s in man.shards:
        assert sha256(os.path.join(out, s["path"])) == s["sha256"]


def test_resume_after_kill_is_identical(tiny_archive, tiny_shards, tmp_path):
    archive, _ = tiny_archive
    ref, _ = checksums(tiny_shards[0])
    out = tmp_path / "resume"
    shutil.copytree(tiny_shards[0], out)
    recs = sorted((out / "_records").glob("*.json"))
    # simulate a kill: one granule never recorded, its shard half-written; a stray temp file
    os.remove(recs[0])
    with_shards = [r for r in recs[1:] if json.load(open(r))["shards"]]
    assert with_shards, "no granule with shards to truncate: the truncation half would test nothing"
    victim = json.load(open(with_shards[0]))["shards"]
    p = out / victim[0]["path"]
    p.write_bytes(p.read_bytes()[:1000])
    (out / "_tmp" / "train").mkdir(parents=True, exist_ok=True)
    (out / "_tmp" / "train" / "junk-000.tar").write_bytes(b"x")
    os.remove(out / "manifest.json")
    r = build(build_cfg(archive, out), log=lambda m: None)
    assert r["stats"]["resumed"] == len(recs) - 2
    got, _ = checksums(out)
    assert got == ref
    assert not (out / "_tmp").exists()


def test_bad_inputs_are_skipped_with_reasons(tiny_archive, tmp_path):
    archive, _ = tiny_archive
    ahi = tmp_path / "ahi"
    cs = tmp_path / "cs"
    shutil.copytree(archive / "ahi", ahi)
    shutil.copytree(archive / "cloudsat", cs)
    # corrupt NetCDF, wrong grid in name, missing variable, truncated HDF, all-fill granule, no scene in window
    (ahi / "NC_H08_20181010_0600_R21_FLDK.00011_00009.nc").write_bytes(b"not netcdf at all")
    make_scene(ahi, dt.datetime(2018, 10, 10, 6, 10), name_counts=(99, 99))
    # scanned at 06:15, within the window of g_ok's profiles (a scene is read only where it scans one in time)
    make_scene(ahi, dt.datetime(2018, 10, 10, 6, 20), drop=("tbb_13",), hour=np.full((9, 11), 6.25))
    n = 8
    g_ok = make_granule(cs, dt.datetime(2018, 10, 10, 6, 15), np.full(n, 8.0), np.full(n, 131.0), np.arange(n) * 0.16,
                        layers=[(1, 2, 3)], granule=1)
    g_fill = make_granule(cs, dt.datetime(2018, 10, 10, 6, 30), np.full(n, 8.0), np.full(n, 131.0), np.arange(n) * 0.16,
                          n_layers=np.full(n, -9, np.int8), granule=2)
    g_far = make_granule(cs, dt.datetime(2018, 10, 12, 12, 0), np.full(n, 8.0), np.full(n, 131.0), np.arange(n) * 0.16,
                         layers=[(1, 2, 3)], granule=3)
    trunc = cs / "2018283070000_00004_CS_2B-CLDCLASS-LIDAR_GRANULE_P1_R05_E08_F00.hdf"
    shutil.copy(g_ok, trunc)
    trunc.write_bytes(trunc.read_bytes()[:500])
    (cs / "readme.hdf").write_bytes(b"x")
    r = build(build_cfg(tmp_path, tmp_path / "out", ahi=str(ahi), cloudsat=str(cs)), log=lambda m: None)
    man = r["manifest"]
    reasons = {os.path.basename(s["file"]): s["reason"] for s in man.skipped}
    assert "not a readable" in reasons["NC_H08_20181010_0600_R21_FLDK.00011_00009.nc"]
    assert "name says" in reasons["NC_H08_20181010_0610_R21_FLDK.00099_00099.nc"]
    assert "missing variable tbb_13" in reasons["NC_H08_20181010_0620_R21_FLDK.00011_00009.nc"]
    assert trunc.name in reasons and "readme.hdf" in reasons
    assert "no valid profile" in reasons[os.path.basename(g_fill)]
    assert "no AHI scene" in reasons[os.path.basename(g_far)]
    assert man.counts["train"] > 0       # the good part of the archive still made shards


@pytest.mark.mpi
def test_mpi_two_ranks_equal_one_process(tiny_archive, tiny_shards, tmp_path):
    require(have_mpirun(), "mpirun + mpi4py")
    archive, _ = tiny_archive
    ref, ref_man = checksums(tiny_shards[0])
    out = tmp_path / "mpi"
    cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable, "-m", "sgmagnet.cli", "build",
           "--ahi", str(archive / "ahi"), "--cloudsat", str(archive / "cloudsat"), "--out", str(out),
           "--patch-size", "32", "--min-labelled", "16", "--split-days", "1,0,1", "--gap-days", "0",
           "--shard-maxcount", "8", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    got, man = checksums(out)
    assert got == ref
    assert man.class_histogram == ref_man.class_histogram and man.counts == ref_man.counts


@pytest.mark.parametrize("args,msg", [
    (["synth", "--out", "x", "--days", "0"], "positive integer"),
    (["synth", "--out", "x", "--region", "160,100,-60,60"], "--region"),
    (["build", "--ahi", "/nonexistent", "--cloudsat", "/tmp", "--out", "x"], "not a directory"),
    (["build", "--ahi", "/tmp", "--cloudsat", "/tmp", "--out", "x", "--split-days", "1,2"], "--split-days"),
    (["inspect", "/nonexistent"], "manifest.json"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_arguments_exit_2(args, msg):
    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", *args], capture_output=True, text=True)
    assert res.returncode == 2
    assert msg in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_help_and_inspect(tiny_shards):
    for sub in ("synth", "build", "inspect"):
        res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", sub, "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "usage" in res.stdout
    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "inspect", str(tiny_shards[0]), "--verify"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "checksums: all match" in res.stdout and "clear %" in res.stdout


def test_all_fill_scene_is_listed_in_skipped(tiny_archive, tiny_shards, tmp_path):
    """A scene whose 16 bands are all fill under the track is a recorded skip with the reason, not a silent gap."""
    from netCDF4 import Dataset

    from sgmagnet.grid import BAND_VARS
    from sgmagnet.shards import iter_shard, shard_paths

    archive, _ = tiny_archive
    root, want = tiny_shards
    arc = tmp_path / "archive"
    shutil.copytree(archive, arc)
    name = next(iter_shard(shard_paths(str(root), "train")[0]))["meta"]["ahi_file"]
    path = next((arc / "ahi").rglob(name))
    with Dataset(path, "r+") as ds:
        for b in BAND_VARS:
            v = ds[b]
            v.set_auto_maskandscale(False)
            v[:] = np.full(v.shape, v.getncattr("_FillValue"), v.dtype)
    r = build(build_cfg(arc, tmp_path / "out"), log=lambda m: None)
    reasons = [s["reason"] for s in r["manifest"].skipped if os.path.basename(s["file"]) == name]
    assert reasons and "all 16 bands are fill/NaN" in reasons[0], r["manifest"].skipped
    assert sum(r["manifest"].counts.values()) < sum(want.counts.values())


def test_cli_build_warns_when_a_split_is_empty(tiny_archive, tmp_path):
    archive, _ = tiny_archive
    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "build", "--ahi", str(archive / "ahi"), "--cloudsat",
                          str(archive / "cloudsat"), "--out", str(tmp_path / "s"), "--patch-size", "32",
                          "--min-labelled", "16", "--split-days", "1,0,1", "--gap-days", "0", "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    warn = [x for x in res.stderr.splitlines() if "WARNING" in x]
    assert len(warn) == 1 and "split 'val'" in warn[0] and "--split-days 1,0,1" in warn[0]


def test_cli_version_and_print_config():
    from sgmagnet import __version__

    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"sgmagnet {__version__}"
    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "train", "--print-config", "train.steps=7",
                          "model.name=unet"], capture_output=True, text=True)
    assert res.returncode == 0 and "steps: 7" in res.stdout and "name: unet" in res.stdout
    res = subprocess.run([sys.executable, "-m", "sgmagnet.cli", "train", "--print-config", "train.steps=0"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "train.steps" in res.stderr
