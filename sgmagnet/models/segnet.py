"""SegNet baseline: encoder max-pooling keeps its indices, the decoder unpools with them (Badrinarayanan
et al. 2017); the last 1x1 conv emits 4*L channels read as [B, 4, L, H, W]
(with columns=, only at those columns)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ..grid import N_LEVELS
from .common import STEM_CHANNELS, InputStem, check_columns, check_divisible, conv2d_block, head_columns, to_volume


class SegNet(nn.Module):
    SIZES = {"tiny": dict(width=8), "demo": dict(width=24), "paper": dict(width=64)}

    def __init__(self, levels: int = N_LEVELS, width: int = 24):
        super().__init__()
        w = (width, 2 * width, 4 * width)
        self.levels = levels
        self.stem = InputStem()
        self.enc = nn.ModuleList([conv2d_block(STEM_CHANNELS, w[0]), conv2d_block(w[0], w[1]),
                                  conv2d_block(w[1], w[2], 3)])
        self.dec = nn.ModuleList([conv2d_block(w[2], w[1], 3), conv2d_block(w[1], w[0]), conv2d_block(w[0], w[0])])
        self.head = nn.Conv2d(w[0], 4 * levels, 1)

    def forward(self, x, geom=None, columns=None):
        check_divisible(x, 8, "SegNet")
        idx = None if columns is None else check_columns(columns, x)
        h, pools = self.stem(x, geom), []
        for enc in self.enc:
            h = enc(h)
            size = h.shape[-2:]
            h, ind = F.max_pool2d(h, 2, return_indices=True)
            pools.append((ind, size))
        for dec, (ind, size) in zip(self.dec, reversed(pools)):
            h = dec(F.max_unpool2d(h, ind, 2, output_size=size))
        if idx is not None:
            return head_columns(self.head, h, idx, self.levels)
        return to_volume(self.head(h), self.levels)
