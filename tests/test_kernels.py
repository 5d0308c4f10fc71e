"""Triton kernels vs their pure-PyTorch references (in the same op files, kernels/softmax.py and kernels/sparse_ce.py). Without a GPU they run under
TRITON_INTERPRET=1 (set in conftest.py before triton is imported)."""
import os

import pytest
import torch

import kernels
from ci import require
from kernels.reference import reference_argmax as ref_argmax
from kernels.reference import reference_softmax as ref_probs
from kernels.reference import reference_sparse_ce as ref_ce

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _kernels_usable():
    """Skips only outside CI: under CI=true a kernel test that cannot run is a failure (conftest.py sets
    TRITON_INTERPRET=1 on machines without CUDA, overriding any other value)."""
    require(kernels.usable_on(DEV), f"Triton kernels on {DEV} (CUDA or TRITON_INTERPRET=1)")

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2e-2, atol=2e-3),
       torch.float16: dict(rtol=5e-3, atol=5e-4)}


def make(B, L, H, W, N, dtype, scale=3.0, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, 4, L, H, W, generator=g) * scale).to(dtype)
    pix = torch.randperm(B * H * W, generator=g)[:N]                # unique pixels, as the builder writes
    index = torch.stack([pix // (H * W), (pix // W) % H, pix % W], 1)
    prof = torch.randint(0, 4, (N, L), generator=g, dtype=torch.uint8)
    prof[torch.rand(N, L, generator=g) < ignore_frac] = 255
    return logits.to(DEV), index.to(DEV), prof.to(DEV)


def both(logits, index, prof, w, denominator=None, upstream=1.0):
    out = []
    for fn in (kernels.gated_sparse_ce, ref_ce):
        x = logits.detach().clone().requires_grad_()
        loss = fn(x, index, prof, w, denominator)
        (loss * upstream).backward()
        out.append((loss.detach(), x.grad))
    return out


CASES = [  # B, L, H, W, N
    (1, 38, 7, 5, 9), (2, 38, 16, 16, 40), (3, 5, 9, 13, 50), (2, 1, 3, 3, 4), (1, 38, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_and_grad_match_reference(case, dtype, weighted):
    B, L, H, W, N = case
    logits, index, prof = make(B, L, H, W, N, dtype)
    w = torch.tensor([0.3, 1.4, 1.1, 1.2], device=DEV) if weighted else None
    (lk, gk), (lr, gr) = both(logits, index, prof, w, upstream=3.0)
    assert lk.dtype == torch.float32 and gk.dtype == dtype
    torch.testing.assert_close(lk, lr, rtol=1e-5, atol=1e-6)  # fp32 math on the same inputs
    torch.testing.assert_close(gk.float(), gr.float(), **TOL[dtype])


def test_extreme_logits_finite():
    logits, index, prof = make(2, 38, 8, 8, 20, torch.float32, scale=1.0)
    logits = torch.where(logits > 0, 1e4, -1e4)
    (lk, gk), (lr, gr) = both(logits, index, prof, None)
    assert torch.isfinite(lk) and torch.isfinite(gk).all()
    torch.testing.assert_close(lk, lr, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(gk, gr)


@pytest.mark.parametrize("how", ["empty", "all_ignored"])
def test_no_label_gives_zero_and_zero_grad(how):
    logits, index, prof = make(2, 38, 6, 6, 5, torch.float32)
    if how == "empty":
        index, prof = index[:0], prof[:0]
    else:
        prof[:] = 255
    (lk, gk), _ = both(logits, index, prof, None)
    assert lk.item() == 0.0 and torch.count_nonzero(gk) == 0


def test_single_label_and_global_denominator():
    logits, index, prof = make(1, 38, 4, 4, 1, torch.float32, ignore_frac=0.0)
    prof[:] = 255
    prof[0, 7] = 2
    (lk, gk), (lr, gr) = both(logits, index, prof, None)
    torch.testing.assert_close(lk, lr)
    assert torch.count_nonzero(gk.abs().sum(1)) == 1
    logits, index, prof = make(2, 38, 8, 8, 30, torch.float32)
    den = torch.tensor(123.0, device=DEV)
    (lk, gk), (lr, gr) = both(logits, index, prof, torch.tensor([1.0, 2.0, 3.0, 4.0], device=DEV), den)
    torch.testing.assert_close(lk, lr)
    torch.testing.assert_close(gk, gr)


def test_non_contiguous_logits_and_input_untouched():
    base, index, prof = make(2, 38, 10, 12, 25, torch.float32)
    # a channels-last-like permuted view with the same logical shape
    nc = base.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
    assert not nc.is_contiguous()
    before = nc.detach().clone()
    x = nc.detach().requires_grad_()
    loss = kernels.gated_sparse_ce(x, index, prof)
    loss.backward()
    assert torch.equal(x.detach(), before)
    xr = before.clone().requires_grad_()
    ref_ce(xr, index, prof).backward()
    torch.testing.assert_close(loss.detach(), ref_ce(before, index, prof))
    torch.testing.assert_close(x.grad, xr.grad)


def test_deterministic():
    logits, index, prof = make(3, 38, 16, 16, 200, torch.float32)
    a = [kernels.gated_sparse_ce(logits, index, prof).item() for _ in range(3)]
    assert a[0] == a[1] == a[2]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 4, 38, 7, 5), (2, 4, 3, 9, 11), (3, 4, 1, 1, 1)])
def test_softmax_matches_reference(shape, dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 4).to(dtype).to(DEV)
    xk = x.detach().clone().requires_grad_()
    xr = x.detach().clone().float().requires_grad_()
    pk = kernels.gated_softmax(xk)
    pr = ref_probs(xr)
    assert pk.dtype == dtype and pk.shape == x.shape
    torch.testing.assert_close(pk.float(), pr, **TOL[dtype])
    up = torch.randn(shape, generator=g).to(DEV)
    (pk.float() * up).sum().backward()
    (pr * up).sum().backward()
    torch.testing.assert_close(xk.grad.float(), xr.grad, **TOL[dtype])
    assert kernels.gated_softmax(x, out_dtype=torch.float32).dtype == torch.float32
    # argmax: int8, equal to the reference wherever the top two classes are not a near tie
    a = kernels.gated_argmax(x)
    assert a.dtype == torch.int8 and a.shape == (shape[0],) + shape[2:]
    top2 = pr.detach().topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-2
    assert torch.equal(a.long()[clear], ref_argmax(x.float())[clear])


def test_softmax_extreme_and_noncontiguous():
    x = torch.tensor([1e4, -1e4, 3e3, -2e2, -1e4, 1e4, 1e4, -1e4]).view(2, 4, 1, 1, 1).to(DEV)
    p = kernels.gated_softmax(x)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p, ref_probs(x))
    y = torch.randn(2, 6, 5, 4, 4, device=DEV)[:, 1:5]
    torch.testing.assert_close(kernels.gated_softmax(y), ref_probs(y))


def test_shape_errors():
    with pytest.raises(ValueError):
        kernels.gated_sparse_ce(torch.zeros(1, 3, 2, 2, 2), torch.zeros(1, 3, dtype=torch.long),
                                torch.zeros(1, 2, dtype=torch.uint8))
    with pytest.raises(TypeError):
        kernels.gated_sparse_ce(torch.zeros(1, 4, 2, 2, 2), torch.zeros(1, 3, dtype=torch.long),
                                torch.zeros(1, 2, dtype=torch.long))


def test_training_loss_dispatch():
    from sgmagnet.losses import SparseLoss

    logits, index, prof = make(2, 38, 8, 8, 20, torch.float32)
    w = torch.tensor([0.5, 1.0, 1.5, 2.0])
    a = SparseLoss(w, fused=True).to(DEV)(logits, index, prof)
    b = SparseLoss(w, fused=False).to(DEV)(logits, index, prof)
    torch.testing.assert_close(a, b)
    assert SparseLoss(w, fused=True).fused and not SparseLoss(w, fused=True, gamma=2.0).fused   # focal: reference


def test_loss_impl_is_resolved_once_by_the_runtime():
    """loss.impl -> Runtime.fused: auto = the kernels on CUDA only; torch never; triton where they can run (CPU
    only under the interpreter), else a ConfigError (a ValueError) naming loss.impl. (No sgmagnet.config import:
    this file also runs on the lent GPU machine, whose python has torch and triton only.)"""
    from sgmagnet.runtime import fused_kernels

    cpu = torch.device("cpu")
    assert fused_kernels("auto", cpu) is False and fused_kernels("torch", cpu) is False
    assert fused_kernels("auto", torch.device("cuda", 0)) is True
    if kernels.interpreting():                           # the CPU tests run under TRITON_INTERPRET=1
        assert fused_kernels("triton", cpu) is True
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        with pytest.raises(ValueError, match="loss.impl=triton"):
            fused_kernels("triton", cpu)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_duplicate_index_rows_sum_their_gradients(dtype):
    """Duplicate (b, row, col) rows are separate terms of the loss: their gradients add up (the reference
    gathers with autograd, which sums), never last-writer-wins."""
    logits, index, prof = make(2, 38, 6, 7, 12, dtype)
    index = torch.cat([index, index[:5], index[2:3]])          # 5 pixels twice, one three times
    prof = torch.cat([prof, torch.flip(prof[:5], [1]), prof[2:3]])
    (lk, gk), (lr, gr) = both(logits, index, prof, torch.tensor([0.5, 1.5, 1.0, 2.0], device=DEV), upstream=2.0)
    torch.testing.assert_close(lk, lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gk.float(), gr.float(), **TOL[dtype])


def test_duplicates_deterministic():
    logits, index, prof = make(2, 38, 6, 6, 20, torch.float32)
    index, prof = torch.cat([index, index.flip(0)]), torch.cat([prof, prof])
    grads = [both(logits, index, prof, None)[0][1] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_softmax_and_argmax_empty_batch():
    x = torch.zeros(0, 4, 38, 5, 5, device=DEV, requires_grad=True)
    p = kernels.gated_softmax(x)
    assert p.shape == x.shape
    p.sum().backward()
    assert x.grad.shape == x.shape
    assert kernels.gated_argmax(x.detach()).shape == (0, 38, 5, 5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_launch_on_the_tensors_device():
    logits, index, prof = make(1, 38, 8, 8, 10, torch.float32)
    with torch.cuda.device(0):
        x = logits.to("cuda:1").requires_grad_()
        loss = kernels.gated_sparse_ce(x, index.to("cuda:1"), prof.to("cuda:1"))
        loss.backward()
        assert loss.device == x.grad.device == torch.device("cuda", 1)
        torch.testing.assert_close(kernels.gated_softmax(x.detach()).cpu(), ref_probs(logits.cpu()))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 40e9,
                    reason="needs a GPU with >= 40 GB (a volume past 2^31 elements)")
def test_offsets_past_int32_on_gpu():
    """A [1, 4, 38, 3800, 3800] bf16 volume has 2.2e9 elements: channel offsets 2*s_c, 3*s_c pass 2^31."""
    H = W = 3800
    x = torch.zeros(1, 4, 38, H, W, dtype=torch.bfloat16, device="cuda")
    index = torch.tensor([[0, H - 1, W - 1], [0, 0, 0]], device="cuda")
    prof = torch.full((2, 38), 3, dtype=torch.uint8, device="cuda")
    x[0, 3, :, H - 1, W - 1] = 5.0                              # liquid logit of the last column
    x[0, 0, :, H - 1, W - 1] = 5.0                              # cloudy
    xr = x[:, :, :, [H - 1, 0]][..., [W - 1, 0]].float()        # the two columns, small
    xs = x.requires_grad_()
    loss = kernels.gated_sparse_ce(xs, index, prof)
    ref = ref_ce(xr, torch.tensor([[0, 0, 0], [0, 1, 1]], device="cuda"), prof)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-5)
    loss.backward()
    assert float(xs.grad[0, 3, 0, H - 1, W - 1]) != 0.0
    del xs, x
    y = torch.zeros(1, 4, 38, H, W, dtype=torch.bfloat16, device="cuda")
    y[0, 0, -1, H - 1, W - 1] = 10.0
    a = kernels.gated_argmax(y)
    assert int(a[0, -1, H - 1, W - 1]) in (1, 2, 3) and int(a[0, 0, 0, 0]) in (0, 1, 2, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N", [1, 37, 300])
def test_loss_on_the_compact_column_layout(N, dtype):
    """A column forward's [N, 4, L] output goes to the kernel as the [1, 4, L, 1, N] view (no copy) with index
    (0, 0, n): loss and gradient equal the reference on the same columns, and the training loss component
    dispatches it the same way."""
    from sgmagnet.losses import SparseLoss, compact_view

    g = torch.Generator().manual_seed(N)
    cols = (torch.randn(N, 4, 38, generator=g) * 3).to(dtype).to(DEV)
    prof = torch.randint(0, 4, (N, 38), generator=g, dtype=torch.uint8).to(DEV)
    prof[:, 30:] = 255
    w = torch.tensor([0.3, 1.4, 1.1, 1.2], device=DEV)
    view, index = compact_view(cols)
    assert view.shape == (1, 4, 38, 1, N) and view.data_ptr() == cols.data_ptr()
    grads = []
    for fn in (kernels.gated_sparse_ce, ref_ce):
        c = cols.detach().clone().requires_grad_()
        v, i = compact_view(c)
        loss = fn(v, i, prof, w)
        loss.backward()
        grads.append((loss.detach(), c.grad))
    (lk, gk), (lr, gr) = grads
    torch.testing.assert_close(lk, lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gk.float(), gr.float(), **TOL[dtype])
    loss_fn = SparseLoss(w, fused=True).to(DEV)
    torch.testing.assert_close(loss_fn(cols.float(), None, prof), lr, rtol=1e-5, atol=1e-6)
    c = cols.detach().clone().requires_grad_()      # the distinct-rows fast path (what SparseLoss uses here)
    v, i = compact_view(c)
    fast = kernels.gated_sparse_ce(v, i, prof, w, unique_index=True)
    fast.backward()
    torch.testing.assert_close(fast.detach(), lr, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.grad.float(), gr.float(), **TOL[dtype])
    c2 = cols.detach().float().clone().requires_grad_()
    loss_fn(c2, None, prof).backward()
    torch.testing.assert_close(c2.grad, gr.float(), **TOL[dtype])


def test_unique_index_fast_path_needs_distinct_rows():
    """With duplicate rows the default path sums their gradients (as the definition says); the fast path is
    only for distinct rows -- so SparseLoss uses it for the compact layout alone."""
    x = torch.randn(1, 4, 38, 3, 3, device=DEV, requires_grad=True)
    idx = torch.tensor([[0, 1, 1], [0, 1, 1]], device=DEV)
    prof = torch.zeros(2, 38, dtype=torch.uint8, device=DEV)
    kernels.gated_sparse_ce(x, idx, prof).backward()
    ref = x.detach().clone().requires_grad_()
    ref_ce(ref, idx, prof).backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- rows and labels the kernel cannot index
def _damage(kind, index, prof, shape):
    """One bad row of each kind (row 1), the rest as made: (index, prof, rows that stay valid)."""
    B, _, _, H, W = shape
    index, prof = index.clone(), prof.clone()
    bad = {"b-negative": (-1, 0, 0), "b-too-big": (B, 0, 0), "row-too-big": (0, H, 0), "col-negative": (0, 0, -5),
           "col-too-big": (0, 0, W), "huge": (2 ** 40, 2 ** 41, 2 ** 42), "int64-min": (-2 ** 63, 0, 0)}
    if kind in bad:
        index[1] = torch.tensor(bad[kind])
    elif kind == "label-7":
        prof[1, 3] = 7
    elif kind == "label-254":
        prof[1, :] = 254
    return index, prof


BAD_ROWS = ["b-negative", "b-too-big", "row-too-big", "col-negative", "col-too-big", "huge", "int64-min",
            "label-7", "label-254"]


@pytest.mark.parametrize("kind", BAD_ROWS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_invalid_rows_are_masked_counted_and_never_read(kind, dtype):
    """A row outside the logits or a label outside {0..3, 255}: never read or written, no loss, weight or
    gradient; counted in `invalid` (kernel and reference alike), and a ValueError naming it without one. The
    logits are a view inside a NaN-filled buffer: any read outside them would turn the loss into NaN."""
    B, L, H, W, N = 2, 38, 6, 7, 12
    big = torch.full((B + 2, 4, L, H + 2, W + 2), float("nan"), dtype=dtype, device=DEV)
    logits, index, prof = make(B, L, H, W, N, dtype, ignore_frac=0.0)
    big[1:-1, :, :, 1:-1, 1:-1] = logits
    view = big[1:-1, :, :, 1:-1, 1:-1]
    index, prof = _damage(kind, index, prof, view.shape)
    clean = prof.clone()
    rowbad = kind not in ("label-7", "label-254")
    if rowbad:
        clean[1] = 255
    else:
        clean[(clean > 3) & (clean != 255)] = 255
    w = torch.tensor([0.3, 1.4, 1.1, 1.2], device=DEV)
    want = ref_ce(logits.float(), torch.where(clean[:, :1] == 255, 0, index) if rowbad else index, clean, w)
    for fn in (kernels.gated_sparse_ce, ref_ce):
        x = view.detach().clone().requires_grad_() if fn is ref_ce else view.detach().requires_grad_()
        count = torch.zeros((), device=DEV)
        loss = fn(x, index, prof, w, invalid=count)
        loss.backward()
        assert int(count) == int(((prof[1] != 255) if rowbad else (prof > 3) & (prof != 255)).sum()), fn  # voxels
        assert torch.isfinite(loss), f"{fn.__name__} read outside the logits"
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
        assert torch.isfinite(x.grad).all()
        with pytest.raises(ValueError, match="outside"):
            fn(view.detach(), index, prof, w)


@pytest.mark.parametrize("unique", [False, True])
def test_duplicate_rows_with_unique_index_are_refused(unique):
    """unique_index=True promises distinct rows; the promise is checked in the forward pass (an integer atomic
    per row): a repeat is counted (the racy backward is never trusted silently). Without the flag duplicates
    are legal and summed."""
    logits, index, prof = make(2, 38, 6, 7, 10, torch.float32)
    index = torch.cat([index, index[3:5]])
    prof = torch.cat([prof, prof[3:5]])
    for fn in (kernels.gated_sparse_ce, ref_ce):
        count = torch.zeros((), device=DEV)
        fn(logits, index, prof, unique_index=unique, invalid=count)
        assert int(count) == (2 if unique else 0), fn
        if unique:
            with pytest.raises(ValueError, match="repeated index row"):
                fn(logits, index, prof, unique_index=True)


def test_coordinates_past_2_pow_21_are_distinct_pixels():
    """The backward's duplicate-summing sort key is the linear pixel number (b*H*W + row*W + col): columns past
    2^21 no longer alias other pixels (the old packed key assumed b, row, col < 2^21 without checking)."""
    W = 2 ** 21 + 3
    x = torch.randn(1, 4, 1, 2, W, device=DEV)
    index = torch.tensor([[0, 0, 2 ** 21 + 1], [0, 1, 1], [0, 1, 1]], device=DEV)   # old key: row 0 col 2^21+1 == row 1 col 1
    prof = torch.tensor([[1], [2], [3]], dtype=torch.uint8, device=DEV)
    xk = x.clone().requires_grad_()
    kernels.gated_sparse_ce(xk, index, prof).backward()
    cols = x[:, :, :, [0, 1], :][..., [2 ** 21 + 1, 1]]                               # the two pixels, small
    xr = cols.clone().requires_grad_()
    ref_ce(xr, torch.tensor([[0, 0, 0], [0, 1, 1], [0, 1, 1]], device=DEV), prof).backward()
    torch.testing.assert_close(xk.grad[0, :, :, 0, 2 ** 21 + 1], xr.grad[0, :, :, 0, 0])
    torch.testing.assert_close(xk.grad[0, :, :, 1, 1], xr.grad[0, :, :, 1, 1])


LAYOUTS = {
    "channels-last": lambda x: x.contiguous(memory_format=torch.channels_last_3d),
    "level-slice": lambda x: torch.cat([x, x[:, :, :3]], 2)[:, :, : x.shape[2]],
    "width-slice": lambda x: torch.cat([x[..., :1], x], 4)[..., 1:],
    "permuted": lambda x: x.permute(0, 1, 2, 4, 3).contiguous().permute(0, 1, 2, 4, 3),
    "batch-step": lambda x: torch.stack([x, torch.zeros_like(x)], 1).flatten(0, 1)[::2],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_layouts_without_a_copy(layout, dtype):
    """Softmax, its backward, argmax and the loss read any layout through its strides: the results equal the
    contiguous ones, the probabilities come back in the logits' layout when it is dense, and no copy of the
    logits is made (the only allocation the size of the logits is the output itself)."""
    g = torch.Generator().manual_seed(7)
    base = (torch.randn(2, 4, 5, 6, 7, generator=g) * 3).to(dtype).to(DEV)
    x = LAYOUTS[layout](base)
    torch.testing.assert_close(x, base)
    assert not x.is_contiguous()
    xk = x.detach().requires_grad_()
    p = kernels.gated_softmax(xk)
    torch.testing.assert_close(p.float(), ref_probs(base.float()), **TOL[dtype])
    if layout in ("channels-last", "permuted"):           # dense layouts are kept; views of a larger buffer are not
        assert p.stride() == x.stride()
    else:
        assert p.is_contiguous()
    up = torch.randn(p.shape, generator=g).to(DEV)
    (p.float() * up).sum().backward()
    xr = base.detach().float().requires_grad_()
    (ref_probs(xr) * up).sum().backward()
    torch.testing.assert_close(xk.grad.float(), xr.grad, **TOL[dtype])
    a = kernels.gated_argmax(x)
    assert torch.equal(a, kernels.gated_argmax(base.contiguous()))
    _, index, prof = make(2, 5, 6, 7, 20, dtype)
    torch.testing.assert_close(kernels.gated_sparse_ce(x, index, prof), ref_ce(base, index, prof), rtol=1e-5, atol=1e-6)
    if DEV == "cuda":                                     # no hidden copy: peak memory stays below one more volume
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        kernels.gated_argmax(x)
        assert torch.cuda.max_memory_allocated() - before < x.numel() * x.element_size()


def test_softmax_of_more_than_5_dims():
    x = torch.randn(2, 4, 3, 2, 5, 4, device=DEV).transpose(-1, -2)
    torch.testing.assert_close(kernels.gated_softmax(x), ref_probs(x))
    assert torch.equal(kernels.gated_argmax(x), kernels.gated_argmax(x.contiguous()))


def test_loss_is_a_registered_custom_op():
    """The fused loss runs through torch.library ops (triton_op), with autograd registered on the op: what lets
    torch.compile trace it and CUDA graphs capture it (kernels/sparse_ce.py)."""
    import kernels.sparse_ce  # noqa: F401  (registers the ops)

    assert hasattr(torch.ops.sgmagnet, "gated_sparse_ce_fwd") and hasattr(torch.ops.sgmagnet, "gated_sparse_ce_bwd")
    logits, index, prof = make(2, 6, 4, 5, 9, torch.float32)
    x = logits.requires_grad_()
    totals, sgrad = torch.ops.sgmagnet.gated_sparse_ce_fwd(x, index, prof, torch.ones(4, device=DEV), False)
    assert totals.shape == (3,) and sgrad.shape == (9, 4, 6)
    totals[0].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile of a Triton kernel needs CUDA (the "
                    "interpreter cannot be traced); make gpu-check runs it")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_loss_composes_with_compile_and_cuda_graphs(mode):
    """fullgraph=True: no graph break at the op; reduce-overhead: captured in a CUDA graph; same loss and
    gradient as eager, over 3 calls (replays)."""
    logits, index, prof = make(4, 38, 16, 16, 40, torch.float32)
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], device="cuda")
    x = logits.requires_grad_()
    ref = kernels.gated_sparse_ce(x, index, prof, w)
    (gref,) = torch.autograd.grad(ref, x)
    f = torch.compile(lambda t: kernels.gated_sparse_ce(t, index, prof, w, invalid=torch.zeros((), device="cuda")),
                      fullgraph=True, mode=mode)
    for _ in range(3):
        torch.compiler.cudagraph_mark_step_begin()        # a new step: the previous outputs may be overwritten
        y = f(x)
        (g,) = torch.autograd.grad(y, x)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, gref, rtol=1e-5, atol=1e-6)
