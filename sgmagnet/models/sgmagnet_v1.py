"""SGMAGNet v1 (kept for comparison; `sgmagnet_v1` in the registry): dynamic height encoder + multi-scale volumetric generator + phase-aware gating.

    x, geom ─ InputStem ─ 2D encoder E1 (H) ─ E2 (H/2) ─ E4 (H/4) ─ global pool ─ scene vector s
                          2D top-down decoder: D4 = E4, D2 = E2 + up(D4), D1 = E1 + up(D2)
    dynamic height encoder: level embedding e_l (learned, one per level) + MLP(s)  ->  h_l(scene)
                            -> per scale i and level l: FiLM (gamma_il, beta_il), and a logit prior
                               pi_l(scene) [4] added to the output (a scene-dependent climatology)
    volumetric generator:   V_i[:, :, l] = P_i(D_i) * (1 + gamma_il) + beta_il      (2D -> 3D lift)
                            scale i = 1, 2, 4 has H/i x W/i pixels and ceil(L/i) levels (FiLM pooled to it);
                            3D conv blocks at each scale; top-down fusion V2 += up(V4), V1 += up(V2)
    phase-aware gating:     c = conv3x3x3(V1), a = conv1x1x1(V1);  g = 1x1x1(c);  z = 1x1x1(a * sigmoid(c))
                            -> logits [B, 4, L, H, W] = cat(g, z)

The gate branch c decides cloud/clear; the phase branch sees its features only where the gate features
open (a * sigmoid(c)), so phase capacity is spent on cloudy voxels. The loss (losses.py) turns (g, z)
into probabilities with the phase-gated softmax.

Ablations (config flags): height="static" replaces the dynamic encoder by a fixed sinusoidal code of the
level altitude through a learned linear map (no scene modulation); scales=(1,) lifts only D1 (single-scale
generator); gating=False uses one plain 3D head for the 4 logits (train it with loss.form=softmax).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import N_LEVELS
from .common import LevelCode, Pyramid2D, check_columns, conv3d_block, dense_or_columns, pool_levels, sgmagnet_options


class HeightEncoder(nn.Module):
    """Per-scale FiLM parameters [B, L, C_i] from level embeddings, modulated by the scene vector."""

    def __init__(self, levels: int, dim: int, scene_dim: int, out_channels: list[int], dynamic: bool = True):
        super().__init__()
        self.code = LevelCode(levels, dim, scene_dim, dynamic)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.film = nn.ModuleList(nn.Linear(dim, 2 * c) for c in out_channels)
        self.prior = nn.Linear(dim, 4)      # per-level logit prior (the scene-dependent climatology)
        for f in self.film:  # start near the identity lift (small, not zero: gradients must reach every weight)
            nn.init.normal_(f.weight, std=0.02)
            nn.init.zeros_(f.bias)

    def forward(self, scene: torch.Tensor, levels: list[int]):
        """[(gamma, beta)] each [B, levels[i], C_i] (scale i works on a height grid pooled to levels[i]),
        and the logit prior [B, 4, L, 1, 1]."""
        h = self.mlp(self.code(scene))                                    # [B, L, D]
        out = [f(pool_levels(h, n)).chunk(2, dim=-1) for f, n in zip(self.film, levels)]
        return out, self.prior(h).transpose(1, 2)[..., None, None]


class SGMAGNetV1(nn.Module):
    SIZES = {"tiny": dict(width=8, vol=(4, 8, 8), height_dim=16),
             "demo": dict(width=16, vol=(8, 16, 24), height_dim=32),
             "paper": dict(width=48, vol=(16, 32, 64), height_dim=128)}

    def __init__(self, levels: int = N_LEVELS, width: int = 16, vol=(8, 16, 24), height_dim: int = 32,
                 height: str = "dynamic", scales=(1, 2, 4), gating: bool = True):
        super().__init__()
        self.levels, self.scales, self.gating = levels, sgmagnet_options(height, scales), gating
        w = (width, 2 * width, 4 * width)
        self.pyramid = Pyramid2D(width)
        idx = [{1: 0, 2: 1, 4: 2}[s] for s in self.scales]
        self.idx = idx
        self.proj = nn.ModuleList(nn.Conv2d(w[i], vol[i], 1) for i in idx)
        self.height = HeightEncoder(levels, height_dim, w[2], [vol[i] for i in idx], dynamic=(height == "dynamic"))
        self.vol3d = nn.ModuleList(conv3d_block(vol[i], vol[i], 2 if i else 1) for i in idx)
        self.fuse = nn.ModuleList(nn.Conv3d(vol[i + 1], vol[i], 1) for i in idx[:-1])
        c = vol[0]
        if gating:
            self.gate_feat = conv3d_block(c, c)
            self.phase_feat = nn.Sequential(nn.Conv3d(c, c, 1), nn.GELU())
            self.gate_out = nn.Conv3d(c, 1, 1)
            self.phase_out = nn.Conv3d(c, 3, 1)
        else:
            self.head = nn.Sequential(conv3d_block(c, c), nn.Conv3d(c, 4, 1))

    def forward(self, x: torch.Tensor, geom: torch.Tensor | None = None, columns=None) -> torch.Tensor:
        idx = None if columns is None else check_columns(columns, x)
        d = self.pyramid(x, geom)
        scene = d[2].mean((2, 3))
        nlev = [-(-self.levels // s) for s in self.scales]
        films, prior = self.height(scene, nlev)
        vols = []
        for k, i in enumerate(self.idx):
            p = self.proj[k](d[i])[:, :, None]                               # [B, C, 1, h, w]
            gamma, beta = (t.transpose(1, 2)[..., None, None] for t in films[k])  # [B, C, L, 1, 1]
            vols.append(p * (1 + gamma) + beta)
        v = self.vol3d[-1](vols[-1])
        for k in range(len(self.idx) - 2, -1, -1):                             # top-down 3D fusion
            up = F.interpolate(self.fuse[k](v), size=vols[k].shape[2:], mode="trilinear")
            v = self.vol3d[k](vols[k] + up)
        if not self.gating:
            return dense_or_columns(self.head(v) + prior, idx)
        c = self.gate_feat(v)
        out = torch.cat([self.gate_out(c), self.phase_out(self.phase_feat(v) * torch.sigmoid(c))], 1) + prior
        return dense_or_columns(out, idx)
