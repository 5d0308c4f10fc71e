"""What a checkpoint holds, as a list of stateful parts (torchtitan's way: a checkpoint is a dict of them).

    common (rank 0, state.pt)      format, model weights, step, config, loss weights, world size, normaliser,
                                   what it was trained on (band set, solar zenith range of the training split),
                                   + the strategy's optimizer and schedule (plain/DDP; DeepSpeed writes its own)
    per rank (rank_NNNNN.pt)       every RNG state, the data stream's position (epoch, batch)

Exact resume restores every part, so the parameters equal those of an uninterrupted run; it needs the world
size the checkpoint was written with (a resized job starts from the weights: train.init_from).
"""
from __future__ import annotations

import os

from ..checkpoint import CKPT_FORMAT, load, load_common, load_weights, model_label, rng_state, set_rng_state
from ..config import Config, ConfigError, to_dict


class RunState:
    def __init__(self, cfg: Config, env, model, strategy, stream, weights, norm, trained_on: dict | None = None):
        self.cfg, self.env, self.model, self.strategy, self.stream = cfg, env, model, strategy, stream
        self.weights, self.norm = list(weights), norm
        self.trained_on = trained_on or {}
        self.step = 0

    def common(self) -> dict:
        d = {"format": CKPT_FORMAT, "model": self.model.state_dict(), "step": self.step,
             "config": to_dict(self.cfg), "loss_weights": self.weights, "world_size": self.env.world_size,
             "normaliser": {"mean": self.norm.mean.tolist(), "std": self.norm.std.tolist()},
             "trained_on": self.trained_on}
        d.update(self.strategy.state_dict())
        return d

    def per_rank(self) -> dict:
        return {"rng": rng_state(), "data": self.stream.state_dict() if hasattr(self.stream, "state_dict") else {}}

    def restore(self, folder: str):
        common = load_common(folder)
        if common["world_size"] != self.env.world_size:
            raise ConfigError(f"{folder} was written by {common['world_size']} ranks, this run has "
                              f"{self.env.world_size}: exact resume needs the same world size; start from its "
                              f"weights instead with train.init_from={folder}")
        have = model_label(common.get("config"))
        want = (f"this run's {model_label(to_dict(self.cfg))} model (resuming needs the model the run was started "
                f"with: undo the model.* overrides, or start a new train.run_dir)")
        self.strategy.load(folder, common, lambda model, state, source: load_weights(model, state, source, want, have))
        self.step = int(common["step"])
        rs = load(os.path.join(folder, f"rank_{self.env.rank:05d}.pt"))
        if hasattr(self.stream, "load_state_dict"):
            self.stream.load_state_dict(rs["data"])
        set_rng_state(rs["rng"])
