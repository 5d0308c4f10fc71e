"""The pure-PyTorch reference of every kernel in this folder: the definitions (DESIGN.md) the Triton kernels are
tested and benchmarked against, and what sgmagnet/losses.py computes with off CUDA. No Triton here: importing
this module never needs it.

    reference_log_probs(logits, dim=1)   log p(clear) = logsigmoid(-g), log p(k) = logsigmoid(g) + log_softmax(z)_k
    reference_softmax(logits, dim=1)     what softmax.gated_softmax computes (float32)
    reference_argmax(logits, dim=1)      what softmax.gated_argmax computes (int64 here)
    reference_sparse_ce(logits, index, profiles, weights, denominator, gamma, log_probs, unique_index, invalid)
                                         what sparse_ce.gated_sparse_ce computes (plus focal and other log-probs)

and the checks both share (which index rows lie inside the logits, the invalid-voxel count and its message).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import IGNORE


def reference_log_probs(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Log-probabilities of (clear, ice, mixed, liquid) from (g, z1, z2, z3) along `dim`, in float32
    (DESIGN.md): log p(clear) = logsigmoid(-g), log p(k) = logsigmoid(g) + log_softmax(z)_k."""
    x = logits.float()
    g, z = x.narrow(dim, 0, 1), x.narrow(dim, 1, 3)
    return torch.cat([F.logsigmoid(-g), F.logsigmoid(g) + torch.log_softmax(z, dim=dim)], dim=dim)


def reference_softmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """What gated_softmax computes (float32 probabilities), eagerly."""
    return reference_log_probs(logits, dim).exp()


def reference_argmax(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """What gated_argmax computes (int64 here): clear iff sigma(-g) > sigma(g) max softmax(z)."""
    return reference_log_probs(logits, dim).argmax(dim)

def inside_rows(index: torch.Tensor, shape) -> torch.Tensor:
    """[N] bool: the index rows (b, row, col) that lie inside logits of `shape` [B, 4, L, H, W]."""
    B, _, _, H, W = shape
    hi = torch.tensor([B, H, W], device=index.device, dtype=index.dtype)
    return ((index >= 0) & (index < hi)).all(1)


def pixel_key(index: torch.Tensor, shape) -> torch.Tensor:
    """[N] int64: the linear pixel number b*H*W + row*W + col of each row inside the logits, -1 for the others
    (sorts them into one segment of their own; it fits int64 whenever the logits exist)."""
    _, _, _, H, W = shape
    index = index.long()
    key = (index[:, 0] * H + index[:, 1]) * W + index[:, 2]
    return torch.where(inside_rows(index, shape), key, -1)


def describe_invalid(shape, index: torch.Tensor, profiles: torch.Tensor, unique_index: bool = False) -> str:
    """What is wrong with (index, profiles) for logits of `shape`: counts and the first offender of each kind
    ('' when nothing is). Off the hot path: called only once a count came back non-zero."""
    B, _, L, H, W = shape
    index, y = index.long().cpu(), profiles.cpu().long()
    lab = y != IGNORE
    inside = inside_rows(index, shape)
    parts = []
    out = (lab & ~inside[:, None]).any(1).nonzero().flatten()
    if len(out):
        n = int(out[0])
        parts.append(f"{len(out)} labelled index row(s) outside the logits [B={B}, H={H}, W={W}] (first: row {n} = "
                     f"(b={int(index[n, 0])}, row={int(index[n, 1])}, col={int(index[n, 2])}))")
    badlab = lab & (y > 3)
    if badlab.any():
        n, lev = (int(v) for v in badlab.nonzero()[0])
        parts.append(f"{int(badlab.sum())} label(s) outside {{0, 1, 2, 3, 255}} (first: {int(y[n, lev])} at row {n}, "
                     f"level {lev})")
    if unique_index:
        key = pixel_key(index, shape)[inside]
        dup = int(inside.sum()) - int(torch.unique(key).numel())
        if dup:
            parts.append(f"{dup} repeated index row(s) with unique_index=True (each row must name a distinct pixel; "
                         f"pass unique_index=False to sum duplicates)")
    return "; ".join(parts)


def settle_invalid(count: torch.Tensor, invalid, shape, index, profiles, unique_index: bool):
    """invalid=None: check `count` now (a host sync) and raise ValueError if it is not 0; a tensor: add it there
    (no sync; the caller checks it later)."""
    if invalid is not None:
        invalid += count.to(invalid.dtype)
        return
    if int(count.item()):
        raise ValueError(f"gated_sparse_ce: {describe_invalid(shape, index, profiles, unique_index)} (masked, "
                         f"not read; fix the data or pass invalid=<tensor> to count instead of raising)")


def gather_columns(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """[B, C, L, H, W] at index [N, 3] (b, row, col) -> [N, C, L] (differentiable gather)."""
    index = index.long()
    return logits[index[:, 0], :, :, index[:, 1], index[:, 2]]


def reference_sparse_ce(logits: torch.Tensor, index: torch.Tensor, profiles: torch.Tensor,
                        weights: torch.Tensor | None = None, denominator=None, gamma: float = 0.0,
                        log_probs=reference_log_probs, unique_index: bool = False,
                        invalid: torch.Tensor | None = None) -> torch.Tensor:
    """L = sum_v w_y (-log p_y(v)) / sum_v w_y over the labelled voxels of the gathered columns (DESIGN.md),
    a float32 scalar; 0 with a zero gradient when nothing is labelled. `denominator` replaces the local weight
    sum (data-parallel training passes the global one). gamma > 0: the focal loss (1 - p_y)^gamma (-log p_y)
    with the same weights and normaliser; `log_probs` maps [N, 4, L] logits to log-probabilities along dim 1
    (the no-gating ablation passes a plain log_softmax). The fused kernel is the gamma = 0, gated case.
    Invalid rows and labels (outside the logits, outside {0..3, 255}, repeated with unique_index) are masked
    and counted exactly as the kernel does (module docstring: `invalid`)."""
    if logits.dim() != 5 or logits.shape[1] != 4:
        raise ValueError(f"logits must be [B, 4, L, H, W], got {tuple(logits.shape)}")
    L = logits.shape[2]
    if profiles.dim() != 2 or profiles.shape[1] != L or index.shape != (profiles.shape[0], 3):
        raise ValueError(f"index must be [N, 3] and profiles [N, {L}], got {tuple(index.shape)} and {tuple(profiles.shape)}")
    index = index.to(logits.device).long()
    profiles = profiles.to(logits.device)
    inside = inside_rows(index, logits.shape)
    y = profiles.long()
    labelled = y != IGNORE
    ok = labelled & (y <= 3) & inside[:, None]
    count = (labelled & ~ok).sum()
    if unique_index:
        count = count + inside.sum() - torch.unique(pixel_key(index, logits.shape)[inside]).numel()
    settle_invalid(count, invalid, logits.shape, index, profiles, unique_index)
    safe = torch.where(inside[:, None], index, 0)                       # rows outside read pixel 0, masked below
    logp = log_probs(gather_columns(logits, safe))                     # [N, 4, L]
    y0 = torch.where(ok, y, torch.zeros_like(y))
    logp_y = logp.gather(1, y0.unsqueeze(1)).squeeze(1)                # [N, L]
    w = torch.ones(4, device=logits.device) if weights is None else weights.to(logits.device).float()
    wv = w[y0] * ok
    nll = -logp_y
    if gamma:
        nll = (1 - logp_y.exp()).clamp_min(0).pow(gamma) * nll
    num = torch.where(ok, wv * nll, 0.0).sum()                         # where, not *: a masked -inf must not give NaN
    den = wv.sum() if denominator is None else torch.as_tensor(denominator, dtype=torch.float32, device=num.device)
    return num / torch.where(den > 0, den, torch.ones_like(den))
