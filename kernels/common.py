"""Triton device helpers shared by the kernels (one place for the numerically stable pieces)."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def softmax3(z1, z2, z3):
    """Stable 3-way softmax pieces: (max m, e_k = exp(z_k - m), their sum s); p_k = e_k / s and
    log-sum-exp = m + log s. Used by the gated softmax and the sparse cross-entropy."""
    m = tl.maximum(tl.maximum(z1, z2), z3)
    e1 = tl.exp(z1 - m)
    e2 = tl.exp(z2 - m)
    e3 = tl.exp(z3 - m)
    return m, e1, e2, e3, e1 + e2 + e3
