import numpy as np

from sgmagnet.grid import IGNORE, LEVEL_CENTRE_KM
from sgmagnet.labels import profile_is_valid, profile_levels, vote

NAN = np.nan


def lv(layers, dem=0.0):
    base = np.full((1, 10), NAN)
    top = np.full((1, 10), NAN)
    ph = np.full((1, 10), NAN)
    for k, (b, t, p) in enumerate(layers):
        base[0, k], top[0, k], ph[0, k] = b, t, p
    return profile_levels(np.array([len(layers)]), base, top, ph, np.array([dem]))[0]


def test_level_grid():
    assert LEVEL_CENTRE_KM[0] == 0.25 and LEVEL_CENTRE_KM[-1] == 18.75 and LEVEL_CENTRE_KM.size == 38


def test_single_layer_labels_levels_whose_centre_is_inside():
    y = lv([(1.0, 2.3, 3)])
    # centres 1.25, 1.75, 2.25 are inside [1.0, 2.3]; 0.75 and 2.75 are not
    assert list(np.nonzero(y)[0]) == [2, 3, 4]
    assert set(y[[2, 3, 4]]) == {3}
    assert (y[[0, 1, 5]] == 0).all()


def test_boundaries_inclusive():
    y = lv([(1.25, 1.75, 1)])
    assert list(np.nonzero(y)[0]) == [2, 3]


def test_overlap_phase_covering_more_wins():
    # level 4 = [2.0, 2.5): layer A (ice) covers 2.0-2.45 (0.45 km), layer B (liquid) 2.2-3.0 covers 0.3 km
    y = lv([(1.0, 2.45, 1), (2.2, 3.0, 3)])
    assert y[4] == 1
    y = lv([(1.0, 2.26, 1), (2.2, 3.0, 3)])  # A covers 0.26, B covers 0.30 -> liquid
    assert y[4] == 3


def test_overlap_tie_goes_to_lower_class():
    y = lv([(2.0, 2.25, 3), (2.25, 2.5, 2)])
    assert y[4] == 2


def test_below_surface_is_ignored():
    y = lv([(2.0, 3.0, 2)], dem=1.2)
    assert (y[:2] == IGNORE).all() and y[2] == 0   # level 2 = [1.0,1.5) is only partly below
    assert (y[4:6] == 2).all()


def test_profile_validity():
    base = np.array([[1.0, NAN], [1.0, NAN], [NAN, NAN], [1.0, NAN]])
    top = np.array([[2.0, NAN], [2.0, NAN], [NAN, NAN], [0.5, NAN]])
    ph = np.array([[1, NAN], [0, NAN], [NAN, NAN], [1, NAN]])
    n = np.array([1, 1, NAN, 1])
    ok = profile_is_valid(n, base, top, ph)
    # phase 0 (undetermined) -> dropped; missing layer count -> dropped; base > top -> dropped
    assert ok.tolist() == [True, False, False, False]
    assert profile_is_valid(np.array([0]), np.full((1, 2), NAN), np.full((1, 2), NAN), np.full((1, 2), NAN)).all()


def test_vote_majority_and_ties():
    lab = np.array([[0, 1, 0, 255], [0, 1, 3, 255], [1, 3, 3, 2], [0, 3, 0, 255]], np.uint8)
    lab = np.pad(lab, ((0, 0), (0, 34)), constant_values=0)
    out = vote(lab, np.zeros(4, np.int64), 1)[0]
    assert out[0] == 0            # 3 clear vs 1 ice
    assert out[1] == 1            # 2 ice vs 2 liquid -> lower cloudy id
    assert out[2] == 3            # 2 clear vs 2 liquid -> cloudy wins
    assert out[3] == 2            # only one labelled
    out2 = vote(np.full((2, 38), 255, np.uint8), np.array([0, 0]), 1)[0]
    assert (out2 == 255).all()
