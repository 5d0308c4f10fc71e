"""Checkpoints: one folder per step, written so that a crash at any moment leaves the previous one usable.

    checkpoints/step_0000060/state.pt        rank 0: model weights, config, normaliser, loss weights, step
                                             (+ optimizer and scheduler when DeepSpeed is not used)
    checkpoints/step_0000060/rank_00000.pt   every rank: its RNG states and data-loader position
    checkpoints/step_0000060/*               DeepSpeed's own files (engine.save_checkpoint, every rank)
    checkpoints/latest                       the name of the newest complete folder
    checkpoints/best/state.pt, best.json     weights (no optimizer) of the best validation macro F1 so far

Save protocol (all ranks): write into `step_N.partial/`, barrier, rank 0 renames it to `step_N/`, then
replaces `latest` atomically (temp file + fsync + rename), prunes old folders, barrier. `latest` is
written last, so it always names a complete checkpoint. Our files are loaded with
`torch.load(weights_only=True)`; the RNG states are stored as tensors and plain lists for that reason.
"""
from __future__ import annotations

import contextlib
import os
import random
import shutil
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .io import write_text

if TYPE_CHECKING:
    from .config import Config

CKPT_FORMAT = 2


def rng_state() -> dict:
    np_state = np.random.get_state()
    py = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": [py[0], list(py[1]), py[2]]}


def set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, a file size limit, I/O error): an environment
    failure (exit 1). What was written of it is removed; the previous checkpoint and `latest` are intact."""


def _save(obj, path: str):
    tmp = f"{path}.tmp"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:     # torch.save reports a failed write as a RuntimeError
        with contextlib.suppress(OSError):
            os.remove(tmp)
        why = getattr(e, "strerror", None) or " ".join(str(e).split())[:160]
        raise CheckpointWriteError(f"cannot write {path}: {why} (the file system refused the write: full, over "
                                   f"quota or a file size limit?)") from None


def load(path: str, device="cpu") -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - name the file and the reason
        raise ValueError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {str(e)[:200]})") from None


class Checkpointer:
    def __init__(self, folder: str, keep: int = 2, rank: int = 0, world: int = 1, barrier=lambda: None):
        self.folder, self.keep, self.rank, self.world, self.barrier = folder, keep, rank, world, barrier
        os.makedirs(folder, exist_ok=True)

    def save(self, step: int, common: dict, rank_state: dict, extra=None) -> str:
        """extra(folder, tag): files a training backend writes into the checkpoint itself (DeepSpeed's engine)."""
        name = f"step_{step:07d}"
        part, final = os.path.join(self.folder, name + ".partial"), os.path.join(self.folder, name)
        if self.rank == 0:
            shutil.rmtree(part, ignore_errors=True)
            os.makedirs(part)
        self.barrier()
        try:
            if extra is not None:
                extra(self.folder, name + ".partial")
            if self.rank == 0:
                _save(common, os.path.join(part, "state.pt"))
            _save(rank_state, os.path.join(part, f"rank_{self.rank:05d}.pt"))
        except CheckpointWriteError as e:
            shutil.rmtree(part, ignore_errors=True)      # (each rank that fails; a rank that waits is ended by it)
            prev = self.latest() if self.rank == 0 else None
            raise CheckpointWriteError(f"{e}; {'the previous checkpoint ' + prev + ' is intact' if prev else 'no earlier checkpoint'}") from None
        self.barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(part, final)
            write_text(os.path.join(self.folder, "latest"), name + "\n")
            olds = sorted(d for d in os.listdir(self.folder)
                          if d.startswith("step_") and not d.endswith(".partial") and d != name)
            for d in olds[:max(0, len(olds) - self.keep + 1)] if self.keep > 0 else []:
                shutil.rmtree(os.path.join(self.folder, d), ignore_errors=True)
        self.barrier()
        return final

    def latest(self) -> str | None:
        return latest_in(self.folder)

    def save_best(self, common: dict, info: dict) -> str:
        """Rank 0: the weights of the best validation so far -> `best/state.pt` (+ `best/best.json`: step and
        score), written beside `best.partial/` and renamed, so a crash leaves the previous best whole.
        No optimizer state: `best/` is for evaluation and prediction, resuming uses `latest`."""
        import json

        part, final = os.path.join(self.folder, "best.partial"), os.path.join(self.folder, "best")
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        try:
            _save({k: v for k, v in common.items() if k not in ("optimizer", "scheduler")}, os.path.join(part, "state.pt"))
            write_text(os.path.join(part, "best.json"), json.dumps(info) + "\n")
        except OSError as e:
            shutil.rmtree(part, ignore_errors=True)
            raise CheckpointWriteError(f"{e}; the previous best/ is intact") from None
        old = final + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, old)
        os.replace(part, final)
        shutil.rmtree(old, ignore_errors=True)
        return final

    def best_info(self) -> dict:
        """{"step", "val_macro_f1"} of `best/`, or {} when there is none."""
        import json

        path = os.path.join(self.folder, "best", "best.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return json.load(f)


def latest_in(folder: str) -> str | None:
    """The checkpoint folder named by `folder/latest`, or None when there is no marker."""
    m = os.path.join(folder, "latest")
    if not os.path.exists(m):
        return None
    with open(m) as f:
        p = os.path.join(folder, f.read().strip())
    if not os.path.exists(os.path.join(p, "state.pt")):
        raise FileNotFoundError(f"{m} names {p}, which has no state.pt")
    return p


def resolve(path: str) -> str:
    """A run folder, a checkpoint folder or a state.pt -> the checkpoint folder."""
    if os.path.isfile(path):
        if os.path.basename(path) != "state.pt":       # the folder holds more than this file (best.json, shards)
            raise FileNotFoundError(f"{path}: not a checkpoint: give a run folder, a checkpoint folder or its "
                                    "state.pt")
        return os.path.dirname(os.path.abspath(path))
    if os.path.exists(os.path.join(path, "state.pt")):
        return path
    found = latest_in(os.path.join(path, "checkpoints"))
    if found is None:
        raise FileNotFoundError(f"{path}: not a checkpoint (no state.pt) nor a run folder with checkpoints/latest")
    return found


def load_common(path: str) -> dict:
    folder = resolve(path)
    ck = load(os.path.join(folder, "state.pt"))
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise ValueError(f"{folder}/state.pt: not an sgmagnet checkpoint (format {CKPT_FORMAT})")
    ck["folder"] = folder
    return ck


def model_label(config: dict) -> str:
    """'sgmagnet/tiny' (+ its options) from a checkpoint's config dict: how messages name a model."""
    m = (config or {}).get("model", {})
    opts = m.get("options") or {}
    return f"{m.get('name', '?')}/{m.get('size', '?')}" + (f" {opts}" if opts else "")


def load_weights(model: torch.nn.Module, state: dict, source: str, want: str, have: str = ""):
    """model.load_state_dict(state), or -- when the weights were made for another model, size or options -- a
    ValueError in one line: which checkpoint, what it holds (`have`), what was asked for (`want`), and the
    first difference (instead of PyTorch's list of every missing and mis-shaped tensor)."""
    own = model.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{source}: holds no model weights")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shaped:
        first = (f"no {missing[0]}" if missing else f"an unknown {unexpected[0]}" if unexpected else
                 f"{shaped[0]} is {tuple(state[shaped[0]].shape)}, the model's is {tuple(own[shaped[0]].shape)}")
        raise ValueError(f"{source}: {'a ' + have + ' checkpoint' if have else 'its weights'} cannot be loaded into "
                         f"{want} ({len(missing)} tensors missing, {len(unexpected)} unknown, {len(shaped)} of another "
                         f"shape; first: {first})")
    model.load_state_dict(state)


@dataclass(frozen=True)
class SavedModel:
    """The part of a checkpoint that evaluation, prediction and the study read, typed (load_saved)."""
    folder: str                 # the checkpoint folder (runs/NAME/checkpoints/step_N or best)
    step: int
    config: "Config"            # the run's config (sgmagnet.config.Config; defaults fill keys added since)
    model: dict                 # the model's state dict
    loss_weights: list          # class weights of the loss (the prior that --decision prior undoes)
    normaliser: dict            # {"mean": [16], "std": [16]}: the band statistics it was trained with
    world_size: int
    trained_on: dict = None     # {"bands": "all"|"ir", "solar_zenith": [min, max] of the training split or None}


def load_saved(path: str) -> SavedModel:
    """A run folder, checkpoint folder or state.pt -> its SavedModel (weights_only load, format checked)."""
    from .config import from_dict

    ck = load_common(path)
    return SavedModel(folder=ck["folder"], step=int(ck["step"]), config=from_dict(ck["config"], f"{ck['folder']}: config"),
                      model=ck["model"], loss_weights=list(ck["loss_weights"]), normaliser=ck["normaliser"],
                      world_size=int(ck.get("world_size", 1)), trained_on=dict(ck.get("trained_on") or {}))
