"""Training: a short loop over small components (torchtitan style).

    data        EpochStream over the training shards (data.py), resumable by (epoch, batch)
    model       runtime.model_from_config(cfg)
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

import contextlib
import json
import math
import os
import signal
import time

import numpy as np
import torch

from . import dist as hdist

from .checkpoint import CKPT_FORMAT, Checkpointer, load, load_common, load_weights, model_label, rng_state, set_rng_state
from .config import Config, ConfigError, dump, to_dict, validate
from .data import PREEMPTION_SIGNALS, LoaderConfig, Normaliser, iterate, make_loader, read_manifest, split_urls
from .evaluate import evaluate_batches
from .loaders import train_stream
from .losses import SparseLoss, class_weights, pool_profiles, use_triton
from .models import n_parameters
from .runtime import model_from_config, pick_device, seed_everything
from .shards import Manifest, shard_paths

EXIT_PREEMPTED = 3   # exit code after a checkpoint taken on SIGUSR2/SIGTERM


def refuse_existing_run(run_dir: str):
    """A run folder that holds checkpoints is never overwritten by accident."""
    folder = os.path.join(run_dir, "checkpoints")
    held = sorted(d for d in os.listdir(folder) if d.startswith("step_")) if os.path.isdir(folder) else []
    if held:
        raise ConfigError(f"train.run_dir {run_dir!r} already holds checkpoints ({held[-1]}): pass --resume to "
                          f"continue it, --overwrite to start again (its checkpoints and logs are deleted), or "
                          f"choose another train.run_dir")


class RunLock:
    """An exclusive lock on a run folder (`<run_dir>/.lock`), held by rank 0 for the whole run: a second trainer
    on the same train.run_dir -- two sbatch submissions, a typo, `--overwrite` aimed at a running run -- is
    refused (exit 2) before it changes anything, instead of two processes interleaving checkpoints and logs.
    A POSIX record lock (fcntl.lockf), not flock: it belongs to this process only, so the DataLoader workers it
    forks do not inherit it (a flock would outlive a SIGKILLed trainer in its orphaned workers for seconds),
    and the kernel drops it when the process dies: no stale locks. It also works over NFS (lockd). A file
    system without locks (ENOLCK, EOPNOTSUPP) runs unlocked, with a warning."""

    def __init__(self, run_dir: str, log=print):
        import errno
        import fcntl
        import socket

        self.run_dir, self.created = run_dir, not os.path.isdir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, ".lock")
        self.f = open(self.path, "a+")
        try:
            fcntl.lockf(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                self.f.seek(0)
                holder = self.f.read().strip() or "another process"
                self.f.close()
                raise ConfigError(f"train.run_dir {run_dir!r} is in use by a running trainer ({holder}): wait for "
                                  f"it, stop it, or choose another train.run_dir") from None
            log(f"WARNING: cannot lock {self.path} ({e.strerror}); two trainers on this folder would not be stopped")
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.f.flush()

    def release(self, failed: bool = False):
        """failed: the run never started -- a folder this lock created is removed again if nothing else is in it."""
        if not self.f.closed:
            self.f.close()            # closing the descriptor releases the lock
        if failed and self.created and os.listdir(self.run_dir) == [".lock"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)
                os.rmdir(self.run_dir)


def clear_run(run_dir: str):
    """--overwrite: remove what a previous run left (checkpoints, logs, TensorBoard, summary, evaluations)."""
    import glob
    import shutil

    for name in ("checkpoints", "tb"):
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    names = ["log.jsonl", "summary.json", "config.yaml"] + [os.path.basename(p) for p in
                                                             glob.glob(os.path.join(run_dir, "eval_*"))]
    for f in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, f))


def validation_shards(cfg: Config, manifest: Manifest) -> list[str]:
    """The validation split's shards; an empty or missing split is an error unless data.val_split is ''."""
    split = cfg.data.val_split
    if not split:
        return []
    urls = shard_paths(cfg.data.shards, split)
    if not urls or not manifest.counts.get(split):
        raise ConfigError(f"data.val_split={split!r}: {cfg.data.shards} has no {split} samples (manifest counts "
                          f"{manifest.counts}); choose another split, or data.val_split='' to train "
                          f"without validation")
    return urls


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
        if self.tb is not None and rec["kind"] != "header":
            pre = rec["kind"] + "_"
            for k, v in rec.items():
                if k not in ("step", "kind", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{rec['kind']}/{k[len(pre):] if k.startswith(pre) else k}", v, rec["step"])

    def images(self, step: int, confusion, curtain: dict | None, title: str):
        """TensorBoard images at a validation: the confusion matrix and one along-track curtain."""
        if self.tb is None:
            return
        from . import plots

        figs = [("val/confusion", plots.confusion_figure(confusion, title))]
        if curtain is not None:
            figs.append(("val/curtain", plots.curtain_figure(curtain, f"{title} · {curtain['key']}")))
        for tag, fig in figs:
            self.tb.add_figure(tag, fig, step, close=True)

    def close(self):
        """Idempotent (the trainer closes its logger however a run ends)."""
        self.f.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def run_header(cfg: Config, step: int, world_size: int) -> dict:
    """The first record of every (re)start in log.jsonl: what ran, where, with which code and packages."""
    import datetime as dt
    import hashlib
    import platform
    import subprocess
    from importlib import metadata

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    text = dump(cfg)
    return {"kind": "header", "step": step, "time": time.time(),
            "time_iso": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit, "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
            "host": platform.node(), "world_size": world_size, "python": platform.python_version(),
            "versions": {p: version(p) for p in ("sgmagnet", "torch", "numpy", "triton", "deepspeed", "webdataset")}}


def build_optimizer(cfg: Config, model) -> torch.optim.Optimizer:
    o = cfg.optim
    kw = dict(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(model.parameters(), **kw)
    if o.name == "adam":
        return torch.optim.Adam(model.parameters(), **kw)
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


def make_loss(cfg: Config, weights, device) -> SparseLoss:
    impl = cfg.loss.impl
    try:
        use_triton(impl, device)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    return SparseLoss(weights, gamma=cfg.loss.gamma, impl=impl, form=cfg.loss.form).to(device)



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


class Preemption:
    """SIGUSR2/SIGTERM -> a flag; the loop saves at the next step boundary and exits with EXIT_PREEMPTED.
    Ranks agree through an all-reduce, so a signal delivered to any rank stops all of them together."""

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.flag = False
        self.previous = {s: signal.signal(s, self._handler) for s in signals}

    def _handler(self, signum, frame):
        self.flag = True        # a second signal (e.g. while a checkpoint is written) changes nothing

    def restore(self):
        """Put back the handlers that were there before (the trainer's close)."""
        for s, h in self.previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self.previous = {}

    def requested(self, device) -> bool:
        return bool(hdist.all_reduce(torch.tensor([int(self.flag)], device=device), "max").item())


class Preempted(SystemExit):
    def __init__(self, checkpoint: str):
        super().__init__(EXIT_PREEMPTED)
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------------------------- trainer
class Trainer:
    """cfg -> components -> fit(). `data` may replace the shard stream with any iterator of batches
    (tests feed fixed in-memory batches); `env` is the distributed environment (sgmagnet.dist)."""

    def __init__(self, cfg: Config, resume: bool = False, log=print, data=None, env=None, overwrite: bool = False):
        self.cfg, t = validate(cfg), cfg.train
        if not (resume or overwrite):
            refuse_existing_run(t.run_dir)      # read-only: a refused run leaves its folder untouched
        self.lock = None
        if not (env or hdist.detect()).rank:    # rank 0 holds the run folder's lock before anything changes in it
            self.lock = RunLock(t.run_dir, log)
        try:
            self._setup(cfg, resume, log, data, env, overwrite)
        except BaseException:
            if self.lock is not None:
                self.lock.release(failed=True)
            raise

    def _setup(self, cfg: Config, resume: bool, log, data, env, overwrite: bool):
        t = cfg.train
        self.env = env or hdist.init_distributed(deepspeed=bool(t.deepspeed))
        self.log = log if self.env.is_main else (lambda m: None)
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = pick_device(t.device, self.env.local_rank)
        self.manifest = read_manifest(cfg.data.shards)
        self.norm = Normaliser.from_manifest(cfg.data.shards)
        seed_everything(t.seed)
        try:
            model = model_from_config(cfg)
        except ValueError as e:
            raise ConfigError(f"model.options: {e}") from None
        if t.init_from:
            init = load_common(t.init_from)
            load_weights(model, init["model"], f"train.init_from={t.init_from}", f"this run's {model_label(to_dict(cfg))} "
                         f"model (train.init_from takes weights of the same model, size and options)",
                         model_label(init.get("config")))
        self.model = model.to(self.device)
        self.opt = build_optimizer(cfg, self.model)
        self.sched = build_scheduler(cfg, self.opt)
        self.weights = resolve_loss_weights(cfg, self.manifest)
        self.loss_fn = make_loss(cfg, self.weights, self.device)
        self.engine, self.ddp = None, None
        if t.deepspeed:
            import deepspeed
            self.engine, self.opt, _, self.sched = deepspeed.initialize(
                model=self.model, optimizer=self.opt, lr_scheduler=self.sched,
                config=deepspeed_config(cfg, self.env.world_size))
        elif self.env.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.forward_module = self.engine or self.ddp or self.model
        self.stream = data if data is not None else self._make_stream()
        self.val_urls = validation_shards(cfg, self.manifest)
        if self.env.is_main:
            if overwrite and not resume:
                clear_run(t.run_dir)
            os.makedirs(t.run_dir, exist_ok=True)
        hdist.barrier()
        self.ckpt = Checkpointer(os.path.join(t.run_dir, "checkpoints"), t.keep_checkpoints, self.env.rank,
                                 self.env.world_size, hdist.barrier)
        self.step = 0
        self.best = self.ckpt.best_info() if resume else {}
        if resume:
            path = self.ckpt.latest()
            if path is None:
                self.log(f"--resume: no checkpoint in {self.ckpt.folder}, starting from step 0")
            else:
                self._restore(path)
                self.log(f"resumed from {path} at step {self.step}")
        if self.env.is_main:
            with open(os.path.join(t.run_dir, "config.yaml"), "w") as f:
                f.write(dump(cfg))
        self.logger = Logger(t.run_dir) if self.env.is_main else None
        if self.logger:
            self.logger.log(run_header(cfg, self.step, self.env.world_size))
        self.preemption, self._batches = None, None

    def close(self):
        """However a run ends (finished, preempted, failed, interrupted): the training stream's loader workers
        are shut down (data.close_iterator: politely, SIGKILL as the last resort), the logs closed and the
        signal handlers put back. Idempotent; run_training calls it in a finally."""
        if self._batches is not None:
            self._batches.close()          # GeneratorExit in EpochStream.__iter__: its `iterate` block ends the workers
            self._batches = None
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()
        if self.logger is not None:
            self.logger.close()
        if self.preemption is not None:
            self.preemption.restore()
            self.preemption = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _make_stream(self):
        c, e = self.cfg.data, self.env
        resample = c.resample or e.distributed
        lcfg = LoaderConfig(batch_size=c.batch_size, workers=c.workers, shuffle_buffer=c.shuffle_buffer,
                            rank=e.rank, world=e.world_size, resample=resample)
        urls = split_urls(c.shards, c.train_split)
        epoch_batches = c.epoch_batches or max(1, self.manifest.counts[c.train_split] // (c.batch_size * e.world_size))
        return train_stream(c.loader, urls, self.norm, lcfg, seed=self.cfg.train.seed, device=self.device,
                            epoch_batches=epoch_batches)

    # -- checkpoint state
    def common_state(self) -> dict:
        d = {"format": CKPT_FORMAT, "model": self.model.state_dict(), "step": self.step,
             "config": to_dict(self.cfg), "loss_weights": list(self.weights), "world_size": self.env.world_size,
             "normaliser": {"mean": self.norm.mean.tolist(), "std": self.norm.std.tolist()}}
        if self.engine is None:
            d["optimizer"], d["scheduler"] = self.opt.state_dict(), self.sched.state_dict()
        return d

    def rank_state(self) -> dict:
        return {"rng": rng_state(), "data": self.stream.state_dict() if hasattr(self.stream, "state_dict") else {}}

    def _restore(self, folder: str):
        common = load_common(folder)
        if common["world_size"] != self.env.world_size:
            raise ConfigError(f"{folder} was written by {common['world_size']} ranks, this run has "
                              f"{self.env.world_size}: exact resume needs the same world size; start from its "
                              f"weights instead with train.init_from={folder}")
        if self.engine is not None:
            self.engine.load_checkpoint(os.path.dirname(folder), tag=os.path.basename(folder))
        else:
            load_weights(self.model, common["model"], f"--resume {folder}", f"this run's {model_label(to_dict(self.cfg))} "
                         f"model (resuming needs the model the run was started with: undo the model.* overrides, or "
                         f"start a new train.run_dir)", model_label(common.get("config")))
            self.opt.load_state_dict(common["optimizer"])
            self.sched.load_state_dict(common["scheduler"])
        self.step = int(common["step"])
        rs = load(os.path.join(folder, f"rank_{self.env.rank:05d}.pt"))
        if hasattr(self.stream, "load_state_dict"):
            self.stream.load_state_dict(rs["data"])
        set_rng_state(rs["rng"])

    def save(self) -> str:
        return self.ckpt.save(self.step, self.common_state() if self.env.is_main else {}, self.rank_state(),
                              engine=self.engine)

    # -- one optimisation step over `accum` micro-batches
    def forward(self, batch, index, aux: bool = False):
        """Logits for the loss: [N, 4, L] at the columns `index` (train.columns, the default), or with
        index None the dense [B, 4, L, H, W] volume (the loss then gathers the labelled columns); with aux
        (SGMAGNet, loss.aux_weight > 0) the pair (logits, coarse-scale logits [N, 4, n] per coarse scale)."""
        d = self.device
        x, geom = self._prepare(batch["x"].to(d, non_blocking=True), batch["geom"].to(d, non_blocking=True))
        with torch.autocast(device_type=d.type, dtype=torch.bfloat16, enabled=self.cfg.train.bf16 and self.engine is None):
            if aux:
                return self.forward_module(x, geom, columns=index, aux=True)
            return self.forward_module(x, geom, columns=index)

    def aux_targets(self, profs: list[torch.Tensor]) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """Per coarse scale (finest first): the vertically pooled labels of each micro-batch and their global
        weight sum (all ranks, like the main loss's denominator)."""
        out = []
        for s in self.model.scales[1:]:
            pooled = [pool_profiles(p, -(-p.shape[1] // s)) for p in profs]
            den = hdist.all_reduce(sum(self.loss_fn.weight_sum(p) for p in pooled).float().reshape(1))[0]
            out.append((pooled, den))
        return out

    def micro_loss(self, batch, idx, prof, den, aux_targets, i: int, invalid=None) -> torch.Tensor:
        """The loss of micro-batch i: the sparse CE of the full-resolution logits, plus loss.aux_weight x the
        mean over coarse scales of the same loss on their logits and pooled labels. `invalid` counts the
        labelled voxels that could not be scored (kernels/sparse_ce.py), without a host sync."""
        if not aux_targets:
            return self.loss_fn(self.forward(batch, idx if self.cfg.train.columns else None), idx, prof,
                                denominator=den, invalid=invalid)
        out, aux_logits = self.forward(batch, idx, aux=True)
        loss = self.loss_fn(out, idx, prof, denominator=den, invalid=invalid)
        extra = sum(self.loss_fn(a, None, pooled[i], denominator=d, invalid=invalid)
                    for a, (pooled, d) in zip(aux_logits, aux_targets))
        return loss + self.cfg.loss.aux_weight * extra / len(aux_targets)

    def train_step(self, micro: list[dict]) -> tuple[float, float]:
        """Gradient = that of sum(w * nll) / (global sum of w) over all micro-batches of all ranks, i.e. the
        single-process gradient on the same global batch (DDP/DeepSpeed average over ranks, DeepSpeed also
        over accumulation steps: the loss is scaled to undo both)."""
        d = self.device
        profs = [b["prof"].to(d) for b in micro]
        den = hdist.all_reduce(sum(self.loss_fn.weight_sum(p) for p in profs).float().reshape(1))[0]
        aux = self.aux_targets(profs) if self.cfg.loss.aux_weight > 0 else []
        scale = self.env.world_size * (len(micro) if self.engine is not None else 1)
        if self.engine is None:
            self.opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=d)
        invalid = torch.zeros((), device=d)          # labelled voxels the loss could not score (checked below)
        for i, (b, prof) in enumerate(zip(micro, profs)):
            sync = self.ddp is None or i == len(micro) - 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                loss = self.micro_loss(b, b["index"].to(d), prof, den, aux, i, invalid)
                total += loss.detach()
                if self.engine is not None:
                    self.engine.backward(loss * scale)
                    self.engine.step()
                else:
                    (loss * scale).backward()
        if self.engine is None:
            clip = self.cfg.optim.clip
            gnorm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf")))
            self.opt.step()
            self.sched.step()
        else:
            g = self.engine.get_global_grad_norm()
            gnorm = float(g) if g is not None else float("nan")
        red = hdist.all_reduce(torch.stack([total, invalid]))     # the one sync of the step, as before
        if red[1] > 0:
            raise ValueError(f"step {self.step + 1}: {int(red[1])} labelled voxel(s) of the batch (first keys "
                             f"{micro[0]['keys'][:3]}) could not be scored: an index row outside the patch or a "
                             f"label outside {{0..3, 255}} (kernels/sparse_ce.py); the shards are damaged -- "
                             f"`sgmagnet inspect --verify` them")
        return float(red[0]), gnorm

    def validate(self) -> dict | None:
        """Every rank scores its share of the validation shards; all ranks run the same number of batches
        (padding batches carry no label) and the confusion matrices and loss sums are all-reduced."""
        if not self.val_urls:
            return None
        c, e = self.cfg.data, self.env
        mine = self.val_urls[e.rank::e.world_size]
        lcfg = LoaderConfig(batch_size=c.batch_size, workers=min(c.workers, max(1, len(mine))) if mine else 0)
        with iterate(make_loader(mine, self.norm, lcfg, train=False) if mine else ()) as batches:  # workers end here
            if c.val_batches:
                import itertools
                batches = itertools.islice(batches, c.val_batches)
            ev = evaluate_batches(self.forward_module, batches, self.device, self.cfg.train.bf16, loss_fn=self.loss_fn,
                                  prepare=self._prepare, form=self.cfg.loss.form,
                                  keep_curtains=1 if self.logger else 0)
        cs, lsum, ln, nb = ev.confusion, ev.loss_sum, ev.loss_n, ev.batches
        if e.distributed:
            most = int(hdist.all_reduce(torch.tensor([nb], device=self.device), "max").item())
            p = self.manifest.patch_size
            pad = {"x": torch.zeros(1, 16, p, p), "geom": torch.zeros(1, 2, p, p)}
            with torch.no_grad():
                for _ in range(most - nb):
                    self.forward(pad, torch.zeros(0, 3, dtype=torch.long, device=self.device))  # as evaluation
            for tns in cs.tensors():
                tns.copy_(hdist.all_reduce(tns.to(self.device)).cpu())
            red = hdist.all_reduce(torch.tensor([lsum, ln, cs.patches], dtype=torch.float64, device=self.device))
            lsum, ln, cs.patches = float(red[0]), float(red[1]), int(red[2])
        r = cs.report()["overall"]
        rec = {"kind": "val", "step": self.step, "val_loss": lsum / ln if ln else None,
               "val_macro_f1": r["macro"]["f1"], "val_macro_iou": r["macro"]["iou"],
               "val_phase_f1": r["phase_macro"]["f1"], "val_mask_f1": r["cloud_mask"]["f1"],
               "val_voxels": r["voxels"], "time": time.time()}
        if self.logger:
            self.logger.log(rec)
            self.logger.images(self.step, np.asarray(r["confusion"]), ev.curtains[0] if ev.curtains else None,
                               f"{self.cfg.model.name} · {self.cfg.data.val_split} · step {self.step}")
        return rec

    def keep_best(self, rec: dict | None):
        """After a validation: a new best macro F1 -> checkpoints/best (model selection by validation)."""
        if rec is None or not self.env.is_main:
            return
        if rec["val_macro_f1"] > self.best.get("val_macro_f1", -1.0):
            self.best = {"step": self.step, "val_macro_f1": rec["val_macro_f1"], "val_loss": rec["val_loss"]}
            self.ckpt.save_best(self.common_state(), self.best)

    def plateau(self) -> bool:
        """train.patience validations in a row without a better macro F1 (ranks agree: rank 0 decides)."""
        t = self.cfg.train
        stale = bool(t.patience and self.best and self.step - self.best["step"] >= t.patience * t.val_every)
        return bool(hdist.all_reduce(torch.tensor([float(stale)], device=self.device), "max")[0] > 0)

    def _prepare(self, x, geom):
        """Inputs in the dtype of a DeepSpeed bf16 engine's parameters (autocast handles the plain loop)."""
        if self.engine is not None and self.engine.bfloat16_enabled():
            return x.bfloat16(), geom.bfloat16()
        return x, geom

    def fit(self) -> dict:
        t, accum = self.cfg.train, self.cfg.optim.accum
        from tqdm import tqdm

        self.log(f"model {self.cfg.model.name}/{self.cfg.model.size}: {n_parameters(self.model):,} parameters; "
                 f"device {self.device}; {self.env.world_size} rank(s) ({self.env.launcher}); "
                 f"{'DeepSpeed ' + os.path.basename(t.deepspeed) if t.deepspeed else ('DDP' if self.ddp else 'plain')}; "
                 f"global batch {self.cfg.data.batch_size}x{accum}x{self.env.world_size}; "
                 f"loss weights {[round(w, 3) for w in self.weights]}")
        self.log(f"run folder {t.run_dir} (log.jsonl, checkpoints/, config.yaml); TensorBoard: "
                 f"tensorboard --logdir {os.path.join(t.run_dir, 'tb')}")
        self.preemption = Preemption()
        bar = tqdm(total=t.steps, initial=self.step, disable=not (t.progress and self.env.is_main), mininterval=2,
                   desc="train", dynamic_ncols=True)
        it = self._batches = iter(self.stream)
        last_val, tick, seen = None, time.time(), 0
        while self.step < t.steps:
            micro = [next(it) for _ in range(accum)]
            loss, gnorm = self.train_step(micro)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {self.step} (batch {micro[0]['keys'][:3]}...)")
            self.step += 1
            seen += sum(len(b["keys"]) for b in micro) * self.env.world_size
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.logger and (self.step % t.log_every == 0 or self.step == t.steps):
                now = time.time()
                lr = (self.sched.get_last_lr() if hasattr(self.sched, "get_last_lr") else [float("nan")])[0]
                self.logger.log({"kind": "train", "step": self.step, "loss": loss, "grad_norm": gnorm, "lr": lr,
                                 "epoch": getattr(self.stream, "epoch", 0),
                                 "samples_per_s": seen / max(now - tick, 1e-9), "time": now})
                tick, seen = now, 0
            if t.val_every and self.step % t.val_every == 0 and self.step < t.steps:
                last_val = self.validate()
                self.keep_best(last_val)
                if last_val:
                    self.log(f"step {self.step}: val loss {last_val['val_loss']:.4f}  macro F1 "
                             f"{last_val['val_macro_f1']:.3f}  macro IoU {last_val['val_macro_iou']:.3f}  (best "
                             f"{self.best.get('val_macro_f1', float('nan')):.3f} at step {self.best.get('step', '-')})")
                if self.plateau():
                    self.log(f"step {self.step}: no better validation macro F1 for {t.patience} validations "
                             f"(best {self.best['val_macro_f1']:.4f} at step {self.best['step']}): stopping")
                    break
            if t.ckpt_every and self.step % t.ckpt_every == 0 and self.step < t.steps:
                self.save()
            if self.preemption.requested(self.device):
                path = self.save()
                self.log(f"preemption signal: saved {path} at step {self.step}; exiting with {EXIT_PREEMPTED}")
                bar.close()
                raise Preempted(path)
        bar.close()
        path = self.save()
        final_val = last_val if last_val and last_val["step"] == self.step else self.validate()
        self.keep_best(final_val)
        last_val = final_val or last_val
        summary = {"model": self.cfg.model.name, "size": self.cfg.model.size, "steps": self.step,
                   "parameters": n_parameters(self.model), "checkpoint": path, "final_val": last_val,
                   "best": self.best,
                   "world_size": self.env.world_size}
        if self.env.is_main:
            with open(os.path.join(t.run_dir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
            self.logger.close()              # flushed now for callers of fit() alone; close() finds it closed
        if last_val:
            self.log(f"step {self.step}: val loss {last_val['val_loss']:.4f}  macro F1 {last_val['val_macro_f1']:.3f}"
                     f"  macro IoU {last_val['val_macro_iou']:.3f}  -> {path}")
        return summary


def run_training(cfg: Config, *, resume: bool = False, overwrite: bool = False, log=print):
    """The one way to run training (CLI, Slurm job, study): build the Trainer, fit. Returns (trainer, summary,
    None), or (trainer, None, Preempted) when a preemption signal ended the run with a checkpoint. Config and
    data errors raise from the Trainer's constructor (ConfigError, ManifestError) before anything runs."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite, log=log)
    try:
        return trainer, trainer.fit(), None
    except Preempted as p:
        checkpoint = p.checkpoint
    finally:
        trainer.close()     # every way out: no DataLoader worker outlives the run (data.py: how workers end)
    return trainer, None, Preempted(checkpoint)
