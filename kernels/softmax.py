"""Fused phase-gated softmax (Triton): probabilities, their backward, and an int8 argmax for inference.

    probs = gated_softmax(logits, out_dtype=None)      # [B, 4, L, H, W] -> [B, 4, L, H, W]
    cls   = gated_argmax(logits)                       # [B, 4, L, H, W] -> [B, L, H, W] int8

The pure-PyTorch reference is kernels/reference.py (reference_log_probs, reference_softmax,
reference_argmax): the kernels are tested and benchmarked against it, and sgmagnet/losses.py builds the
training loss and the CPU inference path on it.

p(clear) = sigma(-g), p(k) = sigma(g) * softmax(z)_k (DESIGN.md), computed in fp32 from fp32/bf16/fp16
logits in one pass: each program reads the 4 channels of BLOCK voxels and writes 4 probabilities (or one
int8 class: the argmax path never materialises the probabilities, 1 byte written per voxel instead of 16).
Any strides, no copy: logits are read through their own strides (a channels-last volume, a channel or
level slice, a permuted view) and the probabilities are written in the logits' layout when that layout is
dense (torch.empty_like), contiguous otherwise; contiguous tensors take a fast path without the index
arithmetic. More than 3 dims after the channel are flattened first (a view where the strides allow, else
one copy). Offsets are int64. The backward recomputes the probabilities from the saved logits:
    dL/dg   = sigma(g) sigma(-g) (sum_k G_k s_k - G_0)
    dL/dz_j = sigma(g) s_j (G_j - sum_k G_k s_k)          with G = dL/dp, s = softmax(z)
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .common import softmax3

BLOCK = 1024


@triton.jit
def _probs(g, z1, z2, z3):
    e = tl.exp(-tl.abs(g))                 # never overflows
    big = 1.0 / (1.0 + e)
    sg = tl.where(g >= 0, big, e * big)    # sigma(g)
    sn = tl.where(g >= 0, e * big, big)    # sigma(-g)
    _, e1, e2, e3, s = softmax3(z1, z2, z3)
    return sn, sg, e1 / s, e2 / s, e3 / s


@triton.jit
def _load4(x_ptr, base, inner, mask):
    g = tl.load(x_ptr + base, mask=mask, other=0.0).to(tl.float32)
    z1 = tl.load(x_ptr + base + inner, mask=mask, other=0.0).to(tl.float32)
    z2 = tl.load(x_ptr + base + 2 * inner, mask=mask, other=0.0).to(tl.float32)
    z3 = tl.load(x_ptr + base + 3 * inner, mask=mask, other=0.0).to(tl.float32)
    return g, z1, z2, z3


@triton.jit
def _voxels(pid, n_vox, inner, D2, D3, BLOCK: tl.constexpr, CONTIG: tl.constexpr):
    """Voxel ids v of this program (row-major over [B, D1, D2, D3]), their mask, and their coordinates
    (int64); CONTIG: only b is needed (the offsets of contiguous tensors follow from v and b alone)."""
    v = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    b = v // inner
    if CONTIG:
        return v, v < n_vox, b, b, b, b
    d3 = v % D3
    t = v // D3
    return v, v < n_vox, b, (t // D2) - b * (inner // (D2 * D3)), t % D2, d3


@triton.jit
def _base(v, b, d1, d2, d3, inner, s_b, s_c, s_1, s_2, s_3, CONTIG: tl.constexpr):
    """int64 offset of channel 0 of voxel v = (b, d1, d2, d3) and the channel stride: a contiguous [B, 4, inner]
    from v and b alone, any other layout through its own strides."""
    if CONTIG:
        return b * 4 * inner + (v - b * inner), inner
    s_b, s_c, s_1 = tl.cast(s_b, tl.int64), tl.cast(s_c, tl.int64), tl.cast(s_1, tl.int64)
    s_2, s_3 = tl.cast(s_2, tl.int64), tl.cast(s_3, tl.int64)
    return b * s_b + d1 * s_1 + d2 * s_2 + d3 * s_3, s_c


@triton.jit
def _gsm_fwd_kernel(x_ptr, out_ptr, n_vox, inner, D2, D3, xs_b, xs_c, xs_1, xs_2, xs_3,
                    os_b, os_c, os_1, os_2, os_3, BLOCK: tl.constexpr, ARGMAX: tl.constexpr,
                    X_CONTIG: tl.constexpr, OUT_CONTIG: tl.constexpr):
    inner = tl.cast(inner, tl.int64)   # 2 * inner, 3 * inner, b * 4 * inner must not wrap in 32 bits
    D2, D3 = tl.cast(D2, tl.int64), tl.cast(D3, tl.int64)
    v, mask, b, d1, d2, d3 = _voxels(tl.program_id(0), n_vox, inner, D2, D3, BLOCK, X_CONTIG and OUT_CONTIG)
    xb, xc = _base(v, b, d1, d2, d3, inner, xs_b, xs_c, xs_1, xs_2, xs_3, X_CONTIG)
    g, z1, z2, z3 = _load4(x_ptr, xb, xc, mask)
    p0, sg, s1, s2, s3 = _probs(g, z1, z2, z3)
    p1 = sg * s1
    p2 = sg * s2
    p3 = sg * s3
    if ARGMAX:  # first maximum wins (as torch.argmax); the int8 output is contiguous [B, D1, D2, D3]
        best = tl.where(p1 > p0, 1, 0)
        pb = tl.maximum(p0, p1)
        best = tl.where(p2 > pb, 2, best)
        pb = tl.maximum(pb, p2)
        best = tl.where(p3 > pb, 3, best)
        tl.store(out_ptr + v, best.to(tl.int8), mask=mask)
    else:
        ob, oc = _base(v, b, d1, d2, d3, inner, os_b, os_c, os_1, os_2, os_3, OUT_CONTIG)
        ty = out_ptr.dtype.element_ty
        tl.store(out_ptr + ob, p0.to(ty), mask=mask)
        tl.store(out_ptr + ob + oc, p1.to(ty), mask=mask)
        tl.store(out_ptr + ob + 2 * oc, p2.to(ty), mask=mask)
        tl.store(out_ptr + ob + 3 * oc, p3.to(ty), mask=mask)


@triton.jit
def _gsm_bwd_kernel(x_ptr, gout_ptr, gin_ptr, n_vox, inner, D2, D3, xs_b, xs_c, xs_1, xs_2, xs_3,
                    gs_b, gs_c, gs_1, gs_2, gs_3, is_b, is_c, is_1, is_2, is_3, BLOCK: tl.constexpr,
                    CONTIG: tl.constexpr):
    inner = tl.cast(inner, tl.int64)   # 2 * inner, 3 * inner, b * 4 * inner must not wrap in 32 bits
    D2, D3 = tl.cast(D2, tl.int64), tl.cast(D3, tl.int64)
    v, mask, b, d1, d2, d3 = _voxels(tl.program_id(0), n_vox, inner, D2, D3, BLOCK, CONTIG)
    xb, xc = _base(v, b, d1, d2, d3, inner, xs_b, xs_c, xs_1, xs_2, xs_3, CONTIG)
    gb, gc = _base(v, b, d1, d2, d3, inner, gs_b, gs_c, gs_1, gs_2, gs_3, CONTIG)
    ib, ic = _base(v, b, d1, d2, d3, inner, is_b, is_c, is_1, is_2, is_3, CONTIG)
    g, z1, z2, z3 = _load4(x_ptr, xb, xc, mask)
    G0, G1, G2, G3 = _load4(gout_ptr, gb, gc, mask)
    p0, sg, s1, s2, s3 = _probs(g, z1, z2, z3)
    dot = G1 * s1 + G2 * s2 + G3 * s3
    ty = gin_ptr.dtype.element_ty
    tl.store(gin_ptr + ib, (sg * p0 * (dot - G0)).to(ty), mask=mask)
    tl.store(gin_ptr + ib + ic, (sg * s1 * (G1 - dot)).to(ty), mask=mask)
    tl.store(gin_ptr + ib + 2 * ic, (sg * s2 * (G2 - dot)).to(ty), mask=mask)
    tl.store(gin_ptr + ib + 3 * ic, (sg * s3 * (G3 - dot)).to(ty), mask=mask)


def _on(device):
    """Launch under the tensor's own CUDA device (the current device may be another GPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _check(x):
    if x.dim() < 2 or x.shape[1] != 4:
        raise ValueError(f"logits must be [B, 4, ...] (e.g. [B, 4, L, H, W]), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {x.dtype}")


def as_5d(x: torch.Tensor) -> torch.Tensor:
    """[B, 4, ...] as a [B, 4, D1, D2, D3] view (size-1 dims added in front). More than 3 dims after the channel
    are merged: a view where the strides allow, else a copy -- the one case that copies (outputs of such
    logits are then made contiguous, so they are always views)."""
    while x.dim() < 5:
        x = x.unsqueeze(2)
    if x.dim() > 5:
        x = x.reshape(*x.shape[:2], -1, *x.shape[-2:])
    return x


def _like(x: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output for x: its layout where dense and at most 5-D (empty_like), else contiguous."""
    if x.dim() > 5:
        return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    return torch.empty_like(x, dtype=dtype or x.dtype)


def _dims(x5: torch.Tensor):
    _, _, D1, D2, D3 = x5.shape
    return D1 * D2 * D3, x5.shape[0] * D1 * D2 * D3, D2, D3


def _launch_fwd(x, out, argmax: bool):
    x5 = as_5d(x)
    inner, n_vox, D2, D3 = _dims(x5)
    if not n_vox:
        return
    o5 = x5 if argmax else as_5d(out)        # the argmax output is contiguous int8 [B, D1, D2, D3]: no strides
    with _on(x.device):
        _gsm_fwd_kernel[(triton.cdiv(n_vox, BLOCK),)](x5, out, n_vox, inner, D2, D3, *x5.stride(), *o5.stride(),
                                                      BLOCK=BLOCK, ARGMAX=argmax, X_CONTIG=x5.is_contiguous(),
                                                      OUT_CONTIG=argmax or o5.is_contiguous())


class GatedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_dtype):
        out = _like(x, out_dtype)
        _launch_fwd(x, out, argmax=False)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, = ctx.saved_tensors
        gin = _like(x)
        x5, g5, i5 = as_5d(x), as_5d(gout), as_5d(gin)
        inner, n_vox, D2, D3 = _dims(x5)
        if n_vox:
            with _on(x.device):
                _gsm_bwd_kernel[(triton.cdiv(n_vox, BLOCK),)](
                    x5, g5, i5, n_vox, inner, D2, D3, *x5.stride(), *g5.stride(), *i5.stride(), BLOCK=BLOCK,
                    CONTIG=x5.is_contiguous() and g5.is_contiguous() and i5.is_contiguous())
        return gin, None


def gated_softmax(logits: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Probabilities (clear, ice, mixed, liquid) along dim 1, in out_dtype (default: the logits' dtype), in the
    logits' memory layout when it is dense (e.g. channels-last), else contiguous. Any strides, no copy."""
    _check(logits)
    return GatedSoftmax.apply(logits, out_dtype)


@torch.no_grad()
def gated_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Most probable class per voxel as contiguous int8 [B, ...] without materialising the probabilities.
    Any strides, no copy."""
    _check(logits)
    out = torch.empty((logits.shape[0],) + tuple(logits.shape[2:]), dtype=torch.int8, device=logits.device)
    _launch_fwd(logits, out, argmax=True)
    return out
