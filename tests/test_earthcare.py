"""EarthCARE AC__TC__2B: the reader on files built here from the spec (EARTHCARE.md §1-2, §2.9) with netCDF4 and
h5py and hand-set values -- not by this project's writer -- and the class table row by row (§3)."""
import datetime as dt
import os

import numpy as np
import pytest

from sgmagnet.formats import FormatError
from sgmagnet.formats import earthcare as ec
from sgmagnet.grid import IGNORE
from sgmagnet.labels import ac_tc_table, jsg_levels

NAME = "ECA_EXBC_AC__TC__2B_20251223T000721Z_20251223T012326Z_08916G.h5"     # a real name (EARTHCARE.md §1.1)
DEFINITION = "\n".join(f"{c}: class {c}" for c in range(-1, 35))


def spec_file(path, n=6, k=242, dz=100.0, geoid=20.0, elev=150.0, classes=None, quality=None, bottom_up=False,
              times=None, definition=DEFINITION, drop=(), orbit=8916, frame="G", file_type="AC__TC__2B",
              fill_value=None):
    """An AC__TC__2B file as §2.9 describes: /ScienceData with netCDF4 (named dims, no coordinates), the headers
    with h5py. Heights are ellipsoidal, top-down, from (k - 1) * dz + geoid - 100 m."""
    from netCDF4 import Dataset
    import h5py

    h_msl = (k - 1) * dz - 100.0 - dz * np.arange(k)                   # top-down, above mean sea level
    height = np.tile(h_msl + geoid, (n, 1)).astype(np.float32)
    if bottom_up:
        height = height[:, ::-1]
    if classes is None:
        classes = np.ones((n, k), np.int8)
    if quality is None:
        quality = np.full((n, k), 1, np.int8)
    t0 = (dt.datetime(2025, 12, 23, 0, 7, 21) - dt.datetime(2000, 1, 1)).total_seconds()
    t = t0 + np.arange(n) * 0.14 if times is None else np.asarray(times, np.float64)
    with Dataset(path, "w", format="NETCDF4") as ds:
        sd = ds.createGroup("ScienceData")
        sd.createDimension("along_track", n)
        sd.createDimension("JSG_height", k)
        def var(name, dtype, dims, values, **attrs):
            if name in drop:
                return
            kw = {"fill_value": fill_value} if name == ec.CLASS_VAR and fill_value is not None else {}
            v = sd.createVariable(name, dtype, dims, **kw)
            v[:] = values
            for a, x in attrs.items():
                v.setncattr(a, x)
        var("time", "f8", ("along_track",), t, units="seconds since 2000-01-01 00:00:00")
        var("latitude", "f8", ("along_track",), np.linspace(-30.0, -30.06, n))
        var("longitude", "f8", ("along_track",), np.linspace(140.0, 140.01, n))
        var("height", "f4", ("along_track", "JSG_height"), height)
        var("geoid_offset", "f4", ("along_track",), np.full(n, geoid))
        var("elevation", "f4", ("along_track",), np.full(n, elev + geoid))
        var(ec.CLASS_VAR, "i1", ("along_track", "JSG_height"), classes, long_name="synergetic target classification",
            **({"definition": definition} if definition else {}))
        var("quality_status", "i1", ("along_track", "JSG_height"), quality)
        hd = ds.createGroup("HeaderData")
        hd.createGroup("FixedProductHeader")
        hd.createGroup("VariableProductHeader").createGroup("MainProductHeader")
    with h5py.File(path, "a") as f:
        f["HeaderData/FixedProductHeader/File_Type"] = np.bytes_(file_type)
        f["HeaderData/FixedProductHeader/File_Class"] = np.bytes_("EXBC")
        mph = f["HeaderData/VariableProductHeader/MainProductHeader"]
        mph["orbitNumber"] = np.array([orbit], "u4")
        mph["frameID"] = np.bytes_(frame)
        mph["frameStartTime"] = np.bytes_("UTC=2025-12-23T00:07:21")
    return str(path)


def test_names():
    n = ec.parse_name(NAME)
    assert (n.agency, n.latency, n.baseline, n.product, n.orbit, n.frame) == ("E", "X", "BC", "AC__TC__2B", 8916, "G")
    assert n.start == dt.datetime(2025, 12, 23, 0, 7, 21) and n.processed > n.start
    assert ec.parse_name(ec.frame_filename(n.start, 8916, "G")).start == n.start
    for bad in ("ECA_EXBC_AC__TC__2B_20251223T000721Z_08916G.h5", "2018274030000_66001_CS_2B-CLDCLASS-LIDAR.hdf",
                "ECA_EXBC_AC__TC__2B_20251323T000721Z_20251223T012326Z_08916G.h5"):
        with pytest.raises(FormatError):
            ec.parse_name(bad)


@pytest.mark.parametrize("k", [242, 241])
def test_reader_on_a_spec_built_file(tmp_path, k):
    """Never hard-coded: 242 and 241 levels both read; heights are made mean-sea-level with geoid_offset."""
    p = spec_file(tmp_path / NAME, k=k)
    r = ec.read_frame(p)
    assert r["levels"] == k and r["classes"].shape == (6, k) and (r["orbit"], r["frame"]) == (8916, "G")
    assert r["time"][0] == np.datetime64("2025-12-23T00:07:21") and np.all(np.diff(r["time"]) > np.timedelta64(0))
    assert np.allclose(r["height_m"][:, 0], (k - 1) * 100.0 - 100.0) and np.allclose(r["height_m"][:, -1], -100.0)
    assert np.allclose(r["surface_m"], 150.0)
    lab = jsg_levels(r["classes"], r["height_m"], r["surface_m"], r["quality"])
    assert lab.shape == (6, 38) and (lab == 0).all()          # all clear (the surface at 150 m is inside level 0)


def test_the_class_table_row_by_row():
    """EARTHCARE.md §3, written out again here: code -> clear 0, ice 1, mixed 2, liquid 3, no label."""
    NL = IGNORE
    want = {-1: NL, 0: NL, 1: 0, 2: NL, 3: NL, 4: NL, 5: 3, 6: 2, 7: NL, 8: 3, 9: 3, 10: 3, 11: 3, 12: 2, 13: 1,
            14: 1, 15: 2, 16: 2, 17: 2, 18: 3, 19: 1, 20: 2, 21: 1, 22: 1, 23: NL, 24: NL, 25: 0, 26: 0, 27: 0, 28: 0,
            29: 0, 30: 0, 31: 0, 32: 0, 33: 0, 34: 0}
    lut, strict = ac_tc_table(), ac_tc_table(strict=True)
    for code, ph in want.items():
        assert lut[code + 128] == ph, code
        assert strict[code + 128] == (NL if code in (13, 19) else ph), code
    assert all(lut[c + 128] == NL for c in (-128, -2, 35, 100, 127))


def test_bins_to_levels_vote_surface_and_quality():
    k = 200                                                     # 100 m bins, top-down from 19.95 km
    h = 19950.0 - 100.0 * np.arange(k)
    cls = np.ones((4, k), np.int16)                             # clear
    cls[0, (h >= 9000) & (h < 10000)] = 21                      # ice 9-10 km
    cls[0, (h >= 1000) & (h < 1300)] = 8                        # liquid in 3 of the 5 bins of level 2
    cls[1, (h >= 1000) & (h < 1200)] = 8                        # liquid in 2 bins, 3 clear: clear wins
    cls[2, (h >= 3000) & (h < 3500)] = 7                        # "possible liquid": no label in all 5 bins
    cls[3, (h >= 5000) & (h < 5200)] = 20                       # mixed in 2 bins, clear in 2, 1 bad quality
    q = np.ones((4, k), np.int16)
    q[3, (h >= 5400) & (h < 5500)] = 14                         # extinguished
    sfc = np.array([0.0, 0.0, 0.0, 1200.0])
    lab = jsg_levels(cls, np.tile(h, (4, 1)), sfc, q)
    assert (lab[0, 18:20] == 1).all() and lab[0, 2] == 3 and lab[0, 5] == 0
    assert lab[1, 2] == 0
    assert lab[2, 6] == IGNORE
    assert lab[3, 10] == 2                                      # 2 mixed vs 2 clear: cloudy wins the tie
    assert (lab[3, :2] == IGNORE).all() and lab[3, 2] == 0      # levels wholly below the 1.2 km surface
    assert jsg_levels(cls, np.tile(h, (4, 1)), sfc, q, strict=True).shape == (4, 38)


@pytest.mark.parametrize("case,make,text", [
    ("not EarthCARE", lambda p: __import__("h5py").File(p, "w").create_group("Data"), "not an EarthCARE L2 file"),
    ("another product", lambda p: spec_file(p, file_type="ATL_TC__2A"), "File_Type is 'ATL_TC__2A'"),
    ("missing variable", lambda p: spec_file(p, drop=("quality_status",)), "missing /ScienceData variable(s): quality_status"),
    ("height bottom-up", lambda p: spec_file(p, bottom_up=True), "runs bottom-up"),
    ("classes outside the table", lambda p: spec_file(p, classes=np.full((6, 242), 57, np.int8)), "outside the table"),
    ("another definition", lambda p: spec_file(p, definition="-1: unknown\n0: ground\n1: clear\n40: hail"),
     "another class table"),
    ("times backwards", lambda p: spec_file(p, times=[800000000.0, 800000000.2, 800000000.1, 800000000.3,
                                                      800000000.4, 800000000.5]), "goes backwards"),
    ("orbit disagrees", lambda p: spec_file(p, orbit=1234), "header says orbit 1234"),
])
def test_bad_frames_are_format_errors(tmp_path, case, make, text):
    p = tmp_path / NAME
    make(str(p))
    with pytest.raises(FormatError, match=re_escape(text)):
        ec.read_frame(str(p))


def re_escape(s):
    import re
    return re.escape(s)


def test_truncated_and_wrong_product_name(tmp_path):
    p = spec_file(tmp_path / NAME)
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    with pytest.raises(FormatError, match="not a readable HDF5 file|cannot read"):
        ec.read_frame(p)
    other = tmp_path / NAME.replace("AC__TC__2B", "ATL_TC__2A")
    spec_file(other)
    with pytest.raises(FormatError, match="only AC__TC__2B"):
        ec.read_frame(str(other))


def test_fill_value_codes_are_no_label(tmp_path):
    cls = np.ones((6, 242), np.int8)
    cls[:, 100] = -127
    p = spec_file(tmp_path / NAME, classes=cls, fill_value=np.int8(-127))
    r = ec.read_frame(p)
    assert (r["classes"][:, 100] == -1).all()


def test_label_windows():
    from sgmagnet.formats.epochs import DAYLIGHT_ONLY, label_operational

    assert label_operational("2B-CLDCLASS-LIDAR", dt.datetime(2016, 6, 1))
    assert not label_operational("2B-CLDCLASS-LIDAR", dt.datetime(2018, 10, 1))        # Epoch 07: no formation
    assert label_operational("2B-CLDCLASS-LIDAR", dt.datetime(2018, 10, 10))
    assert not label_operational("2B-CLDCLASS-LIDAR", dt.datetime(2021, 1, 1))
    assert label_operational("AC__TC__2B", dt.datetime(2025, 12, 23)) and not label_operational("AC__TC__2B", dt.datetime(2024, 6, 1))
    assert DAYLIGHT_ONLY["2B-CLDCLASS-LIDAR"] and not DAYLIGHT_ONLY["AC__TC__2B"]


# ------------------------------------------------------------------------------ the synthetic writer and orbit
def small_world(start="2025-06-01", region=(125.0, 145.0, -30.0, 30.0)):
    from sgmagnet.synth.config import SynthConfig
    from sgmagnet.synth.world import World

    return World(SynthConfig(out="unused", start=start, region=region, seed=4))


def test_writer_layout_follows_the_spec(tmp_path):
    """The synthetic frames against EARTHCARE.md §1-2 (paths, dtypes, dims, header types), not against our reader."""
    import h5py
    import xarray as xr

    from sgmagnet.synth import earthcare as sec

    w = small_world()
    out = sec.write_frames(w, np.datetime64("2025-06-01T04:00", "ns"), np.datetime64("2025-06-01T06:00", "ns"),
                           str(tmp_path), log=lambda m: None)
    assert out, "no frame over the region in two hours"
    path = out[0][0]
    name = path.rsplit("/", 1)[1]
    m = ec.NAME_RE.match(name)
    assert m and m.group(4) == "AC__TC__2B" and m.group(6) > m.group(5)      # processing start after sensing start
    with h5py.File(path, "r") as f:
        sd = f["ScienceData"]
        want = {"time": "f8", "latitude": "f8", "longitude": "f8", "height": "f4", "geoid_offset": "f4",
                "elevation": "f4", "tropopause_height": "f4", "synergetic_target_classification": "i1",
                "quality_status": "i1"}
        for v, dtype in want.items():
            assert sd[v].dtype == np.dtype(dtype), v
        n, k = sd["synergetic_target_classification"].shape
        assert sd["height"].shape == (n, k) and sd["time"].shape == (n,) and k == 242
        assert [d[0].name for d in sd["height"].dims] == ["/ScienceData/along_track", "/ScienceData/JSG_height"]
        assert sd["time"].attrs["units"].decode().startswith("seconds since 2000-01-01")
        h = sd["height"][()]
        assert (np.diff(h, axis=1) < 0).all()                                   # top-down
        assert np.allclose(h[:, -1] - sd["geoid_offset"][()], -50.0, atol=1.0)  # ellipsoidal = MSL + geoid
        codes = {int(x.split(b":")[0]) for x in sd["synergetic_target_classification"].attrs["definition"].split(b"\n")}
        assert codes == set(range(-1, 35))
        mph = f["HeaderData/VariableProductHeader/MainProductHeader"]
        assert mph["orbitNumber"].shape == (1,) and mph["orbitNumber"].dtype == np.uint32
        assert mph["frameID"].shape == () and mph["frameID"][()].decode() == m.group(8)
        assert mph["frameStartTime"][()].decode().startswith("UTC=2025-06-01T")
        assert f["HeaderData/FixedProductHeader/File_Type"][()].decode() == "AC__TC__2B"
        assert "SpecificProductHeader" in f["HeaderData/VariableProductHeader"]
    ds = xr.open_dataset(path, group="ScienceData", engine="netcdf4")           # as earthcarekit opens it
    assert set(ds.sizes) == {"along_track", "JSG_height"}
    ds.close()


def test_orbit_day_and_night_halves_and_numbering():
    """Sun-synchronous, descending node 14:00 LT: descending frames (D-F) sunlit, ascending (H, A, B) dark over the
    region; the orbit counts from the launch (2025-06-17 00:27 UTC is orbit ~5976, EARTHCARE.md §1.1)."""
    from sgmagnet.synth import earthcare as sec
    from sgmagnet.synth import orbit

    w = small_world()
    fr = sec.frames(w, np.datetime64("2025-06-01", "ns"), np.datetime64("2025-06-03", "ns"), w.cfg.region)
    day, night = set(), set()
    for o, letter, t, lat, lon in fr:
        soz, _ = orbit.solar_angles(t, lat, lon)
        (day if np.median(soz) < 90 else night).add(letter)
        assert np.all(np.diff(t) > np.timedelta64(0))
    assert day and night and day <= set("CDEFG") and night <= set("GHABC")
    t = np.array([np.datetime64("2025-06-17T00:27:21", "ns")])
    assert abs(int(sec.orbit_number(w, sec.track(w, t)[2])[0]) - 5976) <= 2
    # the spacing of the profiles: ~1 km along track
    _, _, t, lat, lon = max(fr, key=lambda f: f[2].size)
    d = np.hypot(np.diff(lat), np.diff(lon) * np.cos(np.deg2rad(lat[1:]))) * 111.2
    assert 0.9 < np.median(d) < 1.1


@pytest.mark.slow
def test_a_2018_and_2025_archive_builds_in_one_command(tmp_path):
    """synth follows the label epochs (CloudSat in 2018, EarthCARE in 2025, Himawari-8 then -9); one build reads
    both; the provenance is in every sample's meta.json and in the manifest; night samples only in the EarthCARE
    era; a CloudSat granule outside its windows (2018-10-05: CloudSat out of formation) is a recorded skip."""
    import json
    import subprocess
    import sys

    from sgmagnet.shards import iter_shard, shard_paths

    arc, out = tmp_path / "arc", tmp_path / "shards"
    sg = [sys.executable, "-m", "sgmagnet.cli"]
    common = ["--days", "1", "--region", "125,145,-30,30", "--res", "0.1", "--seed", "3", "--quiet"]
    subprocess.run(sg + ["synth", "--out", str(arc), "--start", "2018-10-10,2025-06-01", *common], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run(sg + ["synth", "--out", str(tmp_path / "early"), "--start", "2018-10-05", "--labels", "cloudsat",
                         *common], check=True, stdout=subprocess.DEVNULL)
    import shutil
    early = sorted((tmp_path / "early" / "cloudsat").rglob("*.hdf"))[0]
    shutil.copy(early, arc / "cloudsat")
    r = subprocess.run(sg + ["build", "--ahi", str(arc / "ahi"), "--cloudsat", str(arc / "cloudsat"), "--earthcare",
                             str(arc / "earthcare"), "--out", str(out), "--patch-size", "32", "--min-labelled", "16",
                             "--split-days", "1,0,1", "--gap-days", "0", "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.load(open(out / "manifest.json"))
    assert man["sources"]["granules"] > 0 and man["sources"]["earthcare_frames"] > 0
    skip = {os.path.basename(s["file"]): s["reason"] for s in man["skipped"]}
    assert "outside its windows" in skip[early.name] and "2018-10-10 to 2020-08-26" in skip[early.name]
    seen = {}
    for split in ("train", "test"):
        for p in shard_paths(str(out), split):
            for s in iter_shard(p):
                m = s["meta"]
                era = m["scene_time"][:4]
                key = (era, m["label_product"], m["platform"], m["day_night"])
                seen[key] = seen.get(key, 0) + 1
                assert m["solar_zenith_labelled"][0] <= m["solar_zenith_labelled"][1] <= m["solar_zenith_labelled"][2]
    assert {k[:3] for k in seen} == {("2018", "2B-CLDCLASS-LIDAR", "H08"), ("2025", "AC__TC__2B", "H09")}
    assert not any(k[0] == "2018" and k[3] == "night" for k in seen)                 # CloudSat: daylight only
    assert any(k[0] == "2025" and k[3] == "night" for k in seen)                     # EarthCARE: night too
    total = {}
    for split, d in man["provenance"].items():
        for k, n in d.items():
            total[k] = total.get(k, 0) + n
    want = {}
    for (era, prod, plat, dn), n in seen.items():
        want[f"{prod}/{dn}/{plat}"] = want.get(f"{prod}/{dn}/{plat}", 0) + n
    assert total == want
