"""Triton kernels, one file per op, each with its launcher and torch.autograd.Function:

    sparse_ce.py   gated_sparse_ce(logits, index, profiles, weights, denominator=None) -> scalar
    softmax.py     gated_softmax(logits, out_dtype=None) -> probabilities [B, 4, L, H, W]
                   gated_argmax(logits) -> int8 classes [B, L, H, W]

The pure-PyTorch reference they are tested against lives beside them in reference.py, under names that
say so (reference_log_probs, reference_softmax, reference_argmax, reference_sparse_ce). Nothing here imports
the model package: sgmagnet/losses.py builds on these. `import kernels` and `kernels.reference` never import
Triton; the kernels (`kernels.gated_sparse_ce`, ...) import it on first use. On CPU they run under
TRITON_INTERPRET=1 (set it before triton is imported), which is how the tests exercise them without a GPU.
"""
from __future__ import annotations

import os

#: the label value "no label" of the sample format (DESIGN.md); its one definition (sgmagnet.grid re-exports it)
IGNORE = 255

__all__ = ["IGNORE", "gated_sparse_ce", "gated_softmax", "gated_argmax", "interpreting", "usable_on"]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def usable_on(device) -> bool:
    """Kernels run on CUDA devices, and on CPU only under the Triton interpreter."""
    import torch

    return torch.device(device).type == "cuda" or interpreting()


def __getattr__(name):  # import triton lazily: `import kernels` must not require it
    if name == "gated_sparse_ce":
        from .sparse_ce import gated_sparse_ce
        return gated_sparse_ce
    if name in ("gated_softmax", "gated_argmax"):
        from . import softmax as m
        return getattr(m, name)
    raise AttributeError(name)
