"""hpc/scale.py's bookkeeping: the synthesis pieces, synthesis wall time per span, the cost model fitted on the
short spans and checked on the longest, and the records and figure it writes (docs/scale.md)."""
import json

import pytest

from hpc import scale


def test_pieces_end_at_the_measured_spans():
    assert scale.pieces(365) == [(0, 7), (7, 30), (30, 91), (91, 365)]
    assert scale.pieces(20) == [(0, 7), (7, 20)]


def fake_state():
    st = {"config": {"start": "2018-10-10", "days": 365, "region": "125,145,-60,60", "ranks": 2, "res": 0.05,
                     "track_corridor": 64, "build": ["--patch-size", "64"]}}
    for (lo, hi), w in zip(scale.pieces(365), (30.0, 100.0, 290.0, 1300.0)):
        st[f"synth_{lo:03d}_{hi:03d}"] = {"days": [lo, hi], "wall_s": w, "processes": 2}
    for d in (7, 30, 45, 91, 365):
        st[f"build_{d:03d}"] = {"days": d, "ranks": 2, "build_wall_s": 5.0 + 1.5 * d, "granules": 2 * d,
                                "shards": 3 * d, "shard_list_sha256": "x", "manifest_sha256": "y"}
    st["corrupt"] = {"file": "g.hdf", "day": "2019-04-28", "bytes_before": 10, "bytes_after": 5}
    return st


def test_synth_wall_sums_the_pieces():
    st = fake_state()
    assert scale.synth_wall(st, 7) == 30.0
    assert scale.synth_wall(st, 91) == 420.0
    assert scale.synth_wall(st, 365) == 1720.0
    assert scale.synth_wall(st, 45) is None             # not a piece boundary


def test_cost_model_predicts_the_longest_span_from_the_others():
    cm = scale.cost_model(fake_state())
    assert cm["fitted_on_days"] == [7, 30, 45, 91] and cm["checked_on_days"] == 365
    assert cm["build"]["b_s_per_day"] == pytest.approx(1.5) and cm["build"]["error"] == pytest.approx(0, abs=1e-3)
    assert cm["core_s_per_granule"][365] == pytest.approx((5 + 1.5 * 365) * 2 / 730, abs=1e-3)
    st = fake_state()
    st["build_365"]["build_wall_s"] *= 2                # a super-linear year shows as a prediction error
    assert scale.cost_model(st)["build"]["error"] == pytest.approx(-0.5, abs=0.01)


def test_report_writes_one_record_per_build_and_the_figure(tmp_path):
    scale.report(fake_state(), str(tmp_path))
    recs = sorted(p.name for p in (tmp_path / "scale").iterdir())
    assert "build_365d_mpirun.json" in recs and "cost_model.json" in recs and len(recs) == 6
    year = json.loads((tmp_path / "scale" / "build_365d_mpirun.json").read_text())
    assert year["faults"][0]["outcome"] == "recorded skip" and year["synth_wall_s"] == 1720.0
    assert (tmp_path / "img" / "scale.png").stat().st_size > 10_000


@pytest.mark.slow
def test_scale_train_bench_runs_and_checks_a_resume(tiny_shards, tmp_path, capsys):
    from hpc.bench import scale_train

    shards, _ = tiny_shards
    out = tmp_path / "r.json"
    assert scale_train.main(["--small", str(shards), "--large", str(shards), "--batches", "3", "--rounds", "1",
                             "--workers", "0", "--val-split", "test", "--resume-check", str(tmp_path / "runs"),
                             "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["best"]["resume_bit_identical"] is True and r["best"]["large"]["startup_s"] > 0
    assert "large / small" in capsys.readouterr().out
