"""Full-scene 3D cloud-phase prediction: an AHI scene -> a CF-1.8 cube (level x latitude x longitude for P-Tree,
level x y x x on the native geostationary grid for HSD), as NetCDF or Zarr.

    sgmagnet predict --checkpoint RUN --ahi NC_H08_....nc [--bbox LON0,LON1,LAT0,LAT1] --out cube.nc
                     [--tile 128] [--overlap 32] [--batch 4] [--probabilities] [--format netcdf|zarr]
    sgmagnet predict --checkpoint RUN --ahi HSD_SLOT_FOLDER_or_one_of_its_files --bbox ... --out cube.nc

HSD cubes follow CF's `geostationary` grid mapping as the GOES-R ABI L2 products do: `x`/`y` are scan
angles (rad), `latitude`/`longitude` 2-D auxiliary coordinates (NaN off the disk), and the grid-mapping
variable `ahi_imager_projection` carries pyproj's CF attributes of satpy's area (pyresample's
`load_cf_area` reads the area back). `--format zarr` writes the same dataset as a Zarr store, chunked per tile.

Tiling: square tiles of `tile` pixels overlapping by `overlap`; the last tile of a row/column is aligned
with the scene edge (a scene smaller than a tile is padded with missing data). Stitching is a centre
crop: tiles overlapping along an axis split their overlap at its middle, so every output pixel comes from
exactly one tile, at least overlap/2 pixels from that tile's inner edges. For a model whose receptive
field reaches at most overlap/2 pixels, the stitched cube equals a single pass over the whole scene
(tested with a translation-equivariant model).

Memory: the scene is processed in strips of tile rows read straight from the file (one strip of 16 bands
plus the model's activations for one batch of tiles); results go to the NetCDF strip by strip, so peak
memory does not grow with the scene (a 0.05-degree full disk works on a laptop). The class is the
argmax of the phase-gated probabilities (the Triton int8 argmax on CUDA).

Output: dims time(1), level(38), latitude, longitude; `level` = altitude of the level centres (m,
positive up); `cloud_phase` int8 with flag_values 0..3 / flag_meanings "clear ice mixed liquid" and
_FillValue -1 where the input is off-disk or its infrared bands are missing; with --probabilities also
p_clear, p_ice, p_mixed, p_liquid (packed signed bytes 0..100, scale_factor 0.01, _FillValue -127; CF §8.1).
`level_bounds` gives each level's 500 m extent. Latitude ascends (south to north, so
`ds.sel(latitude=slice(-10, 0))` works), longitude ascends. Variables are chunked
(1, 38, tile, tile) and zlib-compressed; provenance (model, checkpoint and its sha256, input file,
software) is in the global attributes.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import threading

import numpy as np
import torch

from .grid import BAND_VARS, CLASS_NAMES, LEVEL_CENTRE_KM, N_BANDS, N_GEOM, N_LEVELS
from .losses import argmax, log_probs
from .runtime import Runtime
from .shards import sha256

PROB_SCALE = 100.0      # probabilities packed as signed bytes 0..100 x 0.01 (CF §8.1: byte, short or int)
PROB_FILL = -127
REFERENCES = ("SGMAGNet: Wang et al. (2025), arXiv:2509.15706; labels: CloudSat 2B-CLDCLASS-LIDAR (Sassen & "
              "Wang 2008); cloud-phase flags as in the GOES-R ABI cloud-top-phase product (ACTP)")


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"overlap {overlap} must be smaller than the tile {tile}")
    starts = list(range(0, n - tile, step)) + [n - tile]
    return sorted(set(starts))


def cores(starts: list[int], tile: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) of each tile's own pixels: overlaps are split at their middle."""
    cuts = [0] + [(starts[i] + starts[i - 1] + tile) // 2 for i in range(1, len(starts))] + [n]
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def clip_bbox(grid, bbox, name: str = "the file"):
    """bbox (lon0, lon1, lat0, lat1) clipped to the grid's pixel centres -> (bbox', clipped?).
    ValueError when it does not overlap the grid at all (a window outside the file is never "the edge")."""
    lo0, lo1, la0, la1 = bbox
    glat0, glat1 = float(np.min(grid.latitude)), float(np.max(grid.latitude))
    glon0, glon1 = float(np.min(grid.longitude)), float(np.max(grid.longitude))
    if lo1 < glon0 and lo0 + 360.0 <= glon1:          # the grid runs past 180E (P-Tree longitudes may)
        lo0, lo1 = lo0 + 360.0, lo1 + 360.0
    c = (max(lo0, glon0), min(lo1, glon1), max(la0, glat0), min(la1, glat1))
    if not (c[0] <= c[1] and c[2] <= c[3]):
        raise ValueError(f"--bbox {','.join(f'{v:g}' for v in bbox)} is outside {name}: its grid covers "
                         f"longitude {glon0:g}..{glon1:g}, latitude {glat0:g}..{glat1:g}")
    return c, c != (lo0, lo1, la0, la1)


def largest_batch(model, tile: int, rt: Runtime, limit: int) -> int:
    """--batch-size auto: on CUDA the largest power of two <= limit whose forward pass fits in memory (tried with
    zeros, under the runtime's autocast; check_tile has run one tile); elsewhere min(4, limit)."""
    if rt.device.type != "cuda":
        return max(1, min(4, limit))
    best, b = 1, 2
    while b <= limit:
        try:
            with torch.no_grad(), rt.autocast():
                model(torch.zeros(b, N_BANDS, tile, tile, device=rt.device),
                      torch.zeros(b, N_GEOM, tile, tile, device=rt.device))
            best, b = b, 2 * b
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def check_tile(model, tile: int, device) -> None:
    """One forward pass of an empty tile: a tile size the model cannot take fails here, before any output."""
    try:
        with torch.no_grad():
            model(torch.zeros(1, N_BANDS, tile, tile, device=device), torch.zeros(1, N_GEOM, tile, tile, device=device))
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"--tile {tile}: the model cannot take {tile}x{tile} tiles "
                         f"({' '.join(str(e).split())[:160]})") from None


class LatLonSource:
    """A P-Tree file (or a --bbox window of it) on its regular latitude/longitude grid; the cube runs south to
    north (the file north to south)."""

    kind = "ptree"

    def __init__(self, ahi: str, bbox=None, log=print):
        from .formats import ahi as ahi_fmt

        self.ahi = ahi
        grid = ahi_fmt.read_grid(ahi)
        if bbox is not None:
            bbox, clipped = clip_bbox(grid, bbox, os.path.basename(ahi))
            if clipped and log:
                log(f"note: --bbox clipped to the file's grid: {','.join(f'{v:g}' for v in bbox)}")
        head = ahi_fmt.read_ahi(ahi, bbox=bbox, variables=("SAZ",))
        self.r0, self.c0 = int(head.attrs["row0"]), int(head.attrs["col0"])
        self.H, self.W = head.sizes["latitude"], head.sizes["longitude"]
        self.lat, self.lon = head["latitude"].values, head["longitude"].values
        self.flip = len(self.lat) > 1 and self.lat[0] > self.lat[-1]
        self.time = np.datetime64(ahi_fmt.parse_name(ahi).timeline.replace(tzinfo=None), "ns")
        self.input_file = os.path.basename(ahi)
        self.source = "Himawari-8/9 AHI L1 gridded (JAXA P-Tree)"

    def strip(self, lo: int, hi: int):
        """[16, h, W] bands, [2, h, W] SOZ/SAZ and the pixels to predict, rows lo..hi of the window."""
        from .formats import ahi as ahi_fmt

        s = ahi_fmt.read_ahi(self.ahi, rows=slice(self.r0 + lo, self.r0 + hi), cols=slice(self.c0, self.c0 + self.W),
                             variables=BAND_VARS + ("SOZ", "SAZ"))
        return _inputs(s)

    def create(self, out, tile, probabilities, attrs):
        return _create(out, self, tile, probabilities, attrs)

    def rows_out(self, lo: int, hi: int):
        return (slice(self.H - hi, self.H - lo), slice(None, None, -1)) if self.flip else (slice(lo, hi), slice(None))


class NativeSource:
    """An HSD slot (or a --bbox window of it) on AHI's native 2 km grid, rows north to south as scanned; the
    cube carries CF's `geostationary` grid mapping (as GOES-R ABI L2 products do): x/y scan angles in radians
    and 2-D latitude/longitude."""

    kind = "hsd"

    def __init__(self, slot, bbox=None, log=print):
        self.slot = slot                      # an HsdSlot(keep_files=True): strips reuse its decompressed segments
        self.slot.cache_margin = 0
        sid = slot.sid
        try:
            self._window(bbox, log)
        except BaseException:
            self.slot.close()
            raise
        self.time = np.datetime64(self.slot.timeline, "ns")
        self.input_file = os.path.basename(sid)
        self.source = f"Himawari-{int(self.slot.platform)} AHI L1 Himawari Standard Data (satpy ahi_hsd)"

    def _window(self, bbox, log):
        area = self.slot.grid().area
        if bbox is None:
            self.r0, r1, self.c0, c1 = 0, area.height, 0, area.width
        else:
            lo0, lo1, la0, la1 = bbox
            t = np.linspace(0.0, 1.0, 400)
            edge_lon = np.concatenate([lo0 + (lo1 - lo0) * t, np.full(t.size, lo1), lo1 - (lo1 - lo0) * t, np.full(t.size, lo0)])
            edge_lat = np.concatenate([np.full(t.size, la0), la0 + (la1 - la0) * t, np.full(t.size, la1), la1 - (la1 - la0) * t])
            i, j, inside = self.slot.grid().nearest(edge_lat, edge_lon)
            if not inside.any():
                raise ValueError(f"--bbox {','.join(f'{v:g}' for v in bbox)} is outside the Earth disk Himawari "
                                 f"sees from {area.crs.to_cf().get('longitude_of_projection_origin', 140.7):g}E")
            if not inside.all() and log:
                log("note: --bbox reaches past the Earth's limb: clipped to the disk")
            self.r0, r1 = int(i[inside].min()), int(i[inside].max()) + 1
            self.c0, c1 = int(j[inside].min()), int(j[inside].max()) + 1
        self.H, self.W = r1 - self.r0, c1 - self.c0
        self.area = area[self.r0:r1, self.c0:c1]

    def strip(self, lo: int, hi: int):
        s = self.slot.read_window(slice(self.r0 + lo, self.r0 + hi), slice(self.c0, self.c0 + self.W))
        return _inputs(s)

    def create(self, out, tile, probabilities, attrs):
        return _create(out, self, tile, probabilities, attrs)

    def rows_out(self, lo: int, hi: int):
        return slice(lo, hi), slice(None)

    def close(self):
        self.slot.close()


def _inputs(s):
    from .formats.ahi import SAZ_OFF_DISK_DEG

    x = np.stack([s[b].values for b in BAND_VARS]).astype(np.float32)
    geom = np.stack([s["SOZ"].values, s["SAZ"].values]).astype(np.float32)
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(x[6:]), 0) & np.asarray(s["SAZ"].values < SAZ_OFF_DISK_DEG)
    return x, geom, ok


def scene_source(ahi: str, bbox=None, log=print):
    """The source for --ahi: a P-Tree file, an HSD segment file (its slot), or a folder holding one HSD slot."""
    from .formats import hsd, hsd_slot

    if os.path.isdir(ahi):
        sids = sorted({hsd_slot.slot_id(p) for p in os.listdir(ahi) if hsd.is_hsd_name(p)
                       for p in [os.path.join(ahi, p)]})
        if not sids:
            raise ValueError(f"--ahi {ahi!r}: a folder with no Himawari Standard Data segment "
                             f"(HS_H08_YYYYMMDD_hhmm_Bbb_FLDK_Rjj_Skkll.DAT[.bz2]); a P-Tree scene is given as its file")
        if len(sids) > 1:
            raise ValueError(f"--ahi {ahi!r} holds segments of {len(sids)} slots ("
                             + ", ".join(os.path.basename(x) for x in sids[:3]) + "): pass one file of the slot to use")
        sid = sids[0]
    elif hsd.is_hsd_name(ahi):
        if not os.path.exists(ahi):
            raise FileNotFoundError(f"--ahi {ahi!r}: no such file")
        sid = hsd_slot.slot_id(ahi)
    else:
        return LatLonSource(ahi, bbox, log)
    hsd_slot.copy_folder()
    slot = hsd_slot.HsdSlot(sid, keep_files=True)
    if slot.missing_bands():
        raise ValueError(f"--ahi {ahi!r}: slot {os.path.basename(sid)} has no file of band(s) "
                         + ", ".join(f"B{b:02d}" for b in slot.missing_bands()) + " (all 16 are needed)")
    return NativeSource(slot, bbox, log)


def _create(out: str, src, tile: int, probabilities: bool, attrs: dict):
    from netCDF4 import Dataset

    native = src.kind == "hsd"
    ydim, xdim = ("y", "x") if native else ("latitude", "longitude")
    ny, nx = src.H, src.W
    time = src.time
    nc = Dataset(out + ".partial", "w", format="NETCDF4")
    nc.createDimension("time", 1)
    nc.createDimension("level", N_LEVELS)
    nc.createDimension(ydim, ny)
    nc.createDimension(xdim, nx)
    v = nc.createVariable("time", "f8", ("time",))
    v.units, v.standard_name, v.calendar, v.axis = "seconds since 1970-01-01 00:00:00", "time", "standard", "T"
    v[:] = [(time - np.datetime64("1970-01-01T00:00:00")) / np.timedelta64(1, "s")]
    nc.createDimension("nv", 2)
    v = nc.createVariable("level", "f4", ("level",))
    v.units, v.standard_name, v.positive, v.axis = "m", "altitude", "up", "Z"
    v.long_name = "altitude of the level centre above mean sea level (levels are 500 m thick)"
    v.bounds = "level_bounds"
    v[:] = (LEVEL_CENTRE_KM * 1000.0).astype(np.float32)
    b = nc.createVariable("level_bounds", "f4", ("level", "nv"))
    b.units = "m"
    b[:] = np.stack([LEVEL_CENTRE_KM * 1000.0 - 250.0, LEVEL_CENTRE_KM * 1000.0 + 250.0], 1).astype(np.float32)
    if native:
        xm, ym = src.area.get_proj_vectors()             # metres on the projection plane = angle x height
        cf = src.area.crs.to_cf()
        h = float(cf["perspective_point_height"])
        for name, vals, axis in (("y", ym / h, "Y"), ("x", xm / h, "X")):
            v = nc.createVariable(name, "f8", (name,))
            v.units, v.axis, v.standard_name = "rad", axis, f"projection_{name}_coordinate"
            v.long_name = f"AHI fixed grid projection {name}-coordinate (scan angle)"
            v[:] = vals
        gm = nc.createVariable("ahi_imager_projection", "i4", ())
        gm.setncatts({k: v for k, v in cf.items() if k not in ("crs_wkt",)})
        gm.crs_wkt = cf.get("crs_wkt", src.area.crs.to_wkt())
        gm.long_name = "Himawari AHI fixed grid projection"
        lon2, lat2 = src.area.get_lonlats()
        for name, vals, std in (("latitude", lat2, "degrees_north"), ("longitude", lon2, "degrees_east")):
            v = nc.createVariable(name, "f4", ("y", "x"), zlib=True, complevel=4, fill_value=np.float32(np.nan))
            v.units, v.standard_name = std, name
            v[:] = np.where(np.isfinite(vals) & (np.abs(vals) <= 360), vals, np.nan).astype(np.float32)
    else:
        lat = src.lat[::-1] if src.flip else src.lat
        for name, vals, std in (("latitude", lat, "degrees_north"), ("longitude", src.lon, "degrees_east")):
            v = nc.createVariable(name, "f4", (name,))
            v.units, v.standard_name = std, name
            v.axis = "Y" if name == "latitude" else "X"
            v[:] = vals
    dims = ("time", "level", ydim, xdim)
    ch = (1, N_LEVELS, min(tile, ny), min(tile, nx))
    v = nc.createVariable("cloud_phase", "i1", dims, zlib=True, complevel=4, chunksizes=ch, fill_value=np.int8(-1))
    v.long_name = "cloud thermodynamic phase per 500 m level"
    v.flag_values = np.array([0, 1, 2, 3], np.int8)
    v.flag_meanings = " ".join(CLASS_NAMES)
    v.valid_range = np.array([0, 3], np.int8)
    v.comment = ("0 clear (no cloud in the level), 1 ice, 2 mixed (ice and supercooled liquid), 3 liquid water; "
                 "the 2B-CLDCLASS-LIDAR phase classes; argmax of the model's phase-gated probabilities; "
                 "_FillValue where the input is off-disk or its infrared bands are missing")
    v.coordinates = "time level latitude longitude"
    if native:
        v.grid_mapping = "ahi_imager_projection"
    if probabilities:
        for c in CLASS_NAMES:
            p = nc.createVariable(f"p_{c}", "i1", dims, zlib=True, complevel=4, chunksizes=ch,
                                  fill_value=np.int8(PROB_FILL))
            if native:
                p.grid_mapping = "ahi_imager_projection"
            p.long_name = f"probability of {c} (phase-gated model output)"
            p.scale_factor, p.add_offset, p.units = np.float32(1 / PROB_SCALE), np.float32(0.0), "1"
            p.valid_range = np.array([0, int(PROB_SCALE)], np.int8)
            p.set_auto_scale(False)   # we write the packed integers ourselves
    nc.setncatts(attrs)
    return nc


@torch.no_grad()
def predict_scene(model, norm, ahi: str, out: str, bbox=None, tile: int = 128, overlap: int = 32, batch: int | str = 4,
                  probabilities: bool = False, rt: Runtime | None = None, attrs: dict | None = None, log=print,
                  form: str = "gated", fmt: str = "netcdf", trained_on: dict | None = None,
                  writer_thread: bool = True) -> dict:
    """Run `model` over an AHI scene (tiled, streamed) and write the CF cube `out` (atomically) as NetCDF or
    (fmt="zarr") Zarr, on the runtime `rt` (default: CPU, float32, the reference argmax). `ahi`: a P-Tree file,
    or an HSD slot (a folder holding one, or any of its segment files). trained_on (the checkpoint's record:
    band set, solar zenith range of its training split): the cube gains the flag `outside_training_range`
    (1 where the pixel's solar zenith lies outside that range; all 0 for an infrared-only model, which does not
    see the sun); the prediction itself is written everywhere.

    Overlap: each strip's rows are written by a writer thread (`StripWriter`, the only user of the open file
    once the loop starts) while the next strip is read and computed; on CUDA the int8 classes of a batch are
    copied to pinned host memory asynchronously and collected after the next batch is launched.
    writer_thread=False writes in the loop (the benchmark's baseline, hpc/bench/predict_writer.py)."""
    from tqdm import tqdm

    rt = rt or Runtime(torch.device("cpu"))
    device = rt.device
    model = model.to(device).eval()
    if not 8 <= tile <= 4096:
        raise ValueError(f"--tile must be between 8 and 4096 pixels, got {tile}")
    if overlap % 2 or overlap < 0 or overlap >= tile:
        raise ValueError(f"--overlap must be an even number >= 0 and smaller than --tile {tile}, got {overlap}")
    if fmt not in ("netcdf", "zarr"):
        raise ValueError(f"--format must be netcdf or zarr, got {fmt!r}")
    src = scene_source(ahi, bbox, log)
    try:
        check_tile(model, tile, device)
        out_dir = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(out_dir) or not os.access(out_dir, os.W_OK):
            raise ValueError(f"--out {out!r}: folder {out_dir} does not exist or is not writable")
    except BaseException:
        if hasattr(src, "close"):
            src.close()
        raise
    H, W = src.H, src.W
    rows, cols = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    rcore, ccore = cores(rows, tile, H), cores(cols, tile, W)
    if batch == "auto":
        batch = largest_batch(model, tile, rt, len(cols))
        if log:
            log(f"--batch-size auto: {batch} tiles per forward pass on {device}")
    from . import __version__

    base = {"Conventions": "CF-1.8", "title": "3D cloud phase reconstructed from Himawari AHI",
            "institution": os.environ.get("SGMAGNET_INSTITUTION", "unspecified (set SGMAGNET_INSTITUTION)"),
            "source": f"{src.source}, 16 bands -> sgmagnet {__version__} predict",
            "references": REFERENCES, "input_file": src.input_file,
            "orientation": ("rows north to south as scanned (y descending), columns west to east (x ascending)"
                            if src.kind == "hsd" else
                            "latitude ascending (south to north), longitude ascending (west to east)"),
            "history": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} sgmagnet predict",
            "tiling": f"tile {tile}, overlap {overlap}, centre-crop stitching, {batch} tiles per batch",
            "precision": "bf16 autocast" if rt.bf16 else "float32", "grid_row0": src.r0,
            "grid_col0": src.c0}
    base.update(attrs or {})
    n_valid = n_outside = 0
    rng = _training_range(trained_on)
    sun_blind = (trained_on or {}).get("bands") == "ir"          # an infrared model: nothing is outside its range
    nc = None
    nc_path = out if fmt == "netcdf" else out + ".nc"
    try:
        nc = src.create(nc_path, tile, probabilities, base)
        if rng is not None:
            _range_flag(nc, src, tile, rng, trained_on, sun_blind)
        bar = tqdm(total=len(rows) * len(cols), desc="tiles", disable=not log, mininterval=2)
        writer = StripWriter(nc, threaded=writer_thread)
        for rs, (rlo, rhi) in zip(rows, rcore):
            with HDF5_LOCK:
                x, geom, ok = src.strip(rs, min(rs + tile, H))
            xn = norm(x)
            h = x.shape[1]
            if h < tile or W < tile:  # pad a small scene with missing data
                pad = ((0, 0), (0, tile - h if h < tile else 0), (0, max(0, tile - W)))
                xn = np.pad(xn, pad, constant_values=np.nan)
                geom = np.pad(geom, pad, constant_values=np.nan)
            phase = np.full((N_LEVELS, rhi - rlo, W), -1, np.int8)
            probs = np.full((4, N_LEVELS, rhi - rlo, W), PROB_FILL, np.int8) if probabilities else None
            pending = None

            def collect(p):                 # the classes of a batch, once its copy to the host is done
                done, cls, pr, group = p
                if done is not None:
                    done.synchronize()
                cls = cls.numpy()
                for j, (cs, (clo, chi)) in enumerate(group):
                    rr, cc = slice(rlo - rs, rhi - rs), slice(clo - cs, chi - cs)
                    phase[:, :, clo:chi] = cls[j][:, rr, cc]
                    if probabilities:
                        probs[:, :, :, clo:chi] = pr[j][:, :, rr, cc]

            for k in range(0, len(cols), batch):
                group = list(zip(cols, ccore))[k:k + batch]
                xb = torch.from_numpy(np.stack([xn[:, :tile, cs:cs + tile] for cs, _ in group])).to(device)
                gb = torch.from_numpy(np.stack([geom[:, :tile, cs:cs + tile] for cs, _ in group])).to(device)
                with rt.autocast():
                    logits = model(xb, gb)
                cls_dev = argmax(logits, rt.fused, form).to(torch.int8)                  # [b, L, t, t]
                done = None
                if cls_dev.is_cuda:         # async device-to-host copy into pinned memory
                    cls = torch.empty(cls_dev.shape, dtype=torch.int8, pin_memory=True)
                    cls.copy_(cls_dev, non_blocking=True)
                    done = torch.cuda.Event()
                    done.record()
                else:
                    cls = cls_dev
                pr = ((log_probs(logits, form).exp() * PROB_SCALE).round().to(torch.int8).cpu().numpy()
                      if probabilities else None)
                if pending is not None:
                    collect(pending)
                pending = (done, cls, pr, group)
                bar.update(len(group))
            if pending is not None:
                collect(pending)
            mask = ~ok[rlo - rs:rhi - rs]
            phase[:, mask] = -1
            rows_out, order = src.rows_out(rlo, rhi)
            writer.put("cloud_phase", (0, slice(None), rows_out, slice(None)), phase[:, order])
            if probabilities:
                probs[:, :, mask] = PROB_FILL
                for c, name in enumerate(CLASS_NAMES):
                    writer.put(f"p_{name}", (0, slice(None), rows_out, slice(None)), probs[c][:, order])
            n_valid += int((~mask).sum())
            if rng is not None:
                soz = geom[0, rlo - rs:rhi - rs, :W]
                inside = (soz >= rng[0]) & (soz <= rng[1])            # NaN (unknown sun): outside
                out_r = np.zeros(soz.shape, bool) if sun_blind else ~inside & ~mask
                flag = np.where(mask, np.int8(-1), out_r.astype(np.int8))
                writer.put("outside_training_range", (0, rows_out, slice(None)), flag[order])
                n_outside += int(out_r.sum())
        writer.finish()
        bar.close()
        nc.close()
        nc = None
        if fmt == "zarr":
            _to_zarr(nc_path + ".partial", out, tile)
        else:
            os.replace(out + ".partial", out)
    except BaseException:    # a failed write leaves no .partial and never touches an existing `out`
        if "writer" in locals():
            writer.abandon()
        if nc is not None:
            try:
                nc.close()
            except Exception:  # noqa: BLE001 - closing a broken file may fail too; the file goes anyway
                pass
        for p in (nc_path + ".partial", out + ".partial"):
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.exists(p):
                os.remove(p)
        raise
    finally:
        if hasattr(src, "close"):
            src.close()
    return {"out": out, "shape": [N_LEVELS, H, W], "tiles": len(rows) * len(cols), "valid_pixels": n_valid,
            "grid": src.kind, "outside_training_range": n_outside if rng is not None else None,
            "training_range": list(rng) if rng is not None else None, "sun_blind": sun_blind}


#: the HDF5 library underneath netCDF4 and h5py is not thread-safe as built in the wheels: the writer thread's
#: writes and the loop's reads of the input take turns through this lock (model compute, which releases the
#: GIL, is what overlaps the writes)
HDF5_LOCK = threading.Lock()


class StripWriter:
    """Writes (variable, index, array) items into an open netCDF4 Dataset on one thread of its own (the only
    thread writing the file while it runs), so that writing a strip overlaps computing the next one (reads of
    the input and the writes take turns: HDF5_LOCK).
    The queue holds at most 2 strips (bounded memory); an error in the writer is raised in the caller at the
    next put or at finish. threaded=False writes at once (the baseline)."""

    def __init__(self, nc, threaded: bool = True):
        import queue

        self.nc, self.error = nc, None
        self.q = queue.Queue(maxsize=2) if threaded else None
        if threaded:
            self.thread = threading.Thread(target=self._run, name="cube-writer", daemon=True)
            self.thread.start()

    def _run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    name, index, data = item
                    with HDF5_LOCK:
                        self.nc[name][index] = data
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self.error = e

    def _check(self):
        if self.error is not None:
            raise self.error

    def put(self, name: str, index, data):
        if self.q is None:
            self.nc[name][index] = data
            return
        self._check()
        self.q.put((name, index, data))

    def finish(self):
        """Wait until everything is written; raise the writer's error, if any."""
        if self.q is not None:
            self.q.put(None)
            self.thread.join()
            self.q = None
        self._check()

    def abandon(self):
        """The run failed: stop the thread (what it had not written is dropped with the partial file)."""
        if self.q is not None:
            self.error = self.error or RuntimeError("abandoned")
            self.q.put(None)
            self.thread.join()
            self.q = None


def _training_range(trained_on: dict | None):
    """(lo, hi): the solar zenith range of the checkpoint's training split; None when the checkpoint does not
    record it (written before this record existed)."""
    z = (trained_on or {}).get("solar_zenith")
    return (float(z[0]), float(z[1])) if z else None


def _range_flag(nc, src, tile: int, rng, trained_on: dict, sun_blind: bool):
    ydim, xdim = ("y", "x") if src.kind == "hsd" else ("latitude", "longitude")
    v = nc.createVariable("outside_training_range", "i1", ("time", ydim, xdim), zlib=True, complevel=4,
                          chunksizes=(1, min(tile, src.H), min(tile, src.W)), fill_value=np.int8(-1))
    v.long_name = "pixel outside the solar zenith range the model was trained on"
    v.flag_values = np.array([0, 1], np.int8)
    v.flag_meanings = "inside_training_range outside_training_range"
    v.valid_range = np.array([0, 1], np.int8)
    if not sun_blind:
        v.comment = (f"1 where the solar zenith angle lies outside [{rng[0]:.1f}, {rng[1]:.1f}] degrees, the range of "
                     f"the labelled pixels of the model's training split (band set {trained_on.get('bands', 'all')}): "
                     f"its prediction there is an extrapolation (night, for a daytime-trained all-band model); "
                     f"cloud_phase is written there all the same")
    else:
        v.comment = "all 0: an infrared-only model (band set ir) does not see the sun, so no pixel is outside its range"
    v.coordinates = "time latitude longitude"
    if src.kind == "hsd":
        v.grid_mapping = "ahi_imager_projection"


def _to_zarr(nc_tmp: str, out: str, tile: int):
    """The NetCDF cube rewritten as a Zarr store chunked per tile (the same variables, attributes and packing);
    the store replaces `out` only once it is complete."""
    import xarray as xr

    spatial = ("latitude", "longitude", "y", "x")
    with xr.open_dataset(nc_tmp, mask_and_scale=False, decode_times=False,       # streamed tile by tile (dask)
                         chunks={d: tile for d in spatial}) as ds:
        enc = {}
        for name, v in ds.data_vars.items():
            e = {"chunks": tuple(min(tile, n) if d in spatial else n for d, n in zip(v.dims, v.shape))} if v.ndim else {}
            if "_FillValue" in v.encoding:
                e["fill_value"] = v.encoding["_FillValue"]
            enc[name] = e
        ds.to_zarr(out + ".partial", mode="w", encoding=enc, consolidated=True, zarr_format=2)
    os.remove(nc_tmp)
    old = None
    if os.path.exists(out):
        old = out + ".old"
        os.replace(out, old)
    os.replace(out + ".partial", out)
    if old:
        shutil.rmtree(old, ignore_errors=True) if os.path.isdir(old) else os.remove(old)


def predict_checkpoint(checkpoint: str, ahi: str, out: str, bbox=None, tile: int = 128, overlap: int = 32,
                       batch: int | str = 4, probabilities: bool = False, device: str = "auto", log=print,
                       fmt: str = "netcdf", bf16: bool = False) -> dict:
    from .data import Normaliser
    from .runtime import load_model_from_checkpoint

    rt = Runtime.resolve(device, bf16=bf16)      # the fused argmax where the kernels run
    model, ck = load_model_from_checkpoint(checkpoint, rt.device)
    norm = Normaliser.from_checkpoint(ck)
    state = os.path.join(ck.folder, "state.pt")
    attrs = {"model": f"{ck.config.model.name}/{ck.config.model.size}", "band_set": ck.config.model.bands,
             "model_options": str(ck.config.model.options), "checkpoint": os.path.abspath(ck.folder),
             "checkpoint_sha256": sha256(state), "checkpoint_step": ck.step}
    r = predict_scene(model, norm, ahi, out, bbox=bbox, tile=tile, overlap=overlap, batch=batch,
                      probabilities=probabilities, rt=rt, attrs=attrs, log=log,
                      form=ck.config.loss.form, fmt=fmt, trained_on=ck.trained_on)
    if log:
        log(f"wrote {out}: cloud_phase {r['shape']} from {r['tiles']} tiles, {r['valid_pixels']} valid pixels")
        rng = r["training_range"]
        if rng is None:
            log("note: the checkpoint records no training solar zenith range (written before it was recorded): "
                "no outside_training_range flag")
        elif not r["sun_blind"]:
            log(f"outside_training_range: {r['outside_training_range']} of {r['valid_pixels']} valid pixels have a "
                f"solar zenith outside [{rng[0]:.1f}, {rng[1]:.1f}] deg, the training split's (flagged, not hidden)")
        else:
            log("outside_training_range: 0 (band set ir: the model does not see the sun)")
    return r
