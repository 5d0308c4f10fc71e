"""The bad-input contract, one row per case, through the real command line (a process each: forked from a
server that imported the CLI's modules once, tests/cli_server.py, or a subprocess of its own):

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

import numpy as np
import pytest
from ci import ROOT, TINY

pytestmark = pytest.mark.slow   # one CLI process per row

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
def cli():
    """`python -m sgmagnet.cli ARGV` as a process forked from one that imported the heavy modules once
    (tests/cli_server.py): the same command, exit code and output, without 140 cold starts."""
    from cli_server import Client

    c = Client(ENV, ROOT)
    yield c
    c.close()


@pytest.fixture(scope="module")
def w(tiny_archive, tiny_shards, tiny_run, hsd_archive, tmp_path_factory):
    """Shared inputs; every row that might change them protects them (byte-identical afterwards)."""
    from sgmagnet.predict import predict_checkpoint
    from sgmagnet.shards import iter_shard, shard_paths

    archive, _ = tiny_archive
    shards, _ = tiny_shards
    base = tmp_path_factory.mktemp("bad_inputs")
    run = tiny_run
    meta = next(iter_shard(shard_paths(str(shards), "test")[0]))["meta"]
    ahi = glob.glob(str(archive / "ahi" / "**" / meta["ahi_file"]), recursive=True)[0]
    c = meta["corners"]
    bbox = f"{c['nw'][1]},{c['ne'][1]},{c['sw'][0]},{c['nw'][0]}"
    cube = base / "cube.nc"
    predict_checkpoint(str(run), ahi, str(cube), bbox=tuple(map(float, bbox.split(","))), tile=32, overlap=8, log=None)
    junk = base / "junk.bin"
    junk.write_bytes(b"\x00not a file of any format\xff" * 10)
    hsd_root = hsd_archive[0]
    slots = sorted({os.path.dirname(p) for p in glob.glob(str(hsd_root / "ahi_hsd" / "**" / "*.bz2"), recursive=True)})
    return {"archive": archive, "ahi": str(archive / "ahi"), "cs": str(archive / "cloudsat"), "shards": shards,
            "run": run, "scene": ahi, "bbox": bbox, "cube": cube, "junk": junk, "base": base,
            "hsd_slots": slots, "hsd_cs": str(hsd_root / "cloudsat")}


def study_with_truncated_logs(tmp):
    """A copy of the committed study (docs/study) whose log archive is cut short."""
    out = tmp / "study"
    shutil.copytree(os.path.join(ROOT, "docs", "study"), out)
    data = (out / "logs.tar.gz").read_bytes()
    (out / "logs.tar.gz").write_bytes(data[:len(data) // 3])
    return out


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


def predict_argv(w, tmp, *extra, out=None, ahi=None):
    return ["predict", "--checkpoint", str(w["run"]), "--ahi", ahi or w["scene"], "--out", str(out or w["cube"]), *extra]


def empty_dir(tmp, name):
    d = tmp / name
    d.mkdir()
    return str(d)


def junk_granule_dir(w, tmp):
    d = tmp / "cs_junk"
    d.mkdir()
    shutil.copy(w["junk"], d / "2018283030000_66001_CS_2B-CLDCLASS-LIDAR_GRANULE_P1_R05_E08_F01.hdf")
    return str(d)


def no_overlap_archive(w, tmp):
    """AHI scenes of day 1 only, CloudSat granules of day 2 only: nothing can match."""
    ahi, cs = tmp / "ahi1", tmp / "cs2"
    ahi.mkdir()
    cs.mkdir()
    for f in glob.glob(os.path.join(w["ahi"], "**", "NC_H08_20181010_*.nc"), recursive=True)[:2]:
        shutil.copy(f, ahi)
    for f in glob.glob(os.path.join(w["cs"], "**", "2018284*.hdf"), recursive=True):
        shutil.copy(f, cs)
    return str(ahi), str(cs)


def run_with_checkpoints(w, tmp):
    r = tmp / "r"
    shutil.copytree(w["run"], r)
    return r


def run_missing_rank_file(w, tmp):
    r = run_with_checkpoints(w, tmp)
    for f in glob.glob(str(r / "checkpoints" / "step_*" / "rank_00000.pt")):
        os.remove(f)
    return r


def granule_twice(w, tmp):
    """The CloudSat folder with one granule also present under the name of another release (R04)."""
    d = tmp / "cs_twice"
    shutil.copytree(w["cs"], d)
    first = sorted(glob.glob(str(d / "**" / "*.hdf"), recursive=True))[0]
    shutil.copy(first, first.replace("_R05_", "_R04_"))
    return str(d)


def junk_checkpoint(w, tmp):
    d = tmp / "ck"
    d.mkdir()
    shutil.copy(w["junk"], d / "state.pt")
    return d


def file_with(tmp, name, text):
    p = tmp / name
    p.write_text(text)
    return str(p)


PY = sys.executable
HELD_LOCKS = []        # run-folder locks held by this process for the "second trainer" rows (released at exit)


def hpc(script, *args):
    """A command line of one of the hpc/ tools (they follow the same contract)."""
    return [PY, os.path.join(ROOT, "hpc", script), *args]


def limited(blocks, argv):
    """argv under `ulimit -f blocks` (512-byte blocks): the file system refuses writes past that size, as a full
    disk or an exhausted quota would."""
    return ["bash", "-c", f"ulimit -f {blocks}; exec \"$@\"", "limited", PY, "-m", "sgmagnet.cli", *map(str, argv)]


def held_run(w, tmp):
    """A run folder whose lock is held, as by a trainer running in it."""
    import fcntl

    r = run_with_checkpoints(w, tmp)
    f = open(r / ".lock", "a+")
    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    HELD_LOCKS.append(f)
    return r


def alias_bomb(tmp, inside_options=True):
    """Nine levels of YAML aliases, nine references each: 9^9 values once expanded (a "billion laughs")."""
    lines = ["model:", "  name: sgmagnet", "  options:", "    x0: &a [x, x, x, x, x, x, x, x, x]"]
    prev = "a"
    for i, k in enumerate("bcdefghi"):
        lines.append(f"    x{i + 1}: &{k} [{', '.join(['*' + prev] * 9)}]")
        prev = k
    return file_with(tmp, "bomb.yaml", "\n".join(lines) + "\n")


OVERRIDE_BOMB = ("model.options={a: &a [1,1,1,1,1,1,1,1,1], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], "
                 "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], "
                 "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]}")


def relabelled_checkpoint(w, tmp, name="segnet"):
    """The unet run's weights in a checkpoint whose config says another model (a mixed-up copy)."""
    import torch

    src = glob.glob(str(w["run"] / "checkpoints" / "step_*" / "state.pt"))[0]
    ck = torch.load(src, weights_only=True)
    ck["config"]["model"]["name"] = name
    d = tmp / "mixed"
    d.mkdir()
    torch.save(ck, d / "state.pt")
    return d


def truncated_train_shards(out):
    for p in glob.glob(str(out / "train" / "*.tar")):
        data = open(p, "rb").read()
        open(p, "wb").write(data[:3000])


def hsd_copy(w, tmp, edit=None, slots=(0,)):
    """A private copy of HSD slot folder(s) of the shared HSD archive; edit(folders) breaks them. Returns the
    --ahi folder."""
    root = tmp / "hsd"
    folders = []
    for k in slots:
        d = root / f"slot{k}"
        shutil.copytree(w["hsd_slots"][k], d)
        folders.append(d)
    if edit:
        edit(folders)
    return str(root)


def hsd_largest(folder, band):
    """The segment of `band` holding the most rendered pixels (the largest file)."""
    return max(glob.glob(str(folder / f"*_B{band:02d}_*")), key=os.path.getsize)


def hsd_rewrite(path, edit):
    """Decompress a segment, edit its bytes, compress it again under the same name."""
    import bz2

    data = bytearray(bz2.decompress(open(path, "rb").read()))
    edit(data)
    open(path, "wb").write(bz2.compress(bytes(data), 1))


def hsd_field(block: int, field: str, value: bytes):
    """An edit writing `value` over header field `field` of block 1 or 5."""
    from sgmagnet.formats import hsd

    start = 0 if block == 1 else sum(d.itemsize for d in (hsd.BLOCK1, hsd.BLOCK2, hsd.BLOCK3, hsd.BLOCK4))
    off = start + (hsd.BLOCK1 if block == 1 else hsd.BLOCK5).fields[field][1]
    return lambda d: d.__setitem__(slice(off, off + len(value)), value)


def hsd_rename(folders, bands, to="09"):
    for d in folders:
        for p in glob.glob(str(d / "HS_H08_*")):
            if int(os.path.basename(p).split("_")[4][1:]) in bands:
                os.rename(p, p.replace("HS_H08_", f"HS_H{to}_"))


def hsd_mix_two_slots(folders):
    """Slot 0's folder ends up with its own B01-B08 and slot 1's B09-B16 (two half slots)."""
    a, b = folders
    for p in glob.glob(str(a / "*")):
        if int(os.path.basename(p).split("_")[4][1:]) >= 9:
            os.remove(p)
    for p in glob.glob(str(b / "*")):
        if int(os.path.basename(p).split("_")[4][1:]) >= 9:
            shutil.move(p, a / os.path.basename(p))
    shutil.rmtree(b)


def hsd_build(w, t, edit, text, code=0, slots=(0,)):
    """A build of a broken HSD slot: a recorded skip (exit 0, `text` in manifest.json's skipped) or a refusal."""
    case = dict(argv=build_argv(w, t / "o", ahi=hsd_copy(w, t, edit, slots), cs=w["hsd_cs"]))
    if code == 0:
        case["manifest"] = t / "o"
    return case


def ec_build(w, t, make, name=None):
    """A build of the tiny archive's CloudSat labels with an --earthcare folder holding one bad AC__TC__2B file:
    a recorded skip (exit 0, the reason in manifest.json's skipped); the CloudSat part still builds."""
    from test_earthcare import NAME, spec_file

    d = t / "ec"
    d.mkdir()
    make(d / (name or NAME), spec_file)
    return dict(argv=build_argv(w, t / "o", "--earthcare", str(d)), manifest=t / "o")


def _truncated(p, spec_file):
    spec_file(p)
    open(p, "r+b").truncate(os.path.getsize(p) // 2)


def _not_earthcare(p, spec_file):
    import h5py
    with h5py.File(p, "w") as f:
        f.create_group("Data").create_dataset("x", data=[1, 2, 3])


EC_2024 = (np.datetime64("2024-12-01T03:00") - np.datetime64("2000-01-01")).astype("timedelta64[s]").astype(float)

CASES = [
    # ------------------------------------------------------------ EarthCARE AC__TC__2B (issue 30)
    ("ec-hdf5-not-earthcare", lambda w, t: ec_build(w, t, _not_earthcare), 0, "not an EarthCARE L2 file"),
    ("ec-other-product", lambda w, t: ec_build(w, t, lambda p, f: f(p), name="ECA_EXBC_ATL_TC__2A_20251223T000721Z_"
                                               "20251223T012326Z_08916G.h5"), 0, "product ATL_TC__2A"),
    ("ec-missing-sciencedata-variable", lambda w, t: ec_build(w, t, lambda p, f: f(p, drop=("quality_status",))), 0,
     "missing /ScienceData variable(s): quality_status"),
    ("ec-height-bottom-up", lambda w, t: ec_build(w, t, lambda p, f: f(p, bottom_up=True)), 0, "runs bottom-up"),
    ("ec-241-levels-reads", lambda w, t: ec_build(w, t, lambda p, f: f(p, k=241)), 0,
     "no AHI scene within +-5 min"),      # read like any frame: skipped only because no scene is near it
    ("ec-classes-outside-table", lambda w, t: ec_build(w, t, lambda p, f: f(p, classes=np.full((6, 242), 40, np.int8))),
     0, "codes outside the table -1..34: [40]"),
    ("ec-truncated", lambda w, t: ec_build(w, t, _truncated), 0, "not a readable HDF5 file"),
    ("ec-times-backwards", lambda w, t: ec_build(w, t, lambda p, f: f(p, times=8.19e8 - np.arange(6.0))), 0,
     "goes backwards"),
    ("ec-before-its-l2-release", lambda w, t: ec_build(w, t, lambda p, f: f(p, times=EC_2024 + np.arange(6.0))), 0,
     "AC__TC__2B dated 2024-12-01 03:00 UTC, outside its windows"),
    ("transfer-study-unknown-config", lambda w, t: dict(cmd=hpc("transfer_study.py", "--only", "cs-all,vis")), 2,
     "--only: unknown configuration 'vis'"),
    ("build-no-labels", lambda w, t: dict(argv=["build", "--ahi", w["ahi"], "--out", str(t / "o")]), 2,
     "give --cloudsat DIR (2B-CLDCLASS-LIDAR) and/or --earthcare DIR"),
    # ------------------------------------------------------------ Himawari Standard Data (HSD) through satpy
    ("hsd-missing-segment", lambda w, t: hsd_build(w, t, lambda f: os.remove(hsd_largest(f[0], 13)), ""), 0,
     "missing segment (its pixels get no sample)"),
    ("hsd-truncated-bz2", lambda w, t: hsd_build(w, t, lambda f: (lambda p: open(p, "r+b").truncate(
        os.path.getsize(p) // 2))(hsd_largest(f[0], 5)), ""), 0, "cannot decompress"),
    ("hsd-header-lengths-vs-file-size", lambda w, t: hsd_build(w, t, lambda f: hsd_rewrite(
        hsd_largest(f[0], 14), lambda d: d.extend(b"\0" * 10)), ""), 0, "the (decompressed) file holds"),
    ("hsd-band-missing", lambda w, t: hsd_build(w, t, lambda f: [os.remove(p) for p in glob.glob(str(f[0] / "*_B07_*"))],
                                               "", code=2), 2, "has no file of band(s) B07"),
    ("hsd-two-slots-in-one-folder", lambda w, t: hsd_build(w, t, hsd_mix_two_slots, "", code=2, slots=(0, 1)), 2,
     "has no file of band(s) B09"),
    ("hsd-name-h08-header-himawari-9", lambda w, t: hsd_build(w, t, lambda f: hsd_rewrite(
        hsd_largest(f[0], 15), hsd_field(1, "satellite", b"Himawari-9")), ""), 0,
     "file name says H08 but the header says Himawari-9"),
    ("hsd-zero-calibration", lambda w, t: hsd_build(w, t, lambda f: hsd_rewrite(
        hsd_largest(f[0], 16), hsd_field(5, "gain_count2rad_conversion", bytes(8))), ""), 0, "calibration gain"),
    ("hsd-platform-not-operational", lambda w, t: hsd_build(w, t, lambda f: hsd_rename(f, range(1, 17)), "", code=2),
     2, "Himawari-9 was not the operational imager at 2018-10-10"),
    ("hsd-slot-mixes-platforms", lambda w, t: hsd_build(w, t, lambda f: hsd_rename(f, range(1, 9)), "", code=2), 2,
     "mixes HS_H08 and HS_H09 files"),
    ("build-ahi-holds-both-kinds", lambda w, t: dict(argv=build_argv(w, t / "o", ahi=hsd_copy(
        w, t, lambda f: shutil.copy(glob.glob(os.path.join(w["ahi"], "**", "*.nc"), recursive=True)[0], f[0])),
        cs=w["hsd_cs"])), 2, "--ahi-format ptree|hsd"),
    ("predict-hsd-folder-with-two-slots", lambda w, t: dict(argv=predict_argv(
        w, t, out=t / "c.nc", ahi=hsd_copy(w, t, lambda f: [shutil.copy(p, f[0]) for p in glob.glob(str(f[1] / "*"))],
                                          slots=(0, 1)) + "/slot0")), 2, "holds segments of 2 slots"),
    ("predict-hsd-band-missing", lambda w, t: dict(argv=predict_argv(
        w, t, out=t / "c.nc", ahi=hsd_copy(w, t, lambda f: [os.remove(p) for p in glob.glob(str(f[0] / "*_B07_*"))])
        + "/slot0")), 2, "has no file of band(s) B07"),
    ("hsd-copy-folder-not-writable", lambda w, t: dict(argv=build_argv(w, t / "o", ahi=hsd_copy(w, t, lambda f: None),
                                                                     cs=w["hsd_cs"]),
                                                      env={"SGMAGNET_HSD_TMP": str(t / "no-such-folder")}), 2,
     "SGMAGNET_HSD_TMP="),
    ("predict-hsd-copy-folder-not-writable", lambda w, t: dict(argv=predict_argv(w, t, out=t / "c.nc",
                                                                                ahi=w["hsd_slots"][0]),
                                                              env={"SGMAGNET_HSD_TMP": str(w["junk"])}), 2,
     "is not a writable directory"),
    ("predict-hsd-file-missing", lambda w, t: dict(argv=predict_argv(
        w, t, out=t / "c.nc", ahi=str(t / "HS_H08_20181010_0350_B13_FLDK_R20_S0510.DAT.bz2"))), 2, "does not exist"),
    ("synth-hsd-without-corridor", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--ahi-format", "hsd"]), 2,
     "needs --track-corridor"),
    ("predict-hsd-bbox-off-the-disk", lambda w, t: dict(argv=[*predict_argv(w, t, out=t / "c.nc", ahi=w["hsd_slots"][0]),
                                                             "--bbox=-60,-50,0,10"]), 2, "outside the Earth disk"),
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
    # ================================================ round 4: paths added since round 3, and faults
    # ------------------------------------------------------------------ faults: disk full, a second trainer
    ("train-checkpoint-disk-full", lambda w, t: dict(cmd=limited(200, train_argv(w, t, "train.steps=4",
                                                                                   "train.val_every=0"))),
     1, "cannot write"),
    ("train-resume-checkpoint-disk-full", lambda w, t: dict(
        cmd=limited(100, train_argv(w, t, "train.steps=6", "train.val_every=0", "model.name=unet", "--resume")),
        protect=[run_with_checkpoints(w, t) / "checkpoints"]), 1, "is intact"),
    ("build-shard-disk-full", lambda w, t: dict(cmd=limited(100, build_argv(w, t / "o"))), 1, "File too large"),
    ("train-second-trainer-same-run", lambda w, t: dict(argv=train_argv(w, t, "model.name=unet") + ["--resume"],
                                                        protect=[held_run(w, t) / "checkpoints"]), 2,
     "in use by a running trainer"),
    ("train-second-trainer-overwrite", lambda w, t: dict(argv=train_argv(w, t, "model.name=unet") + ["--overwrite"],
                                                         protect=[held_run(w, t) / "checkpoints"]), 2,
     "in use by a running trainer"),
    ("train-shards-truncated", lambda w, t: dict(argv=train_argv(w, t, f"data.shards={shard_copy(w, t, truncated_train_shards)}",
                                                                 "data.workers=2", "train.val_every=0"), warnings=True,
                                            starts=True),
     2, "gave no readable sample"),
    # ------------------------------------------------------------------------------------------ YAML
    ("train-yaml-alias-bomb", lambda w, t: dict(argv=["train", "--config", alias_bomb(t), "--print-config"]), 2,
     "alias bomb"),
    ("train-yaml-recursive-alias", lambda w, t: dict(argv=["train", "--config", file_with(
        t, "r.yaml", "model: &a\n  options: {x: *a}\n"), "--print-config"]), 2, "recursive document"),
    ("train-override-alias-bomb", lambda w, t: dict(argv=["train", "--config", TINY, "--print-config", OVERRIDE_BOMB]),
     2, "alias bomb"),
    ("train-print-config-bad-value", lambda w, t: dict(argv=["train", "--config", TINY, "--print-config",
                                                             "train.patience=-1"]), 2, "train.patience"),
    # ----------------------------------------------------------------- a checkpoint of another model or size
    ("train-resume-other-model", lambda w, t: dict(argv=train_argv(w, t, "train.steps=4") + ["--resume"],
                                                   protect=[run_with_checkpoints(w, t)]), 2,
     "a unet/tiny checkpoint cannot be loaded into this run's sgmagnet/tiny"),
    ("train-resume-other-size", lambda w, t: dict(argv=train_argv(w, t, "train.steps=4", "model.name=unet",
                                                                  "model.size=demo") + ["--resume"],
                                                  protect=[run_with_checkpoints(w, t)]), 2, "of another shape"),
    # ------------------------------------------------- round 5: resume on another world size, merges (issue 31)
    ("train-resume-other-optimizer", lambda w, t: dict(argv=train_argv(w, t, "train.steps=4", "model.name=unet",
                                                                       "optim.lr=0.01") + ["--resume"],
                                                       protect=[run_with_checkpoints(w, t)]), 2,
     "optim.lr was 0.003 in the checkpoint and is 0.01"),
    ("train-resume-other-global-batch", lambda w, t: dict(argv=train_argv(w, t, "train.steps=4", "model.name=unet",
                                                                          "data.batch_size=4") + ["--resume"],
                                                          protect=[run_with_checkpoints(w, t)]), 2,
     "global batch 2 (data.batch_size=2 x optim.accum=1 x 1 ranks) but this run's is 4"),
    ("train-resume-other-band-set", lambda w, t: dict(argv=train_argv(w, t, "train.steps=4", "model.name=unet",
                                                                      "model.bands=ir") + ["--resume"],
                                                      protect=[run_with_checkpoints(w, t)]), 2,
     "model.bands was 'all' in the checkpoint and is 'ir'"),
    ("train-resume-rank-file-missing", lambda w, t: dict(argv=train_argv(w, t, "train.steps=4", "model.name=unet")
                                                         + ["--resume"], protect=[run_missing_rank_file(w, t)]), 2,
     "rank_00000.pt: missing"),
    ("build-merge-two-records-of-one-granule", lambda w, t: dict(argv=build_argv(w, t / "o", cs=granule_twice(w, t))),
     2, "two records for 2B-CLDCLASS-LIDAR granule"),
    ("train-init-from-other-model", lambda w, t: dict(argv=train_argv(w, t, f"train.init_from={w['run']}"),
                                                      protect=[w["run"]]), 2, "train.init_from"),
    ("train-init-from-other-size", lambda w, t: dict(argv=train_argv(w, t, f"train.init_from={w['run']}",
                                                                     "model.name=unet", "model.size=demo"),
                                                     protect=[w["run"]]), 2, "of another shape"),
    ("predict-checkpoint-of-another-model", lambda w, t: dict(argv=predict_argv(w, t, "--bbox", w["bbox"])[:2] + [
        str(relabelled_checkpoint(w, t))] + predict_argv(w, t, "--bbox", w["bbox"])[3:], protect=[w["cube"]]), 2,
     "model its own config describes"),
    ("evaluate-checkpoint-of-another-model", lambda w, t: dict(argv=["evaluate", "--checkpoint",
                                                                     str(relabelled_checkpoint(w, t)), "--shards",
                                                                     str(w["shards"])]), 2,
     "model its own config describes"),
    # ------------------------------------------------------------------- train options added since round 3
    ("train-patience-negative", lambda w, t: dict(argv=train_argv(w, t, "train.patience=-1")), 2, "train.patience"),
    ("train-patience-text", lambda w, t: dict(argv=train_argv(w, t, "train.patience=soon")), 2, "train.patience"),
    ("train-aux-weight-negative", lambda w, t: dict(argv=train_argv(w, t, "loss.aux_weight=-1")), 2,
     "loss.aux_weight"),
    ("train-aux-weight-nan", lambda w, t: dict(argv=train_argv(w, t, "loss.aux_weight=.nan")), 2, "loss.aux_weight"),
    ("train-aux-weight-on-unet", lambda w, t: dict(argv=train_argv(w, t, "loss.aux_weight=0.5", "model.name=unet")), 2,
     "need model.name=sgmagnet"),
    ("train-aux-weight-dense-path", lambda w, t: dict(argv=train_argv(w, t, "loss.aux_weight=0.5",
                                                                      "train.columns=false")), 2, "train.columns=true"),
    ("train-val-batches-negative", lambda w, t: dict(argv=train_argv(w, t, "data.val_batches=-1")), 2,
     "data.val_batches"),
    ("train-keep-checkpoints-zero", lambda w, t: dict(argv=train_argv(w, t, "train.keep_checkpoints=0")), 2,
     "train.keep_checkpoints"),
    # ---------------------------------------------------------------------- evaluate, synth, best/
    ("evaluate-curtains-negative", lambda w, t: dict(argv=eval_argv(w, w["shards"], "--curtains", "-1"),
                                                     protect=[w["run"]]), 2, "--curtains"),
    ("evaluate-out-is-a-file", lambda w, t: dict(argv=eval_argv(w, w["shards"], "--out", str(w["junk"])),
                                                 protect=[w["junk"]]), 2, "--out"),
    ("evaluate-decision-unknown", lambda w, t: dict(argv=eval_argv(w, w["shards"], "--decision", "bayes")), 2,
     "--decision"),
    ("evaluate-best-missing", lambda w, t: dict(argv=["evaluate", "--checkpoint", str(w["run"] / "checkpoints" / "nobest"),
                                                      "--shards", str(w["shards"])]), 2, "--checkpoint"),
    ("synth-out-is-a-file", lambda w, t: dict(argv=["synth", "--out", str(w["junk"])], protect=[w["junk"]]), 2,
     "is a file"),
    ("synth-days-past-9999", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--days", "100000000000"]), 2,
     "year 9999"),
    ("synth-corridor-zero", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--track-corridor", "0"]), 2,
     "--track-corridor"),
    ("synth-workers-negative", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--workers", "-1"]), 2,
     "--workers"),
    ("synth-corridor-text", lambda w, t: dict(argv=["synth", "--out", str(t / "a"), "--track-corridor", "wide"]), 2,
     "--track-corridor"),
    # ------------------------------------------------------------------------ hpc/study.py, study_data.py
    ("study-only-empty", lambda w, t: dict(cmd=hpc("study.py", "--shards", str(w["shards"]), "--config", "tiny",
                                                   "--only", "", "--out", str(t / "o"), "--runs", str(t / "r"))), 2,
     "--only"),
    ("study-out-is-a-file", lambda w, t: dict(cmd=hpc("study.py", "--shards", str(w["shards"]), "--config", "tiny",
                                                      "--only", "unet", "--out", str(w["junk"]), "--runs", str(t / "r")),
                                              protect=[w["junk"]]), 2, "--out"),
    ("study-preset-without-val-samples", lambda w, t: dict(cmd=hpc("study.py", "--shards", str(w["shards"]), "--config",
                                                                   "cpu", "--only", "unet", "--out", str(t / "o"),
                                                                   "--runs", str(t / "r"))), 2, "validates on 'val'"),
    ("study-log-archive-truncated", lambda w, t: dict(cmd=hpc("study.py", "--report-only", "--out",
                                                              str(study_with_truncated_logs(t))),
                                                      protect=[t / "study"]), 2, "not a readable log archive"),
    ("study-data-out-is-a-file", lambda w, t: dict(cmd=hpc("study_data.py", "--out", str(w["junk"]), "--days", "1"),
                                                   protect=[w["junk"]]), 2, "--out"),
    ("study-data-jobs-zero", lambda w, t: dict(cmd=hpc("study_data.py", "--out", str(t / "sd"), "--jobs", "0")), 2,
     "--jobs"),
    # ------------------------------------------------------------------------------------- hpc/bench/*
    ("bench-build-ranks-zero", lambda w, t: dict(cmd=hpc("bench/build.py", "--ranks", "0", "--workdir", str(t / "b"))),
     2, "--ranks"),
    ("bench-train-step-batch-zero", lambda w, t: dict(cmd=hpc("bench/train_step.py", "--batch-size", "0")), 2,
     "--batch-size"),
    ("bench-train-step-patch-negative", lambda w, t: dict(cmd=hpc("bench/train_step.py", "--patch", "-1")), 2,
     "--patch"),
    ("bench-train-step-no-shards", lambda w, t: dict(cmd=hpc("bench/train_step.py", "--loader", "real", "--shards",
                                                            str(t / "none"))), 2, "no manifest.json"),
    ("bench-loader-no-shards", lambda w, t: dict(cmd=hpc("bench/loader.py", "--shards", str(t / "none"))), 2,
     "no shards"),
    ("bench-loader-unknown-option", lambda w, t: dict(cmd=hpc("bench/loader.py", "--bogus")), 2,
     "unrecognized arguments"),
    ("bench-predict-memory-junk-checkpoint", lambda w, t: dict(cmd=hpc("bench/predict_memory.py", "--checkpoint",
                                                                      str(junk_checkpoint(w, t)), "--work",
                                                                      str(t / "pm"))), 2, "not a readable checkpoint"),
    ("bench-loss-memory-labelled-too-many", lambda w, t: dict(cmd=hpc("bench/loss_memory.py", "--size", "4",
                                                                     "--labelled", "100")), 2, "--labelled"),
    ("bench-profile-step-mode", lambda w, t: dict(cmd=hpc("bench/profile_step.py", "--mode", "bogus")), 2, "--mode"),
    ("bench-probe-no-shards", lambda w, t: dict(cmd=hpc("bench/probe_top_phase.py", "--shards", str(t / "none"))), 2,
     "no manifest.json"),
]


def test_there_are_enough_rows():
    assert len(CASES) >= 103 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,make,code,text", CASES, ids=[c[0] for c in CASES])
def test_bad_input(cli, w, tmp_path, name, make, code, text):
    case = make(w, tmp_path)
    protect = case.get("protect", [])
    before = snapshot(protect)
    if case.get("env"):       # the CLI under other environment variables: a subprocess of its own
        case.setdefault("cmd", [sys.executable, "-m", "sgmagnet.cli", *case["argv"]])
    if case.get("cmd"):       # another program (hpc/ tools) or the CLI under limits: a subprocess of its own
        r = subprocess.run(case["cmd"], env={**ENV, **case.get("env", {})}, cwd=str(tmp_path), capture_output=True,
                           text=True, timeout=300)
    else:
        r = cli.run(case["argv"], tmp_path, timeout=300)
    err = r.stderr.strip()
    assert r.returncode == code, f"exit {r.returncode}, expected {code}\nstdout: {r.stdout[-1500:]}\nstderr: {err[-1500:]}"
    assert "Traceback" not in r.stderr + r.stdout, err[-3000:]
    if case.get("manifest"):      # a recorded skip: the build goes on and manifest.json names the input and why
        with open(case["manifest"] / "manifest.json") as f:
            man = json.load(f)
        assert any(text in s["reason"] for s in man["skipped"]), man["skipped"]
        assert sum(man["counts"].values()) > 0, "the rest of the archive should still build"
        assert snapshot(protect) == before, "an earlier output changed"
        return
    lines = err.splitlines()
    if case.get("warnings"):       # the training loader names each sample it skips, one line each, first
        assert all(line.startswith("WARNING: ") for line in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert text in err, f"{text!r} not in {err!r}"
    assert snapshot(protect) == before, "an earlier output changed"
    refused = case.get("argv", [""])[0] == "train" and code == 2 and not protect and not case.get("starts")
    if refused:                                                   # a run refused before it starts leaves no folder
        assert not (tmp_path / "r").exists(), sorted(os.listdir(tmp_path / "r"))
    assert not glob.glob(str(tmp_path / "**" / "*.partial"), recursive=True), "a .partial file was left behind"


def test_environment_failure_stops_the_build_and_a_rerun_retries(cli, w, tmp_path):
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
    argv = build_argv(w, out)
    r = cli.run(argv, tmp_path, timeout=300)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert victim.name[:-5] in r.stderr and "re-run retries it" in r.stderr, r.stderr
    assert not victim.exists() and (out / "manifest.json").read_bytes() == man_before
    shard.rmdir()
    r = cli.run(argv, tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.load(open(out / "manifest.json"))
    want = json.load(open(w["shards"] / "manifest.json"))
    assert got["shards"] == want["shards"] and got["counts"] == want["counts"] and got["skipped"] == want["skipped"]


def test_overwrite_rebuilds_an_out_of_another_configuration(cli, w, tmp_path):
    out = shard_copy(w, tmp_path)
    r = cli.run(build_argv(w, out, "--patch-size", "24", "--overwrite"), tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    m = json.load(open(out / "manifest.json"))
    assert m["config"]["patch_size"] == 24
    recs = [json.load(open(p)) for p in (out / "_records").glob("*.json")]
    assert {rc["config"]["patch_size"] for rc in recs} == {24}          # never a mix of patch sizes
