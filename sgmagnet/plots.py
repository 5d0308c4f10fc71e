"""Pictures: along-track curtains (truth vs prediction), confusion matrices, loss curves (matplotlib, Agg)."""
from __future__ import annotations

import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402

from .grid import CLASS_NAMES, IGNORE, LEVEL_DZ_KM, N_LEVELS  # noqa: E402

PHASE_COLOURS = ["#f2f2f2", "#4a90d9", "#9b59b6", "#e67e22"]  # clear, ice, mixed, liquid
KM_PER_DEG = 111.2


def _phase_image(ax, cols: np.ndarray, dist_km: np.ndarray, title: str):
    """cols [N, L] classes (255 = none) drawn as height (km) vs along-track distance (km)."""
    img = np.ma.masked_equal(cols.T.astype(np.int16), IGNORE)
    cmap = ListedColormap(PHASE_COLOURS).with_extremes(bad="#555555")
    edges = np.concatenate([dist_km, [dist_km[-1] + (dist_km[-1] - dist_km[-2] if len(dist_km) > 1 else 1.0)]])
    m = ax.pcolormesh(edges, np.arange(N_LEVELS + 1) * LEVEL_DZ_KM, img, cmap=cmap,
                      norm=BoundaryNorm(np.arange(-0.5, 4.5), 4), shading="flat")
    ax.set_ylabel("altitude (km)")
    ax.set_title(title, fontsize=9)
    return m


def _track_ticks(ax, dist: np.ndarray, lat: np.ndarray, lon=None, time=None, n: int = 5) -> str:
    """Ticks at n profiles spread along the track, labelled with distance, latitude/longitude and UTC time
    (those known); returns the axis label describing the lines."""
    if len(dist) == 0:
        return "along-track distance (km)"
    k = np.unique(np.linspace(0, len(dist) - 1, min(n, len(dist))).round().astype(int))
    lines = ["along-track distance (km)"]
    labels = [[f"{dist[i]:.0f}"] for i in k]
    if lon is not None:
        lon = np.asarray(lon, np.float64)
        for lab, i in zip(labels, k):
            lab.append(f"{abs(lat[i]):.1f}°{'N' if lat[i] >= 0 else 'S'} {lon[i] % 360:.1f}°E")
        lines.append("latitude, longitude")
    else:
        for lab, i in zip(labels, k):
            lab.append(f"{abs(lat[i]):.1f}°{'N' if lat[i] >= 0 else 'S'}")
        lines.append("latitude")
    if time is not None:
        t = np.asarray(time, "datetime64[s]")
        for lab, i in zip(labels, k):
            lab.append(str(t[i])[11:19] if not np.isnat(t[i]) else "")
        lines.append("time (UTC)")
    ax.set_xticks(dist[k], ["\n".join(lab) for lab in labels], fontsize=7)
    return " · ".join(lines)


def curtain_png(c: dict, path: str, title: str):
    """The curtain figure (curtain_figure) saved as a PNG."""
    fig = curtain_figure(c, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curtain_figure(c: dict, title: str):
    """c: {"truth": [N,L], "pred": [N,L], "lat": [N]} in along-track order; optional "lon" [N] (geodesic
    distances, lon ticks) and "time" [N] (datetime64, UTC ticks)."""
    lat = np.asarray(c["lat"], np.float64)
    if "lon" in c and len(lat) > 1:          # geodesic (haversine) steps between consecutive profiles
        lon = np.deg2rad(np.asarray(c["lon"], np.float64))
        p = np.deg2rad(lat)
        a = np.sin(np.diff(p) / 2) ** 2 + np.cos(p[:-1]) * np.cos(p[1:]) * np.sin(np.diff(lon) / 2) ** 2
        dist = np.concatenate([[0.0], np.cumsum(2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))])
    else:                                    # along a near-meridional track: latitude steps
        dist = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(lat)) * KM_PER_DEG)]) if len(lat) else np.zeros(0)
    if len(dist) > 1 and dist[-1] == 0:
        dist = np.arange(len(lat), dtype=np.float64)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5.4), sharex=True, constrained_layout=True)
    _phase_image(axes[0], np.asarray(c["truth"]), dist, "CloudSat/CALIPSO label (truth)")
    m = _phase_image(axes[1], np.where(np.asarray(c["truth"]) == IGNORE, IGNORE, c["pred"]), dist, "prediction")
    axes[1].set_xlabel(_track_ticks(axes[1], dist, lat, c.get("lon"), c.get("time")))
    cb = fig.colorbar(m, ax=axes, ticks=range(4))
    cb.ax.set_yticklabels(CLASS_NAMES)
    from matplotlib.patches import Patch
    axes[0].legend(handles=[Patch(color="#555555", label="no label / below ground")], loc="upper right",
                   fontsize=7, framealpha=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def reliability_png(cal: dict, path: str, title: str):
    """Reliability diagram per class: observed frequency vs predicted probability (diagonal = calibrated)."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for k, (c, r) in enumerate(cal["reliability"].items()):
        n = np.asarray(r["count"])
        ok = n > 0
        colour = "#555555" if k == 0 else PHASE_COLOURS[k]      # the map's clear is near-white
        ax.plot(np.asarray(r["confidence"])[ok], np.asarray(r["frequency"])[ok], "o-", ms=3, color=colour,
                label=f"{c} (ECE {cal['ece'][c]:.3f})")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title + " · reliability", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_png(cm: np.ndarray, path: str, title: str):
    """The confusion figure (confusion_figure) saved as a PNG."""
    fig = confusion_figure(cm, title)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.1)   # keeps both axis labels on the canvas
    plt.close(fig)


def confusion_figure(cm: np.ndarray, title: str):
    """Row-normalised confusion matrix (true class down, predicted across) with the counts."""
    cm = np.asarray(cm, np.float64)
    rown = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4), constrained_layout=True)
    im = ax.imshow(rown, vmin=0, vmax=1, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{rown[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if rown[i, j] > 0.5 else "black")
    ax.set_xticks(range(4), CLASS_NAMES)
    ax.set_yticks(range(4), CLASS_NAMES)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (label)")
    ax.set_title(title + " (row-normalised)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curves_png(logs: dict, path: str):
    """logs: label -> a run's log.jsonl (a path, or its records). Training loss per step and validation loss /
    macro F1."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, p) in enumerate(logs.items()):
        col = colours[k % len(colours)]
        recs = read_log(p) if isinstance(p, str) else p
        tr = [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train"]
        va = [(r["step"], r["val_loss"], r["val_macro_f1"]) for r in recs if r.get("kind") == "val"]
        if tr:
            axes[0].plot(*zip(*tr), color=col, label=f"{label} train")
        if va:
            s, lv, f1 = zip(*va)
            axes[0].plot(s, lv, "o--", color=col, label=f"{label} val")
            axes[1].plot(s, f1, "o-", color=col, label=label)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("class-weighted gated CE")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation macro F1")
    for a in axes:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------- prediction cubes (NetCDF)
def open_cube(cube: str):
    """The prediction cube (NetCDF, or a Zarr store) as an xarray Dataset (raw integers), or ValueError naming
    the file."""
    import xarray as xr

    try:
        if os.path.isdir(cube):
            ds = xr.open_zarr(cube, mask_and_scale=False, consolidated=None)
        else:
            ds = xr.open_dataset(cube, mask_and_scale=False)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{cube}: not a readable NetCDF file or Zarr store ({str(e).splitlines()[0][:120]})") from None
    dims = set(ds["cloud_phase"].dims) if "cloud_phase" in ds else set()
    if not ({"level", "latitude", "longitude"} <= dims or ({"level", "y", "x"} <= dims and "latitude" in ds)):
        ds.close()
        raise ValueError(f"{cube}: not a cube written by `sgmagnet predict` (no cloud_phase[level, latitude, "
                         f"longitude] or cloud_phase[level, y, x] with latitude/longitude)")
    return ds


class CubeGrid:
    """Where a cube's pixels are: a regular latitude/longitude grid (P-Tree cubes) or the native
    geostationary grid (HSD cubes: 2-D latitude/longitude; points are located with pyresample's area read
    back from the cube's CF grid mapping)."""

    def __init__(self, ds):
        self.native = ds["latitude"].ndim == 2
        lat, lon = ds["latitude"].values.astype(np.float64), ds["longitude"].values.astype(np.float64)
        if self.native:
            from pyresample.utils.cf import load_cf_area

            self.area, _ = load_cf_area(ds, variable="cloud_phase", y="y", x="x")
            self.lat2, self.lon2 = np.where(np.abs(lat) <= 90, lat, np.nan), np.where(np.abs(lon) <= 360, lon, np.nan)
            self.res = 0.02
        else:
            self.lat, self.lon = lat, lon
            self.lat2, self.lon2 = np.broadcast_to(lat[:, None], (lat.size, lon.size)), \
                np.broadcast_to(lon[None, :], (lat.size, lon.size))
            self.res = max(abs(float(lat[1] - lat[0])) if len(lat) > 1 else 0.05, 1e-6)
        self.bounds = (float(np.nanmin(self.lon2)), float(np.nanmax(self.lon2)), float(np.nanmin(self.lat2)),
                       float(np.nanmax(self.lat2)))

    def locate(self, lat, lon, strict: bool = False):
        """Nearest cube pixel (row, col) of points and whether they fall inside the cube (within half a pixel
        of its edge pixels' centres; strict: on a regular grid, within the centres themselves)."""
        lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
        if self.native:
            ok = np.isfinite(lat) & np.isfinite(lon)
            c, r = self.area.get_array_indices_from_lonlat(np.where(ok, lon, 0.0), np.where(ok, lat, 0.0))
            bad = np.ma.getmaskarray(r) | np.ma.getmaskarray(c) | ~ok
            return np.where(bad, 0, np.ma.filled(r, 0)), np.where(bad, 0, np.ma.filled(c, 0)), ~bad
        h = 0.0 if strict else self.res / 2
        inside = ((lat >= self.lat.min() - h) & (lat <= self.lat.max() + h)
                  & (lon >= self.lon.min() - h) & (lon <= self.lon.max() + h))
        return _nearest_index(self.lat, lat), _nearest_index(self.lon, lon), inside


def top_phase(phase: np.ndarray) -> np.ndarray:
    """[L, H, W] int8 classes (-1 = no data) -> phase of the highest cloudy level per column (0 = clear)."""
    cloudy = phase > 0
    has = cloudy.any(0)
    top = phase.shape[0] - 1 - np.argmax(cloudy[::-1], axis=0)
    out = np.take_along_axis(phase, top[None], 0)[0]
    out = np.where(has, out, 0).astype(np.int16)
    return np.where(phase[0] < 0, -1, out)


def cube_map_png(cube: str, path: str, granule: str | None = None):
    """Map of cloud-top phase of a prediction cube; with a CloudSat granule, its track across the cube drawn
    on top, marked over land or over sea by the granule's own land/sea flag (no coastline data ships)."""
    with open_cube(cube) as ds:
        ph = ds["cloud_phase"].values[0]
        grid = CubeGrid(ds)
        title = f"cloud-top phase · {ds.attrs.get('input_file', '')} · {ds.attrs.get('model', '')}"
    top = top_phase(ph)
    img = np.ma.masked_less(top, 0)
    cmap = ListedColormap(PHASE_COLOURS).with_extremes(bad="#333333")
    ny, nx = top.shape
    fig, ax = plt.subplots(figsize=(6, 6 * ny / max(nx, 1) + 0.8), constrained_layout=True)
    norm = BoundaryNorm(np.arange(-0.5, 4.5), 4)
    if grid.native and not (np.isfinite(grid.lat2).all() and np.isfinite(grid.lon2).all()):
        m = ax.imshow(img, cmap=cmap, norm=norm, interpolation="nearest")     # the limb: no coordinates there
        ax.set_xlabel("column (AHI 2 km grid)")
        ax.set_ylabel("row (AHI 2 km grid)")
    else:
        m = ax.pcolormesh(grid.lon2 if grid.native else grid.lon, grid.lat2 if grid.native else grid.lat, img,
                          cmap=cmap, norm=norm, shading="nearest")
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
    ax.set_title(title, fontsize=8)
    cb = fig.colorbar(m, ax=ax, ticks=range(4), shrink=0.8)
    cb.ax.set_yticklabels(CLASS_NAMES)
    drawn = {"top_phase": top}
    if granule:
        drawn["track"] = _draw_track(ax, granule, grid, pixels=ax.get_xlabel().startswith("column"))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _draw_track(ax, granule: str, grid: CubeGrid, pixels: bool = False) -> dict:
    """The granule's profiles inside the map, coloured by its land/sea flag; returns their counts."""
    from .formats.cloudsat import read_granule

    g = read_granule(granule)
    glat, glon, flag = g["latitude"].values, g["longitude"].values, g["land_sea_flag"].values
    r, c, inside = grid.locate(glat, glon, strict=True)
    counts = {}
    for name, sel, colour in (("land", flag == 1, "#00e676"), ("sea", (flag == 2) | (flag == 3), "#000000"),
                              ("unknown surface", (flag < 1) | (flag > 3), "#ff1744")):
        pick = inside & sel
        counts[name] = int(pick.sum())
        if pick.any():
            xs, ys = (c[pick], r[pick]) if pixels else (glon[pick], glat[pick])
            ax.plot(xs, ys, ".", ms=2.5, color=colour, label=f"CloudSat track over {name}")
    if any(counts.values()):
        ax.legend(loc="lower right", fontsize=7, markerscale=6, framealpha=0.85)
    return counts


def _nearest_index(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest coordinate (values monotonic, ascending or descending)."""
    order = np.argsort(values)
    pos = np.clip(np.searchsorted(values[order], x), 1, len(values) - 1)
    left, right = order[pos - 1], order[pos]
    return np.where(np.abs(values[left] - x) <= np.abs(values[right] - x), left, right)


def cube_section_png(cube: str, line, path: str, n: int = 300):
    """Vertical cross-section of the cube along the great-circle-free straight line (lon0, lat0, lon1, lat1)."""
    lon0, lat0, lon1, lat1 = line
    with open_cube(cube) as ds:
        grid = CubeGrid(ds)
        b = grid.bounds
        for x, y in ((lon0, lat0), (lon1, lat1)):
            if not grid.locate(np.array([y]), np.array([x]))[2][0]:
                raise ValueError(f"--section {lon0:g},{lat0:g},{lon1:g},{lat1:g}: point ({x:g}E, {y:g}N) is outside "
                                 f"the cube {cube} (longitude {b[0]:g}..{b[1]:g}, latitude {b[2]:g}..{b[3]:g})")
        t = np.linspace(0, 1, n)
        la, lo = lat0 + t * (lat1 - lat0), lon0 + t * (lon1 - lon0)
        i, j, _ = grid.locate(la, lo)
        cols = ds["cloud_phase"].values[0][:, i, j].T.astype(np.int16)           # [n, L]
    cols = np.where(cols < 0, IGNORE, cols)
    dist = t * np.hypot((lat1 - lat0) * KM_PER_DEG, (lon1 - lon0) * KM_PER_DEG * np.cos(np.deg2rad((lat0 + lat1) / 2)))
    fig, ax = plt.subplots(figsize=(8, 3.2), constrained_layout=True)
    m = _phase_image(ax, cols, dist, f"section ({lon0:.2f}E {lat0:.2f}N) -> ({lon1:.2f}E {lat1:.2f}N)")
    ax.set_xlabel("distance along the section (km)")
    cb = fig.colorbar(m, ax=ax, ticks=range(4))
    cb.ax.set_yticklabels(CLASS_NAMES)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"columns": cols, "rows": i, "cols": j, "distance_km": dist}


def nearest_granule(cube: str, cloudsat_dir: str) -> tuple[str, float]:
    """The 2B-CLDCLASS-LIDAR granule under `cloudsat_dir` (searched recursively) whose profiles inside the
    cube come nearest in time to the cube's scene: (path, |time gap| in minutes of its nearest profile)."""
    import glob

    from .formats import FormatError
    from .formats.cloudsat import parse_name, read_granule

    with open_cube(cube) as ds:
        t_cube = ds["time"].values[0] if np.issubdtype(ds["time"].dtype, np.datetime64) else \
            np.datetime64("1970-01-01") + np.timedelta64(int(ds["time"].values[0]), "s")
        grid = CubeGrid(ds)
    best, gap = None, np.inf
    for p in sorted(glob.glob(os.path.join(cloudsat_dir, "**", "*.hdf"), recursive=True)):
        try:           # a granule lasts ~99 min: skip those that start far from the scene time
            start = np.datetime64(parse_name(p).start)
            if not (t_cube - np.timedelta64(3, "h") <= start <= t_cube + np.timedelta64(1, "h")):
                continue
        except FormatError:
            pass       # an unconventional name: decide by reading it
        try:
            g = read_granule(p)
        except Exception:  # noqa: BLE001 - an unreadable granule is simply not a candidate
            continue
        inside = grid.locate(g["latitude"].values, g["longitude"].values)[2]
        if inside.any():
            dtmin = float(np.min(np.abs((g["time"].values[inside] - t_cube) / np.timedelta64(1, "s")))) / 60
            if dtmin < gap:
                best, gap = p, dtmin
    if best is None:
        raise ValueError(f"--cloudsat {cloudsat_dir}: no 2B-CLDCLASS-LIDAR granule crosses the cube {cube} "
                         f"within 3 h of its scene")
    return best, gap


def cube_curtain_png(cube: str, granule: str, path: str, note: str = ""):
    """Along-track curtain: the granule's CloudSat/CALIPSO labels vs the cube at the nearest pixels."""
    from .formats.cloudsat import read_granule
    from .labels import profile_is_valid, profile_levels

    g = read_granule(granule)
    with open_cube(cube) as ds:
        grid = CubeGrid(ds)
        glat, glon = g["latitude"].values, g["longitude"].values
        i, j, inside = grid.locate(glat, glon)
        if not inside.any():
            raise ValueError(f"{granule}: no profile inside the cube {cube}")
        sel = np.flatnonzero(inside)
        i, j = i[sel], j[sel]
        pred = ds["cloud_phase"].values[0][:, i, j].T.astype(np.int16)
    nl, b, t, ph = (g[k].values[sel] for k in ("n_layers", "layer_base", "layer_top", "layer_phase"))
    ok = profile_is_valid(nl, b, t, ph)
    truth = np.full((len(sel), N_LEVELS), IGNORE, np.int16)
    truth[ok] = profile_levels(nl[ok], b[ok], t[ok], ph[ok], g["dem_km"].values[sel][ok])
    pred = np.where(pred < 0, IGNORE, pred)
    drawn = {"truth": truth, "pred": pred, "lat": glat[sel], "lon": glon[sel], "time": g["time"].values[sel],
             "rows": i, "cols": j}
    curtain_png(drawn, path, f"{granule.split('/')[-1][:19]} vs {cube.split('/')[-1]}{note}")
    return drawn
