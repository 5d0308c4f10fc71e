"""Building blocks shared by every model, and the input contract.

Every model maps x [B, 16, H, W] (normalised bands, NaN where missing) and optional geometry
geom [B, 2, H, W] (solar and satellite zenith, degrees) to logits [B, 4, 38, H, W]: channel 0 the cloud
gate logit, channels 1..3 the phase logits (DESIGN.md). `InputStem` is where missing data is handled:
NaNs become 0 and the fraction of valid bands per pixel is appended as a channel, so a model can tell
"missing" from "average"; cos(SOZ) and cos(SAZ) are appended too (zeros when no geometry is given), so
models know day from night and the viewing slant.

Band sets (`set_bands`, from `build_model(..., bands=...)`): "all" uses the 16 bands; "ir" only B07-B16 (the
infrared bands, which see the same by day and by night): B01-B06 and the solar zenith channel are zeroed, so an
IR model cannot learn from the sun. The input contract and the weights' shapes stay the same.
"""
from __future__ import annotations

import functools

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..grid import N_BANDS, N_GEOM

STEM_CHANNELS = N_BANDS + 1 + N_GEOM  # bands, valid fraction, cos SOZ, cos SAZ


def groups_for(c: int) -> int:
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


BAND_SETS = {"all": tuple(range(N_BANDS)), "ir": tuple(range(6, N_BANDS))}   # 0-based band indices


class InputStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.bands = "all"
        self.register_buffer("band_mask", torch.ones(N_BANDS, dtype=torch.bool), persistent=False)

    def set_bands(self, bands: str):
        if bands not in BAND_SETS:
            raise ValueError(f"unknown band set {bands!r}; choose one of {', '.join(BAND_SETS)}")
        self.bands = bands
        mask = torch.zeros(N_BANDS, dtype=torch.bool, device=self.band_mask.device)
        mask[list(BAND_SETS[bands])] = True
        self.band_mask = mask

    def forward(self, x: torch.Tensor, geom: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != N_BANDS:
            raise ValueError(f"expected input [B, {N_BANDS}, H, W], got {tuple(x.shape)}")
        use = self.band_mask[None, :, None, None]
        valid = torch.isfinite(x) & use
        x0 = torch.where(valid, x, torch.zeros_like(x))
        frac = valid.to(x0.dtype).sum(1, keepdim=True) / use.sum()
        if geom is None:
            g = x0.new_zeros(x.shape[0], N_GEOM, *x.shape[2:])
        else:
            g = torch.cos(torch.deg2rad(torch.nan_to_num(geom.to(x0.dtype), nan=90.0)))
            if self.bands == "ir":         # no sun for an infrared model
                g = torch.cat([torch.zeros_like(g[:, :1]), g[:, 1:]], 1)
        return torch.cat([x0, frac, g], 1)


def sinusoid(levels: int, dim: int) -> torch.Tensor:
    pos = torch.arange(levels, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(1000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    out = torch.zeros(levels, dim)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return out


class LevelCode(nn.Module):
    """The per-level code [B, L, D] the height encoders start from: dynamic = a learned embedding per level
    (sinusoidal init) plus a linear map of the scene vector; static = the fixed sinusoidal code."""

    def __init__(self, levels: int, dim: int, scene_dim: int, dynamic: bool = True):
        super().__init__()
        self.dynamic = dynamic
        if dynamic:
            self.embed = nn.Parameter(sinusoid(levels, dim) + 0.02 * torch.randn(levels, dim))
            self.scene = nn.Linear(scene_dim, dim)
        else:
            self.register_buffer("code", sinusoid(levels, dim))

    def forward(self, scene: torch.Tensor) -> torch.Tensor:
        if self.dynamic:
            return self.embed[None] + self.scene(scene)[:, None]
        return self.code[None].expand(scene.shape[0], -1, -1)


def pool_levels(h: torch.Tensor, n: int) -> torch.Tensor:
    """[B, L, D] -> [B, n, D] (mean over the levels a coarse level covers)."""
    return h if h.shape[1] == n else F.adaptive_avg_pool1d(h.transpose(1, 2), n).transpose(1, 2)


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


class Pyramid2D(nn.Module):
    """The 2D stage of SGMAGNet (v1 and v2): stem, encoder E1 (H, w) -> E2 (H/2, 2w) -> E4 (H/4, 4w) and the
    top-down decoder D2 = E2 + up(E4), D1 = E1 + up(D2). forward -> (D1, D2, D4 = E4)."""

    def __init__(self, width: int):
        super().__init__()
        w = (width, 2 * width, 4 * width)
        self.stem = InputStem()
        self.enc = nn.ModuleList([conv2d_block(STEM_CHANNELS, w[0]), conv2d_block(w[0], w[1]), conv2d_block(w[1], w[2])])
        self.lat = nn.ModuleList([nn.Conv2d(w[2], w[1], 1), nn.Conv2d(w[1], w[0], 1)])
        self.dec = nn.ModuleList([conv2d_block(w[1], w[1], 1), conv2d_block(w[0], w[0], 1)])

    def forward(self, x, geom=None):
        check_divisible(x, 4, "SGMAGNet")
        e1 = self.enc[0](self.stem(x, geom))
        e2 = self.enc[1](F.max_pool2d(e1, 2))
        e4 = self.enc[2](F.max_pool2d(e2, 2))
        d2 = self.dec[0](e2 + F.interpolate(self.lat[0](e4), size=e2.shape[-2:]))
        d1 = self.dec[1](e1 + F.interpolate(self.lat[1](d2), size=e1.shape[-2:]))
        return d1, d2, e4


def sgmagnet_options(height: str, scales) -> tuple:
    """The ablation switches shared by SGMAGNet v1 and v2, checked; returns the sorted scales."""
    if height not in ("dynamic", "static"):
        raise ValueError(f"height must be dynamic or static, got {height!r}")
    s = tuple(sorted(scales))
    if s not in ((1,), (1, 2), (1, 2, 4)):
        raise ValueError(f"scales must be (1,), (1, 2) or (1, 2, 4), got {scales}")
    return s


# ---- label-sparse columns (DESIGN.md, Interfaces: models) ------------------------------------------------
# `columns` = index [N, 3] (batch, row, col): a model called with it returns logits [N, 4, L] for those columns
# only, equal to its dense output gathered there. The helpers below are the exact column versions of the dense
# operations the models end with.

def check_columns(columns: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The index as int64 on x's device, after checking its shape and range (one clear error, not an
    out-of-bounds gather)."""
    if columns.dim() != 2 or columns.shape[1] != 3:
        raise ValueError(f"columns must be an index [N, 3] (batch, row, col), got {tuple(columns.shape)}")
    if columns.dtype.is_floating_point or columns.dtype == torch.bool:
        raise ValueError(f"columns must be an integer index, got {columns.dtype}")
    idx = columns.to(device=x.device, dtype=torch.long)
    if len(idx) and not torch.compiler.is_compiling():   # compiled: checked on the host (train/compiled.py), no sync
        hi = torch.tensor([x.shape[0], x.shape[-2], x.shape[-1]], device=idx.device)
        if bool(((idx < 0) | (idx >= hi)).any()):
            raise ValueError(f"columns out of range for input {tuple(x.shape)}")
    return idx


def gather_pixels(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] at idx [N, 3] -> [N, C]."""
    return feat[idx[:, 0], :, idx[:, 1], idx[:, 2]]


def head_columns(head: nn.Conv2d, feat: torch.Tensor, idx: torch.Tensor, levels: int) -> torch.Tensor:
    """A 1x1 Conv2d head emitting 4*L channels, evaluated only at the columns: [N, 4, L]."""
    y = F.linear(gather_pixels(feat, idx), head.weight.flatten(1), head.bias)
    return y.view(-1, 4, levels)


def dense_or_columns(logits: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """For models whose volumetric stage has no column path: the dense logits, gathered when asked."""
    return logits if idx is None else logits[idx[:, 0], :, :, idx[:, 1], idx[:, 2]]


def _source_index(dst: torch.Tensor, n_in: int, n_out: int):
    """PyTorch's linear-interpolation source indices and weights (align_corners=False, output size given)."""
    src = ((dst.to(torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    i1 = torch.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (src - i0)


def sample_volume(vol: torch.Tensor, idx: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """F.interpolate(vol, size, mode="trilinear") at the columns idx, without the dense volume:
    vol [B, C, l, h, w] -> [N, C, L] (bilinear in the plane from the 2x2 neighbours, then linear in height)."""
    L, H, W = size
    b = idx[:, 0]
    r0, r1, lr = _source_index(idx[:, 1], vol.shape[-2], H)
    c0, c1, lc = _source_index(idx[:, 2], vol.shape[-1], W)
    lr, lc = (t.to(vol.dtype)[:, None, None] for t in (lr, lc))
    top = vol[b, :, :, r0, c0] * (1 - lc) + vol[b, :, :, r0, c1] * lc
    bottom = vol[b, :, :, r1, c0] * (1 - lc) + vol[b, :, :, r1, c1] * lc
    cols = top * (1 - lr) + bottom * lr                                   # [N, C, l]
    return cols if cols.shape[-1] == L else cols @ linear_resize_matrix(cols.shape[-1], L, cols)


def linear_resize_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """[n_in, n_out] matrix M with x @ M == F.interpolate(x, size=n_out, mode="linear") (align_corners=False).

    A matrix product instead of F.interpolate for many short rows: CUDA's upsample_linear1d kernel runs one
    thread per output position and loops over all rows (measured on an H100: 97 % of SGMAGNet's dense
    prediction time and 60 % of a column-path training step went there). Built once per shape, device and
    dtype (every forward and every prediction chunk needs the same one)."""
    return _resize_matrix(n_in, n_out, like.device, like.dtype)


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    i0, i1, w = _source_index(torch.arange(n_out), n_in, n_out)
    m = torch.zeros(n_in, n_out, dtype=torch.float64)
    cols = torch.arange(n_out)
    m.index_put_((i0, cols), 1 - w, accumulate=True)
    m.index_put_((i1, cols), w, accumulate=True)
    return m.to(device=device, dtype=dtype)
