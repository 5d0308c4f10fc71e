"""The run's optimizer, learning-rate schedule and loss, built from the config."""
from __future__ import annotations

import math

import torch

from ..config import Config
from ..losses import SparseLoss, class_weights
from ..shards import Manifest


def build_optimizer(cfg: Config, model) -> torch.optim.Optimizer:
    o = cfg.optim
    kw = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    # on CUDA the fused implementation: one kernel for all parameters instead of a few per parameter group
    # (the same update; DeepSpeed wraps the optimizer it is given, so it keeps torch's default there)
    fused = {"fused": True} if next(model.parameters()).is_cuda and not cfg.train.deepspeed else {}
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), **kw, **fused)
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), **kw, **fused)
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.betas[0], weight_decay=o.weight_decay)


def build_scheduler(cfg: Config, opt) -> torch.optim.lr_scheduler.LambdaLR:
    o, total = cfg.optim, cfg.train.steps

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        t = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def resolve_loss_weights(cfg: Config, manifest: Manifest) -> list[float]:
    w = cfg.loss.weights
    if w == "manifest":
        return class_weights(manifest.train_class_frequency, cfg.loss.power).tolist()
    if w == "none":
        return [1.0] * 4
    return [float(v) for v in w]          # 4 finite non-negative numbers (config.validate)


def make_loss(cfg: Config, weights, rt) -> SparseLoss:
    """The loss component; whether its fused kernel runs was decided by the runtime (loss.impl)."""
    return SparseLoss(weights, gamma=cfg.loss.gamma, fused=rt.fused, form=cfg.loss.form).to(rt.device)
