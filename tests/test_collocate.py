"""Collocation on tiny hand-built files with known answers (DESIGN.md rules)."""
import datetime as dt

import numpy as np
from helpers import make_granule, make_scene

from sgmagnet.collocate import Scene, collocate, patch_windows
from sgmagnet.formats import cloudsat as cs_fmt

HOUR_PACK = {"Hour": {"scale_factor": 0.0625, "add_offset": 0.0, "valid_min": 0, "valid_max": 400}}  # exact times


def scene(tmp_path, t, hour_h, **kw):
    p = make_scene(tmp_path, t, hour=np.full((9, 11), hour_h), packing=HOUR_PACK, **kw)
    return Scene(p, np.datetime64(t, "ns"))


def granule(tmp_path, start, offsets_s, lat, lon, layers=((1.0, 2.0, 3),), **kw):
    return cs_fmt.read_granule(make_granule(tmp_path, start, lat, lon, offsets_s, layers=list(layers), **kw))


def matched(gm):
    """{(scene timeline, row, col): labels} of a GranuleMatch."""
    out = {}
    for m in gm.matches:
        for r, c, lab in zip(m.rows, m.cols, m.labels):
            out[(str(m.scene.timeline.astype("datetime64[m]")), int(r), int(c))] = lab
    return out


def test_window_edges(tmp_path):
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125)        # pixels scanned at 04:07:30
    start = dt.datetime(2018, 10, 1, 4, 12, 30)
    # profile 0 at exactly +5 min (matches), profile 1 at +5 min + 1 s (does not), both at pixel (2, 2)
    g = granule(tmp_path, start, [0.0, 1.0], [9.0, 9.0], [131.0, 131.0])
    gm = collocate(g, [a], window_min=5)
    assert gm.n_matched == 1
    m = gm.matches[0]
    assert (int(m.rows[0]), int(m.cols[0])) == (2, 2) and m.n_profiles[0] == 1


def test_nearest_scene_wins_ties_to_earlier(tmp_path):
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125)        # 04:07:30
    b = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 10), 4.25)         # 04:15:00
    start = dt.datetime(2018, 10, 1, 4, 11, 15)
    # at 04:11:15 both are 3.75 min away -> tie -> earlier scene (a); at 04:11:16 b is nearer
    g = granule(tmp_path, start, [0.0, 1.0], [9.0, 8.0], [131.0, 131.0])
    got = matched(collocate(g, [b, a], window_min=5))
    assert set(got) == {("2018-10-01T04:00", 2, 2), ("2018-10-01T04:10", 4, 2)}


def test_pixel_tie_goes_to_smaller_index_and_vote(tmp_path):
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125)
    start = dt.datetime(2018, 10, 1, 4, 8, 0)
    lat = [9.75, 9.75, 9.75]          # half-way between rows 0 and 1 -> row 0
    lon = [130.25, 130.25, 130.25]    # half-way between cols 0 and 1 -> col 0
    layers = [(np.array([1.0, 1.0, -99.0]), np.array([2.0, 2.0, -99.0]), np.array([3, 3, -9]))]
    g = granule(tmp_path, start, [0.0, 0.16, 0.32], lat, lon, layers=layers,
                n_layers=np.array([1, 1, 0], np.int8))
    gm = collocate(g, [a])
    m = gm.matches[0]
    assert (m.rows.tolist(), m.cols.tolist()) == ([0], [0]) and m.n_profiles.tolist() == [3]
    assert (m.labels[0, 2:4] == 3).all() and m.labels[0, 0] == 0   # 2 liquid vs 1 clear


def test_off_disk_and_invalid_pixels_match_nothing(tmp_path):
    saz = np.full((9, 11), 20.0)
    saz[2, 2] = np.nan
    bands = [np.full((9, 11), 0.3 if k < 6 else 270.0) for k in range(16)]
    bands[12][3, 3] = np.nan            # a missing band -> invalid pixel
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125, saz=saz, bands=bands)
    g = granule(tmp_path, dt.datetime(2018, 10, 1, 4, 8, 0), [0.0, 0.16, 0.32], [9.0, 8.5, 8.0], [131.0, 131.5, 132.0])
    got = matched(collocate(g, [a]))
    assert set(got) == {("2018-10-01T04:00", 4, 4)}


def test_night_scene_still_collocates(tmp_path):
    bands = [np.full((9, 11), 0.0 if k < 6 else 260.0) for k in range(16)]
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 16, 0), 16.125, bands=bands)
    g = granule(tmp_path, dt.datetime(2018, 10, 1, 16, 9, 0), [0.0], [8.0], [132.0])
    assert collocate(g, [a]).n_matched == 1


def test_longitudes_above_180(tmp_path):
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125, lon0=178.0)   # 178 ... 183 E
    g = granule(tmp_path, dt.datetime(2018, 10, 1, 4, 8, 0), [0.0], [8.0], [-178.5])  # = 181.5 E
    assert set(matched(collocate(g, [a]))) == {("2018-10-01T04:00", 4, 7)}


def test_below_surface_levels_and_dropped_profiles(tmp_path):
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125)
    g = granule(tmp_path, dt.datetime(2018, 10, 1, 4, 8, 0), [0.0, 0.16, 0.32], [9.0, 8.0, 7.0], [131.0] * 3,
                layers=[(3.0, 4.0, 1)], dem_m=np.array([1600, 0, 0], np.int16),
                n_layers=np.array([1, -9, 1], np.int8), quality=np.array([0, 0, 4]))
    gm = collocate(g, [a])
    assert gm.n_valid == 1      # missing layer count and a bad quality flag -> dropped, not clear
    lab = gm.matches[0].labels[0]
    assert (lab[:3] == 255).all() and lab[3] == 0 and (lab[6:8] == 1).all()


def test_granule_overlap_owned_by_next(tmp_path):
    a = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125)
    g = granule(tmp_path, dt.datetime(2018, 10, 1, 4, 8, 0), [0.0, 0.16, 0.32], [9.0, 8.0, 7.0], [131.0] * 3)
    gm = collocate(g, [a], cutoff=np.datetime64("2018-10-01T04:08:00.100"))
    assert gm.n_valid == 1


def test_patch_windows_overlap_at_most_a_quarter():
    rows = np.arange(0, 300)
    cols = (rows * 0.2).astype(int) + 10
    wins = patch_windows(rows, cols, rows.astype("datetime64[s]"), (400, 200), 64)
    assert len(wins) >= 4
    for (r0, c0), (r1, c1) in zip(wins, wins[1:]):
        ov = max(0, 64 - abs(r1 - r0)) * max(0, 64 - abs(c1 - c0))
        assert ov <= 0.25 * 64 * 64
    for r0, c0 in wins:   # each window is centred on a track pixel (within clamping)
        assert ((rows >= r0) & (rows < r0 + 64) & (cols >= c0) & (cols < c0 + 64)).sum() >= 32


def test_top_layer_type():
    from sgmagnet.collocate import top_layer_type

    nan = np.nan
    top = np.array([[2.0, 11.0, nan], [1.5, nan, nan], [nan, nan, nan], [3.0, 9.0, nan]])
    ctype = np.array([[5, 1, nan], [4, nan, nan], [nan, nan, nan], [6, 9, nan]])   # 9: not a valid type
    assert top_layer_type(np.array([2, 1, 0, 2]), top, ctype).tolist() == [1, 4, 0, 0]
    assert top_layer_type(np.array([1, 1, 0, 1]), top, ctype).tolist() == [5, 4, 0, 6]   # only the first n layers count


def test_all_fill_scene_is_reported_only_where_the_track_is_scanned_in_time(tmp_path):
    """Bands all fill under the track: a recorded skip when a profile is scanned within the window there (a
    broken scene), nothing when none is (no profile could match it anyway, as in a track-corridor archive)."""
    bands = [np.full((9, 11), np.nan) for _ in range(16)]
    g = granule(tmp_path, dt.datetime(2018, 10, 1, 4, 8, 0), [0.0], [8.0], [132.0])
    in_time = scene(tmp_path, dt.datetime(2018, 10, 1, 4, 0), 4.125, bands=bands)
    gm = collocate(g, [in_time])
    assert gm.n_matched == 0 and len(gm.skipped) == 1 and "all 16 bands are fill" in gm.skipped[0][1]
    late = scene(tmp_path, dt.datetime(2018, 10, 1, 3, 40), 3.75, bands=bands)       # scanned 03:45, 23 min off
    gm = collocate(g, [late])
    assert gm.n_matched == 0 and gm.skipped == []
