"""The study harness end to end on the tiny archive: sweep, runs, selection, bootstrap tables, resume."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def test_study_runs_resumes_and_reports(tiny_shards, tmp_path, capsys):
    from hpc import study

    root, _ = tiny_shards
    out, runs = tmp_path / "res", tmp_path / "runs"
    args = ["--shards", str(root), "--out", str(out), "--runs", str(runs), "--config", "tiny", "--seeds", "0,1",
            "--only", "sgmagnet,unet,sgmagnet-no-gating", "--n-boot", "50"]
    assert study.main(args) == 0
    sweep = json.load(open(out / "lr_sweep.json"))
    assert set(sweep) == {"sgmagnet", "unet"} and all(v["lr"] in (0.003, 0.01) for v in sweep.values())
    index = json.load(open(out / "study.json"))
    assert len(index["runs"]) == 6 and index["manifest_sha256"]
    for r in index["runs"]:
        assert r["train_days"] == 1 and r["patch"] == 32 and r["selected_step"] <= r["steps"] <= 6
        assert r["lr"] == sweep["sgmagnet" if r["name"].startswith("sgmagnet") else "unet"]["lr"]
        assert r["command"].startswith("sgmagnet train --resume ")
    boot = index["bootstrap"]["runs"]
    assert boot["sgmagnet"]["low"] <= boot["sgmagnet"]["macro_f1"] <= boot["sgmagnet"]["high"]
    assert "minus_sgmagnet" in boot["unet"] and "ref:oracle" in boot and "ref:climatology" in boot
    md = (out / "study.md").read_text()
    assert "Δ vs SGMAGNet" in md and "top-layer oracle" in md and "climatology (reference)" in md
    for f in ("macro_f1.png", "pareto.png", "curves_models.png"):
        assert (out / f).stat().st_size > 0
    # finished runs are kept: a rerun trains nothing and gives the same index
    mtime = os.path.getmtime(out / "runs" / "unet_s1" / "study_run.json")
    capsys.readouterr()
    assert study.main(args) == 0
    assert os.path.getmtime(out / "runs" / "unet_s1" / "study_run.json") == mtime
    assert json.load(open(out / "study.json"))["runs"] == index["runs"]


def test_study_bad_options(tiny_shards, tmp_path, capsys):
    import pytest

    from hpc import study

    root, _ = tiny_shards
    for bad, msg in ((["--only", "nope"], "--only: unknown run"), (["--seeds", "a"], "--seeds"),
                     (["--shards", str(tmp_path / "none")], "--shards")):
        with pytest.raises(SystemExit) as e:
            study.main(["--shards", str(root), "--out", str(tmp_path / "o"), *bad])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err


def test_study_data_chunks_resume_and_free_the_raw_files(tmp_path, capsys):
    """Two 1-day chunks: synthesised, built into one shard set, verified, AHI deleted; a rerun skips both."""
    import glob

    from hpc import study_data

    out = tmp_path / "sd"
    args = ["--out", str(out), "--days", "2", "--chunk", "1", "--region", "125,145,-30,30", "--res", "0.1",
            "--seed", "3", "--patch-size", "32", "--min-labelled", "16", "--split-days", "1,1,0", "--gap-days", "0",
            "--np", "1"]
    assert study_data.main(args) == 0
    info = json.load(open(out / "study_data.json"))
    assert set(info["chunks"]) == {"0", "1"} and info["counts"]["train"] > 0 and info["counts"]["val"] > 0
    assert len(info["manifest_sha256"]) == 64
    assert not glob.glob(str(out / "raw" / "*" / "ahi")) and glob.glob(str(out / "raw" / "*" / "cloudsat"))
    capsys.readouterr()
    assert study_data.main(args) == 0
    assert capsys.readouterr().out.count("already built") == 2
    assert json.load(open(out / "study_data.json"))["manifest_sha256"] == info["manifest_sha256"]


def test_study_data_bad_options(tmp_path, capsys):
    import pytest

    from hpc import study_data

    for bad, msg in ((["--start", "2018-13-01"], "--start"), (["--days", "0"], "must be >= 1")):
        with pytest.raises(SystemExit) as e:
            study_data.main(["--out", str(tmp_path / "x"), *bad])
        assert e.value.code == 2 and msg in capsys.readouterr().err
