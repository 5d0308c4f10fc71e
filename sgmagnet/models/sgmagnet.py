"""SGMAGNet v2: dynamic height encoder + multi-scale volumetric generator + phase-aware gating, with the
full-resolution volume computed per column (so training decodes only the labelled columns).

    x, geom ─ InputStem ─ 2D encoder E1 (H) ─ E2 (H/2) ─ E4 (H/4) ─ global pool ─ scene vector s
                          2D top-down decoder: D4 = E4, D2 = E2 + up(D4), D1 = E1 + up(D2)
    dynamic height encoder (a height-query decoder):
        level codes   h_l(s) = MLP(e_l + S s)              e_l learned per level, s modulates every level
        pixel queries q_i    = Q_i(D_i)                    1x1 conv of the pixel's own scale-i features
        lift          U_i[:, l, p] = GELU(q_i[:, p] + K_i h_l)    a per-pixel, per-level nonlinear code, so every
                                                              pixel gets its own vertical profile (not a mix of
                                                              a few patch-wide shapes as in v1's FiLM lift)
        prior         pi_l(s) [4] added to the logits (a scene-dependent climatology)
    multi-scale volumetric generator:
        scale 4, 2 (3D, whole patch): V4 = Block3D(U4);  V2 = Block3D(U2 + up(F4 V4))     ceil(L/i) levels
        scale 1 (per column):         V1 = ColumnBlocks(U1 + up(F2 V2))   Conv1d along height, GroupNorm over
                                                                          each column's (channels, levels)
    phase-aware gating (per column): c = GateBlock(V1), a = GELU(A V1);  g = G c;  z = Z (a * sigmoid(c))
                                     -> logits [4, L] per column = cat(g, z) + pi

Spatial context lives in the 2D encoder/decoder and in the coarse 3D scales; the full-resolution stage sees
one column at a time (its own query, the trilinearly upsampled coarse volume at that column, the level codes).
Hence `model(x, geom, columns=idx)` computes the 2D and coarse stages for the whole patch but the
full-resolution stage only for the N requested columns, and equals the dense output gathered there.

Ablations (config flags): height="static" uses a fixed sinusoidal level code (no scene modulation, the
pixel queries stay); scales=(1,) has no coarse volumes (single scale); gating=False ends in one plain column
head for the 4 logits (train it with loss.form=softmax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import N_LEVELS
from .common import (LevelCode, Pyramid2D, check_columns, conv3d_block, gather_pixels, groups_for, pool_levels,
                     sample_volume, sgmagnet_options)

#: inference (no autograd) runs the full-resolution stage over this many columns at a time, bounding memory;
#: on CUDA larger chunks pay (H100, 128 px, batch 8, bf16: 174 / 262 / 283 samples/s at 8192 / 32768 / 131072,
#: bench_results/gpu/profile/predict_dense_chunk.txt)
DENSE_CHUNK = 8192
DENSE_CHUNK_CUDA = 65536


def column_layer(c: int, dilation: int = 1) -> nn.Sequential:
    """Conv1d (k=3 along height) + GroupNorm over one column's channels and levels + GELU: every statistic is
    per column, so the result for a column does not depend on which other columns are computed."""
    return nn.Sequential(nn.Conv1d(c, c, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.GroupNorm(groups_for(c), c), nn.GELU())


class ColumnBlocks(nn.Module):
    """Residual column layers with dilations 1, 2, 4, ... (vertical receptive field 1 + 2 * sum(dilations))."""

    def __init__(self, c: int, depth: int):
        super().__init__()
        self.layers = nn.ModuleList(column_layer(c, 2 ** (k % 3)) for k in range(depth))

    def forward(self, v):
        for layer in self.layers:
            v = v + layer(v)
        return v


class HeightCodes(nn.Module):
    """Level codes h [B, L, D] (scene-modulated when dynamic) and the logit prior [B, 4, L]."""

    def __init__(self, levels: int, dim: int, scene_dim: int, dynamic: bool = True):
        super().__init__()
        self.code = LevelCode(levels, dim, scene_dim, dynamic)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.prior = nn.Linear(dim, 4)

    def forward(self, scene: torch.Tensor):
        h = self.mlp(self.code(scene))
        return h, self.prior(h).transpose(1, 2)


class AuxHead(nn.Module):
    """Phase-aware gating on a coarse volume, per column (1x1x1, so gathered columns give the dense values):
    c = GELU(Conv(v)), a = GELU(Conv(v)); logits = cat(G c, Z (a * sigmoid(c))) -> [N, 4, n] from [N, C, n].
    Trained by the auxiliary losses on vertically pooled labels (loss.aux_weight)."""

    def __init__(self, c: int, gating: bool = True):
        super().__init__()
        self.gating = gating
        self.gate_feat = nn.Sequential(nn.Conv1d(c, c, 1), nn.GELU())
        if gating:
            self.phase_feat = nn.Sequential(nn.Conv1d(c, c, 1), nn.GELU())
            self.gate_out, self.phase_out = nn.Conv1d(c, 1, 1), nn.Conv1d(c, 3, 1)
        else:
            self.out = nn.Conv1d(c, 4, 1)

    def forward(self, v):
        c = self.gate_feat(v)
        if not self.gating:
            return self.out(c)
        return torch.cat([self.gate_out(c), self.phase_out(self.phase_feat(v) * torch.sigmoid(c))], 1)


class SGMAGNet(nn.Module):
    SIZES = {"tiny": dict(width=8, vol=(8, 8, 8), height_dim=16, depth=2),
             "demo": dict(width=16, vol=(24, 8, 16), height_dim=32, depth=3),
             "paper": dict(width=48, vol=(64, 24, 48), height_dim=128, depth=6)}

    def __init__(self, levels: int = N_LEVELS, width: int = 16, vol=(24, 8, 16), height_dim: int = 32, depth: int = 3,
                 height: str = "dynamic", scales=(1, 2, 4), gating: bool = True, aux: bool = False):
        super().__init__()
        self.levels, self.scales, self.gating = levels, sgmagnet_options(height, scales), gating
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        w = (width, 2 * width, 4 * width)
        self.pyramid = Pyramid2D(width)
        self.idx = [{1: 0, 2: 1, 4: 2}[s] for s in self.scales]
        self.heights = HeightCodes(levels, height_dim, w[2], dynamic=(height == "dynamic"))
        self.query = nn.ModuleList(nn.Conv2d(w[i], vol[i], 1) for i in self.idx)      # Q_i
        self.level = nn.ModuleList(nn.Linear(height_dim, vol[i], bias=False) for i in self.idx)   # K_i
        coarse = self.idx[1:]
        self.vol3d = nn.ModuleList(conv3d_block(vol[i], vol[i], 2 if i == 2 else 1) for i in coarse)
        self.fuse = nn.ModuleList(nn.Conv3d(vol[i + 1], vol[i], 1) for i in self.idx[:-1])
        c = vol[0]
        self.columns = ColumnBlocks(c, depth)
        if gating:
            self.gate_feat = column_layer(c)
            self.phase_feat = nn.Sequential(nn.Conv1d(c, c, 1), nn.GELU())
            self.gate_out = nn.Conv1d(c, 1, 1)
            self.phase_out = nn.Conv1d(c, 3, 1)
        else:
            self.head = nn.Sequential(column_layer(c), nn.Conv1d(c, 4, 1))
        if aux and len(self.scales) == 1:
            raise ValueError("aux heads need a coarse scale (scales (1, 2) or (1, 2, 4)), got scales (1,)")
        self.aux = None
        if aux:   # initialised from a forked generator: adding the heads leaves the rest of the run's randomness as is
            with torch.random.fork_rng(devices=[]):
                self.aux = nn.ModuleList(AuxHead(vol[i], gating) for i in coarse)

    # -- stages -----------------------------------------------------------------------------------------------
    def encode(self, x, geom):
        """The whole-patch stages: 2D features per scale, level codes, prior, and the fused coarse volume
        (already projected to the full-resolution channels), or None for the single-scale generator."""
        d = d1, _, e4 = self.pyramid(x, geom)
        h, prior = self.heights(e4.mean((2, 3)))
        v, coarse = None, {}
        for k in range(len(self.idx) - 1, 0, -1):                         # coarse scales, coarsest first
            i = self.idx[k]
            n = -(-self.levels // self.scales[k])
            hk = self.level[k](pool_levels(h, n)).transpose(1, 2)[..., None, None]   # [B, C, n, 1, 1]
            u = F.gelu(self.query[k](d[i])[:, :, None] + hk)             # [B, C, n, h, w]
            if v is not None:
                u = u + F.interpolate(v, size=u.shape[2:], mode="trilinear")
            coarse[k] = self.vol3d[k - 1](u)
            v = self.fuse[k - 1](coarse[k])
        return d1, h, prior, v, coarse

    def column_stage(self, f, bidx, h, prior, coarse):
        """The full-resolution stage for M columns: f [M, w] their 2D features D1, bidx [M] their sample,
        coarse [M, C, L] the upsampled coarse volume there (or None) -> logits [M, 4, L]."""
        q = F.linear(f, self.query[0].weight.flatten(1), self.query[0].bias)     # Q_1 at these columns only
        v = F.gelu(q[:, :, None] + self.level[0](h)[bidx].transpose(1, 2))    # [M, C, L]
        if coarse is not None:
            v = v + coarse
        v = self.columns(v)
        if self.gating:
            c = self.gate_feat(v)
            out = torch.cat([self.gate_out(c), self.phase_out(self.phase_feat(v) * torch.sigmoid(c))], 1)
        else:
            out = self.head(v)
        return out + prior[bidx]

    def aux_stage(self, vols: dict, idx: torch.Tensor) -> list[torch.Tensor]:
        """Auxiliary logits at the coarse scales for the columns idx: per coarse scale s (finest first) the
        coarse column under each labelled pixel, (b, row // s, col // s), -> [N, 4, ceil(L / s)]."""
        out = []
        for k in range(1, len(self.idx)):
            s = self.scales[k]
            vk = vols[k][idx[:, 0], :, :, idx[:, 1] // s, idx[:, 2] // s]          # [N, C, ceil(L / s)]
            out.append(self.aux[k - 1](vk))
        return out

    def forward(self, x: torch.Tensor, geom: torch.Tensor | None = None, columns=None, aux: bool = False):
        """Logits [B, 4, L, H, W], or [N, 4, L] at `columns`; with aux=True (columns only, model built with
        aux=True) also the list of auxiliary coarse-scale logits of `aux_stage`, as (logits, aux_logits)."""
        idx = None if columns is None else check_columns(columns, x)
        if aux and (idx is None or self.aux is None):
            raise ValueError("aux=True needs columns= and a model built with aux=True")
        d1, h, prior, v, vols = self.encode(x, geom)
        size = (self.levels, *x.shape[-2:])
        if idx is not None:
            coarse = None if v is None else sample_volume(v, idx, size)
            out = self.column_stage(gather_pixels(d1, idx), idx[:, 0], h, prior, coarse)
            return (out, self.aux_stage(vols, idx)) if aux else out
        B, _, H, W = d1.shape
        if torch.is_grad_enabled():    # dense training (the slow path the column path replaces): one pass
            coarse = None if v is None else F.interpolate(v, size=size, mode="trilinear").permute(0, 3, 4, 1, 2)
            out = self.column_stage(d1.permute(0, 2, 3, 1).reshape(B * H * W, -1),
                                    torch.arange(B, device=x.device).repeat_interleave(H * W), h, prior,
                                    None if coarse is None else coarse.reshape(B * H * W, -1, self.levels))
        else:                          # prediction: the column path over chunks of columns, bounded memory
            r, c = torch.meshgrid(torch.arange(H, device=x.device), torch.arange(W, device=x.device), indexing="ij")
            all_idx = torch.stack([torch.arange(B, device=x.device).repeat_interleave(H * W),
                                   r.reshape(-1).repeat(B), c.reshape(-1).repeat(B)], 1)
            out = torch.cat([self.column_stage(gather_pixels(d1, ix), ix[:, 0], h, prior,
                                               None if v is None else sample_volume(v, ix, size))
                             for ix in all_idx.split(DENSE_CHUNK_CUDA if x.is_cuda else DENSE_CHUNK)])
        return out.view(B, H, W, 4, self.levels).permute(0, 3, 4, 1, 2)
