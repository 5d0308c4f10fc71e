"""Phase-gated log-probabilities and the class-weighted sparse cross-entropy: the pure-PyTorch reference.

Definitions (DESIGN.md): the model gives, per voxel, a cloud gate logit g (channel 0) and phase logits z
(channels 1..3, ice/mixed/liquid) in a tensor [B, 4, L, H, W].

    log p(clear) = logsigmoid(-g)
    log p(k)     = logsigmoid(g) + log_softmax(z)_k,   k = 1..3

    L = sum_v w_{y_v} * (-log p_{y_v}(v)) / sum_v w_{y_v}      over the labelled voxels v

Labels are sparse: `index` [N, 3] holds (batch, row, col) of the N labelled pixels of the batch and
`profiles` [N, L] uint8 their class per level (255 = no label). Only those N columns are gathered from the
logits -- no dense label volume is built. A batch with no label gives 0 with a zero gradient. `denominator`
lets data-parallel training divide by the global weight sum (all ranks) instead of the local one.

The definitions themselves live beside the fused Triton kernels, Liger-Kernel style, under names that say
"reference" (kernels/reference.py); this module builds the training component on them: the loss forms
(gated / softmax ablation), focal, class weights, auxiliary-label pooling, the argmax used for scoring, and
SparseLoss. Whether the fused kernels run is decided once, in sgmagnet/runtime.py (`Runtime.fused`), and
handed in here as a bool.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

import kernels
from kernels.reference import reference_argmax, reference_log_probs, reference_sparse_ce

from .grid import IGNORE, N_CLASSES

__all__ = ["log_probs", "sparse_ce", "compact_view", "level_bins", "pool_profiles", "class_weights", "dense_gated_ce",
           "argmax", "SparseLoss"]


def log_probs(logits: torch.Tensor, form: str = "gated", dim: int = 1) -> torch.Tensor:
    """Class log-probabilities: the phase-gated softmax (normative) or, for the no-gating ablation
    (loss.form=softmax), a plain 4-way softmax over the same 4 channels."""
    if form == "gated":
        return reference_log_probs(logits, dim)
    if form == "softmax":
        return torch.log_softmax(logits.float(), dim=dim)
    raise ValueError(f"loss form must be gated or softmax, got {form!r}")


def compact_view(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of a column forward, [N, 4, L], as the [1, 4, L, 1, N] view the volume losses and kernels
    take, and its index (0, 0, n) (DESIGN.md, Interfaces: no copy, any strides)."""
    n = cols.shape[0]
    index = torch.zeros(n, 3, dtype=torch.long, device=cols.device)
    index[:, 2] = torch.arange(n, device=cols.device)
    return cols.permute(1, 2, 0)[None, :, :, None], index


def level_bins(levels: int, n: int) -> list[tuple[int, int]]:
    """The full-resolution levels [start, end) that coarse level j of n covers: the bins of adaptive average
    pooling (those SGMAGNet's coarse level codes are pooled over), floor(jL/n) .. ceil((j+1)L/n)."""
    return [(j * levels // n, -(-(j + 1) * levels // n)) for j in range(n)]


@functools.lru_cache(maxsize=16)
def _bin_membership(levels: int, n: int) -> torch.Tensor:
    m = torch.zeros(levels, n)
    for j, (a, b) in enumerate(level_bins(levels, n)):
        m[a:b, j] = 1
    return m


#: tie-break between equally frequent classes in a pooled bin: the rarer phase wins (mixed, ice, liquid, clear)
_POOL_PRIORITY = torch.tensor([0.0, 0.2, 0.3, 0.1])


def pool_profiles(profiles: torch.Tensor, n: int) -> torch.Tensor:
    """Vertically pooled labels for the auxiliary losses at the coarse scales: [N, L] uint8 -> [N, n] uint8,
    each coarse level the most frequent labelled class of its bin (`level_bins`), ties to the rarer phase,
    IGNORE where the bin holds no label."""
    y = profiles.long()
    onehot = F.one_hot(torch.where(y == IGNORE, N_CLASSES, y), N_CLASSES + 1)[..., :N_CLASSES].float()
    member = _bin_membership(profiles.shape[1], n).to(profiles.device)         # [L, n]: level l lies in bin j
    counts = torch.einsum("nlc,lj->njc", onehot, member)                         # [N, n, 4] labels per bin
    best = (counts + _POOL_PRIORITY.to(counts.device) * (counts > 0)).argmax(-1)
    return torch.where(counts.sum(-1) > 0, best, IGNORE).to(torch.uint8)


def class_weights(frequency, power: float = 0.5) -> torch.Tensor:
    """w_c proportional to freq_c^-power (default 1/sqrt), normalised to mean 1. Absent classes get the largest weight."""
    f = torch.as_tensor(frequency, dtype=torch.float64)
    if f.numel() != N_CLASSES or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"class frequencies must be {N_CLASSES} non-negative numbers with a positive sum, got {frequency}")
    f = f / f.sum()
    floor = f[f > 0].min()
    w = torch.where(f > 0, f, floor).pow(-power)
    return (w / w.mean()).float()


def sparse_ce(logits: torch.Tensor, index: torch.Tensor, profiles: torch.Tensor,
              weights: torch.Tensor | None = None, denominator: torch.Tensor | float | None = None,
              gamma: float = 0.0, form: str = "gated", invalid: torch.Tensor | None = None) -> torch.Tensor:
    """The class-weighted sparse cross-entropy of the phase-gated softmax (DESIGN.md) in PyTorch:
    kernels.reference.reference_sparse_ce with the loss forms. Scalar float32.

    gamma > 0 turns it into the focal loss (1 - p_y)^gamma * (-log p_y) with the same weights/normaliser
    (an ablation; gamma = 0 is the normative loss). form="softmax": plain 4-way softmax (ablation).
    Rows outside the logits and labels outside {0..3, 255} are masked and counted (kernels/sparse_ce.py:
    `invalid`; None raises a ValueError at once).
    """
    return reference_sparse_ce(logits, index, profiles, weights, denominator, gamma=gamma,
                               log_probs=functools.partial(log_probs, form=form), invalid=invalid)


def dense_gated_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The same loss through a dense label volume [B, L, H, W] and F.nll_loss (the memory-hungry way;
    used by the benchmark and as a cross-check)."""
    return F.nll_loss(reference_log_probs(logits), labels.long(), weight=weights, ignore_index=IGNORE)


def first_max(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x.argmax(dim) (int64; the first maximum, a NaN counting as the largest, as torch.argmax does) over a short
    dim by comparing its slices: torch's argmax along a strided dim of a large volume is ~20x slower on CPU
    (0.53 s for [8, 4, 38, 128, 128], 52 % of a CPU prediction, hpc/bench/predict_writer.py)."""
    best = x.select(dim, 0)
    idx = torch.zeros(best.shape, dtype=torch.long, device=x.device)
    for k in range(1, x.shape[dim]):
        v = x.select(dim, k)
        better = (v > best) | (v.isnan() & ~best.isnan())
        best = torch.where(better, v, best)
        idx = torch.where(better, k, idx)
    return idx


def argmax(logits: torch.Tensor, fused: bool = False, form: str = "gated", dim: int = 1) -> torch.Tensor:
    """The most probable class (int64). fused (Runtime.fused: CUDA): the Triton gated_argmax (no probabilities
    materialised), else the reference's log-probabilities and `first_max` (= their argmax). form="softmax": the
    plain argmax of the 4 logits."""
    if form == "softmax":
        return first_max(logits, dim)
    if fused and dim == 1:
        return kernels.gated_argmax(logits).long()
    return first_max(log_probs(logits, form, dim), dim)


class SparseLoss(torch.nn.Module):
    """The training loss component: weights are a buffer (they follow .to(device) and are checkpointed).
    fused (Runtime.fused): the Triton kernel for the normative case; the focal variant (gamma > 0) and the
    softmax form always use the reference."""

    def __init__(self, weights=None, gamma: float = 0.0, fused: bool = False, form: str = "gated"):
        super().__init__()
        self.form = form              # gated | softmax (config.LossConfig checks it; log_probs refuses others)
        self.register_buffer("weights", torch.ones(N_CLASSES) if weights is None else torch.as_tensor(weights).float())
        self.gamma, self.fused = gamma, bool(fused) and not gamma and form == "gated"

    def forward(self, logits, index, profiles, denominator=None, invalid=None):
        """logits [B, 4, L, H, W] with the labelled columns at index [N, 3], or the compact [N, 4, L] of a column
        forward (index then only gives N and may be None). invalid: a device tensor that counts the labelled
        voxels that could not be scored (no host sync; the trainer checks it at the end of the step), or None
        to raise a ValueError at once."""
        compact = logits.dim() == 3
        if compact:
            logits, index = compact_view(logits)
        if self.fused:
            return kernels.gated_sparse_ce(logits, index, profiles, self.weights, denominator,
                                           unique_index=compact, invalid=invalid)   # the compact rows are distinct
        return sparse_ce(logits, index, profiles, self.weights, denominator, gamma=self.gamma, form=self.form,
                         invalid=invalid)

    def weight_sum(self, profiles: torch.Tensor) -> torch.Tensor:
        """Local sum of label weights (what data-parallel training all-reduces into the denominator)."""
        y = profiles.long()
        lab = y != IGNORE
        return (self.weights.to(profiles.device)[torch.where(lab, y, 0)] * lab).sum()
