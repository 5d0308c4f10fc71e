"""The study's cluster bootstrap (hpc/study_stats.py): whole granules are resampled, so patches that share a
granule do not count as independent draws."""
import numpy as np

from hpc.study_stats import bootstrap, granule_of


def test_granule_of_reads_the_sample_key():
    assert granule_of("20181015T0350_66310_000") == "66310"
    assert granule_of("20250601T0500_05730E_003") == "05730E"


def test_cluster_intervals_are_wider_when_patches_share_their_granule():
    """10 granules of 20 identical patches each: the patch bootstrap sees 200 independent patches and gives a
    narrow interval; the granule bootstrap sees 10 and gives a wider one, around the same point estimate."""
    rng = np.random.default_rng(0)
    cms = []
    for g in range(10):
        acc = rng.uniform(0.3, 0.9)                         # granules differ a lot, patches within one do not
        cm = np.diag(np.full(4, 100.0 * acc)) + (100.0 * (1 - acc) / 3) * (1 - np.eye(4))
        cms += [cm.round()] * 20
    c = np.stack(cms)[None]                                 # [seeds 1, P 200, 4, 4]
    keys = [f"20181015T0350_{g:05d}_{k:03d}" for g in range(10) for k in range(20)]
    pa = bootstrap({"m": c}, {}, 400)["runs"]["m"]
    gr = bootstrap({"m": c}, {}, 400, clusters=[granule_of(k) for k in keys])
    g = gr["runs"]["m"]
    assert gr["clusters"] == 10 and gr["resampled"] == "granules"
    assert g["macro_f1"] == pa["macro_f1"] and g["low"] <= g["macro_f1"] <= g["high"]
    assert (g["high"] - g["low"]) > 3 * (pa["high"] - pa["low"])


def test_one_patch_per_granule_is_the_patch_bootstrap():
    rng = np.random.default_rng(1)
    c = rng.integers(0, 50, (2, 30, 4, 4)).astype(float)
    a = bootstrap({"m": c}, {}, 200, seed=3)["runs"]["m"]
    b = bootstrap({"m": c}, {}, 200, seed=3, clusters=[f"{k:05d}" for k in range(30)])["runs"]["m"]
    assert a["macro_f1"] == b["macro_f1"] and abs((a["high"] - a["low"]) - (b["high"] - b["low"])) < 0.05
