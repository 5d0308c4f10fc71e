"""The transfer study's harness (hpc/transfer_study.py) end to end on a tiny archive: both spans, both shard sets,
runs of each kind, the stratified table with frame-level intervals, and a resumed re-run that trains nothing."""
import json
import os
import subprocess
import sys

import pytest
from ci import ROOT

pytestmark = pytest.mark.slow


def test_transfer_study_runs_and_resumes(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "hpc", "transfer_study.py"), "--config", "tiny", "--work",
           str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--seeds", "0", "--days", "5", "--max-steps", "3",
           "--region", "125,145,-30,30", "--res", "0.1", "--patch", "32", "--n-boot", "40", "--only", "cs-all,ec-ir"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    md = open(tmp_path / "o" / "transfer.md").read()
    assert "| cs-all | all | CloudSat days (daylight)" in md and "| ec-ir | ir | EarthCARE days (day+night)" in md
    res = json.load(open(tmp_path / "o" / "transfer.json"))
    assert any(k.startswith("cs-all/ec/") for k in res["table"]) and any(k.startswith("cs-all/cs/") for k in res["table"])
    run = json.load(open(tmp_path / "o" / "runs" / "cs-all_s0" / "transfer_run.json"))
    assert set(run["scores"]) == {"ec", "cs"} and run["bands"] == "all"
    man = json.load(open(tmp_path / "w" / "shards_ec" / "manifest.json"))
    assert any("/night/" in k for d in man["provenance"].values() for k in d)         # EarthCARE night samples
    cs = json.load(open(tmp_path / "w" / "shards_cs" / "manifest.json"))
    assert not any("/night/" in k for d in cs["provenance"].values() for k in d)      # CloudSat: none
    log = tmp_path / "w" / "runs" / "cs-all_s0" / "log.jsonl"
    before = os.path.getmtime(log)
    r2 = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert os.path.getmtime(log) == before                          # resumed: nothing trained again
    assert open(tmp_path / "o" / "transfer.md").read() == md
