"""Synthetic EarthCARE `AC__TC__2B` frames: the orbit, the ATLID+CPR observation operator, and the HDF5 writer
(EARTHCARE.md §1-2, §6.3).

The orbit. EarthCARE flies a sun-synchronous orbit at about 393 km with an early-afternoon equator crossing
(ESA-SAT). Its 25-day repeat cycle holds 389 orbits (ESA EarthCARE mission description), so one orbit lasts
25 x 86400 / 389 = 5552.7 s; the inclination of a sun-synchronous 393 km orbit is 97.05 deg. Which node is the
afternoon one is not verified (EARTHCARE.md §1.1 [?]); we take the descending node at 14:00 local time, so the
descending frames D-F are the day half and the ascending frames H, A, B the night half. Both halves are
observed: ATLID and the CPR work day and night (no daylight-only operation, unlike CloudSat since 2011).
Frames A-H follow earthcarekit's latitude bounds (EARTHCARE.md §1.1): A ascending -22.5..22.5, B 22.5..67.5,
C north of 67.5, D descending 67.5..22.5, E 22.5..-22.5, F -22.5..-67.5, G south of -67.5, H ascending
-67.5..-22.5. The absolute orbit counts from the launch (2024-05-28 22:20 UTC), which puts 2025-06-17 00:27 in
orbit ~5976, as the real frame ECA_EXAG_ATL_TC__2A_20250617T002721Z_..._05976B.

The observation operator differs from CloudSat's (`World.reported`): the same columns, another instrument.
- Joint standard grid: ~1 km along track, ~100 m bins (MROZ), 242 bins top-down (some files 241: the count is
  never assumed by the reader), heights above the WGS84 ellipsoid = height above sea level + the geoid offset.
- ATLID (355 nm lidar) is extinguished once the optical depth above a bin exceeds ~3 (a space lidar's total
  attenuation limit, Winker et al. 2009, JTECH 26: CALIOP penetrates to optical depth ~3); below that only the
  radar sees. In daylight the solar background hides the thinnest cirrus (optical depth < 0.03) that ATLID
  detects at night (ATLID day/night SNR, Donovan et al. 2024, AMT 17 "EarthCARE lidar ATLID").
- The CPR (94 GHz, Doppler) has a sensitivity of about -35 dBZ, 5 dB better than CloudSat's (Illingworth et al.
  2015, BAMS 96): it sees ice of moderate optical depth (>= 0.5 here) and drizzling or raining liquid (layers of
  optical depth >= 20 here), not non-drizzling water clouds. Its surface clutter reaches ~500 m above the
  surface (a lower orbit and a 500 m pulse, Illingworth et al. 2015; CloudSat's ~1 km): radar-only detections
  there are "possible ... (clutter)", no label.
- Classes (EARTHCARE.md §2.4): lidar-seen ice 21 (a share 19, "possible liquid"), 22 above the tropopause;
  lidar-seen mixed 20; lidar-seen liquid 8 (9 drizzling), 18 when supercooled. Radar-only: ice 14 (a share 13),
  mixed 15 or 13 (the lidar is needed to see supercooled water: the radar calls most of it snow), liquid
  drizzle 9. Deep layers (Ns, DC) below the lidar limit: rain under the freezing level (5 heavy rain in DC, 10
  warm rain in Ns), melting snow 12 in the 300 m above it, snow 14/16 above. Clear air seen by the lidar is
  1, or aerosol (26 dust, 28 continental pollution over land; 27 sea salt over the sea) in the boundary layer;
  clear air below the lidar limit with no radar echo is 7, "no rain or ice (possible liquid)". Below the
  surface 0.
- quality_status (§2.7): 0 surface, 1 clear, 2 hydrometeor seen by both, 3 lidar only, 8 radar only, 4 aerosol,
  14 extinguished, and a few low-confidence bins (11 hydrometeor, 10 clear: 2 % at night, 5 % by day, when
  the lidar is noisier).
Where AC__TC__2B's convention differs from 2B-CLDCLASS-LIDAR's (rain below a deep cloud is liquid here, mixed
or ice in CloudSat's layer phase; supercooled water under an opaque top is not seen), the two label sources
disagree on the same world, as they do in reality.
"""
from __future__ import annotations

import datetime as dt
import os

import numpy as np

from ..formats import earthcare as ec_fmt
from ..grid import IGNORE
from ..labels import jsg_levels
from . import orbit
from .world import DC, NS, World

PERIOD_S = 25 * 86400.0 / 389           # 25-day repeat cycle, 389 orbits
INCLINATION_DEG = 97.05
LTAN_H = 2.0                            # ascending node 02:00 = descending node 14:00 local time [?]
LAUNCH = np.datetime64("2024-05-28T22:20:00", "ns")
GROUND_SPEED_KM_S = 2 * np.pi * 6371.0 / PERIOD_S
PROFILE_DT_S = 1.0 / GROUND_SPEED_KM_S  # one JSG profile per ~1 km
N_JSG = 242
JSG_DZ_KM = 0.1
JSG_TOP_KM = 24.05                      # centre of the highest bin above sea level (the real range is [?])
LIDAR_MAX_TAU = 3.0
DAY_MIN_TAU = 0.03
CPR_ICE_MIN_TAU = 0.5
CPR_LIQUID_MIN_TAU = 20.0
CPR_CLUTTER_KM = 0.5
AEROSOL_TOP_KM = 1.5
MELT_KM = 0.3
LOW_CONF = {"night": 0.02, "day": 0.05}
FRAMES = "ABCDEFGH"
DEFINITION = "\n".join(f"{c}: {n}" for c, n in [
    (-1, "unknown"), (0, "ground"), (1, "clear"), (2, "possible rain (clutter)"), (3, "possible snow (clutter)"),
    (4, "possible cloud (clutter)"), (5, "heavy rain"), (6, "heavy mixed-phase precipitation"),
    (7, "no rain or ice (possible liquid)"), (8, "liquid cloud"), (9, "drizzling liquid cloud"), (10, "warm rain"),
    (11, "cold rain"), (12, "melting snow"), (13, "snow (possible liquid)"), (14, "snow (no liquid)"),
    (15, "rimed snow (possible liquid)"), (16, "rimed snow and supercooled liquid"),
    (17, "snow and supercooled liquid"), (18, "supercooled liquid"), (19, "ice cloud (possible liquid)"),
    (20, "ice and supercooled liquid"), (21, "ice cloud (no liquid)"), (22, "stratospheric ice"),
    (23, "STS (PSC Type I)"), (24, "NAT (PSC Type II)"), (25, "insects"), (26, "dust"), (27, "sea salt"),
    (28, "continental pollution"), (29, "smoke"), (30, "dusty smoke"), (31, "dusty mix"),
    (32, "stratospheric ash"), (33, "stratospheric sulfate"), (34, "stratospheric smoke")])
EPOCH_2000 = np.datetime64("2000-01-01T00:00:00", "ns")


def u0(world: World) -> float:
    """EarthCARE's orbit phase in this world (its own draw: the two satellites are not in formation)."""
    return float(np.random.default_rng(world.cfg.seed + 104729).uniform(0, 2 * np.pi))


def track(world: World, t: np.ndarray):
    return orbit.track(t, u0(world), world.t0, PERIOD_S, INCLINATION_DEG, LTAN_H)


def frame_of(lat: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Frame letter index 0..7 (A..H) of each profile from its latitude and direction (cos u > 0: ascending)."""
    asc = np.cos(u) > 0
    a = np.abs(lat)
    return np.select([a > 67.5, asc & (np.abs(lat) <= 22.5), asc & (lat > 22.5), ~asc & (lat > 22.5),
                      ~asc & (a <= 22.5), ~asc & (lat < -22.5), asc & (lat < -22.5)],
                     [np.where(lat > 0, 2, 6), 0, 1, 3, 4, 5, 7], 0)


U_FRAME_A = float(np.arcsin(np.sin(np.deg2rad(-22.5)) / np.sin(np.deg2rad(INCLINATION_DEG))))  # frame A starts


def orbit_number(world: World, u: np.ndarray) -> np.ndarray:
    """Absolute orbit of each profile from its (unwrapped) argument of latitude: an orbit starts where frame A
    does (22.5 S, northbound), counted from the launch."""
    u_launch = track(world, np.array([LAUNCH]))[2][0]
    n = lambda x: np.floor((x - U_FRAME_A) / (2 * np.pi))  # noqa: E731
    return (n(u) - n(u_launch)).astype(np.int64)


def frames(world: World, t_start: np.datetime64, t_end: np.datetime64, region, margin: float = 1.0):
    """(orbit, frame letter, times, lat, lon) of every frame part over the region (+ margin) from t_start to
    t_end: contiguous runs of one frame, cut to the region as the CloudSat granules are."""
    step = np.timedelta64(int(round(PROFILE_DT_S * 1e9)), "ns")
    n = int((t_end - t_start) / step) + 1
    out = []
    chunk = 200_000
    for k0 in range(0, n, chunk):
        t = t_start + np.arange(k0, min(n, k0 + chunk)) * step
        lat, lon, u = track(world, t)
        lo0, lo1, la0, la1 = region
        l360 = np.mod(lon, 360.0)
        keep = (lat >= la0 - margin) & (lat <= la1 + margin) & (l360 >= lo0 - margin) & (l360 <= lo1 + margin)
        if not keep.any():
            continue
        fr = frame_of(lat, u)
        key = np.where(keep, orbit_number(world, u) * 8 + fr, -1)
        edges = np.flatnonzero(np.diff(key) != 0) + 1
        for a, b in zip(np.r_[0, edges], np.r_[edges, key.size]):
            if key[a] < 0:
                continue
            out.append((int(key[a] // 8), FRAMES[int(key[a] % 8)], t[a:b], lat[a:b], lon[a:b]))
    # a run cut by the chunk boundary continues in the next chunk: join them
    joined = []
    for f in out:
        if joined and joined[-1][:2] == f[:2] and f[2][0] - joined[-1][2][-1] <= step:
            o, fl, t, la, lo = joined[-1]
            joined[-1] = (o, fl, np.r_[t, f[2]], np.r_[la, f[3]], np.r_[lo, f[4]])
        else:
            joined.append(f)
    return joined


def geoid_m(lat, lon):
    """A smooth stand-in for the EGM96 geoid height above WGS84 (tens of metres; +40..+70 m in the west Pacific)."""
    return 45.0 + 25.0 * np.sin(np.deg2rad(lon) * 2.0) * np.cos(np.deg2rad(lat) * 1.5)


def classify(world: World, t, lat, lon, n_bins: int = N_JSG, rng=None):
    """ATLID-CPR classes [n, n_bins] int8 and quality [n, n_bins] int8 on the JSG (top-down), bin centres above
    sea level [n_bins] km, surface elevation above sea level [n] km, solar zenith [n] deg."""
    rng = rng or np.random.default_rng(0)
    col = world.columns_at(lat, lon, t)
    n = lat.size
    h = JSG_TOP_KM - JSG_DZ_KM * np.arange(n_bins)                     # top-down
    H = np.broadcast_to(h[None, :], (n, n_bins))
    base, top, tau, ph, ctype = col.base, col.top, col.tau, col.phase, col.ctype
    k = base.shape[1]
    layer = np.full((n, n_bins), -1, np.int64)
    tau_above = np.zeros((n, n_bins))
    for j in range(k):             # layers are disjoint (World keeps gaps); top-down order
        b, tp, ta = base[:, j][:, None], top[:, j][:, None], np.nan_to_num(tau[:, j])[:, None]
        ok = np.isfinite(tp)
        inside = ok & (H >= b) & (H <= tp) & (layer < 0)
        layer = np.where(inside, j, layer)
        frac = np.clip((tp - H) / np.maximum(tp - b, 1e-3), 0, 1)
        tau_above += np.where(ok, ta * frac, 0.0)
    soz, _ = orbit.solar_angles(t, lat, lon)
    day = soz < 90.0
    rows = np.arange(n)[:, None]
    lj = np.clip(layer, 0, k - 1)
    in_cloud = layer >= 0
    p = np.where(in_cloud, ph[rows, lj], 0)
    lt = np.where(in_cloud, np.nan_to_num(tau)[rows, lj], 0.0)
    lc = np.where(in_cloud, ctype[rows, lj], 0)
    temp = col.temperature(H)
    lidar = tau_above < LIDAR_MAX_TAU
    deep = np.isin(lc, (NS, DC))
    radar = in_cloud & (((p != 3) & (lt >= CPR_ICE_MIN_TAU)) | ((p == 3) & (lt >= CPR_LIQUID_MIN_TAU)) | deep)
    sfc = col.dem_km[:, None]
    clutter = (H - sfc) < CPR_CLUTTER_KM
    u = rng.random((n, n_bins))
    ice, mixed, liquid = in_cloud & (p == 1), in_cloud & (p == 2), in_cloud & (p == 3)
    missed = in_cloud & lidar & day[:, None] & (lt < DAY_MIN_TAU)   # sunlit: the thinnest cirrus looks clear
    seen = in_cloud & lidar & ~missed
    cls = np.ones((n, n_bins), np.int16)                                            # clear
    q = np.ones((n, n_bins), np.int16)
    aer = ~in_cloud & lidar & ((H - sfc) < AEROSOL_TOP_KM) & (u < 0.6)
    cls = np.where(aer, np.where(col.land[:, None], np.where(u < 0.2, 26, 28), 27), cls)
    q = np.where(aer, 4, q)
    cls = np.where(~in_cloud & ~lidar, 7, cls)                                     # extinguished, no echo
    q = np.where(~in_cloud & ~lidar, 14, q)
    # lidar-seen hydrometeors
    strat = H > col.z_trop[:, None]
    cls = np.where(seen & ice, np.where(strat, 22, np.where(u < 0.15, 19, 21)), cls)
    cls = np.where(seen & mixed, 20, cls)
    cls = np.where(seen & liquid, np.where(temp < 273.15, 18, np.where(lt >= CPR_LIQUID_MIN_TAU, 9, 8)), cls)
    q = np.where(seen, np.where(radar, 2, 3), q)
    # radar only (below the lidar's limit)
    ro = in_cloud & ~lidar & radar
    melt0 = temp > 273.15                                                          # below the 0 C level
    cls = np.where(ro & ice, np.where(u < 0.3, 13, 14), cls)
    cls = np.where(ro & mixed, np.where(u < 0.4, 15, 13), cls)
    cls = np.where(ro & liquid, 9, cls)
    z0 = _freezing_km(col, h)
    rain = ro & deep & melt0
    cls = np.where(rain, np.where(lc == DC, 5, 10), cls)
    melting = ro & deep & ~melt0 & (H - z0[:, None] < MELT_KM)
    cls = np.where(melting, 12, cls)
    cls = np.where(ro & deep & ~melt0 & ~melting, np.where(p == 2, 16, 14), cls)
    cls = np.where(ro & clutter, np.where(rain | liquid, 2, np.where(ice | melting, 3, 4)), cls)
    q = np.where(ro, 8, q)
    cls = np.where(in_cloud & ~lidar & ~radar, 7, cls)                             # hidden, no echo
    q = np.where(in_cloud & ~lidar & ~radar, 14, q)
    # low-confidence bins (noisier by day)
    low = rng.random((n, n_bins)) < np.where(day, LOW_CONF["day"], LOW_CONF["night"])[:, None]
    q = np.where(low & (q == 1), 10, np.where(low & np.isin(q, (2, 3, 8)), 11, q))
    below = H < sfc
    cls = np.where(below, 0, cls)
    q = np.where(below, 0, q)
    unknown = rng.random(n) < 0.002                                                 # a few unclassified profiles
    cls[unknown] = -1
    q[unknown] = 12
    return cls.astype(np.int8), q.astype(np.int8), h, col.dem_km, soz, col


def _freezing_km(col, h):
    """Height (km above sea level) of the 0 C level of each column."""
    z = np.linspace(0.0, 8.0, 161)
    t = col.temperature(np.broadcast_to(z[None, :], (col.lat.size, z.size)))
    above = t <= 273.15
    return np.where(above.any(1), z[np.argmax(above, axis=1)], 0.0)


def write_frame(path: str, orbit_no: int, frame: str, t, lat, lon, cls, q, h_km, dem_km, z_trop_km, land,
                n_bins: int | None = None) -> None:
    """One AC__TC__2B file with the real group layout (EARTHCARE.md §1.2, §2.1, recipe §2.9): /ScienceData with
    named dimension scales along_track x JSG_height, /HeaderData/{FixedProductHeader,VariableProductHeader/
    {MainProductHeader,SpecificProductHeader}}. Written to `<path>.part` and renamed when complete."""
    import h5py

    n, k = cls.shape
    geo = geoid_m(lat, lon)
    height = (h_km[None, :] * 1000.0 + geo[:, None]).astype(np.float32)           # above the ellipsoid, top-down
    secs = (t - EPOCH_2000).astype("timedelta64[ns]").astype(np.float64) / 1e9
    tmp = path + ".part"
    stamp = lambda x: "UTC=" + str(np.datetime64(x, "us"))  # noqa: E731
    with h5py.File(tmp, "w") as f:
        sd = f.create_group("ScienceData")
        at = sd.create_dataset("along_track", data=np.arange(n, dtype=np.int32))
        jh = sd.create_dataset("JSG_height", data=np.arange(k, dtype=np.int32))
        at.make_scale("along_track")
        jh.make_scale("JSG_height")
        gz = dict(compression="gzip", compression_opts=4, chunks=(min(n, 1024), k))

        def var(name, data, dims, **attrs):
            d = sd.create_dataset(name, data=data, **(gz if len(dims) == 2 else {}))
            for i, s in enumerate(dims):
                d.dims[i].attach_scale(s)
            for a, v in attrs.items():
                d.attrs[a] = np.bytes_(v) if isinstance(v, str) else v
            return d

        var("time", secs, (at,), units="seconds since 2000-01-01 00:00:00", long_name="UTC time")
        var("latitude", lat.astype(np.float64), (at,), units="degrees_north")
        var("longitude", (np.mod(lon + 180.0, 360.0) - 180.0).astype(np.float64), (at,), units="degrees_east")
        var("height", height, (at, jh), units="m", long_name="height above the WGS84 ellipsoid")
        var("geoid_offset", geo.astype(np.float32), (at,), units="m",
            long_name="Height of geoid EGM96 over the ellipsoid WGS84")
        var("elevation", (dem_km * 1000.0 + geo).astype(np.float32), (at,), units="m")
        var("tropopause_height", (z_trop_km * 1000.0 + geo).astype(np.float32), (at,), units="m")
        var("land_flag", land.astype(np.int8), (at,))
        var("synergetic_target_classification", cls, (at, jh), long_name="Synergetic target classification",
            definition=DEFINITION)
        var("quality_status", q, (at, jh), long_name="Synergetic target classification quality status")
        hd = f.create_group("HeaderData")
        fph = hd.create_group("FixedProductHeader")
        fph.create_group("Source")
        name = os.path.basename(path)
        for key, v in (("File_Name", name[:-3]), ("File_Type", ec_fmt.PRODUCT), ("File_Class", "EXBC"),
                       ("Validity_Start", stamp(t[0])), ("Validity_Stop", stamp(t[-1]))):
            fph.create_dataset(key, data=np.bytes_(v))
        vph = hd.create_group("VariableProductHeader")
        vph.create_group("SpecificProductHeader")
        mph = vph.create_group("MainProductHeader")
        mph.create_dataset("orbitNumber", data=np.array([orbit_no], np.uint32))
        mph.create_dataset("frameID", data=np.bytes_(frame))
        for key, v in (("frameStartTime", t[0]), ("frameStopTime", t[-1]), ("sensingStartTime", t[0]),
                       ("sensingStopTime", t[-1])):
            mph.create_dataset(key, data=np.bytes_(stamp(v)))
    os.replace(tmp, path)


def frame_path(root: str, start: dt.datetime, orbit_no: int, frame: str) -> str:
    sub = os.path.join(root, "earthcare", ec_fmt.PRODUCT, f"{start:%Y}", f"{start:%m}", f"{start:%d}")
    os.makedirs(sub, exist_ok=True)
    return os.path.join(sub, ec_fmt.frame_filename(start, orbit_no, frame))


def write_frames(world: World, t_start: np.datetime64, t_end: np.datetime64, root: str, in_window=None, log=print):
    """Write every frame over the region between t_start and t_end whose start `in_window(datetime)` accepts;
    return [(path, stats)] with the stats the archive reports (profiles, day profiles, class histogram)."""
    cfg = world.cfg
    out = []
    for orbit_no, frame, t, lat, lon in frames(world, t_start, t_end, cfg.region):
        start = t[0].astype("datetime64[s]").astype(dt.datetime)
        if in_window is not None and not in_window(start):
            continue
        rng = np.random.default_rng([cfg.seed, 31337, orbit_no, FRAMES.index(frame)])   # the same in any piece
        cls, q, h, dem, soz, col = classify(world, t, lat, lon, rng=rng)
        path = frame_path(root, start, orbit_no, frame)
        write_frame(path, orbit_no, frame, t, lat, lon, cls, q, h, dem, col.z_trop, col.land)
        lev = jsg_levels(cls, np.broadcast_to(h[None, :] * 1000.0, cls.shape), dem * 1000.0, q)
        lo0, lo1, la0, la1 = cfg.region
        inreg = (lat >= la0) & (lat <= la1) & (np.mod(lon, 360.0) >= lo0) & (np.mod(lon, 360.0) <= lo1)
        lv = lev[inreg]
        st = {"profiles": int(inreg.sum()), "day_profiles": int((inreg & (soz < 90)).sum()),
              "hist": np.bincount(lv[lv != IGNORE].astype(np.int64), minlength=4).tolist(),
              "t_min": str(t[inreg].min()) if inreg.any() else None,
              "t_max": str(t[inreg].max()) if inreg.any() else None, "track": (t, lat, lon)}
        out.append((path, st))
        log(f"EarthCARE frame {os.path.basename(path)}: {t.size} profiles ({st['profiles']} in region, "
            f"{st['day_profiles']} sunlit)")
    return out
