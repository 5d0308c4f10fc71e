"""Training: a short loop over small components (torchtitan style).

    data        EpochStream over the training shards (data.py), resumable by (epoch, batch)
    model       models.build_model(cfg.model)
    optimizer   Adam/AdamW + linear warm-up then cosine/constant LR (LambdaLR)
    loss        SparseLoss: class-weighted sparse CE of the phase-gated softmax (losses.py)
    checkpointer atomic files (temp + rename, then the `latest` marker), loaded with weights_only=True
    metrics     validation confusion matrices -> scores (metrics.py / evaluate.py)
    logger      JSONL + TensorBoard event files + a progress bar with ETA

`sgmagnet train --config configs/demo_sgmagnet.yaml [--resume] [section.key=value ...]`
A run folder holds config.yaml, log.jsonl, tb/ (TensorBoard), checkpoints/step_NNNNNNN.pt + latest,
summary.json. `--resume` continues from `latest` exactly: model, optimizer, scheduler, step, data
position and every RNG state are restored, so the parameters equal those of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import random
import time

import numpy as np
import torch

from .config import Config, ConfigError, dump, from_dict, to_dict
from .data import EpochStream, LoaderConfig, Normaliser, make_loader, read_manifest, split_urls
from .evaluate import evaluate_batches
from .losses import SparseLoss, class_weights, use_triton
from .models import build_model, n_parameters
from .shards import shard_paths

CKPT_FORMAT = 1


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


# ------------------------------------------------------------------------------------------- RNG state
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


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------- checkpoints
class Checkpointer:
    """checkpoints/step_NNNNNNN.pt written to a temp file then renamed; `latest` (the file name) written
    last, the same way, so a crash mid-save leaves the previous checkpoint and marker intact."""

    def __init__(self, folder: str, keep: int = 2):
        self.folder, self.keep = folder, keep
        os.makedirs(folder, exist_ok=True)

    @staticmethod
    def _atomic(path: str, write):
        tmp = f"{path}.tmp.{os.getpid()}"
        write(tmp)
        os.replace(tmp, path)

    def save(self, state: dict, step: int) -> str:
        path = os.path.join(self.folder, f"step_{step:07d}.pt")
        self._atomic(path, lambda p: torch.save(state, p))

        def marker(p):
            with open(p, "w") as f:
                f.write(os.path.basename(path) + "\n")
                f.flush()
                os.fsync(f.fileno())
        self._atomic(os.path.join(self.folder, "latest"), marker)
        olds = sorted(f for f in os.listdir(self.folder) if f.startswith("step_") and f.endswith(".pt"))
        for f in olds[:-self.keep] if self.keep > 0 else []:
            os.remove(os.path.join(self.folder, f))
        return path

    def latest(self) -> str | None:
        m = os.path.join(self.folder, "latest")
        if not os.path.exists(m):
            return None
        with open(m) as f:
            p = os.path.join(self.folder, f.read().strip())
        if not os.path.exists(p):
            raise FileNotFoundError(f"{m} names {p}, which does not exist")
        return p


def load_checkpoint(path: str, device="cpu") -> dict:
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - report which file and why
        raise ValueError(f"{path}: not a readable checkpoint ({e.__class__.__name__}: {str(e)[:200]})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path}: not an sgmagnet checkpoint (format {CKPT_FORMAT})")
    return ck


def load_model_from_checkpoint(path: str, device) -> tuple[torch.nn.Module, dict]:
    ck = load_checkpoint(path, "cpu")
    cfg = from_dict(ck["config"])
    model = build_model(cfg.model.name, cfg.model.size, **cfg.model.options)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), ck


# ------------------------------------------------------------------------------------------ components
class Logger:
    def __init__(self, run_dir: str, tensorboard: bool = True):
        self.f = open(os.path.join(run_dir, "log.jsonl"), "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(run_dir, "tb"))

    def log(self, rec: dict):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("step", "kind", "time") and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{rec['kind']}/{k}", v, rec["step"])

    def close(self):
        self.f.close()
        if self.tb is not None:
            self.tb.close()


def build_optimizer(cfg: Config, model) -> torch.optim.Optimizer:
    o = cfg.optim
    kw = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), **kw)
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), **kw)
    raise ConfigError(f"optim.name must be adam or adamw, got {o.name!r}")


def build_scheduler(cfg: Config, opt) -> torch.optim.lr_scheduler.LambdaLR:
    o, total = cfg.optim, cfg.train.steps
    if o.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule must be cosine or constant, got {o.schedule!r}")

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        t = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def resolve_loss_weights(cfg: Config, manifest: dict) -> list[float]:
    w = cfg.loss.weights
    if w == "manifest":
        return class_weights(manifest["train_class_frequency"], cfg.loss.power).tolist()
    if w == "none":
        return [1.0] * 4
    if isinstance(w, list) and len(w) == 4 and all(isinstance(v, (int, float)) and v >= 0 for v in w):
        return [float(v) for v in w]
    raise ConfigError(f"loss.weights must be manifest, none or 4 non-negative numbers, got {w!r}")


def make_loss(cfg: Config, weights, device) -> SparseLoss:
    impl = cfg.loss.impl
    if impl not in ("auto", "torch", "triton"):
        raise ConfigError(f"loss.impl must be auto, torch or triton, got {impl!r}")
    try:
        use_triton(impl, device)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    return SparseLoss(weights, gamma=cfg.loss.gamma, impl=impl).to(device)


# --------------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, log=print):
        self.cfg, self.log = cfg, log
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device)
        self.manifest = read_manifest(cfg.data.shards)
        self.norm = Normaliser.from_manifest(cfg.data.shards)
        seed_everything(t.seed)
        self.model = build_model(cfg.model.name, cfg.model.size, **cfg.model.options).to(self.device)
        self.opt = build_optimizer(cfg, self.model)
        self.sched = build_scheduler(cfg, self.opt)
        self.weights = resolve_loss_weights(cfg, self.manifest)
        self.loss_fn = make_loss(cfg, self.weights, self.device)
        self.lcfg = LoaderConfig(batch_size=cfg.data.batch_size, workers=cfg.data.workers,
                                 shuffle_buffer=cfg.data.shuffle_buffer)
        self.stream = EpochStream(split_urls(cfg.data.shards, cfg.data.train_split), self.norm, self.lcfg, seed=t.seed)
        self.val_urls = shard_paths(cfg.data.shards, cfg.data.val_split)
        os.makedirs(t.run_dir, exist_ok=True)
        self.ckpt = Checkpointer(os.path.join(t.run_dir, "checkpoints"), t.keep_checkpoints)
        self.step = 0
        if resume:
            path = self.ckpt.latest()
            if path is None:
                log(f"--resume: no checkpoint in {self.ckpt.folder}, starting from step 0")
            else:
                self._restore(load_checkpoint(path, "cpu"))
                log(f"resumed from {path} at step {self.step}")
        with open(os.path.join(t.run_dir, "config.yaml"), "w") as f:
            f.write(dump(cfg))
        self.logger = Logger(t.run_dir)

    # -- checkpoint state
    def state(self) -> dict:
        return {"format": CKPT_FORMAT, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "step": self.step, "data": self.stream.state_dict(),
                "rng": rng_state(), "config": to_dict(self.cfg), "loss_weights": list(self.weights),
                "normaliser": {"mean": self.norm.mean.tolist(), "std": self.norm.std.tolist()}}

    def _restore(self, ck: dict):
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.step = int(ck["step"])
        self.stream.load_state_dict(ck["data"])
        set_rng_state(ck["rng"])

    def save(self) -> str:
        return self.ckpt.save(self.state(), self.step)

    # -- one optimisation step
    def train_step(self, batch) -> tuple[float, float]:
        d = self.device
        with torch.autocast(device_type=d.type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16):
            logits = self.model(batch["x"].to(d, non_blocking=True), batch["geom"].to(d, non_blocking=True))
        loss = self.loss_fn(logits, batch["index"].to(d), batch["prof"].to(d))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.optim.clip
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.opt.step()
        self.sched.step()
        return float(loss.detach()), float(gnorm)

    def validate(self) -> dict | None:
        if not self.val_urls:
            return None
        batches = make_loader(self.val_urls, self.norm, LoaderConfig(batch_size=self.cfg.data.batch_size,
                                                                     workers=self.cfg.data.workers), train=False)
        if self.cfg.data.val_batches:
            import itertools
            batches = itertools.islice(batches, self.cfg.data.val_batches)
        cs, _, vloss = evaluate_batches(self.model, batches, self.device, self.cfg.train.bf16, loss_fn=self.loss_fn)
        r = cs.report()["overall"]
        rec = {"kind": "val", "step": self.step, "val_loss": vloss, "val_macro_f1": r["macro"]["f1"],
               "val_macro_iou": r["macro"]["iou"], "val_phase_f1": r["phase_macro"]["f1"],
               "val_mask_f1": r["cloud_mask"]["f1"], "val_voxels": r["voxels"], "time": time.time()}
        self.logger.log(rec)
        return rec

    def fit(self) -> dict:
        t = self.cfg.train
        from tqdm import tqdm

        self.log(f"model {self.cfg.model.name}/{self.cfg.model.size}: {n_parameters(self.model):,} parameters; "
                 f"device {self.device}; loss weights {[round(w, 3) for w in self.weights]}")
        bar = tqdm(total=t.steps, initial=self.step, disable=not t.progress, mininterval=2, desc="train",
                   dynamic_ncols=True)
        it = iter(self.stream)
        last_val, tick, seen = None, time.time(), 0
        while self.step < t.steps:
            batch = next(it)
            loss, gnorm = self.train_step(batch)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {self.step} (batch {batch['keys'][:3]}...)")
            self.step += 1
            seen += len(batch["keys"])
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % t.log_every == 0 or self.step == t.steps:
                now = time.time()
                self.logger.log({"kind": "train", "step": self.step, "loss": loss, "grad_norm": gnorm,
                                 "lr": self.sched.get_last_lr()[0], "epoch": self.stream.epoch,
                                 "samples_per_s": seen / max(now - tick, 1e-9), "time": now})
                tick, seen = now, 0
            if t.val_every and self.step % t.val_every == 0 and self.step < t.steps:
                last_val = self.validate()
            if t.ckpt_every and self.step % t.ckpt_every == 0 and self.step < t.steps:
                self.save()
        bar.close()
        path = self.save()
        last_val = self.validate() or last_val
        summary = {"model": self.cfg.model.name, "size": self.cfg.model.size, "steps": self.step,
                   "parameters": n_parameters(self.model), "checkpoint": path, "final_val": last_val}
        with open(os.path.join(t.run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        self.logger.close()
        if last_val:
            self.log(f"step {self.step}: val loss {last_val['val_loss']:.4f}  macro F1 {last_val['val_macro_f1']:.3f}"
                     f"  macro IoU {last_val['val_macro_iou']:.3f}  -> {path}")
        return summary
