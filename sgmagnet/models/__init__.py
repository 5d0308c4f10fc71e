"""Model registry: every model maps x [B,16,H,W] (+ geom [B,2,H,W]) to logits [B,4,38,H,W]; with
columns=index [N,3] (b, row, col) to logits [N,4,38] at those columns only (DESIGN.md, Interfaces).

    build_model("sgmagnet", size="demo", **overrides)

Sizes: `tiny` (tests), `demo` (CPU, minutes), `paper` (GPU). Overrides are constructor arguments
(e.g. width=32, height="static", scales=(1,), gating=False for SGMAGNet).
"""
from __future__ import annotations

import torch
from torch import nn

from ..grid import N_BANDS, N_LEVELS
from .segnet import SegNet
from .sgmagnet import SGMAGNet
from .sgmagnet_v1 import SGMAGNetV1
from .transformer import Transformer
from .unet import UNet2D, UNet3DLift

MODELS = {"sgmagnet": SGMAGNet, "sgmagnet_v1": SGMAGNetV1, "unet": UNet2D, "unet3d": UNet3DLift, "segnet": SegNet, "transformer": Transformer}


def build_model(name: str, size: str = "demo", levels: int = N_LEVELS, bands: str = "all", **overrides) -> nn.Module:
    """bands: the band set every input stem uses ("all" or "ir" = B07-B16 without the sun; models/common.py)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cls = MODELS[name]
    if size not in cls.SIZES:
        raise ValueError(f"unknown size {size!r} for {name}; choose one of {', '.join(cls.SIZES)}")
    kw = dict(cls.SIZES[size])
    kw.update(overrides)
    try:
        model = cls(levels=levels, **kw)
    except TypeError as e:
        raise ValueError(f"bad option for model {name}: {e}") from None
    from .common import InputStem
    for m in model.modules():
        if isinstance(m, InputStem):
            m.set_bands(bands)
    return model


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def track_columns(batch: int, size: int) -> torch.Tensor:
    """A diagonal CloudSat-like track through each patch: index [batch*size, 3] (b, row, col), i.e. 1/size of
    the columns (0.8 % at 128 px), the label density of real patches."""
    r = torch.arange(size)
    return torch.stack([torch.arange(batch).repeat_interleave(size), r.repeat(batch), r.flip(0).repeat(batch)], 1)


def flops_per_sample(model: nn.Module, size: int = 128, columns: bool = False) -> int:
    """Forward FLOPs for one [1,16,size,size] sample, counted by torch.utils.flop_counter (convs, matmuls,
    einsums, attention; elementwise ops are not counted). columns=True: the label-sparse forward over one
    track of `size` columns (what training and evaluation run); else the dense volume (prediction)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, N_BANDS, size, size)
    g = torch.zeros(1, 2, size, size)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x, g, columns=track_columns(1, size) if columns else None)
    model.train(was)
    return int(fc.get_total_flops())
