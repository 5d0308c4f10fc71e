"""UNet baselines: a 2D UNet with 4x38 output channels, and a UNet that lifts to 3D along height.

UNet2D: 3-level encoder/decoder with skip connections; the last 1x1 conv emits 4*L channels, read as
[B, 4, L, H, W] (class-major).

UNet3DLift: the same 2D encoder; the bottleneck and every skip are lifted to 3D by a ConvTranspose3d
whose kernel spans the full height (a learned 2D -> column map, as spaceml-org/3DClouds lifts with
unsqueeze + ConvTranspose3d), and a 3D decoder with skip concatenation produces the 4 logits per voxel.
No level embedding, no scene modulation, no gating: the plain way to go 3D.

Columns: UNet2D evaluates its 1x1 head only at the requested columns. UNet3DLift decodes densely and
gathers: its full-resolution 3x3x3 block and GroupNorm mix columns, and most of its cost is at half
resolution with all 38 levels, so a column path would change the baseline without paying.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import N_LEVELS
from .common import (STEM_CHANNELS, InputStem, check_columns, check_divisible, conv2d_block, conv3d_block,
                     dense_or_columns, head_columns, to_volume)


class UNet2D(nn.Module):
    SIZES = {"tiny": dict(width=8), "demo": dict(width=24), "paper": dict(width=64)}

    def __init__(self, levels: int = N_LEVELS, width: int = 24):
        super().__init__()
        w = (width, 2 * width, 4 * width, 8 * width)
        self.levels = levels
        self.stem = InputStem()
        self.enc = nn.ModuleList([conv2d_block(STEM_CHANNELS, w[0]), conv2d_block(w[0], w[1]),
                                  conv2d_block(w[1], w[2]), conv2d_block(w[2], w[3])])
        self.up = nn.ModuleList([nn.ConvTranspose2d(w[i + 1], w[i], 2, stride=2) for i in range(3)])
        self.dec = nn.ModuleList([conv2d_block(2 * w[i], w[i]) for i in range(3)])
        self.head = nn.Conv2d(w[0], 4 * levels, 1)

    def forward(self, x, geom=None, columns=None):
        check_divisible(x, 8, "UNet2D")
        idx = None if columns is None else check_columns(columns, x)
        skips, h = [], self.stem(x, geom)
        for k, enc in enumerate(self.enc):
            h = enc(h if k == 0 else F.max_pool2d(h, 2))
            skips.append(h)
        for i in (2, 1, 0):
            h = self.dec[i](torch.cat([self.up[i](h), skips[i]], 1))
        if idx is not None:
            return head_columns(self.head, h, idx, self.levels)
        return to_volume(self.head(h), self.levels)


class UNet3DLift(nn.Module):
    SIZES = {"tiny": dict(width=8, vol=(4, 8, 8)), "demo": dict(width=16, vol=(8, 16, 24)),
             "paper": dict(width=48, vol=(16, 32, 64))}

    def __init__(self, levels: int = N_LEVELS, width: int = 16, vol=(8, 16, 24)):
        super().__init__()
        w = (width, 2 * width, 4 * width)
        self.levels = levels
        self.stem = InputStem()
        self.enc = nn.ModuleList([conv2d_block(STEM_CHANNELS, w[0]), conv2d_block(w[0], w[1]), conv2d_block(w[1], w[2])])
        self.lift = nn.ModuleList(nn.ConvTranspose3d(w[i], vol[i], (levels, 1, 1)) for i in range(3))
        self.bottom = conv3d_block(vol[2], vol[2])
        self.up = nn.ModuleList(nn.ConvTranspose3d(vol[i + 1], vol[i], (1, 2, 2), stride=(1, 2, 2)) for i in range(2))
        self.dec = nn.ModuleList(conv3d_block(2 * vol[i], vol[i]) for i in range(2))
        self.head = nn.Conv3d(vol[0], 4, 1)

    def forward(self, x, geom=None, columns=None):
        check_divisible(x, 4, "UNet3DLift")
        idx = None if columns is None else check_columns(columns, x)
        e1 = self.enc[0](self.stem(x, geom))
        e2 = self.enc[1](F.max_pool2d(e1, 2))
        e4 = self.enc[2](F.max_pool2d(e2, 2))
        v = self.bottom(self.lift[2](e4[:, :, None]))
        for i, e in ((1, e2), (0, e1)):
            v = self.dec[i](torch.cat([self.up[i](v), self.lift[i](e[:, :, None])], 1))
        return dense_or_columns(self.head(v), idx)
