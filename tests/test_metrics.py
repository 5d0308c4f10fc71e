import numpy as np
import pytest
import torch

from sgmagnet.metrics import ConfusionSet, column_type, confusion, scores


def test_confusion_counts_and_ignores_255():
    t = torch.tensor([[0, 1, 255], [3, 3, 2]], dtype=torch.uint8)
    p = torch.tensor([[0, 2, 1], [3, 0, 2]])
    cm = confusion(t, p)
    want = np.zeros((4, 4), int)
    want[0, 0] = want[1, 2] = want[3, 3] = want[3, 0] = want[2, 2] = 1
    assert (cm.numpy() == want).all()


def test_scores_hand_made():
    cm = np.array([[50, 5, 0, 5],
                   [10, 20, 0, 0],
                   [0, 0, 0, 0],
                   [0, 0, 4, 6]])
    s = scores(cm)
    clear, ice, mixed, liquid = (s["per_class"][c] for c in ("clear", "ice", "mixed", "liquid"))
    assert clear["precision"] == pytest.approx(50 / 60) and clear["recall"] == pytest.approx(50 / 60)
    assert ice["precision"] == pytest.approx(20 / 25) and ice["recall"] == pytest.approx(20 / 30)
    assert ice["f1"] == pytest.approx(2 * 0.8 * (2 / 3) / (0.8 + 2 / 3))
    assert ice["iou"] == pytest.approx(20 / (20 + 5 + 10))
    assert mixed == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "support": 0}  # zero_division = 0
    assert liquid["precision"] == pytest.approx(6 / 11) and liquid["recall"] == pytest.approx(0.6)
    assert s["macro"]["iou"] == pytest.approx(np.mean([50 / 70, 20 / 35, 0.0, 6 / 15]))
    assert s["phase_macro"]["recall"] == pytest.approx(np.mean([2 / 3, 0.0, 0.6]))
    # cloud mask: cloud = classes 1..3; tp = 20+0+0+0+4+6 = 30, fp = 10 (clear->cloud), fn = 10 (cloud->clear)
    assert s["cloud_mask"]["precision"] == pytest.approx(30 / 40) and s["cloud_mask"]["recall"] == pytest.approx(30 / 40)
    assert s["voxels"] == cm.sum() and s["accuracy"] == pytest.approx(76 / 100)


def test_perfect_prediction_scores_one_where_defined():
    cm = np.diag([10, 3, 2, 1])
    s = scores(cm)
    assert s["macro"]["f1"] == 1.0 and s["cloud_mask"]["iou"] == 1.0


def test_column_type_and_strata():
    prof = torch.tensor([[0, 0, 0, 255], [0, 1, 1, 0], [3, 0, 1, 0], [255, 2, 0, 1]], dtype=torch.uint8)
    assert column_type(prof).tolist() == [0, 1, 2, 2]
    cs = ConfusionSet()
    cs.update(prof, torch.zeros(4, 4, dtype=torch.long), torch.tensor([5.0, -30.0, 50.0, 10.0]),
              torch.tensor([30.0, 85.0, 100.0, 30.0]))
    r = cs.report()
    assert r["overall"]["voxels"] == 14
    assert set(r["strata"]["layers"]) == {"clear", "single", "multi"}
    assert r["strata"]["latitude"]["midlatitudes"]["voxels"] == 4
    dn = r["strata"]["daynight"]
    assert dn["night"]["voxels"] == 4 and dn["twilight"]["voxels"] == 4 and dn["day"]["voxels"] == 6


def test_cloud_type_stratum():
    prof = torch.tensor([[0, 1, 1, 0], [0, 3, 3, 0], [0, 0, 0, 0]], dtype=torch.uint8)
    cs = ConfusionSet()
    cs.update(prof, prof.long(), torch.zeros(3), torch.zeros(3), torch.tensor([1, 5, 0], dtype=torch.uint8))
    r = cs.report()["strata"]["cloudtype"]
    assert set(r) == {"clear", "Ci", "Sc"} and r["Ci"]["voxels"] == 4 and r["Sc"]["per_class"]["liquid"]["f1"] == 1.0
    cs2 = ConfusionSet()
    cs2.update(prof, prof.long(), torch.zeros(3), torch.zeros(3))      # shards without cloud types
    assert cs2.report()["strata"]["cloudtype"] == {}


def test_paper_comparable_block_on_a_hand_made_matrix():
    from sgmagnet.metrics import paper_comparable

    cm = np.array([[90, 5, 3, 2],       # truth clear
                   [4, 20, 4, 2],       # truth ice
                   [2, 3, 10, 5],       # truth mixed
                   [1, 1, 2, 16]])      # truth liquid
    pc = paper_comparable(cm)
    tp = 20 + 10 + 16
    fp = (5 + 3 + 1) + (3 + 4 + 2) + (2 + 2 + 5)         # predicted a phase, truth differs (incl. clear)
    fn = (4 + 4 + 2) + (2 + 3 + 5) + (1 + 1 + 2)         # true phase, prediction differs (incl. clear)
    m = pc["micro_phase"]
    assert m["precision"] == pytest.approx(tp / (tp + fp)) and m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["iou"] == pytest.approx(tp / (tp + fp + fn))
    assert m["iou"] == pytest.approx(m["f1"] / (2 - m["f1"]))        # pooled counts: IoU = F1 / (2 - F1)
    sup = cm.sum(1) / cm.sum()
    prec = np.diag(cm) / cm.sum(0)
    rec = np.diag(cm) / cm.sum(1)
    assert pc["weighted"]["precision"] == pytest.approx((sup * prec).sum())
    assert pc["weighted"]["recall"] == pytest.approx((sup * rec).sum())    # = accuracy
    assert pc["weighted"]["recall"] == pytest.approx(np.trace(cm) / cm.sum())
    ctp, cfp, cfn = cm[1:, 1:].sum(), cm[0, 1:].sum(), cm[1:, 0].sum()
    assert pc["mask_pooled"]["iou"] == pytest.approx(ctp / (ctp + cfp + cfn))


def test_top_layer_and_the_oracle_on_hand_made_columns():
    import torch

    from sgmagnet.references import TopLayerOracle, top_layer

    L = 38
    y = np.zeros((3, L), np.uint8)
    y[0, 20:24] = 1            # ice layer, levels 20-23 (top 23)
    y[0, 5:8] = 3              # liquid below
    y[1, 10:12] = 2            # mixed, top 11, two levels thick
    y[2, :] = 0                # clear column
    y[2, 0] = 255
    top, phase, thick = top_layer(y)
    assert top.tolist() == [23, 11, -1] and phase.tolist() == [1, 2, 0] and thick.tolist() == [4, 2, 0]
    oracle = TopLayerOracle(thickness_levels=4, error_km=0.0)
    pred = oracle({"prof": torch.from_numpy(y)}).numpy()
    want = np.zeros_like(pred)
    want[0, 20:24] = 1
    want[1, 8:12] = 2          # median thickness 4 below the true top
    assert np.array_equal(pred, want)
    # with an error, the layer moves but keeps its phase and thickness; deterministic per seed
    a = TopLayerOracle(4, 1.0, seed=3)({"prof": torch.from_numpy(np.repeat(y[:1], 200, 0))}).numpy()
    b = TopLayerOracle(4, 1.0, seed=3)({"prof": torch.from_numpy(np.repeat(y[:1], 200, 0))}).numpy()
    assert np.array_equal(a, b) and set(np.unique(a)) == {0, 1} and ((a == 1).sum(1) <= 4).all()
    tops = 37 - np.argmax((a == 1)[:, ::-1], axis=1)
    assert 0.5 < np.std(tops - 23) * 0.5 < 1.5            # about 1 km spread


def test_calibration_ece_on_hand_made_probabilities():
    from sgmagnet.metrics import Calibration

    cal = Calibration(bins=10)
    # 100 voxels predicted clear with p = 0.95 of which 95 are clear; then 100 at p(ice) = 0.75, 50 % ice
    p = torch.zeros(200, 4, 1)
    p[:100, 0, 0], p[:100, 1, 0] = 0.95, 0.05
    p[100:, 1, 0], p[100:, 0, 0] = 0.75, 0.25
    y = torch.zeros(200, 1, dtype=torch.uint8)
    y[95:100] = 1
    y[100:150] = 1
    cal.update(p, y)
    r = cal.report()
    # clear: bin 9 (p .95): 100 voxels, 95 clear -> |0.95 - 0.95| = 0; bin 2 (p .25): 100 voxels, 50 clear -> 0.25
    assert r["ece"]["clear"] == pytest.approx(0.5 * 0.25)
    # ice: bin 0 (p .05): 5 of 100 ice -> 0; bin 7 (p .75): 50 of 100 -> 0.25
    assert r["ece"]["ice"] == pytest.approx(0.5 * 0.25)
    assert r["reliability"]["ice"]["count"][7] == 100 and r["reliability"]["ice"]["frequency"][7] == pytest.approx(0.5)


def test_per_patch_confusions_sum_to_the_total():
    import torch

    from sgmagnet.metrics import ConfusionSet

    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 4, (50, 38), generator=g)
    true[true == 3] = 255
    pred = torch.randint(0, 4, (50, 38), generator=g)
    sample = torch.randint(0, 3, (50,), generator=g)
    cs = ConfusionSet()
    cs.update(true, pred, torch.zeros(50), torch.zeros(50))
    cs.update_patches(["a", "b", "c"], sample, true, pred)
    assert cs.patch_keys == ["a", "b", "c"]
    np.testing.assert_array_equal(np.sum(cs.patch_cms, 0), cs.total.numpy())
    for k in range(3):
        sel = sample == k
        np.testing.assert_array_equal(cs.patch_cms[k], confusion(true[sel], pred[sel]).numpy())


def test_bootstrap_macro_f1_intervals():
    from sgmagnet.metrics import bootstrap_macro_f1

    rng = np.random.default_rng(1)
    good = np.stack([np.diag(rng.integers(5, 20, 4)) + rng.integers(0, 3, (4, 4)) for _ in range(60)])
    bad = np.stack([rng.integers(1, 10, (4, 4)) for _ in range(60)])
    r = bootstrap_macro_f1(good, n_boot=300)
    assert r["low"] <= r["point"] <= r["high"] and r["high"] - r["low"] > 0
    assert abs(r["point"] - scores(good.sum(0))["macro"]["f1"]) < 1e-12
    d = bootstrap_macro_f1(good, n_boot=300, base=bad)       # paired difference: clearly positive
    assert d["low"] > 0 and d["p_le_0"] == 0.0
    same = bootstrap_macro_f1(good, n_boot=300, base=good)   # a model against itself: exactly 0
    assert same["low"] == same["high"] == 0.0
