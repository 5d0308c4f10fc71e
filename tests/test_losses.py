"""The reference loss (sgmagnet/losses.py) against hand computation and torch's cross_entropy."""
import math

import pytest
import torch
import torch.nn.functional as F

from kernels.reference import reference_log_probs, reference_softmax
from sgmagnet.losses import class_weights, dense_gated_ce, sparse_ce


def test_gated_probs_sum_to_one_and_match_definition():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 3, 3) * 5
    p = reference_softmax(x)
    assert torch.allclose(p.sum(1), torch.ones(2, 5, 3, 3), atol=1e-6)
    g, z = x[:, 0], x[:, 1:]
    assert torch.allclose(p[:, 0], torch.sigmoid(-g), atol=1e-6)
    assert torch.allclose(p[:, 1:], torch.sigmoid(g)[:, None] * torch.softmax(z, 1), atol=1e-6)


def test_extreme_logits_stay_finite():
    x = torch.tensor([1e4, -1e4, 1e4, -1e4]).view(1, 4, 1, 1, 1)
    lp = reference_log_probs(x)
    assert torch.isfinite(lp).all()
    assert lp[0, 0].item() < -1e3 and abs(lp[0, 2].item()) < 1e-6


def test_hand_computed_example():
    # one pixel, 2 levels. level 0: g=0, z=0 -> p(ice) = 1/2 * 1/3; level 1: label clear, g=log 3 -> p = 1/4
    logits = torch.zeros(1, 4, 2, 1, 1)
    logits[0, 0, 1] = math.log(3.0)
    idx = torch.tensor([[0, 0, 0]])
    prof = torch.tensor([[1, 0]], dtype=torch.uint8)
    w = torch.tensor([1.0, 2.0, 1.0, 1.0])
    want = (2.0 * math.log(6.0) + 1.0 * math.log(4.0)) / 3.0
    assert sparse_ce(logits, idx, prof, w).item() == pytest.approx(want, rel=1e-6)
    assert sparse_ce(logits, idx, prof).item() == pytest.approx((math.log(6.0) + math.log(4.0)) / 2, rel=1e-6)
    # an explicit (global) denominator replaces the local weight sum
    assert sparse_ce(logits, idx, prof, w, denominator=6.0).item() == pytest.approx(want * 3 / 6, rel=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_reduces_to_cross_entropy(weighted):
    """With g = logsumexp(a1..a3) - a0 and z = a1..a3 the gated softmax is softmax(a)."""
    torch.manual_seed(1)
    B, L, H, W = 2, 7, 5, 6
    a = torch.randn(B, 4, L, H, W) * 3
    logits = torch.cat([torch.logsumexp(a[:, 1:], 1, keepdim=True) - a[:, :1], a[:, 1:]], 1).requires_grad_()
    idx = torch.tensor([[0, 1, 2], [1, 4, 5], [1, 0, 0]])
    prof = torch.randint(0, 4, (3, L), dtype=torch.uint8)
    prof[0, :3] = 255
    w = torch.tensor([0.3, 1.5, 1.0, 2.0]) if weighted else None
    dense = torch.full((B, L, H, W), 255, dtype=torch.long)
    for n, (b, r, c) in enumerate(idx.tolist()):
        dense[b, :, r, c] = prof[n].long()
    want = F.cross_entropy(a, dense, weight=w, ignore_index=255)
    got = sparse_ce(logits, idx, prof, w)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert dense_gated_ce(logits, dense, w).item() == pytest.approx(want.item(), rel=1e-5)
    # gradients agree with autograd of the dense form
    g1, = torch.autograd.grad(got, logits)
    g2, = torch.autograd.grad(dense_gated_ce(logits, dense, w), logits)
    assert torch.allclose(g1, g2, atol=1e-6)


def test_all_ignored_gives_zero_and_zero_grad():
    logits = torch.randn(2, 4, 38, 4, 4, requires_grad=True)
    for idx, prof in ((torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 38, dtype=torch.uint8)),
                      (torch.tensor([[1, 2, 3]]), torch.full((1, 38), 255, dtype=torch.uint8))):
        loss = sparse_ce(logits, idx, prof, torch.ones(4))
        assert loss.item() == 0.0
        g, = torch.autograd.grad(loss, logits)
        assert torch.count_nonzero(g) == 0 and torch.isfinite(g).all()


def test_gradient_only_at_labelled_voxels():
    logits = torch.randn(2, 4, 6, 5, 5, requires_grad=True)
    idx = torch.tensor([[1, 3, 2]])
    prof = torch.tensor([[0, 1, 255, 3, 2, 0]], dtype=torch.uint8)
    g, = torch.autograd.grad(sparse_ce(logits, idx, prof), logits)
    nz = g.abs().sum(1).nonzero().tolist()
    assert nz == [[1, l, 3, 2] for l in (0, 1, 3, 4, 5)]


def test_focal_gamma_reduces_easy_examples():
    logits = torch.zeros(1, 4, 1, 1, 1)
    logits[0, 0] = -5.0  # confidently clear
    idx, prof = torch.tensor([[0, 0, 0]]), torch.tensor([[0]], dtype=torch.uint8)
    assert sparse_ce(logits, idx, prof, gamma=2.0) < 0.01 * sparse_ce(logits, idx, prof)


def test_class_weights():
    w = class_weights([0.89, 0.05, 0.04, 0.02])
    assert w.mean().item() == pytest.approx(1.0, rel=1e-6)
    ratio = (w[3] / w[0]).item()
    assert ratio == pytest.approx(math.sqrt(0.89 / 0.02), rel=1e-5)
    assert torch.isfinite(class_weights([0.9, 0.1, 0.0, 0.0])).all()
    with pytest.raises(ValueError):
        class_weights([0.5, 0.5])


def test_softmax_form_is_plain_cross_entropy():
    from sgmagnet.losses import argmax

    torch.manual_seed(2)
    a = torch.randn(2, 4, 5, 3, 3, requires_grad=True)
    idx = torch.tensor([[0, 1, 2], [1, 0, 0]])
    prof = torch.randint(0, 4, (2, 5), dtype=torch.uint8)
    dense = torch.full((2, 5, 3, 3), 255, dtype=torch.long)
    for n, (b, r, c) in enumerate(idx.tolist()):
        dense[b, :, r, c] = prof[n].long()
    w = torch.tensor([0.5, 1.0, 2.0, 1.5])
    got = sparse_ce(a, idx, prof, w, form="softmax")
    assert got.item() == pytest.approx(F.cross_entropy(a, dense, weight=w, ignore_index=255).item(), rel=1e-5)
    assert torch.equal(argmax(a, form="softmax"), a.argmax(1))
    with pytest.raises(ValueError):
        sparse_ce(a, idx, prof, form="sigmoid")


def test_pool_profiles_majority_ties_and_empty_bins():
    from sgmagnet.losses import level_bins, pool_profiles

    p = torch.tensor([[1, 1, 3, 3, 255, 255, 0, 2],
                      [0, 0, 0, 2, 255, 1, 255, 255]], dtype=torch.uint8)
    assert pool_profiles(p, 4).tolist() == [[1, 3, 255, 2], [0, 2, 1, 255]]   # tie 0/2 -> mixed (rarer)
    assert pool_profiles(p, 2).tolist() == [[1, 2], [0, 1]]                    # tie ice/liquid -> ice
    assert pool_profiles(p, 8).tolist() == p.tolist()
    assert level_bins(38, 10)[:3] == [(0, 4), (3, 8), (7, 12)] and level_bins(38, 19)[-1] == (36, 38)
    bins = level_bins(38, 10)                   # the bins of adaptive average pooling (the level codes' pooling)
    x = torch.randn(1, 1, 38)
    ref = torch.nn.functional.adaptive_avg_pool1d(x, 10)[0, 0]
    assert torch.allclose(torch.stack([x[0, 0, a:b].mean() for a, b in bins]), ref)


def test_first_max_is_torch_argmax_with_ties_and_nans():
    """losses.first_max (the CPU argmax of prediction and evaluation) equals torch.argmax: the first maximum
    wins a tie, a NaN counts as the largest (the first NaN wins), along any dim."""
    from sgmagnet.losses import argmax, first_max
    from kernels.reference import reference_argmax

    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, 7)
    x[0, :, 0] = 1.0
    x[1, 2, 1, 2, 3] = x[1, 3, 1, 2, 3] = float("nan")
    x[2, 0, 2, 2] = float("nan")
    for d in (1, 2, 4):
        assert torch.equal(first_max(x, d), x.argmax(d)), d
    assert torch.equal(argmax(x), reference_argmax(x))
    assert torch.equal(argmax(x, form="softmax"), x.argmax(1))
