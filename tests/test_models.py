import pytest
import torch

from sgmagnet.losses import gated_sparse_ce
from sgmagnet.models import MODELS, build_model, flops_per_sample, n_parameters


def _batch(b=2, h=32):
    torch.manual_seed(0)
    x = torch.randn(b, 16, h, h)
    x[0, 5, :4, :4] = float("nan")          # missing data is masked inside the models
    geom = torch.rand(b, 2, h, h) * 80
    idx = torch.stack([torch.arange(b).repeat_interleave(h), torch.arange(h).repeat(b), torch.arange(h).repeat(b)], 1)
    prof = torch.randint(0, 4, (b * h, 38), dtype=torch.uint8)
    return x, geom, idx, prof


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shape_and_gradients_reach_every_parameter(name):
    m = build_model(name, "tiny")
    x, geom, idx, prof = _batch()
    y = m(x, geom)
    assert y.shape == (2, 4, 38, 32, 32) and torch.isfinite(y).all()
    gated_sparse_ce(y, idx, prof).backward()
    dead = [k for k, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not dead, f"no gradient reaches {dead}"
    assert m(x).shape == y.shape  # geometry is optional


@pytest.mark.parametrize("opts", [dict(height="static"), dict(scales=(1,)), dict(scales=(1, 2)), dict(gating=False)])
def test_sgmagnet_ablations_build_and_run(opts):
    m = build_model("sgmagnet", "tiny", **opts)
    x, geom, _, _ = _batch(1)
    assert m(x, geom).shape == (1, 4, 38, 32, 32)


def test_registry_errors_and_counts():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet")
    with pytest.raises(ValueError, match="unknown size"):
        build_model("unet", "huge")
    with pytest.raises(ValueError, match="bad option"):
        build_model("unet", "tiny", depth=3)
    with pytest.raises(ValueError, match="divisible"):
        build_model("unet", "tiny")(torch.zeros(1, 16, 36, 36))
    m = build_model("unet", "tiny")
    assert n_parameters(m) > 0 and flops_per_sample(m, 32) > 0


def test_nan_input_equals_zero_input_with_mask():
    """The stem zeroes NaNs: the output may not contain NaN and may not depend on the NaN payload."""
    m = build_model("segnet", "tiny").eval()
    x, geom, _, _ = _batch(1)
    y1 = m(x, geom)
    x2 = x.clone()
    x2[torch.isnan(x2)] = float("inf")
    assert torch.isfinite(y1).all() and torch.equal(y1, m(x2, geom))
