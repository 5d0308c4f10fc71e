"""Building blocks shared by every model, and the input contract.

Every model maps x [B, 16, H, W] (normalised bands, NaN where missing) and optional geometry
geom [B, 2, H, W] (solar and satellite zenith, degrees) to logits [B, 4, 38, H, W]: channel 0 the cloud
gate logit, channels 1..3 the phase logits (DESIGN.md). `InputStem` is where missing data is handled:
NaNs become 0 and the fraction of valid bands per pixel is appended as a channel, so a model can tell
"missing" from "average"; cos(SOZ) and cos(SAZ) are appended too (zeros when no geometry is given), so
models know day from night and the viewing slant.
"""
from __future__ import annotations

import torch
from torch import nn

IN_BANDS = 16
STEM_CHANNELS = IN_BANDS + 3  # bands, valid fraction, cos SOZ, cos SAZ


def groups_for(c: int) -> int:
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class InputStem(nn.Module):
    def forward(self, x: torch.Tensor, geom: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != IN_BANDS:
            raise ValueError(f"expected input [B, {IN_BANDS}, H, W], got {tuple(x.shape)}")
        valid = torch.isfinite(x)
        x0 = torch.where(valid, x, torch.zeros_like(x))
        frac = valid.to(x0.dtype).mean(1, keepdim=True)
        if geom is None:
            g = x0.new_zeros(x.shape[0], 2, *x.shape[2:])
        else:
            g = torch.cos(torch.deg2rad(torch.nan_to_num(geom.to(x0.dtype), nan=90.0)))
        return torch.cat([x0, frac, g], 1)


def _block(conv, cin: int, cout: int, n: int) -> nn.Sequential:
    """n x (3^d convolution without bias, GroupNorm, GELU)."""
    layers = []
    for i in range(n):
        layers += [conv(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.GroupNorm(groups_for(cout), cout), nn.GELU()]
    return nn.Sequential(*layers)


def conv2d_block(cin: int, cout: int, n: int = 2) -> nn.Sequential:
    return _block(nn.Conv2d, cin, cout, n)


def conv3d_block(cin: int, cout: int, n: int = 1) -> nn.Sequential:
    return _block(nn.Conv3d, cin, cout, n)


def to_volume(y: torch.Tensor, levels: int) -> torch.Tensor:
    """[B, 4*L, H, W] (class-major) -> [B, 4, L, H, W]."""
    b, _, h, w = y.shape
    return y.view(b, 4, levels, h, w)


def check_divisible(x: torch.Tensor, k: int, name: str):
    if x.shape[-1] % k or x.shape[-2] % k:
        raise ValueError(f"{name} needs H and W divisible by {k}, got {tuple(x.shape[-2:])}")
