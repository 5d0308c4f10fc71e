"""What training, evaluation and prediction share: the device, seeding, and a model from a checkpoint."""
from __future__ import annotations

import random

import numpy as np
import torch

from .checkpoint import SavedModel, load_saved, load_weights
from .config import ConfigError
from .models import build_model


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_from_config(cfg) -> torch.nn.Module:
    """The run's model: model.name/size/options, with SGMAGNet's coarse-scale aux heads when loss.aux_weight > 0."""
    opts = dict(cfg.model.options)
    if cfg.loss.aux_weight > 0:
        opts["aux"] = True
    return build_model(cfg.model.name, cfg.model.size, **opts)


def load_model_from_checkpoint(path: str, device) -> tuple[torch.nn.Module, SavedModel]:
    """Model (eval mode) and its SavedModel from a run folder, checkpoint folder or state.pt."""
    saved = load_saved(path)
    model = model_from_config(saved.config)
    load_weights(model, saved.model, f"{saved.folder}/state.pt",
                 f"the {saved.config.model.name}/{saved.config.model.size} model its own config describes")
    return model.to(device).eval(), saved
