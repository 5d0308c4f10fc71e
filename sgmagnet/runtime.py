"""What this process runs on, decided once: training, evaluation, prediction and the benchmarks all ask here.

    rt = Runtime.resolve(device="auto", loss_impl="auto", loader="torch", bf16=False)   # or Runtime.for_run(cfg)
    rt.device    torch.device          auto = cuda when there is one (the rank's GPU), else cpu
    rt.fused     bool                  the Triton kernels for the loss and the argmax (loss.impl:
                                       auto = on CUDA; triton = always, CPU only under TRITON_INTERPRET=1;
                                       torch = never)
    rt.loader    "torch" | "dali"      the training stream's loader (data.loader: auto = dali on CUDA)
    rt.autocast()                      the bf16 autocast context of a forward pass (train.bf16)

A setting the machine cannot honour is a ConfigError naming the option, raised here and nowhere else.
Also here: seeding, and a model from its config or its checkpoint.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import kernels

from .models import build_model

if TYPE_CHECKING:
    from .checkpoint import SavedModel

# The config and checkpoint modules (PyYAML) are imported where they are needed: the benchmarks import this
# module on the lent GPU machine, whose python has torch and triton only.


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from .config import ConfigError
            raise ConfigError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def fused_kernels(impl: str, device: torch.device) -> bool:
    """loss.impl resolved for this device: whether the Triton kernels run."""
    if impl == "torch":
        return False
    if impl == "triton":
        if not kernels.usable_on(device):
            from .config import ConfigError
            raise ConfigError(f"loss.impl=triton needs a CUDA device or TRITON_INTERPRET=1 (device is {device})")
        return True
    return device.type == "cuda"


def loader_kind(requested: str, device: torch.device) -> str:
    """data.loader resolved for this device."""
    if requested == "auto":
        return "dali" if device.type == "cuda" else "torch"
    return requested


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    fused: bool = False
    loader: str = "torch"
    bf16: bool = False

    @classmethod
    def resolve(cls, device: str = "auto", loss_impl: str = "auto", loader: str = "torch", bf16: bool = False,
                local_rank: int = 0) -> "Runtime":
        dev = pick_device(device, local_rank)
        return cls(dev, fused_kernels(loss_impl, dev), loader_kind(loader, dev), bool(bf16))

    @classmethod
    def for_run(cls, cfg, local_rank: int = 0) -> "Runtime":
        """A training run's runtime (train.device, loss.impl, data.loader, train.bf16)."""
        return cls.resolve(cfg.train.device, cfg.loss.impl, cfg.data.loader, cfg.train.bf16, local_rank)

    def autocast(self, enabled: bool | None = None):
        """bf16 autocast for a forward pass (enabled: override, e.g. off under a DeepSpeed bf16 engine)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                              enabled=self.bf16 if enabled is None else enabled)

    def column_forward(self, model):
        """forward(x, geom, index) -> logits of the labelled columns [N, 4, L], under this runtime's autocast."""
        def forward(x, geom, index):
            with self.autocast():
                return model(x, geom, columns=index)
        return forward


def seed_everything(seed: int):
    import numpy as np          # here, not at the top: the GPU benchmarks import this module without numpy

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_from_config(cfg) -> torch.nn.Module:
    """The run's model: model.name/size/options, with SGMAGNet's coarse-scale aux heads when loss.aux_weight > 0."""
    opts = dict(cfg.model.options)
    if cfg.loss.aux_weight > 0:
        opts["aux"] = True
    return build_model(cfg.model.name, cfg.model.size, bands=getattr(cfg.model, "bands", "all"), **opts)


def load_model_from_checkpoint(path: str, device) -> tuple[torch.nn.Module, "SavedModel"]:
    """Model (eval mode) and its SavedModel from a run folder, checkpoint folder or state.pt."""
    from .checkpoint import load_saved, load_weights

    saved = load_saved(path)
    model = model_from_config(saved.config)
    load_weights(model, saved.model, f"{saved.folder}/state.pt",
                 f"the {saved.config.model.name}/{saved.config.model.size} model its own config describes")
    return model.to(device).eval(), saved
