"""Transformer baseline: ViT-style patch embedding + transformer encoder + a light decoder.

Non-overlapping p x p patches are embedded to tokens (learned position embedding, bicubically resized when
the patch grid differs from the one it was built for), run through a pre-norm transformer encoder, then
each token is projected back to p*p pixels of a feature map (pixel shuffle), refined by a conv block that
also sees a full-resolution conv stem, and a 1x1 conv emits 4*L channels read as [B, 4, L, H, W].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import N_LEVELS
from .common import STEM_CHANNELS, InputStem, check_columns, check_divisible, conv2d_block, head_columns, to_volume


class Transformer(nn.Module):
    SIZES = {"tiny": dict(patch=8, dim=32, depth=1, heads=2, width=8, grid=4),
             "demo": dict(patch=8, dim=96, depth=4, heads=4, width=16, grid=8),
             "paper": dict(patch=8, dim=384, depth=8, heads=6, width=32, grid=16)}

    def __init__(self, levels: int = N_LEVELS, patch: int = 8, dim: int = 96, depth: int = 4, heads: int = 4,
                 width: int = 16, grid: int = 8):
        super().__init__()
        self.levels, self.patch = levels, patch
        self.stem = InputStem()
        self.embed = nn.Conv2d(STEM_CHANNELS, dim, patch, stride=patch)
        self.pos = nn.Parameter(0.02 * torch.randn(1, dim, grid, grid))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.unembed = nn.Linear(dim, width * patch * patch)
        self.local = conv2d_block(STEM_CHANNELS, width, 1)
        self.refine = conv2d_block(2 * width, width)
        self.head = nn.Conv2d(width, 4 * levels, 1)

    def forward(self, x, geom=None, columns=None):
        check_divisible(x, self.patch, "Transformer")
        idx = None if columns is None else check_columns(columns, x)
        s = self.stem(x, geom)
        t = self.embed(s)                                                   # [B, D, h, w]
        b, d, h, w = t.shape
        pos = self.pos if self.pos.shape[-2:] == (h, w) else F.interpolate(self.pos, (h, w), mode="bicubic")
        tok = self.norm(self.encoder((t + pos).flatten(2).transpose(1, 2)))  # [B, h*w, D]
        f = self.unembed(tok).transpose(1, 2).reshape(b, -1, h, w)          # [B, C*p*p, h, w]
        f = F.pixel_shuffle(f, self.patch)                                  # [B, C, H, W]
        f = self.refine(torch.cat([f, self.local(s)], 1))
        if idx is not None:
            return head_columns(self.head, f, idx, self.levels)
        return to_volume(self.head(f), self.levels)
