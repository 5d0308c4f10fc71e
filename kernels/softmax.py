"""Fused phase-gated softmax (Triton): probabilities, their backward, and an int8 argmax for inference.

    probs = gated_softmax(logits, out_dtype=None)      # [B, 4, L, H, W] -> [B, 4, L, H, W]
    cls   = gated_argmax(logits)                       # [B, 4, L, H, W] -> [B, L, H, W] int8

The pure-PyTorch reference is at the end of this file (gated_log_probs, reference_softmax,
reference_argmax): the kernels are tested and benchmarked against it, and sgmagnet/losses.py builds the
training loss and the CPU inference path on it.

p(clear) = sigma(-g), p(k) = sigma(g) * softmax(z)_k (DESIGN.md), computed in fp32 from fp32/bf16/fp16
logits in one pass: each program reads the 4 channels of BLOCK voxels and writes 4 probabilities (or one
int8 class: the argmax path never materialises the probabilities, 1 byte written per voxel instead of 16).
Non-contiguous logits are made contiguous first (one copy; the models emit contiguous tensors).
Offsets are int64. The backward recomputes the probabilities from the saved logits:
    dL/dg   = sigma(g) sigma(-g) (sum_k G_k s_k - G_0)
    dL/dz_j = sigma(g) s_j (G_j - sum_k G_k s_k)          with G = dL/dp, s = softmax(z)
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
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
def _voxels(pid, n_vox, inner, BLOCK: tl.constexpr):
    """Voxel ids of this program, their mask, and the int64 offset of channel 0 in a contiguous [B,4,...]."""
    v = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    b = v // inner
    return v, v < n_vox, b * 4 * inner + (v - b * inner)


@triton.jit
def _gsm_fwd_kernel(x_ptr, out_ptr, n_vox, inner, BLOCK: tl.constexpr, ARGMAX: tl.constexpr):
    inner = tl.cast(inner, tl.int64)   # 2 * inner, 3 * inner, b * 4 * inner must not wrap in 32 bits
    v, mask, base = _voxels(tl.program_id(0), n_vox, inner, BLOCK)
    g, z1, z2, z3 = _load4(x_ptr, base, inner, mask)
    p0, sg, s1, s2, s3 = _probs(g, z1, z2, z3)
    p1 = sg * s1
    p2 = sg * s2
    p3 = sg * s3
    if ARGMAX:  # first maximum wins (as torch.argmax)
        best = tl.where(p1 > p0, 1, 0)
        pb = tl.maximum(p0, p1)
        best = tl.where(p2 > pb, 2, best)
        pb = tl.maximum(pb, p2)
        best = tl.where(p3 > pb, 3, best)
        tl.store(out_ptr + v, best.to(tl.int8), mask=mask)
    else:
        ty = out_ptr.dtype.element_ty
        tl.store(out_ptr + base, p0.to(ty), mask=mask)
        tl.store(out_ptr + base + inner, p1.to(ty), mask=mask)
        tl.store(out_ptr + base + 2 * inner, p2.to(ty), mask=mask)
        tl.store(out_ptr + base + 3 * inner, p3.to(ty), mask=mask)


@triton.jit
def _gsm_bwd_kernel(x_ptr, gout_ptr, gin_ptr, n_vox, inner, BLOCK: tl.constexpr):
    inner = tl.cast(inner, tl.int64)   # 2 * inner, 3 * inner, b * 4 * inner must not wrap in 32 bits
    v, mask, base = _voxels(tl.program_id(0), n_vox, inner, BLOCK)
    g, z1, z2, z3 = _load4(x_ptr, base, inner, mask)
    G0, G1, G2, G3 = _load4(gout_ptr, base, inner, mask)
    p0, sg, s1, s2, s3 = _probs(g, z1, z2, z3)
    dot = G1 * s1 + G2 * s2 + G3 * s3
    ty = gin_ptr.dtype.element_ty
    tl.store(gin_ptr + base, (sg * p0 * (dot - G0)).to(ty), mask=mask)
    tl.store(gin_ptr + base + inner, (sg * s1 * (G1 - dot)).to(ty), mask=mask)
    tl.store(gin_ptr + base + 2 * inner, (sg * s2 * (G2 - dot)).to(ty), mask=mask)
    tl.store(gin_ptr + base + 3 * inner, (sg * s3 * (G3 - dot)).to(ty), mask=mask)


def _on(device):
    """Launch under the tensor's own CUDA device (the current device may be another GPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _inner(x) -> int:
    """Voxels per (sample, channel): 0-sized batches have no x[0]."""
    return math.prod(x.shape[2:])


def _check(x):
    if x.dim() < 2 or x.shape[1] != 4:
        raise ValueError(f"logits must be [B, 4, ...] (e.g. [B, 4, L, H, W]), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {x.dtype}")


class GatedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out_dtype):
        x = x.contiguous()
        inner = _inner(x)
        n_vox = x.shape[0] * inner
        out = torch.empty(x.shape, dtype=out_dtype or x.dtype, device=x.device)
        if n_vox:
            with _on(x.device):
                _gsm_fwd_kernel[(triton.cdiv(n_vox, BLOCK),)](x, out, n_vox, inner, BLOCK=BLOCK, ARGMAX=False)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, = ctx.saved_tensors
        gout = gout.contiguous()
        gin = torch.empty_like(x)
        inner = _inner(x)
        n_vox = x.shape[0] * inner
        if n_vox:
            with _on(x.device):
                _gsm_bwd_kernel[(triton.cdiv(n_vox, BLOCK),)](x, gout, gin, n_vox, inner, BLOCK=BLOCK)
        return gin, None


def gated_softmax(logits: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Probabilities (clear, ice, mixed, liquid) along dim 1, in out_dtype (default: the logits' dtype)."""
    _check(logits)
    return GatedSoftmax.apply(logits, out_dtype)


@torch.no_grad()
def gated_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Most probable class per voxel as int8 [B, ...] without materialising the probabilities."""
    _check(logits)
    x = logits.contiguous()
    inner = _inner(x)
    out = torch.empty((x.shape[0],) + tuple(x.shape[2:]), dtype=torch.int8, device=x.device)
    n_vox = x.shape[0] * inner
    if n_vox:
        with _on(x.device):
            _gsm_fwd_kernel[(triton.cdiv(n_vox, BLOCK),)](x, out, n_vox, inner, BLOCK=BLOCK, ARGMAX=True)
    return out


# ------------------------------------------------------------------------------- pure-PyTorch reference
def gated_log_probs(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Log-probabilities of (clear, ice, mixed, liquid) from (g, z1, z2, z3) along `dim`, in float32
    (DESIGN.md): log p(clear) = logsigmoid(-g), log p(k) = logsigmoid(g) + log_softmax(z)_k."""
    x = logits.float()
    g, z = x.narrow(dim, 0, 1), x.narrow(dim, 1, 3)
    return torch.cat([F.logsigmoid(-g), F.logsigmoid(g) + torch.log_softmax(z, dim=dim)], dim=dim)


def reference_softmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """What gated_softmax computes (float32 probabilities), eagerly."""
    return gated_log_probs(logits, dim).exp()


def reference_argmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """What gated_argmax computes (int64 here): clear iff sigma(-g) > sigma(g) max softmax(z)."""
    return gated_log_probs(logits, dim).argmax(dim)
