"""The imager's scenes, whichever format holds them: a P-Tree file (`NC_H08_..._R21_FLDK.xxxxx_yyyyy.nc`, on its
regular latitude/longitude grid) or an HSD slot (`<folder>/HS_H08_YYYYMMDD_hhmm`, its 160 segment files, on the
native 2 km full-disk grid). The collocation asks only these questions."""
from __future__ import annotations

import numpy as np

from . import ahi, hsd_slot


def is_hsd(scene: str) -> bool:
    return hsd_slot.is_slot_id(scene)


def read_grid(scene: str):
    """The scene's grid: `.shape`, `.key()` and `.nearest(lat, lon) -> (row, col, inside)`."""
    return hsd_slot.open_slot(scene).grid() if is_hsd(scene) else ahi.read_grid(scene)


def pixel_times(scene: str, rows, cols):
    """datetime64[ns] scan time of pixels (rows[k], cols[k]), read without the bands: P-Tree's `Hour` over
    their bounding window, HSD's header block 9 per line."""
    rows, cols = np.asarray(rows), np.asarray(cols)
    if is_hsd(scene):
        return hsd_slot.open_slot(scene).line_times(rows)
    r0, c0 = int(rows.min()), int(cols.min())
    ds = ahi.read_ahi(scene, rows=slice(r0, int(rows.max()) + 1), cols=slice(c0, int(cols.max()) + 1),
                      variables=("Hour",))
    return ds.obs_time.values[rows - r0, cols - c0]


def read_window(scene: str, rows: slice, cols: slice, angles: bool = True, keep_px: int | None = None):
    """Bands, SOZ, SAZ, obs_time and valid of a window (xarray.Dataset; see ahi.read_ahi). angles=False: SOZ
    and SAZ may be left out (HSD computes them per pixel; P-Tree reads them, its valid mask needs SAZ).
    keep_px: pixels around the window that the next reads will ask for (HSD computes and keeps them)."""
    if is_hsd(scene):
        return hsd_slot.open_slot(scene).read_window(rows, cols, angles, keep_px)
    return ahi.read_ahi(scene, rows=rows, cols=cols)


def prefetch_window(scene: str, rows: slice, cols: slice, keep_px: int | None = None):
    """Start reading what `read_window(scene, rows, cols, keep_px=keep_px)` will need, in the background (HSD:
    decompress its segment files while the caller computes another scene; P-Tree: nothing to do)."""
    if is_hsd(scene):
        hsd_slot.open_slot(scene).prefetch_window(rows, cols, keep_px)


def set_aside(scene: str):
    """The caller needs nothing more of this scene for now: an HSD slot is the first to close when the open
    slots are too many (P-Tree keeps nothing open)."""
    if is_hsd(scene):
        hsd_slot.set_aside(scene)


def skipped(scene: str) -> list[tuple[str, str]]:
    """Parts of the scene that could not be read so far (HSD segments), as (file, reason)."""
    return hsd_slot.skipped(scene) if is_hsd(scene) else []
