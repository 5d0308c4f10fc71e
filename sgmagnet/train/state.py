"""What a checkpoint holds, as a list of stateful parts (torchtitan's way: a checkpoint is a dict of them).

    common (rank 0, state.pt)      format, model weights, step, config, loss weights, world size, normaliser,
                                   what it was trained on (band set, solar zenith range of the training split),
                                   + the strategy's optimizer and schedule (plain/DDP; DeepSpeed writes its own)
                                   + the data layout (DataLayout: how many data streams, their batch)
    per rank (rank_NNNNN.pt)       every RNG state, the position (epoch, batch) of each data stream it reads

Exact resume restores every part, so the parameters equal those of an uninterrupted run.

Resume on another world size. The training data are V streams fixed when the run starts (V = its world
size): stream v is the loader a rank v of V would read (webdataset, seeded by seed/epoch/v), and one optimizer
step takes `per_step` batches of `stream_batch` samples from every stream -- the global batch. A run resumed on
W ranks reads the same streams: V/W whole streams per rank (W divides V: a rank accumulates one micro-batch
per stream), or 1/k of one stream's batches per rank (W = k V: rank v k + j keeps slice j of each batch).
Guarantee: every global batch after a resume on any such W is the same set of samples as without the
resize -- none repeated, none skipped. Any other W is refused with the batch settings that would work.
The model, the optimizer and the global batch must not change (exit 2 naming the change); the optimizer and
schedule states are replicated for plain/DDP runs (nothing to reshard) and resharded by DeepSpeed's
universal checkpoint for ZeRO (strategy.DeepSpeed). Safe changes (workers, log cadence, world size with the
same global batch, ...) are listed by `config_changes` and recorded in log.jsonl.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..checkpoint import CKPT_FORMAT, load, load_weights, model_label, rng_state, set_rng_state
from ..config import Config, ConfigError, to_dict

# config keys that must not change across a resume (the model's name, size and options are checked by
# load_weights with its own message; the band set is not visible in the weights' shapes)
FIXED = ("model.bands", "optim.name", "optim.lr", "optim.betas", "optim.weight_decay", "optim.schedule", "optim.warmup_steps",
         "optim.min_lr_ratio", "train.seed", "data.train_split", "data.shuffle_buffer", "data.resample",
         "data.epoch_batches")


@dataclass(frozen=True)
class DataLayout:
    """The run's data streams (module docstring): fixed when the run starts, kept in every checkpoint."""
    streams: int            # V
    stream_batch: int       # samples per stream batch
    per_step: int           # batches each stream gives per optimizer step

    @property
    def global_batch(self) -> int:
        return self.streams * self.stream_batch * self.per_step

    @classmethod
    def fresh(cls, cfg: Config, world: int) -> "DataLayout":
        return cls(world, cfg.data.batch_size, cfg.optim.accum)

    @classmethod
    def of_checkpoint(cls, common: dict) -> "DataLayout":
        """A checkpoint's layout; those written before layouts were recorded had one stream per rank."""
        if "data_layout" in common:
            return cls(**common["data_layout"])
        c = common["config"]
        return cls(int(common["world_size"]), int(c["data"]["batch_size"]), int(c["optim"]["accum"]))

    def share(self, rank: int, world: int) -> tuple[list[int], int, int]:
        """(streams this rank reads, k, j): rank reads whole batches of its streams (k = 1) or slice j of k."""
        if self.streams % world == 0:
            m = self.streams // world
            return list(range(rank * m, (rank + 1) * m)), 1, 0
        k = world // self.streams
        return [rank // k], k, rank % k

    def check(self, world: int, batch: int, accum: int, where: str):
        """The run's data.batch_size / optim.accum on `world` ranks must give the same global batch, in a
        shape the streams can be split into; else a ConfigError naming both values and what would work."""
        have = batch * accum * world
        V, b, c = self.streams, self.stream_batch, self.per_step
        if V % world == 0:
            want_b, want_a = b, c * (V // world)
        elif world % V == 0 and b % (world // V) == 0:
            want_b, want_a = b // (world // V), c
        else:
            raise ConfigError(f"{where}: the run reads {V} data stream(s) of {b}-sample batches; {world} rank(s) can "
                              f"share them only when {world} divides {V} or is a multiple of it that divides the "
                              f"batches (resume on such a number of ranks)")
        if have != self.global_batch:
            raise ConfigError(f"{where}: global batch {self.global_batch} (data.batch_size={b} x optim.accum={c} x "
                              f"{V} ranks) but this run's is {have} (data.batch_size={batch} x optim.accum={accum} x "
                              f"{world} ranks): keep it, e.g. data.batch_size={want_b} optim.accum={want_a} on "
                              f"{world} rank(s)")
        if (batch, accum) != (want_b, want_a):
            raise ConfigError(f"{where}: on {world} rank(s) the run's {V} data stream(s) need data.batch_size="
                              f"{want_b} optim.accum={want_a} (this run: data.batch_size={batch} "
                              f"optim.accum={accum}; same global batch {have}, other split)")


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "options":
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(common: dict, cfg: Config, world: int, where: str) -> dict:
    """{key: [checkpoint value, this run's value]} of the config keys that differ (and the world size);
    a change of a FIXED key is a ConfigError naming it and both values."""
    old, new = flat(common.get("config") or {}), flat(to_dict(cfg))
    changes = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    for k in FIXED:
        if k in changes and k in old:
            a, b = changes[k]
            raise ConfigError(f"{where}: {k} was {a!r} in the checkpoint and is {b!r} in this run: a resume keeps the "
                              f"optimizer, its schedule and the data order (undo the override, or start a new "
                              f"train.run_dir with train.init_from={common.get('folder', where)})")
    if "train.deepspeed" in changes and bool(changes["train.deepspeed"][0]) != bool(changes["train.deepspeed"][1]):
        a, b = changes["train.deepspeed"]
        raise ConfigError(f"{where}: train.deepspeed was {a!r} in the checkpoint and is {b!r} in this run: the "
                          f"optimizer state of a DeepSpeed run and of a plain/DDP run are stored differently; resume "
                          f"with the same backend (or start a new train.run_dir with train.init_from)")
    if int(common["world_size"]) != world:
        changes["world_size"] = [int(common["world_size"]), world]
    return changes


def check_resume(run_dir: str, cfg: Config, world: int):
    """What `--resume` on `world` ranks would continue -- (checkpoint folder, its common state, its data layout,
    the allowed config changes) -- or None when the run folder has no checkpoint; a resume that cannot be
    made is a ConfigError (DataLayout.check, config_changes). Used by the trainer, and by `submit train
    --resume` before anything is queued."""
    from ..checkpoint import latest_in, load_common

    path = latest_in(os.path.join(run_dir, "checkpoints"))
    if path is None:
        return None
    common, where = load_common(path), f"--resume {path}"
    layout = DataLayout.of_checkpoint(common)
    layout.check(world, cfg.data.batch_size, cfg.optim.accum, where)
    return path, common, layout, config_changes(common, cfg, world, where)


class RunState:
    def __init__(self, cfg: Config, env, model, strategy, stream, weights, norm, trained_on: dict | None = None,
                 layout: DataLayout | None = None):
        self.cfg, self.env, self.model, self.strategy, self.stream = cfg, env, model, strategy, stream
        self.weights, self.norm = list(weights), norm
        self.trained_on = trained_on or {}
        self.layout = layout or DataLayout.fresh(cfg, env.world_size)
        self.step = 0

    def common(self) -> dict:
        d = {"format": CKPT_FORMAT, "model": self.model.state_dict(), "step": self.step,
             "config": to_dict(self.cfg), "loss_weights": self.weights, "world_size": self.env.world_size,
             "normaliser": {"mean": self.norm.mean.tolist(), "std": self.norm.std.tolist()},
             "trained_on": self.trained_on, "data_layout": asdict(self.layout)}
        d.update(self.strategy.state_dict())
        return d

    def per_rank(self) -> dict:
        return {"rng": rng_state(), "data": self.stream.state_dict() if hasattr(self.stream, "state_dict") else {}}

    def restore(self, folder: str, common: dict):
        """Every part from checkpoint `folder` (its common state `common`, already checked by the trainer
        with DataLayout.check and config_changes): weights, optimizer and schedule (the strategy), step, and
        the RNG and stream positions from the old ranks' files (each stream's position from the old rank that
        read it; this rank's RNG from the old rank that read its first stream)."""
        old_world = int(common["world_size"])
        files = [os.path.join(folder, f"rank_{r:05d}.pt") for r in range(old_world)]
        for f in files:
            if not os.path.exists(f):
                raise ConfigError(f"{f}: missing: {folder} was written by {old_world} rank(s), one file each; the "
                                  f"checkpoint is incomplete (resume from an earlier one, or start from its weights "
                                  f"with train.init_from={folder})")
        have = model_label(common.get("config"))
        want = (f"this run's {model_label(to_dict(self.cfg))} model (resuming needs the model the run was started "
                f"with: undo the model.* overrides, or start a new train.run_dir)")
        self.strategy.load(folder, common, lambda model, state, source: load_weights(model, state, source, want, have))
        self.step = int(common["step"])
        old = DataLayout.of_checkpoint(common)
        positions, rng_of_stream = {}, {}
        for r, f in enumerate(files):
            d = load(f)
            data = d.get("data") or {}
            held = ({int(v): p for v, p in data["streams"].items()} if "streams" in data
                    else ({r: data} if data else {}))       # before layouts: rank r read stream r
            for v, p in held.items():
                positions.setdefault(v, p)
                rng_of_stream.setdefault(v, d["rng"])
            if not held:
                rng_of_stream.setdefault(r * max(1, old.streams // old_world), d["rng"])
        if hasattr(self.stream, "load_state_dict"):
            self.stream.load_state_dict({"streams": positions})
        mine, _, _ = self.layout.share(self.env.rank, self.env.world_size)
        set_rng_state(rng_of_stream.get(mine[0]) or rng_of_stream[min(rng_of_stream)])
