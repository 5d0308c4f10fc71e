"""The study harness end to end on the tiny archive: sweep, runs, selection, bootstrap tables, resume."""
import json
import os

import pytest


@pytest.mark.slow
def test_study_runs_resumes_and_reports(tiny_shards, tmp_path, capsys):
    from hpc import study

    root, _ = tiny_shards
    out, runs = tmp_path / "res", tmp_path / "runs"
    args = ["--shards", str(root), "--out", str(out), "--runs", str(runs), "--config", "tiny", "--seeds", "0,1",
            "--only", "sgmagnet,unet,sgmagnet-no-gating", "--n-boot", "50"]
    assert study.main(args) == 0
    sweep = json.load(open(out / "lr_sweep.json"))
    assert set(sweep) == {"sgmagnet", "unet"} and all(v["lr"] in (0.003, 0.01) for v in sweep.values())
    for fam, lr in (("sgmagnet", "0.003"), ("unet", "0.01")):   # each trial's log is kept; its time read from it
        log = out / "sweep" / f"{fam}_lr{lr}" / "log.jsonl"
        assert sweep[fam]["trials"][lr]["wall_s"] == study.log_wall_s(str(log)) > 0
    index = json.load(open(out / "study.json"))
    assert len(index["runs"]) == 6 and index["manifest_sha256"]
    logs = sorted((out / "sweep").glob("*/log.jsonl"))
    assert len(logs) == 4 and index["train_wall_s"]["sweep"] == round(sum(study.log_wall_s(str(p)) for p in logs), 1)
    for r in index["runs"]:
        assert r["train_days"] == 1 and r["patch"] == 32 and r["selected_step"] <= r["steps"] <= 6
        assert r["lr"] == sweep["sgmagnet" if r["name"].startswith("sgmagnet") else "unet"]["lr"]
        assert r["command"].startswith("sgmagnet train --resume ")
    boot = index["bootstrap"]["runs"]
    assert boot["sgmagnet"]["low"] <= boot["sgmagnet"]["macro_f1"] <= boot["sgmagnet"]["high"]
    assert "minus_sgmagnet" in boot["unet"] and "ref:oracle" in boot and "ref:climatology" in boot
    assert "minus_oracle" in boot["unet"] and "minus_oracle" in boot["ref:climatology"]
    sel = index["bootstrap"]["selected"]
    assert sel == study.selected_variant([json.load(open(p)) for p in (out / "runs").glob("*/study_run.json")])
    md = (out / "study.md").read_text()
    assert "Δ vs SGMAGNet" in md and "Δ vs oracle" in md and "top-layer oracle" in md and "climatology (reference)" in md
    conv = md.split("### Convergence")[1].split("\n\n")[1].splitlines()[2:]
    assert len(conv) == 6 and all(row.split(" | ")[3] in ("cap", "patience") for row in conv)
    for f in ("macro_f1.png", "pareto.png", "curves_models.png"):
        assert (out / f).stat().st_size > 0
    # finished runs are kept: a rerun trains nothing and gives the same index
    mtime = os.path.getmtime(out / "runs" / "unet_s1" / "study_run.json")
    capsys.readouterr()
    assert study.main(args) == 0
    assert os.path.getmtime(out / "runs" / "unet_s1" / "study_run.json") == mtime
    assert json.load(open(out / "study.json"))["runs"] == index["runs"]
    # a variant that wins on validation becomes the selected configuration and gets its own comparison table
    for seed in (0, 1):
        p = out / "runs" / f"sgmagnet-no-gating_s{seed}" / "study_run.json"
        r = json.load(open(p))
        r["val_macro_f1"] = 1.0
        p.write_text(json.dumps(r))
    page = tmp_path / "RESULTS.md"
    page.write_text(f"# prose above\n{study.RESULTS_BEGIN}\nold table\n{study.RESULTS_END}\nprose below\n")
    assert study.main(args + ["--report-only", "--results", str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# prose above\n") and text.endswith(f"{study.RESULTS_END}\nprose below\n")
    block = text.split(study.RESULTS_BEGIN)[1].split(study.RESULTS_END)[0]
    assert "old table" not in block and "### Models" in block and "### Convergence" in block
    assert "validation-selected" in block and "### Per-class F1" not in block
    boot = json.load(open(out / "study.json"))["bootstrap"]
    assert boot["selected"] == "sgmagnet-no-gating" and "minus_selected" in boot["runs"]["unet"]
    assert "minus_selected" not in boot["runs"]["sgmagnet-no-gating"]
    md = (out / "study.md").read_text()
    assert "vs the validation-selected SGMAGNet configuration (`sgmagnet-no-gating`)" in md
    assert "| unet | 2 |" in md.split("validation-selected")[1]


@pytest.mark.slow
def test_widened_sweep_supersedes_runs_trained_at_the_old_rate(tiny_shards, tmp_path, monkeypatch, capsys):
    """A grid widened after runs finished: only the new rates are tried; a run whose family now picks another
    rate is moved to superseded/ (kept, its time counted) and trained again at the new rate."""
    from hpc import study

    root, _ = tiny_shards
    out, runs = tmp_path / "res", tmp_path / "runs"
    args = ["--shards", str(root), "--out", str(out), "--runs", str(runs), "--config", "tiny", "--seeds", "0",
            "--only", "unet", "--n-boot", "40"]
    assert study.main(args) == 0
    first = json.load(open(out / "runs" / "unet_s0" / "study_run.json"))
    monkeypatch.setitem(study.PRESETS["tiny"], "sweep_lrs", [0.003, 0.01, 0.02])
    sw = json.load(open(out / "lr_sweep.json"))     # the new rate's trial, recorded as the best one
    sw["unet"]["trials"]["0.02"] = {"best_val_macro_f1": 2.0, "best_step": 2, "wall_s": 1.0}
    json.dump(sw, open(out / "lr_sweep.json", "w"))
    assert study.main(args) == 0
    assert json.load(open(out / "lr_sweep.json"))["unet"]["lr"] == 0.02
    assert json.load(open(out / "runs" / "unet_s0" / "study_run.json"))["lr"] == 0.02
    old = f"unet_s0_lr{first['lr']}"
    assert json.load(open(out / "superseded" / old / "study_run.json")) == first
    assert (runs / "superseded" / old / "checkpoints").is_dir()
    index = json.load(open(out / "study.json"))
    assert [r["lr"] for r in index["runs"]] == [0.02]
    assert index["train_wall_s"]["superseded_runs"] == first["train_wall_s"]
    md = (out / "study.md").read_text()
    assert "Learning-rate sweep" in md and "**2.000 (step 2)**" in md and "on the grid's edge" in md


def _dump_many(args):
    from sgmagnet.io import write_json

    path, i = args
    for k in range(200):
        write_json(path, {"writer": i, "k": k})
    return True


def test_two_study_processes_write_the_same_json_at_once(tmp_path):
    """Two studies with disjoint --only share lr_sweep.json: concurrent writes must neither fail (a shared
    temporary name made one process lose its rename) nor leave a torn file."""
    import multiprocessing as mp

    path = str(tmp_path / "lr_sweep.json")
    with mp.get_context("spawn").Pool(2) as pool:
        assert pool.map(_dump_many, [(path, 0), (path, 1)]) == [True, True]
    assert json.load(open(path))["k"] == 199 and not list(tmp_path.glob("*.tmp*"))


def test_study_bad_options(tiny_shards, tmp_path, capsys):
    import pytest

    from hpc import study

    root, _ = tiny_shards
    plain = tmp_path / "plain.md"
    plain.write_text("# results without the study markers\n")
    for bad, msg in ((["--only", "nope"], "--only: unknown run"), (["--seeds", "a"], "--seeds"),
                     (["--shards", str(tmp_path / "none")], "--shards"),
                     (["--results", str(tmp_path / "missing.md")], "--results"),
                     (["--results", str(plain)], "needs one line"),
                     (["--n-boot", "0"], "--n-boot: 0 draws"), (["--n-boot", "39"], "at least 40"),
                     (["--seeds", "0,-1"], "distinct and >= 0"), (["--seeds", "1,1"], "distinct")):
        with pytest.raises(SystemExit) as e:
            study.main(["--shards", str(root), "--out", str(tmp_path / "o"), "--runs", str(tmp_path / "r"),
                        "--config", "tiny", *bad])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err
    assert plain.read_text() == "# results without the study markers\n"


@pytest.mark.slow
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
    # the same archive synthesised as track corridors only: the same shards, bit for bit (the manifests differ
    # only in the input paths and the number of AHI scenes the build saw)
    corr = tmp_path / "sd_corridor"
    assert study_data.main([*args[:1], str(corr), *args[2:], "--track-corridor"]) == 0
    info_c = json.load(open(corr / "study_data.json"))
    assert info_c["counts"] == info["counts"]
    m, m_c = (json.load(open(d / "shards" / "manifest.json")) for d in (out, corr))
    assert sorted((s["path"], s["sha256"]) for s in m["shards"]) == sorted((s["path"], s["sha256"]) for s in m_c["shards"])
    assert m["band_stats"] == m_c["band_stats"] and m["config_hash"] == m_c["config_hash"]
    assert "--track-corridor 32" in info_c["chunks"]["0"]["synth_command"]
    assert sum(c["raw_mb"] for c in info_c["chunks"].values()) < sum(c["raw_mb"] for c in info["chunks"].values())


def test_study_data_bad_options(tmp_path, capsys):
    import pytest

    from hpc import study_data

    for bad, msg in ((["--start", "2018-13-01"], "--start"), (["--days", "0"], "must be >= 1"),
                     # the synth and build steps' own checks, before the first chunk is synthesised (minutes)
                     (["--region", "1,2"], "argument --region"), (["--res", "0"], "argument --res"),
                     (["--seed", "-1"], "argument --seed"), (["--split-days", "1,1"], "argument --split-days"),
                     (["--gap-days", "-1"], "argument --gap-days"), (["--patch-size", "0"], "argument --patch-size"),
                     (["--track-corridor", "--patch-size", "0"], "argument --patch-size"),
                     (["--days", "x"], "argument --days"), (["--track-corridor=yes"], "--track-corridor")):
        with pytest.raises(SystemExit) as e:
            study_data.main(["--out", str(tmp_path / "x"), *bad])
        err = capsys.readouterr().err
        assert e.value.code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x").exists()        # nothing started


@pytest.mark.slow
def test_an_archive_written_in_pieces_is_one_world(tmp_path):
    """Two 1-day pieces with a shared epoch = one 2-day run: same granules, same layers, same scenes. (Without
    the epoch every piece restarted the weather and the orbit: a 45-day archive was 15 copies of 3 days.)"""
    import glob

    import numpy as np

    from sgmagnet.formats import ahi as ahi_fmt
    from sgmagnet.formats.cloudsat import read_granule
    from sgmagnet.synth.archive import SynthConfig, synthesize

    kw = dict(region=(125.0, 145.0, -30.0, 30.0), res=0.2, seed=3)
    synthesize(SynthConfig(out=str(tmp_path / "one"), start="2018-10-10", days=2, **kw), log=lambda m: None)
    for day in ("2018-10-10", "2018-10-11"):
        synthesize(SynthConfig(out=str(tmp_path / "pieces"), start=day, days=1, epoch="2018-10-10", **kw),
                   log=lambda m: None)

    def files(root, pattern):
        return {os.path.basename(p): p for p in glob.glob(str(root / "**" / pattern), recursive=True)}
    g1, g2 = files(tmp_path / "one", "*.hdf"), files(tmp_path / "pieces", "*.hdf")
    assert g1.keys() == g2.keys() and len(g1) >= 2
    for name in g1:
        a, b = read_granule(g1[name]), read_granule(g2[name])
        for v in ("latitude", "layer_top", "layer_base", "layer_phase"):
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{name} {v}")
    s1, s2 = files(tmp_path / "one", "*.nc"), files(tmp_path / "pieces", "*.nc")
    assert s1.keys() == s2.keys()
    for name in sorted(s1)[:: max(1, len(s1) // 3)]:
        a, b = ahi_fmt.read_ahi(s1[name], variables=("tbb_13",)), ahi_fmt.read_ahi(s2[name], variables=("tbb_13",))
        np.testing.assert_array_equal(a["tbb_13"].values, b["tbb_13"].values)
    # and the second day is not a copy of the first
    d1 = [read_granule(p)["layer_top"].values for n, p in sorted(g1.items()) if n.startswith("2018283")]
    d2 = [read_granule(p)["layer_top"].values for n, p in sorted(g1.items()) if n.startswith("2018284")]
    assert d1 and d2 and not np.array_equal(d1[0][:100], d2[0][:100])


def test_selected_variant_is_chosen_on_validation_among_equal_seed_counts():
    from hpc.study import selected_variant

    def r(name, seed, val):
        return {"name": name, "seed": seed, "val_macro_f1": val}
    base = [r("sgmagnet", 0, 0.50), r("sgmagnet", 1, 0.52), r("unet", 0, 0.90), r("unet", 1, 0.90)]
    assert selected_variant(base) == "sgmagnet"                       # baselines are never candidates
    aux = [r("sgmagnet-aux", 0, 0.53), r("sgmagnet-aux", 1, 0.53)]
    assert selected_variant(base + aux) == "sgmagnet-aux"
    one_seed = [r("sgmagnet-focal", 0, 0.99)]                          # fewer seeds than sgmagnet: not eligible
    assert selected_variant(base + aux + one_seed) == "sgmagnet-aux"
    tie = [r("sgmagnet-no-gating", 0, 0.51), r("sgmagnet-no-gating", 1, 0.51)]
    assert selected_variant(base + tie) == "sgmagnet"                  # a tie keeps the model as designed
    assert selected_variant([r("unet", 0, 0.9)]) is None


def test_log_wall_counts_every_session_of_a_resumed_run(tmp_path):
    from hpc.study import log_wall_s

    log = tmp_path / "log.jsonl"
    recs = [{"kind": "header", "step": 0, "time": 100.0}, {"kind": "train", "step": 10, "time": 160.0},
            {"kind": "val", "step": 10, "time": 170.0},                    # preempted here; resumed an hour later
            {"kind": "header", "step": 10, "time": 3770.0}, {"kind": "train", "step": 20, "time": 3800.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in recs[:3]) + '{"kind": "tra\n'   # killed mid-line
                   + "".join(json.dumps(r) + "\n" for r in recs[3:]))
    assert log_wall_s(str(log)) == 70.0 + 30.0                           # the hour between sessions is not counted
    assert log_wall_s(str(tmp_path / "none.jsonl")) is None
