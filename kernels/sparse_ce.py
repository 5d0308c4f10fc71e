"""Fused class-weighted sparse cross-entropy of the phase-gated softmax (Triton): kernels, launcher, autograd.

The forward and backward kernels are two torch.library custom ops (`triton_op`: sgmagnet::gated_sparse_ce_fwd,
sgmagnet::gated_sparse_ce_bwd) with the autograd formula registered on the forward op, so torch.compile
(fullgraph) traces through them and a CUDA graph captures them (tests/test_kernels.py runs both on CUDA;
the Triton interpreter used on CPU cannot be traced, so CPU tests call them eagerly).

    loss = gated_sparse_ce(logits, index, profiles, weights, denominator=None, unique_index=False, invalid=None)

logits [B, 4, L, H, W] (fp32/bf16/fp16, any strides: only the labelled columns are read, through the
tensor's own strides, so a non-contiguous view costs no copy); index [N, 3] (b, row, col) (`sgmagnet build`
writes one row per pixel; duplicate rows are allowed and each contributes its own term, as the definition
says, so their gradients add up); profiles [N, L] uint8 with 255 = ignore;
weights [4]. Returns a float32 scalar equal to `reference_sparse_ce` (the pure-PyTorch reference in
kernels/reference.py, which sgmagnet/losses.py trains with off CUDA).

Forward: one program per BLOCK (pixel, level) pairs of the N x L labels. It gathers the 4 logits of the
voxel (int64 offsets: volumes may exceed 2^31 elements), computes log p_y in fp32 with stable
logsigmoid/logsumexp, and writes its partial sums (sum w*nll, sum w) to a [programs, 2] buffer and the
unnormalised gradient w * d(-log p_y)/d(logits) of its voxels to a small [N, 4, L] fp32 buffer. The
partials are summed by torch.sum in a fixed order, so the result is deterministic run to run (no float
atomics). The normaliser (local weight sum, or an externally supplied global `denominator`) stays a
device tensor: no .item(), no host sync.

Backward: the sparse gradient rows of duplicate index rows are summed first (a sort and a deterministic
index_put accumulate over the N rows, no host sync), then a new zero tensor shaped like the logits
receives grad_out / denominator * the coalesced sparse gradient (one scatter kernel, one writer per voxel). Nothing is written into the input logits or any
tensor autograd saved (the in-place trick of Liger-Kernel#272 corrupts saved tensors), and the gradient
is exactly 0 off the labelled voxels. Peak extra memory: the gradient itself plus N*4*L*4 bytes.

Rows it cannot index, labels it cannot weigh (both the kernel and the reference, the same way): a labelled
voxel whose index row lies outside the logits (b, row or col negative or >= B, H, W), whose label is not in
{0, 1, 2, 3, 255}, or -- with unique_index=True -- whose row repeats an earlier row, is never read or
written: it adds nothing to the loss, its weight or the gradient, and is counted. With `invalid=None` the
count is checked at once (one host sync; a ValueError describes the first offender); a training loop
passes a device tensor instead, the count is added to it without a sync, and the loop checks it where it
already syncs (sgmagnet/train/trainer.py: the end of the step). Coordinates are bounded by the logits' own shape
(the backward's sort key is the linear pixel number b*H*W + row*W + col, int64, with no other limit).

focal (gamma > 0) and the plain-softmax ablation are not fused: callers use the reference, which has both.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import IGNORE
from .common import softmax3
from .reference import pixel_key, settle_invalid

BLOCK = 1024


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _label_voxels(pid, index_ptr, prof_ptr, n_elem, L, B, H, W, s_b, s_l, s_h, s_w, BLOCK: tl.constexpr,
                  IGNORE: tl.constexpr):
    """The BLOCK (pixel n, level) pairs of this program: label y, `ok` (labelled, a label in 0..3 and a row
    inside the logits: the only voxels read or written), `bad` (labelled but not ok), the pixel's coordinates
    and the int64 offset of channel 0 (0 where not ok, so no address outside the tensor is ever formed)."""
    # tl.cast, not .to: the compiler passes an int argument equal to 1 (a unit stride) as a constant int
    s_b, s_l, s_h, s_w = tl.cast(s_b, tl.int64), tl.cast(s_l, tl.int64), tl.cast(s_h, tl.int64), tl.cast(s_w, tl.int64)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inb = offs < n_elem
    n = offs // L
    lev = offs - n * L
    y = tl.load(prof_ptr + offs, mask=inb, other=IGNORE).to(tl.int32)
    lab = inb & (y != IGNORE)
    b = tl.load(index_ptr + n * 3, mask=inb, other=0).to(tl.int64)
    r = tl.load(index_ptr + n * 3 + 1, mask=inb, other=0).to(tl.int64)
    c = tl.load(index_ptr + n * 3 + 2, mask=inb, other=0).to(tl.int64)
    inside = (b >= 0) & (b < B) & (r >= 0) & (r < H) & (c >= 0) & (c < W)
    ok = lab & inside & (y <= 3)
    base = tl.where(ok, b * s_b + lev * s_l + r * s_h + c * s_w, 0)
    return offs, inb, n, lev, y, ok, lab & (~ok), inside, b, r, c, base


@triton.jit
def _gsce_fwd_kernel(logits_ptr, index_ptr, prof_ptr, w_ptr, sgrad_ptr, part_ptr, claim_ptr, n_elem, L, B, H, W,
                     s_b, s_c, s_l, s_h, s_w, BLOCK: tl.constexpr, IGNORE: tl.constexpr, UNIQUE: tl.constexpr):
    pid = tl.program_id(0)
    s_c = tl.cast(s_c, tl.int64)       # 2 * s_c, 3 * s_c must not wrap in 32 bits
    L = tl.cast(L, tl.int64)           # n * 4 * L likewise
    B, H, W = tl.cast(B, tl.int64), tl.cast(H, tl.int64), tl.cast(W, tl.int64)
    offs, inb, n, lev, y, ok, bad, inside, b, r, c, base = _label_voxels(
        pid, index_ptr, prof_ptr, n_elem, L, B, H, W, s_b, s_l, s_h, s_w, BLOCK, IGNORE)
    nbad = tl.sum(bad.to(tl.float32), axis=0)
    if UNIQUE:
        # the promise "no row repeats", checked in the same pass: each row (at its level-0 element) claims its
        # pixel with an integer atomic; a row that finds its pixel claimed is a duplicate and counted
        first = inb & inside & (lev == 0)
        old = tl.atomic_add(claim_ptr + tl.where(first, (b * H + r) * W + c, 0), 1, mask=first)
        nbad += tl.sum((first & (old > 0)).to(tl.float32), axis=0)
    g = tl.load(logits_ptr + base, mask=ok, other=0.0).to(tl.float32)
    z1 = tl.load(logits_ptr + base + s_c, mask=ok, other=0.0).to(tl.float32)
    z2 = tl.load(logits_ptr + base + 2 * s_c, mask=ok, other=0.0).to(tl.float32)
    z3 = tl.load(logits_ptr + base + 3 * s_c, mask=ok, other=0.0).to(tl.float32)
    ls_pos = _logsigmoid(g)          # log sigma(g)  = log P(cloud)
    ls_neg = _logsigmoid(-g)         # log sigma(-g) = log P(clear)
    m, e1, e2, e3, s = softmax3(z1, z2, z3)
    lse = m + tl.log(s)
    zy = tl.where(y == 1, z1, tl.where(y == 2, z2, z3))
    logp = tl.where(y == 0, ls_neg, ls_pos + zy - lse)
    yw = tl.where(ok, y, 0)
    w = tl.load(w_ptr + yw, mask=ok, other=0.0).to(tl.float32)
    w = tl.where(ok, w, 0.0)
    tl.store(part_ptr + pid.to(tl.int64) * 3, tl.sum(-logp * w, axis=0))
    tl.store(part_ptr + pid.to(tl.int64) * 3 + 1, tl.sum(w, axis=0))
    tl.store(part_ptr + pid.to(tl.int64) * 3 + 2, nbad)
    # d(-log p_y)/dg: clear -> sigma(g); phase -> -sigma(-g).  d/dz_j: clear -> 0; phase -> softmax_j - [y == j]
    clear = y == 0
    dg = tl.where(clear, tl.exp(ls_pos), -tl.exp(ls_neg))
    d1 = tl.where(clear, 0.0, e1 / s - (y == 1).to(tl.float32))
    d2 = tl.where(clear, 0.0, e2 / s - (y == 2).to(tl.float32))
    d3 = tl.where(clear, 0.0, e3 / s - (y == 3).to(tl.float32))
    gbase = n * 4 * L + lev            # sparse gradient [N, 4, L], contiguous (0 where not ok: w is 0 there)
    tl.store(sgrad_ptr + gbase, w * dg, mask=inb)
    tl.store(sgrad_ptr + gbase + L, w * d1, mask=inb)
    tl.store(sgrad_ptr + gbase + 2 * L, w * d2, mask=inb)
    tl.store(sgrad_ptr + gbase + 3 * L, w * d3, mask=inb)


@triton.jit
def _gsce_bwd_kernel(grad_ptr, index_ptr, prof_ptr, sgrad_ptr, scale_ptr, n_elem, L, B, H, W,
                     s_b, s_c, s_l, s_h, s_w, BLOCK: tl.constexpr, IGNORE: tl.constexpr):
    pid = tl.program_id(0)
    s_c = tl.cast(s_c, tl.int64)       # ch * s_c must not wrap in 32 bits
    L = tl.cast(L, tl.int64)
    B, H, W = tl.cast(B, tl.int64), tl.cast(H, tl.int64), tl.cast(W, tl.int64)
    offs, inb, n, lev, y, ok, bad, inside, b, r, c, base = _label_voxels(
        pid, index_ptr, prof_ptr, n_elem, L, B, H, W, s_b, s_l, s_h, s_w, BLOCK, IGNORE)
    scale = tl.load(scale_ptr).to(tl.float32)
    gbase = n * 4 * L + lev
    for ch in tl.static_range(4):
        v = tl.load(sgrad_ptr + gbase + ch * L, mask=ok, other=0.0) * scale
        tl.store(grad_ptr + base + ch * s_c, v.to(grad_ptr.dtype.element_ty), mask=ok)


def _check(logits, index, profiles, weights):
    if logits.dim() != 5 or logits.shape[1] != 4:
        raise ValueError(f"logits must be [B, 4, L, H, W], got {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be floating point, got {logits.dtype}")
    L = logits.shape[2]
    if index.dim() != 2 or index.shape[1] != 3 or profiles.shape != (index.shape[0], L):
        raise ValueError(f"index must be [N, 3] and profiles [N, {L}], got {tuple(index.shape)} and {tuple(profiles.shape)}")
    if profiles.dtype != torch.uint8:
        raise TypeError(f"profiles must be uint8 (255 = ignore), got {profiles.dtype}")
    if weights.shape != (4,):
        raise ValueError(f"weights must be [4], got {tuple(weights.shape)}")


def _on(device):
    """Launch under the tensor's own CUDA device (the current device may be another GPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def coalesce(index: torch.Tensor, sgrad: torch.Tensor, L: int, shape):
    """Sum the sparse-gradient rows of duplicate index rows (sync-free, deterministic).

    Returns (index', sgrad', profiles') of the same length N: the first U rows are the distinct pixels
    (in sorted order) with their summed gradients, the rest are padding rows whose profiles are all 255
    (ignored by the scatter). Rows of sgrad are already 0 at ignored or invalid levels, so the distinct rows
    write every level (0 where nothing was labelled). Rows outside the logits share the key -1: their
    segment's representative is outside too, and the scatter skips it."""
    N = index.shape[0]
    key_sorted, order = torch.sort(pixel_key(index, shape), stable=True)
    new = torch.ones_like(key_sorted, dtype=torch.bool)
    new[1:] = key_sorted[1:] != key_sorted[:-1]
    seg = torch.cumsum(new.to(torch.int64), 0) - 1
    acc = torch.zeros_like(sgrad).index_put_((seg,), sgrad[order], accumulate=True)
    rep = torch.zeros_like(index).index_put_((seg,), index[order])   # duplicates share one index: any writer
    used = torch.arange(N, device=index.device) <= seg[-1]
    prof = torch.where(used, 0, IGNORE).to(torch.uint8)[:, None].expand(N, L).contiguous()
    return rep, acc, prof


# -- the two kernels as torch.library custom ops (triton_op): torch.compile traces through them (Inductor sees the
#    Triton kernels) and CUDA graphs capture them like any other op; eager calls run the same code.

@triton_op("sgmagnet::gated_sparse_ce_fwd", mutates_args=())
def _ce_fwd(logits: torch.Tensor, index: torch.Tensor, profiles: torch.Tensor, weights: torch.Tensor,
            unique_index: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(totals [3] = (sum w*nll, sum w, invalid count), unnormalised sparse gradient [N, 4, L] fp32)."""
    N, L = profiles.shape
    B, _, _, H, W = logits.shape
    n_elem = N * L
    grid = (max(1, triton.cdiv(n_elem, BLOCK)),)
    part = torch.zeros(grid[0], 3, dtype=torch.float32, device=logits.device)
    sgrad = torch.empty(N, 4, L, dtype=torch.float32, device=logits.device)
    claim = torch.zeros(B * H * W if unique_index and n_elem else 1, dtype=torch.int32, device=logits.device)
    if n_elem:
        with _on(logits.device):
            wrap_triton(_gsce_fwd_kernel)[grid](logits, index, profiles, weights, sgrad, part, claim, n_elem, L, B,
                                                H, W, *logits.stride(), BLOCK=BLOCK, IGNORE=IGNORE,
                                                UNIQUE=unique_index)
    return part.sum(0), sgrad


@triton_op("sgmagnet::gated_sparse_ce_bwd", mutates_args=())
def _ce_bwd(sgrad: torch.Tensor, index: torch.Tensor, profiles: torch.Tensor, scale: torch.Tensor,
            shape: list[int], dtype: torch.dtype) -> torch.Tensor:
    """The gradient of sum w*nll w.r.t. logits of `shape`: a fresh zero tensor (never the input) with scale x the
    sparse gradient written at the labelled voxels (index rows distinct: the caller coalesces duplicates)."""
    grad = torch.zeros(shape, dtype=dtype, device=sgrad.device)
    N, L = profiles.shape
    B, _, _, H, W = shape
    if N * L:
        with _on(grad.device):
            wrap_triton(_gsce_bwd_kernel)[(max(1, triton.cdiv(N * L, BLOCK)),)](
                grad, index, profiles, sgrad, scale, N * L, L, B, H, W, *grad.stride(), BLOCK=BLOCK, IGNORE=IGNORE)
    return grad


def _ce_setup(ctx, inputs, output):
    logits, index, profiles, _, unique = inputs
    ctx.save_for_backward(index, profiles, output[1])
    ctx.shape, ctx.dtype, ctx.unique = list(logits.shape), logits.dtype, unique


def _ce_backward(ctx, grad_totals, grad_sgrad):
    """Only the first total (sum w*nll) depends on the logits; the weight sum and the count do not."""
    index, profiles, sgrad = ctx.saved_tensors
    if not ctx.unique and index.shape[0]:               # one writer per voxel: sum the rows of duplicate pixels first
        index, sgrad, profiles = coalesce(index, sgrad, profiles.shape[1], ctx.shape)
    scale = grad_totals[:1].float().contiguous()
    return _ce_bwd(sgrad, index, profiles, scale, ctx.shape, ctx.dtype), None, None, None, None


torch.library.register_autograd("sgmagnet::gated_sparse_ce_fwd", _ce_backward, setup_context=_ce_setup)


def gated_sparse_ce(logits: torch.Tensor, index: torch.Tensor, profiles: torch.Tensor,
                    weights: torch.Tensor | None = None, denominator=None, unique_index: bool = False,
                    invalid: torch.Tensor | None = None) -> torch.Tensor:
    """Fused Triton version of `reference_sparse_ce` with gamma = 0 and the gated softmax (module docstring).

    unique_index=True promises that no (b, row, col) row repeats (true of the compact [1, 4, L, 1, N] view of a
    column forward, whose index is (0, 0, n)): the backward then skips the duplicate-row coalescing (a sort
    and two scatters, the launch-bound part at track densities). The promise is checked in the forward pass
    (an integer atomic per row): a repeated row is counted as invalid, like a row outside the logits or a
    label outside {0..3, 255} (module docstring: `invalid`)."""
    if weights is None:
        weights = torch.ones(4, device=logits.device)
    _check(logits, index, profiles, weights)
    dev = logits.device
    index = index.to(device=dev, dtype=torch.int64).contiguous()
    profiles = profiles.to(dev).contiguous()
    totals, _ = _ce_fwd(logits, index, profiles, weights.to(device=dev, dtype=torch.float32).contiguous(),
                        bool(unique_index))
    settle_invalid(totals[2], invalid, logits.shape, index, profiles, unique_index)
    den = totals[1] if denominator is None else torch.as_tensor(denominator, dtype=torch.float32, device=dev).reshape(())
    return totals[0] / torch.where(den > 0, den, torch.ones_like(den))
