"""The bad-input contract, one row per case, through the real command line (a subprocess each):

    a bad input exits with code 2 (an environment failure or a failed verification with 1) and writes ONE line
    to stderr naming the file or option and the problem -- no traceback -- and everything written before
    (shards, manifest, run folders, checkpoints, cubes) is byte-identical afterwards.

Each row: (id, make(w, tmp) -> dict(argv, protect=[paths]), exit code, text the message must contain).
`w` holds the shared inputs: a tiny archive, its shards, a trained run and a prediction cube.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")


def snapshot(paths) -> dict:
    """sha256 of every file under the given files/folders (a missing path is recorded as missing)."""
    out = {}
    for p in paths:
        p = str(p)
        files = [p] if os.path.isfile(p) else sorted(glob.glob(os.path.join(p, "**", "*"), recursive=True))
        if not os.path.exists(p):
            out[p] = "missing"
        for f in files:
            if os.path.isfile(f):
                out[f] = hashlib.sha256(open(f, "rb").read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def w(tiny_archive, tiny_shards, tmp_path_factory):
    """Shared inputs; every row that might change them protects them (byte-identical afterwards)."""
    from sgmagnet.config import load_config
    from sgmagnet.predict import predict_checkpoint
    from sgmagnet.shards import iter_shard, shard_paths
    from sgmagnet.train import Trainer

    archive, _ = tiny_archive
    shards, _ = tiny_shards
    base = tmp_path_factory.mktemp("bad_inputs")
    run = base / "run"
    Trainer(load_config(TINY, [f"data.shards={shards}", f"train.run_dir={run}", "train.steps=2",
                               "model.name=unet", "train.progress=false"]), log=lambda m: None).fit()
    meta = next(iter_shard(shard_paths(str(shards), "test")[0]))["meta"]
    ahi = glob.glob(str(archive / "ahi" / "**" / meta["ahi_file"]), recursive=True)[0]
    c = meta["corners"]
    bbox = f"{c['nw'][1]},{c['ne'][1]},{c['sw'][0]},{c['nw'][0]}"
    cube = base / "cube.nc"
    predict_checkpoint(str(run), ahi, str(cube), bbox=tuple(map(float, bbox.split(","))), tile=32, overlap=8, log=None)
    junk = base / "junk.bin"
    junk.write_bytes(b"\x00not a file of any format\xff" * 10)
    return {"archive": archive, "ahi": str(archive / "ahi"), "cs": str(archive / "cloudsat"), "shards": shards,
            "run": run, "scene": ahi, "bbox": bbox, "cube": cube, "junk": junk, "base": base}


def shard_copy(w, tmp, damage=None):
    """A private copy of the shard folder; damage(copy) breaks something in it."""
    out = tmp / "shards"
    shutil.copytree(w["shards"], out)
    if damage:
        damage(out)
    return out


def flip_byte(out):
    p = sorted(glob.glob(str(out / "test" / "*.tar")))[0]
    data = bytearray(open(p, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(p, "wb").write(bytes(data))


def truncate_manifest(out):
    p = out / "manifest.json"
    p.write_bytes(p.read_bytes()[:200])


def build_argv(w, out, *extra, ahi=None, cs=None):
    return ["build", "--ahi", ahi or w["ahi"], "--cloudsat", cs or w["cs"], "--out", str(out), "--patch-size", "32",
            "--min-labelled", "16", "--split-days", "1,0,1", "--gap-days", "0", "--shard-maxcount", "8", "--quiet",
            *extra]


def train_argv(w, tmp, *over):
    return ["train", "--config", TINY, "--no-progress", f"data.shards={w['shards']}", f"train.run_dir={tmp / 'r'}",
            *over]


def eval_argv(w, shards, *extra):
    return ["evaluate", "--checkpoint", str(w["run"]), "--shards", str(shards), "--split", "test", *extra]


def predict_argv(w, tmp, *extra, out=None):
    return ["predict", "--checkpoint", str(w["run"]), "--ahi", w["scene"], "--out", str(out or w["cube"]), *extra]


def empty_dir(tmp, name):
    d = tmp / name
    d.mkdir()
    return str(d)


def junk_granule_dir(w, tmp):
    d = tmp / "cs_junk"
    d.mkdir()
    shutil.copy(w["junk"], d / "2018274030000_66001_CS_2B-CLDCLASS-LIDAR_GRANULE_P1_R05_E08_F01.hdf")
    return str(d)


def no_overlap_archive(w, tmp):
    """AHI scenes of day 1 only, CloudSat granules of day 2 only: nothing can match."""
    ahi, cs = tmp / "ahi1", tmp / "cs2"
    ahi.mkdir()
    cs.mkdir()
    for f in glob.glob(os.path.join(w["ahi"], "**", "NC_H08_20181001_*.nc"), recursive=True)[:2]:
        shutil.copy(f, ahi)
    for f in glob.glob(os.path.join(w["cs"], "**", "2018275*.hdf"), recursive=True):
        shutil.copy(f, cs)
    return str(ahi), str(cs)


def run_with_checkpoints(w, tmp):
    r = tmp / "r"
    shutil.copytree(w["run"], r)
    return r


def junk_checkpoint(w, tmp):
    d = tmp / "ck"
    d.mkdir()
    shutil.copy(w["junk"], d / "state.pt")
    return d


def file_with(tmp, name, text):
    p = tmp / name
    p.write_text(text)
    return str(p)


CASES = [
    # ----------------------------------------------------------------------------------------- build
    ("build-other-config", lambda w, t: dict(argv=build_argv(w, w["shards"], "--patch-size", "16"),
                                             protect=[w["shards"]]), 2, "another configuration"),
    ("build-other-config-min-labelled", lambda w, t: dict(argv=build_argv(w, w["shards"], "--min-labelled", "20"),
                                                          protect=[w["shards"]]), 2, "min_labelled 16 -> 20"),
    ("build-window-inf", lambda w, t: dict(argv=build_argv(w, t / "o", "--window-min", "inf")), 2, "--window-min"),
    ("build-window-nan", lambda w, t: dict(argv=build_argv(w, t / "o", "--window-min", "nan")), 2, "--window-min"),
    ("build-window-zero", lambda w, t: dict(argv=build_argv(w, t / "o", "--window-min", "0")), 2, "--window-min"),
    ("build-window-huge", lambda w, t: dict(argv=build_argv(w, t / "o", "--window-min", "1e300")), 2, "--window-min"),
    ("build-patch-larger-than-grid", lambda w, t: dict(argv=build_argv(w, t / "o", "--patch-size", "5000")), 2,
     "larger than every AHI grid"),
    ("build-ahi-missing", lambda w, t: dict(argv=build_argv(w, t / "o", ahi=str(t / "nope"))), 2, "--ahi"),
    ("build-ahi-empty", lambda w, t: dict(argv=build_argv(w, t / "o", ahi=empty_dir(t, "a"))), 2, "no P-Tree AHI"),
    ("build-cloudsat-empty", lambda w, t: dict(argv=build_argv(w, t / "o", cs=empty_dir(t, "c"))), 2,
     "no readable 2B-CLDCLASS-LIDAR"),
    ("build-cloudsat-only-junk", lambda w, t: dict(argv=build_argv(w, t / "o", cs=junk_granule_dir(w, t))), 2,
     "1 unreadable"),
    ("build-zero-samples", lambda w, t: dict(argv=build_argv(w, t / "o", ahi=no_overlap_archive(w, t)[0],
                                                             cs=str(t / "cs2"))), 2, "no sample was produced"),
    ("build-gap-negative", lambda w, t: dict(argv=build_argv(w, t / "o", "--gap-days", "-1")), 2, "--gap-days"),
    ("build-split-no-train", lambda w, t: dict(argv=build_argv(w, t / "o", "--split-days", "0,1,1")), 2,
     "--split-days"),
    ("build-split-anchor-bad", lambda w, t: dict(argv=build_argv(w, t / "o", "--split-anchor", "2018-13-01")), 2,
     "YYYY-MM-DD"),
    # ------------------------------------------------------------------------ shards, inspect, evaluate
    ("inspect-verify-flipped-byte", lambda w, t: dict(argv=["inspect", str(shard_copy(w, t, flip_byte)), "--verify"],
                                                      protect=[t / "shards"]), 1, "do not match manifest.json"),
    ("inspect-truncated-manifest", lambda w, t: dict(argv=["inspect", str(shard_copy(w, t, truncate_manifest))]), 2,
     "manifest.json: not valid JSON"),
    ("inspect-not-a-manifest", lambda w, t: dict(argv=["inspect", str(shard_copy(
        w, t, lambda o: (o / "manifest.json").write_text("[1, 2]")))]), 2, "not an sgmagnet shard manifest"),
    ("inspect-no-manifest", lambda w, t: dict(argv=["inspect", empty_dir(t, "s")]), 2, "no manifest.json"),
    ("evaluate-flipped-shard", lambda w, t: dict(argv=eval_argv(w, shard_copy(w, t, flip_byte)),
                                                 protect=[w["run"]]), 2, "do not match manifest.json"),
    ("evaluate-truncated-manifest", lambda w, t: dict(argv=eval_argv(w, shard_copy(w, t, truncate_manifest)),
                                                      protect=[w["run"]]), 2, "not valid JSON"),
    ("evaluate-unknown-split", lambda w, t: dict(argv=eval_argv(w, w["shards"])[:-2] + ["--split", "nosuch"],
                                                 protect=[w["run"]]), 2, "no shards for split 'nosuch'"),
    ("evaluate-missing-checkpoint", lambda w, t: dict(argv=["evaluate", "--checkpoint", str(t / "no"), "--shards",
                                                            str(w["shards"])]), 2, "--checkpoint"),
    ("evaluate-junk-checkpoint", lambda w, t: dict(argv=["evaluate", "--checkpoint", str(junk_checkpoint(w, t)),
                                                         "--shards", str(w["shards"])]), 2,
     "not a readable checkpoint"),
    ("evaluate-checkpoint-other-file", lambda w, t: dict(argv=["evaluate", "--checkpoint", str(w["junk"]),
                                                               "--shards", str(w["shards"])]), 2,
     "junk.bin: not a checkpoint"),
    ("report-junk-json", lambda w, t: dict(argv=["report", str(w["junk"])]), 2, "junk.bin"),
    # ----------------------------------------------------------------------------------------- train
    ("train-run-has-checkpoints", lambda w, t: dict(argv=train_argv(w, t), protect=[run_with_checkpoints(w, t)]), 2,
     "already holds checkpoints"),
    ("train-truncated-manifest", lambda w, t: dict(argv=train_argv(w, t, f"data.shards={shard_copy(w, t, truncate_manifest)}")),
     2, "not valid JSON"),
    ("train-steps-zero", lambda w, t: dict(argv=train_argv(w, t, "train.steps=0")), 2, "train.steps: must be >= 1"),
    ("train-batch-zero", lambda w, t: dict(argv=train_argv(w, t, "data.batch_size=0")), 2, "data.batch_size"),
    ("train-lr-nan", lambda w, t: dict(argv=train_argv(w, t, "optim.lr=.nan")), 2, "optim.lr: expected a finite"),
    ("train-lr-inf", lambda w, t: dict(argv=train_argv(w, t, "optim.lr=.inf")), 2, "optim.lr"),
    ("train-lr-negative", lambda w, t: dict(argv=train_argv(w, t, "optim.lr=-0.1")), 2, "optim.lr: must be > 0"),
    ("train-betas-one", lambda w, t: dict(argv=train_argv(w, t, "optim.betas=[0.9]")), 2, "optim.betas"),
    ("train-betas-scalar", lambda w, t: dict(argv=train_argv(w, t, "optim.betas=0.9")), 2, "optim.betas"),
    ("train-optimizer-name", lambda w, t: dict(argv=train_argv(w, t, "optim.name=adamx")), 2, "optim.name"),
    ("train-model-name", lambda w, t: dict(argv=train_argv(w, t, "model.name=resnet")), 2, "model.name"),
    ("train-model-size", lambda w, t: dict(argv=train_argv(w, t, "model.size=huge")), 2, "model.size"),
    ("train-model-option", lambda w, t: dict(argv=train_argv(w, t, "model.options={bogus: 1}")), 2, "model.options"),
    ("train-loss-weights", lambda w, t: dict(argv=train_argv(w, t, "loss.weights=[1,2]")), 2, "loss.weights"),
    ("train-workers-negative", lambda w, t: dict(argv=train_argv(w, t, "data.workers=-1")), 2, "data.workers"),
    ("train-unknown-key", lambda w, t: dict(argv=train_argv(w, t, "train.stepz=3")), 2, "unknown key 'stepz'"),
    ("train-val-split-empty", lambda w, t: dict(argv=train_argv(w, t, "data.val_split=val")), 2,
     "data.val_split='val'"),
    ("train-config-missing", lambda w, t: dict(argv=["train", "--config", str(t / "no.yaml")]), 2, "--config"),
    ("train-config-bad-yaml", lambda w, t: dict(argv=["train", "--config", file_with(t, "b.yaml", "train: [1, 2\n")]),
     2, "not valid YAML"),
    ("train-config-a-list", lambda w, t: dict(argv=["train", "--config", file_with(t, "l.yaml", "- 1\n- 2\n")]), 2,
     "expected a mapping"),
    ("train-deepspeed-missing", lambda w, t: dict(argv=train_argv(w, t) + ["--deepspeed", str(t / "ds.json")]), 2,
     "--deepspeed"),
    ("train-device-cuda", lambda w, t: dict(argv=train_argv(w, t, "train.device=cuda")), 2, "no CUDA device"),
    # ------------------------------------------------------------------------------- predict and plot
    ("predict-bbox-outside", lambda w, t: dict(argv=predict_argv(w, t, "--bbox", "10,20,50,60"),
                                               protect=[w["cube"]]), 2, "is outside"),
    ("predict-tile-too-small", lambda w, t: dict(argv=predict_argv(w, t, "--tile", "4", "--overlap", "0"),
                                                 protect=[w["cube"]]), 2, "--tile"),
    ("predict-tile-not-divisible", lambda w, t: dict(argv=predict_argv(w, t, "--tile", "30", "--overlap", "8",
                                                                       "--bbox", w["bbox"]),
                                                     protect=[w["cube"]]), 2, "--tile 30"),
    ("predict-overlap-odd", lambda w, t: dict(argv=predict_argv(w, t, "--overlap", "7"), protect=[w["cube"]]), 2,
     "--overlap"),
    ("predict-junk-ahi", lambda w, t: dict(argv=predict_argv(w, t)[:3] + ["--ahi", str(w["junk"]), "--out",
                                                                          str(w["cube"])],
                                           protect=[w["cube"]]), 2, "junk.bin"),
    ("predict-out-folder-missing", lambda w, t: dict(argv=predict_argv(w, t, "--bbox", w["bbox"],
                                                                       out=t / "no" / "c.nc"),
                                                     protect=[t / "no"]), 2, "--out"),
    ("plot-section-outside", lambda w, t: dict(argv=["plot", str(w["cube"]), "--out", str(t), "--section",
                                                     "10,50,20,60"], protect=[w["cube"]]), 2, "--section"),
    ("plot-junk-cube", lambda w, t: dict(argv=["plot", str(w["junk"]), "--out", str(t)]), 2, "junk.bin"),
    # -------------------------------------------------------------------------- synth and submit (dry run)
    ("synth-res-inf", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--res", "inf"]), 2, "--res"),
    ("synth-region-reversed", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--region", "150,120,-10,10"]),
     2, "--region"),
    ("synth-seed-negative", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--seed", "-1"]), 2, "--seed"),
    ("submit-partition-newline", lambda w, t: dict(argv=["submit", "train", "--config", TINY, "--partition", "gpu\n",
                                                         "--time", "10", "--dry-run", "--cluster", "slurm"]), 2,
     "--partition"),
    ("submit-sbatch-uid", lambda w, t: dict(argv=["submit", "train", "--config", TINY, "--partition", "gpu", "--time",
                                                  "10", "--dry-run", "--cluster", "slurm", "--sbatch=--uid=0"]), 2,
     "--sbatch"),
    ("submit-time-bad", lambda w, t: dict(argv=["submit", "train", "--config", TINY, "--partition", "gpu", "--time",
                                                "25:61:00", "--dry-run", "--cluster", "slurm"]), 2, "--time"),
]


def test_there_are_enough_rows():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,make,code,text", CASES, ids=[c[0] for c in CASES])
def test_bad_input(w, tmp_path, name, make, code, text):
    case = make(w, tmp_path)
    protect = case.get("protect", [])
    before = snapshot(protect)
    r = subprocess.run([sys.executable, "-m", "sgmagnet.cli", *map(str, case["argv"])], env=ENV, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=300)
    err = r.stderr.strip()
    assert r.returncode == code, f"exit {r.returncode}, expected {code}\nstdout: {r.stdout[-1500:]}\nstderr: {err[-1500:]}"
    assert "Traceback" not in r.stderr + r.stdout, err[-3000:]
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    assert text in err, f"{text!r} not in {err!r}"
    assert snapshot(protect) == before, "an earlier output changed"
    assert not glob.glob(str(tmp_path / "**" / "*.partial"), recursive=True), "a .partial file was left behind"


def test_environment_failure_stops_the_build_and_a_rerun_retries(w, tmp_path):
    """A write that fails for a reason that is not the input (here: a folder sits where a shard must go) stops
    the build with exit 1 and one line; the granule gets no record (not a permanent skip), the old manifest is
    kept, and the same command after the cause is removed completes with the shards of a clean build."""
    out = shard_copy(w, tmp_path)
    man_before = (out / "manifest.json").read_bytes()
    recs = sorted((out / "_records").glob("*.json"))
    victim = next(r for r in recs if json.load(open(r))["shards"])
    shard = out / json.load(open(victim))["shards"][0]["path"]
    os.remove(victim)
    os.remove(shard)
    shard.mkdir()                                   # the shard cannot be written or cleaned: an OSError, not input
    argv = [sys.executable, "-m", "sgmagnet.cli", *build_argv(w, out)]
    r = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert victim.name[:-5] in r.stderr and "re-run retries it" in r.stderr, r.stderr
    assert not victim.exists() and (out / "manifest.json").read_bytes() == man_before
    shard.rmdir()
    r = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.load(open(out / "manifest.json"))
    want = json.load(open(w["shards"] / "manifest.json"))
    assert got["shards"] == want["shards"] and got["counts"] == want["counts"] and got["skipped"] == want["skipped"]


def test_overwrite_rebuilds_an_out_of_another_configuration(w, tmp_path):
    out = shard_copy(w, tmp_path)
    r = subprocess.run([sys.executable, "-m", "sgmagnet.cli", *build_argv(w, out, "--patch-size", "24",
                                                                          "--overwrite")],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.load(open(out / "manifest.json"))
    assert m["config"]["patch_size"] == 24
    recs = [json.load(open(p)) for p in (out / "_records").glob("*.json")]
    assert {rc["config"]["patch_size"] for rc in recs} == {24}          # never a mix of patch sizes
