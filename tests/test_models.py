import pytest
import torch

from sgmagnet.losses import sparse_ce
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
    sparse_ce(y, idx, prof).backward()
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


# ---- label-sparse columns: model(x, geom, columns=idx) == model(x, geom)[b, :, :, row, col] ----------------

def _columns_case(b=2, h=32, n=40, seed=1):
    """float64 inputs with NaN pixels and bands, geometry, and n unique random columns (corners included)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, h, h, generator=g, dtype=torch.float64)
    x[0, 5, :4, :4] = float("nan")
    x[1, :, 7, 9] = float("nan")                      # a pixel with no valid band
    geom = torch.rand(b, 2, h, h, generator=g, dtype=torch.float64) * 80
    flat = torch.randperm(b * h * h, generator=g)[:n]
    idx = torch.stack([flat // (h * h), flat % (h * h) // h, flat % h], 1)
    idx = torch.cat([idx, torch.tensor([[0, 0, 0], [1, h - 1, h - 1], [1, 7, 9]])]).unique(dim=0)
    idx = idx[torch.randperm(len(idx), generator=g)]  # any order
    return x, geom, idx


MODEL_VARIANTS = [(n, {}) for n in sorted(MODELS)] + [
    ("sgmagnet", dict(height="static")), ("sgmagnet", dict(scales=(1,))), ("sgmagnet", dict(scales=(1, 2))),
    ("sgmagnet", dict(gating=False))]


@pytest.mark.parametrize("name,opts", MODEL_VARIANTS, ids=lambda v: str(v).replace(" ", ""))
def test_columns_equal_the_dense_gather_values_and_gradients(name, opts):
    torch.manual_seed(0)
    m = build_model(name, "tiny", **opts).double()
    x, geom, idx = _columns_case()
    dense = m(x, geom)
    ref = dense[idx[:, 0], :, :, idx[:, 1], idx[:, 2]]
    cols = m(x, geom, columns=idx)
    assert cols.shape == (len(idx), 4, 38)
    torch.testing.assert_close(cols, ref, rtol=1e-10, atol=1e-10)
    w = torch.randn(ref.shape, dtype=torch.float64)        # a generic downstream function of the columns
    g_ref = torch.autograd.grad((ref * w).sum() + ref.square().sum(), list(m.parameters()), allow_unused=True)
    g_col = torch.autograd.grad((cols * w).sum() + cols.square().sum(), list(m.parameters()), allow_unused=True)
    for (k, _), a, c in zip(m.named_parameters(), g_ref, g_col):
        assert (a is None) == (c is None), k
        if a is not None:
            torch.testing.assert_close(c, a, rtol=1e-9, atol=1e-10, msg=k)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_columns_empty_and_bad_index(name):
    m = build_model(name, "tiny")
    x = torch.randn(1, 16, 32, 32)
    y = m(x, columns=torch.zeros(0, 3, dtype=torch.long))
    assert y.shape == (0, 4, 38)
    y.sum().backward()                                    # an unlabelled batch still has a (zero) graph
    with pytest.raises(ValueError, match="out of range"):
        m(x, columns=torch.tensor([[0, 32, 0]]))
    with pytest.raises(ValueError, match="out of range"):
        m(x, columns=torch.tensor([[1, 0, 0]]))
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        m(x, columns=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="integer"):
        m(x, columns=torch.zeros(2, 3))


def test_sgmagnet_inference_chunks_equal_the_training_forward(monkeypatch):
    """Without autograd SGMAGNet's dense forward runs the column stage over chunks (bounded memory): it must
    give the training forward's volume."""
    import sgmagnet.models.sgmagnet as sg

    m = build_model("sgmagnet", "tiny").double()
    x, geom, _ = _columns_case(h=16)
    ref = m(x, geom)
    monkeypatch.setattr(sg, "DENSE_CHUNK", 100)           # 2 * 256 columns -> 6 chunks, the last one short
    with torch.no_grad():
        torch.testing.assert_close(m(x, geom), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("size", [(38, 32, 32), (38, 12, 20), (20, 7, 5)])
def test_sample_volume_is_trilinear_interpolation_at_the_columns(size):
    import torch.nn.functional as F

    from sgmagnet.models.common import sample_volume

    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, 3, 10, 8, 5, generator=g, dtype=torch.float64)
    L, H, W = size
    r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    idx = torch.stack([torch.arange(2).repeat_interleave(H * W), r.reshape(-1).repeat(2), c.reshape(-1).repeat(2)], 1)
    dense = F.interpolate(v, size=size, mode="trilinear")
    torch.testing.assert_close(sample_volume(v, idx, size), dense[idx[:, 0], :, :, idx[:, 1], idx[:, 2]])


@pytest.mark.parametrize("name", ["sgmagnet", "unet", "transformer"])
def test_training_with_columns_equals_dense_training_then_gather(name):
    """A few AdamW steps in float64: the parameters after column training equal those after dense training
    with the loss gathering the same columns."""
    from sgmagnet.losses import SparseLoss

    x, geom, idx = _columns_case(n=60)
    prof = torch.randint(0, 4, (len(idx), 38), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    prof[::5, 20:] = 255
    loss = SparseLoss(weights=[0.5, 1.0, 2.0, 1.5]).double()
    out = {}
    for path in ("dense", "columns"):
        torch.manual_seed(0)
        m = build_model(name, "tiny").double()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        for _ in range(3):
            y = m(x, geom, columns=idx) if path == "columns" else m(x, geom)
            opt.zero_grad()
            loss(y, idx, prof).backward()
            opt.step()
        out[path] = m.state_dict()
    for k, v in out["dense"].items():
        torch.testing.assert_close(out["columns"][k], v, rtol=1e-8, atol=1e-10, msg=k)


def test_sgmagnet_v2_column_flops_are_a_fraction_of_the_dense_volume():
    m = build_model("sgmagnet", "demo")
    assert flops_per_sample(m, 64, columns=True) < 0.3 * flops_per_sample(m, 64)


def test_train_step_bench_runs_both_paths(capsys):
    """hpc/bench/train_step.py: one row per model and path, the column row with its speed-up."""
    import hpc.bench.train_step as bench      # importable by name: each row runs in a spawned process
    assert bench.main(["--models", "sgmagnet", "--size", "tiny", "--patch", "32", "--batch", "2",
                       "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("sgmagnet")]
    assert [r[1] for r in rows] == ["dense", "columns"] and rows[1][-2].endswith("x"), out
    with pytest.raises(SystemExit):
        bench.main(["--paths", "sparse"])


def test_sgmagnet_aux_heads_at_columns_equal_dense_coarse_heads():
    """aux=True returns the same full-resolution logits plus, per coarse scale s, the phase-gated head applied
    to the coarse volume at (b, row // s, col // s): equal to the head over every coarse voxel, gathered."""
    torch.manual_seed(0)
    m = build_model("sgmagnet", "tiny", aux=True).double().eval()
    x, g = torch.randn(2, 16, 24, 24, dtype=torch.float64), torch.rand(2, 2, 24, 24, dtype=torch.float64) * 80
    idx = torch.tensor([[0, 0, 0], [1, 23, 23], [0, 5, 17], [1, 12, 3]])
    out, aux = m(x, g, columns=idx, aux=True)
    torch.testing.assert_close(out, m(x, g, columns=idx))
    _, _, _, _, vols = m.encode(x, g)
    for k, a in zip((1, 2), aux):
        s = m.scales[k]
        v = vols[k]                                                     # [B, C, n, h, w]
        B, C, n, h, w = v.shape
        dense = m.aux[k - 1](v.permute(0, 3, 4, 1, 2).reshape(-1, C, n)).view(B, h, w, 4, n)
        torch.testing.assert_close(a, dense[idx[:, 0], idx[:, 1] // s, idx[:, 2] // s])
        assert a.shape == (4, 4, -(-38 // s))
    with pytest.raises(ValueError, match="aux=True needs"):
        build_model("sgmagnet", "tiny")(x.float(), g.float(), columns=idx, aux=True)
    with pytest.raises(ValueError, match="coarse scale"):
        build_model("sgmagnet", "tiny", aux=True, scales=[1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_columns_on_nan_tracks_give_finite_logits(name):
    """A track over a patch whose bands are all missing (NaN: off-disk, all-fill scene) or whose geometry is
    NaN at the labelled columns: finite logits and a finite loss and gradient -- never a NaN that would stop a
    run ("loss is nan") or poison the weights."""
    torch.manual_seed(0)
    m = build_model(name, "tiny")
    x = torch.randn(2, 16, 32, 32)
    x[1] = float("nan")                                   # the whole second patch is missing
    geom = torch.rand(2, 2, 32, 32) * 60
    geom[0, :, 5, :] = float("nan")                       # a row of missing geometry under the track
    cols = torch.tensor([[0, 5, 3], [0, 5, 4], [1, 7, 7], [1, 0, 31]])
    y = m(x, geom, columns=cols)
    assert y.shape == (4, 4, 38) and torch.isfinite(y).all()
    prof = torch.randint(0, 4, (4, 38), dtype=torch.uint8)
    from sgmagnet.losses import compact_view

    v, i = compact_view(y)
    loss = sparse_ce(v, i, prof)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
