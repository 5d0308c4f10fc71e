"""How a step runs on the ranks: the one module that knows the backends apart.

    Plain      one process: autocast forward, backward, clip, optimizer and scheduler step
    DDP        the same across ranks, gradients all-reduced by DistributedDataParallel (no_sync while
               accumulating micro-batches)
    DeepSpeed  a DeepSpeed engine (ZeRO 0-2, bf16 by the engine): it owns the backward, clipping, the
               optimizer and LR steps, and its own checkpoint files

Each offers the same parts to the trainer: `module` (what forward calls), forward, zero_grad, accumulating(i,
n), backward(loss, n), step() -> gradient norm, lr(), state_dict()/load(folder, common) (the optimizer and
schedule in a checkpoint) and save_extra (files the backend writes beside ours). `build` picks one from the
config and the world size.

The loss handed to backward is the mean over the global batch (trainer.train_step: divided by the global
weight sum); DDP and DeepSpeed average gradients over ranks, and DeepSpeed also over accumulation steps, so
each strategy scales the loss to undo what its backend divides by: every backend then gives the
single-process gradient of the same global batch.
"""
from __future__ import annotations

import contextlib
import json
import os

import torch

from ..config import Config, ConfigError


class Plain:
    name = "plain"

    def __init__(self, model, opt, sched, cfg: Config, rt, world_size: int = 1):
        self.model, self.opt, self.sched, self.cfg, self.rt, self.world = model, opt, sched, cfg, rt, world_size
        self.module = model

    def describe(self) -> str:
        return self.name

    def prepare(self, x, geom):
        """Inputs as the module takes them (autocast handles the dtype here)."""
        return x, geom

    def autocast(self):
        return self.rt.autocast()

    def forward(self, x, geom, columns=None, aux: bool = False):
        x, geom = self.prepare(x, geom)
        with self.autocast():
            if aux:
                return self.module(x, geom, columns=columns, aux=True)
            return self.module(x, geom, columns=columns)

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)

    def accumulating(self, i: int, n: int):
        """The context of micro-batch i of n (DDP: gradients are synchronised on the last one only)."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, n_micro: int):
        (loss * self.world).backward()

    def step(self) -> torch.Tensor | float:
        """Clip (optim.clip > 0), optimizer step, LR step; the gradient norm before clipping (a device tensor:
        no host sync; the trainer reads it when it logs)."""
        clip = self.cfg.optim.clip
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.opt.step()
        self.sched.step()
        return gnorm

    def lr(self) -> float:
        get = getattr(self.sched, "get_last_lr", None)
        return get()[0] if get is not None else float("nan")

    def state_dict(self) -> dict:
        """The optimizer and schedule, kept in the checkpoint's common state."""
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()}

    def load(self, folder: str, common: dict, check):
        """Resume from checkpoint `folder` whose common state is `common`; check(model, state, source) loads the
        weights with the run's error message."""
        check(self.model, common["model"], f"--resume {folder}")
        self.opt.load_state_dict(common["optimizer"])
        self.sched.load_state_dict(common["scheduler"])

    save_extra = None        # (folder, tag) -> files the backend writes into a checkpoint (DeepSpeed's own)


class DDP(Plain):
    name = "DDP"

    def __init__(self, model, opt, sched, cfg: Config, rt, world_size: int):
        super().__init__(model, opt, sched, cfg, rt, world_size)
        self.module = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False)

    def accumulating(self, i: int, n: int):
        return contextlib.nullcontext() if i == n - 1 else self.module.no_sync()


class DeepSpeed(Plain):
    name = "DeepSpeed"

    def __init__(self, model, opt, sched, cfg: Config, rt, world_size: int, universal: bool = False):
        import deepspeed

        super().__init__(model, opt, sched, cfg, rt, world_size)
        ds = deepspeed_config(cfg, world_size)
        self.universal = universal
        if universal:                 # resume on another world size: DeepSpeed reshards its universal checkpoint
            ds["checkpoint"] = {**ds.get("checkpoint", {}), "load_universal": True}
        self.engine, self.opt, _, self.sched = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=ds)
        self.module = self.engine

    def describe(self) -> str:
        return f"DeepSpeed {os.path.basename(self.cfg.train.deepspeed)}"

    def prepare(self, x, geom):
        """Inputs in the dtype of a bf16 engine's parameters (the engine, not autocast, runs bf16)."""
        if self.engine.bfloat16_enabled():
            return x.bfloat16(), geom.bfloat16()
        return x, geom

    def autocast(self):
        return self.rt.autocast(enabled=False)

    def zero_grad(self):
        pass                      # the engine zeroes after its own step

    def backward(self, loss: torch.Tensor, n_micro: int):
        self.engine.backward(loss * self.world * n_micro)
        self.engine.step()        # steps the optimizer and LR at the accumulation boundary only

    def step(self) -> float:
        g = self.engine.get_global_grad_norm()
        return float(g) if g is not None else float("nan")

    def state_dict(self) -> dict:
        return {}                 # the engine writes its own files (save_extra)

    def load(self, folder: str, common: dict, check):
        """Same world size: the engine's own files. Another world size: DeepSpeed's universal checkpoint of
        `folder` (made once by rank 0 with deepspeed.checkpoint.ds_to_universal into folder/universal, then
        loaded by every rank, which takes its new ZeRO partition of the optimizer state from it)."""
        if not self.universal:
            self.engine.load_checkpoint(os.path.dirname(folder), tag=os.path.basename(folder))
            return
        from .. import dist as hdist

        if torch.distributed.get_rank() == 0:          # DeepSpeed always runs in a process group
            to_universal(folder)
        hdist.barrier()
        self.engine.load_checkpoint(folder, tag="universal", load_module_strict=True)

    def save_extra(self, folder: str, tag: str):
        self.engine.save_checkpoint(folder, tag=tag, save_latest=False)


def build(model, opt, sched, cfg: Config, rt, env, resharded: bool = False) -> Plain:
    """train.deepspeed set: DeepSpeed; else DDP across ranks; else Plain. resharded: the run resumes a
    checkpoint written by another number of ranks (DeepSpeed then loads it as a universal checkpoint; the
    plain/DDP optimizer state is replicated on every rank, so any world size loads it as it is)."""
    if cfg.train.deepspeed:
        return DeepSpeed(model, opt, sched, cfg, rt, env.world_size, universal=resharded)
    if env.distributed:
        return DDP(model, opt, sched, cfg, rt, env.world_size)
    return Plain(model, opt, sched, cfg, rt, env.world_size)


def to_universal(folder: str) -> str:
    """DeepSpeed's universal form of the ZeRO checkpoint in `folder` -> folder/universal (once: written beside
    and renamed, so an interrupted conversion is redone). DeepSpeed's own converter; its UNIVERSAL_CHECKPOINT_INFO
    is injected (a plain model needs no tensor/pipeline-parallel metadata)."""
    import contextlib
    import io
    import shutil
    import sys

    out = os.path.join(folder, "universal")
    if os.path.isdir(out):
        return out
    from deepspeed.checkpoint import ds_to_universal

    part = out + ".partial"
    shutil.rmtree(part, ignore_errors=True)
    argv, sys.argv = sys.argv, ["ds_to_universal", "--input_folder", folder, "--output_folder", part,
                                "--inject_missing_state", "--num_extract_workers", "1", "--num_merge_workers", "1"]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            ds_to_universal.main(ds_to_universal.parse_arguments())     # the converter's own options and defaults
    finally:
        sys.argv = argv
    os.replace(part, out)
    return out


def deepspeed_config(cfg: Config, world: int) -> dict:
    """The DeepSpeed JSON with our batch settings filled in, or a clear error where they disagree."""
    path = cfg.train.deepspeed
    try:
        with open(path) as f:
            ds = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: cannot read DeepSpeed config ({e})") from None
    micro, accum = cfg.data.batch_size, cfg.optim.accum
    want = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
            "train_batch_size": micro * accum * world}
    for k, v in want.items():
        if k in ds and ds[k] != v:
            raise ConfigError(f"{path}: {k} = {ds[k]} but data.batch_size={micro} x optim.accum={accum} x "
                              f"{world} ranks gives {k} = {v} (micro-batch x accumulation x world = global batch)")
        ds[k] = v
    if "optimizer" in ds or "scheduler" in ds:
        raise ConfigError(f"{path}: set the optimizer and LR schedule in the run config (optim.*), not in the "
                          f"DeepSpeed JSON (the same ones then serve the plain and the DeepSpeed loops)")
    ds.setdefault("gradient_clipping", cfg.optim.clip)
    if cfg.train.bf16 and not ds.get("bf16", {}).get("enabled"):
        raise ConfigError(f"train.bf16=true but {path} does not enable bf16 (use configs/deepspeed/zero2_bf16.json)")
    ds.setdefault("steps_per_print", 10 ** 9)
    return ds
