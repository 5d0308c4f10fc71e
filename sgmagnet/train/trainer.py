"""The trainer: build the run's components once, then a short loop over them (torchtitan style).

    runtime     runtime.Runtime.for_run(cfg): device, fused kernels, loader kind, bf16 -- decided once
    data        loaders.loader("train", ...): the resumable training stream (torch workers or DALI)
    model       runtime.model_from_config(cfg)
    components  optimizer, LR schedule, loss and its class weights (components.py)
    strategy    Plain | DDP | DeepSpeed: forward, backward, step, optimizer state (strategy.py)
    compiled    train.compile: the column path's forward + loss through torch.compile / CUDA graphs (compiled.py)
    state       what a checkpoint holds (state.py); checkpoint.Checkpointer writes it atomically
    run folder  lock, refuse/clear (run_dir.py); logger: JSONL + TensorBoard (logger.py)
    preemption  SIGUSR2/SIGTERM -> checkpoint at the step boundary, exit 3 (preemption.py)

`run_training(cfg)` is the one way to run it (CLI, Slurm job, study): build -> fit -> close.
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from .. import dist as hdist
from ..checkpoint import Checkpointer, load_common, load_weights, model_label
from ..config import Config, ConfigError, dump, to_dict, validate
from ..data import Normaliser
from ..evaluate import evaluate_batches
from ..io import write_json, write_text
from ..loaders import StreamShare, iterate, loader
from ..losses import pool_profiles
from ..grid import N_BANDS, N_GEOM
from ..models import n_parameters
from ..runtime import Runtime, model_from_config, seed_everything
from ..shards import Manifest, read_manifest, shard_paths, split_urls
from . import compiled, components, profiling, run_dir, strategy
from torch.profiler import record_function
from .logger import Logger, run_header
from .preemption import EXIT_PREEMPTED, Preempted, Preemption
from .state import DataLayout, RunState, check_resume


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


class Trainer:
    """cfg -> components -> fit(). `data` may replace the shard stream with any iterator of batches
    (tests feed fixed in-memory batches); `env` is the distributed environment (sgmagnet.dist)."""

    def __init__(self, cfg: Config, resume: bool = False, log=print, data=None, env=None, overwrite: bool = False):
        """env: the distributed environment, its process group already started (run_training starts it); None
        = this process alone (a process group is then refused: use run_training)."""
        self.cfg, t = validate(cfg), cfg.train
        if not (resume or overwrite):
            run_dir.refuse_existing_run(t.run_dir)      # read-only: a refused run leaves its folder untouched
        env = env or hdist.detect()
        if (env.distributed or t.deepspeed) and not hdist.initialized():
            raise RuntimeError(f"Trainer: {env.world_size} rank(s) ({env.launcher}{', DeepSpeed' if t.deepspeed else ''}) "
                               f"but no process group: build the run with run_training(cfg), which starts it")
        self.lock = self.logger = self.preemption = self._batches = self.stream = self.profiler = None
        self._pending, self._last = [], (float("nan"), float("nan"))   # steps whose device results are unread
        if not env.rank:                        # rank 0 holds the run folder's lock before anything changes in it
            self.lock = run_dir.RunLock(t.run_dir, log)
        try:
            self._setup(cfg, resume, log, data, env, overwrite)
        except BaseException:
            if self.lock is not None:
                self.lock.release(failed=True)
            raise

    def _setup(self, cfg: Config, resume: bool, log, data, env, overwrite: bool):
        t = cfg.train
        self.env = env
        self.log = log if self.env.is_main else (lambda m: None)
        self.rt = Runtime.for_run(cfg, self.env.local_rank)
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
        self.model = model.to(self.rt.device)
        # checked before anything is built: a refused resume changes nothing
        found = check_resume(t.run_dir, cfg, env.world_size) if resume else None
        self.resume_from, common, layout, self.changes = found or (None, None, DataLayout.fresh(cfg, env.world_size), {})
        opt = components.build_optimizer(cfg, self.model)
        sched = components.build_scheduler(cfg, opt)
        self.weights = components.resolve_loss_weights(cfg, self.manifest)
        self.loss_fn = components.make_loss(cfg, self.weights, self.rt)
        resharded = common is not None and int(common["world_size"]) != env.world_size
        self.strategy = strategy.build(self.model, opt, sched, cfg, self.rt, self.env, resharded=resharded)
        self.compiled = compiled.build(cfg, self.rt, self.strategy.forward, self.loss_fn, self.manifest.patch_size, self.log)
        self.stream = data if data is not None else self._make_stream(layout)
        self.val_urls = validation_shards(cfg, self.manifest)
        if self.env.is_main:
            run_dir.prepare(t.run_dir, resume=resume, overwrite=overwrite)
        hdist.barrier()
        self.ckpt = Checkpointer(os.path.join(t.run_dir, "checkpoints"), t.keep_checkpoints, self.env.rank,
                                 self.env.world_size, hdist.barrier)
        trained_on = {"bands": cfg.model.bands,   # what predict's out-of-range flag compares a scene with
                      "solar_zenith": self.manifest.solar_zenith.get(cfg.data.train_split)}
        self.state = RunState(cfg, self.env, self.model, self.strategy, self.stream, self.weights, self.norm,
                              trained_on, layout)
        self.best = self.ckpt.best_info() if resume else {}
        if resume and self.resume_from is None:
            self.log(f"--resume: no checkpoint in {self.ckpt.folder}, starting from step 0")
        elif resume:
            self.state.restore(self.resume_from, common)
            self.log(f"resumed from {self.resume_from} at step {self.step}"
                     + (f"; changed: {', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in self.changes.items())}"
                        if self.changes else ""))
        if self.env.is_main:
            write_text(os.path.join(t.run_dir, "config.yaml"), dump(cfg))
            self.logger = Logger(t.run_dir)
            self.logger.log(run_header(cfg, self.step, self.env.world_size))
            if self.resume_from is not None:
                self.logger.log({"kind": "resume", "step": self.step, "from": self.resume_from,
                                 "changes": self.changes, "data_layout": vars(layout), "time": time.time()})

    @property
    def step(self) -> int:
        return self.state.step

    @step.setter
    def step(self, value: int):
        self.state.step = value

    def close(self):
        """However a run ends (finished, preempted, failed, interrupted): the training stream's loader workers
        are shut down (loaders.close_iterator: politely, SIGKILL as the last resort), the logs closed and the
        signal handlers put back. Idempotent; run_training calls it in a finally."""
        if self.profiler is not None:
            self.profiler.close()
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

    def _make_stream(self, layout: DataLayout):
        """This rank's share of the run's data streams (state.DataLayout): stream v is the loader of rank v of
        V, with the stream batch size the run started with."""
        c, e, L = self.cfg.data, self.env, layout
        resample = c.resample or L.streams > 1
        epoch_batches = c.epoch_batches or max(1, self.manifest.counts[c.train_split] // (L.stream_batch * L.streams))
        mine, k, j = L.share(e.rank, e.world_size)
        urls = split_urls(c.shards, c.train_split)
        return StreamShare({v: loader("train", urls, self.norm, batch_size=L.stream_batch, workers=c.workers,
                                      rt=self.rt, seed=self.cfg.train.seed, rank=v, world=L.streams,
                                      shuffle_buffer=c.shuffle_buffer, resample=resample,
                                      epoch_batches=epoch_batches) for v in mine}, k, j)

    def save(self) -> str:
        self.settle()                     # never a checkpoint of a step whose loss was not finite
        return self.ckpt.save(self.step, self.state.common() if self.env.is_main else {}, self.state.per_rank(),
                              extra=self.strategy.save_extra)

    # -- one optimisation step over `accum` micro-batches
    def forward(self, batch, index, aux: bool = False):
        """Logits for the loss: [N, 4, L] at the columns `index` (train.columns, the default), or with
        index None the dense [B, 4, L, H, W] volume (the loss then gathers the labelled columns); with aux
        (SGMAGNet, loss.aux_weight > 0) the pair (logits, coarse-scale logits [N, 4, n] per coarse scale)."""
        d = self.rt.device
        return self.strategy.forward(batch["x"].to(d, non_blocking=True), batch["geom"].to(d, non_blocking=True),
                                     columns=index, aux=aux)

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
        if self.compiled is not None:
            with record_function("forward+loss"):
                return self.compiled(batch, idx, prof, den, invalid)
        if not aux_targets:
            with record_function("forward"):
                out = self.forward(batch, idx if self.cfg.train.columns else None)
            with record_function("loss"):
                return self.loss_fn(out, idx, prof, denominator=den, invalid=invalid)
        with record_function("forward"):
            out, aux_logits = self.forward(batch, idx, aux=True)
        with record_function("loss"):
            loss = self.loss_fn(out, idx, prof, denominator=den, invalid=invalid)
            extra = sum(self.loss_fn(a, None, pooled[i], denominator=d, invalid=invalid)
                        for a, (pooled, d) in zip(aux_logits, aux_targets))
        return loss + self.cfg.loss.aux_weight * extra / len(aux_targets)

    def train_step(self, micro: list[dict]) -> tuple[torch.Tensor, torch.Tensor | float, torch.Tensor]:
        """Gradient = that of sum(w * nll) / (global sum of w) over all micro-batches of all ranks, i.e. the
        single-process gradient on the same global batch (the strategy scales the loss to undo the averaging
        its backend does). Returns device tensors (loss, gradient norm, voxels that could not be scored)
        without a host sync: `settle` reads and checks them when the loop logs, validates or saves."""
        d = self.rt.device
        if self.compiled is not None:
            micro = [self.compiled.pad(b) for b in micro]        # static shapes, checked on the host
        profs = [b["prof"].to(d) for b in micro]
        den = hdist.all_reduce(sum(self.loss_fn.weight_sum(p) for p in profs).float().reshape(1))[0]
        aux = self.aux_targets(profs) if self.cfg.loss.aux_weight > 0 else []
        self.strategy.zero_grad()
        total = torch.zeros((), device=d)
        invalid = torch.zeros((), device=d)          # labelled voxels the loss could not score (checked below)
        for i, (b, prof) in enumerate(zip(micro, profs)):
            with self.strategy.accumulating(i, len(micro)):
                loss = self.micro_loss(b, b["index"].to(d), prof, den, aux, i, invalid)
                total += loss.detach()
                with record_function("backward"):
                    self.strategy.backward(loss, len(micro))
        with record_function("optimizer"):
            gnorm = self.strategy.step()
        red = hdist.all_reduce(torch.stack([total, invalid]))     # a collective, not a host sync
        return red[0], gnorm, red[1]

    def settle(self) -> tuple[float, float]:
        """Read the results of the steps run since the last call (one host sync per log interval, not one per
        step) and check them: a labelled voxel that could not be scored, or a loss that is not finite, stops
        the run naming its step. Returns the last step's (loss, gradient norm)."""
        if not self._pending:
            return self._last
        d = self.rt.device
        vals = torch.stack([torch.stack([loss.float().reshape(()), torch.as_tensor(g, dtype=torch.float32, device=d)
                                         .reshape(()), bad.float().reshape(())])
                            for _, loss, g, bad, _ in self._pending]).cpu()
        pending, self._pending = self._pending, []
        for (step, _, _, _, keys), (loss, _, bad) in zip(pending, vals.tolist()):
            if bad > 0:
                raise ValueError(f"step {step + 1}: {int(bad)} labelled voxel(s) of the batch (first keys "
                                 f"{keys}) could not be scored: an index row outside the patch or a "
                                 f"label outside {{0..3, 255}} (kernels/sparse_ce.py); the shards are damaged -- "
                                 f"`sgmagnet inspect --verify` them")
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step} (batch {keys}...)")
        self._last = (float(vals[-1, 0]), float(vals[-1, 1]))
        return self._last

    def validate(self) -> dict | None:
        """Every rank scores its share of the validation shards; all ranks run the same number of batches
        (padding batches carry no label) and the confusion matrices and loss sums are all-reduced."""
        if not self.val_urls:
            return None
        c, e, d = self.cfg.data, self.env, self.rt.device
        mine = self.val_urls[e.rank::e.world_size]
        with iterate(loader("validation", mine, self.norm, batch_size=c.batch_size, workers=c.workers)
                     if mine else ()) as batches:                   # the workers end with this block
            if c.val_batches:
                import itertools
                batches = itertools.islice(batches, c.val_batches)
            ev = evaluate_batches(self.strategy.module, batches, self.rt, forward=self.strategy.forward,
                                  loss_fn=self.loss_fn, form=self.cfg.loss.form, keep_curtains=1 if self.logger else 0)
        cs, lsum, ln, nb = ev.confusion, ev.loss_sum, ev.loss_n, ev.batches
        if e.distributed:
            most = int(hdist.all_reduce(torch.tensor([nb], device=d), "max").item())
            p = self.manifest.patch_size
            pad = {"x": torch.zeros(1, N_BANDS, p, p), "geom": torch.zeros(1, N_GEOM, p, p)}
            with torch.no_grad():
                for _ in range(most - nb):
                    self.forward(pad, torch.zeros(0, 3, dtype=torch.long, device=d))  # as evaluation
            for tns in cs.tensors():
                tns.copy_(hdist.all_reduce(tns.to(d)).cpu())
            red = hdist.all_reduce(torch.tensor([lsum, ln, cs.patches], dtype=torch.float64, device=d))
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
            self.ckpt.save_best(self.state.common(), self.best)

    def plateau(self) -> bool:
        """train.patience validations in a row without a better macro F1 (ranks agree: rank 0 decides)."""
        t = self.cfg.train
        stale = bool(t.patience and self.best and self.step - self.best["step"] >= t.patience * t.val_every)
        return bool(hdist.all_reduce(torch.tensor([float(stale)], device=self.rt.device), "max")[0] > 0)

    def fit(self) -> dict:
        t, accum = self.cfg.train, self.cfg.optim.accum
        from tqdm import tqdm

        self.log(f"model {self.cfg.model.name}/{self.cfg.model.size}: {n_parameters(self.model):,} parameters; "
                 f"device {self.rt.device}; {self.env.world_size} rank(s) ({self.env.launcher}); "
                 f"{self.strategy.describe()}{'; ' + self.compiled.describe() if self.compiled else ''}; "
                 f"global batch {self.cfg.data.batch_size}x{accum}x{self.env.world_size}; "
                 f"loss weights {[round(w, 3) for w in self.weights]}")
        self.log(f"run folder {t.run_dir} (log.jsonl, checkpoints/, config.yaml); TensorBoard: "
                 f"tensorboard --logdir {os.path.join(t.run_dir, 'tb')}")
        self.preemption = Preemption()
        if t.profile:
            self.profiler = profiling.StepProfiler(t.profile, t.run_dir, self.rt.device, self.log)
        bar = tqdm(total=t.steps, initial=self.step, disable=not (t.progress and self.env.is_main), mininterval=2,
                   desc="train", dynamic_ncols=True)
        it = self._batches = iter(self.stream)
        last_val, tick, seen = None, time.time(), 0
        while self.step < t.steps:
            micro = [next(it) for _ in range(accum)]
            if self.profiler:
                self.profiler.before(self.step + 1)
            self._pending.append((self.step, *self.train_step(micro), micro[0]["keys"][:3]))
            self.step += 1
            if self.profiler:
                self.profiler.after(self.step)
            seen += sum(len(b["keys"]) for b in micro) * self.env.world_size
            bar.update(1)
            log_now = self.step % t.log_every == 0 or self.step == t.steps
            if log_now:                   # the steps' device results are read (and checked) here
                loss, gnorm = self.settle()
                bar.set_postfix(loss=f"{loss:.4f}")
            if self.logger and log_now:
                now = time.time()
                self.logger.log({"kind": "train", "step": self.step, "loss": loss, "grad_norm": gnorm,
                                 "lr": self.strategy.lr(),
                                 "epoch": getattr(self.stream, "epoch", 0),
                                 "samples_per_s": seen / max(now - tick, 1e-9), "time": now})
                tick, seen = now, 0
            if t.val_every and self.step % t.val_every == 0 and self.step < t.steps:
                self.settle()
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
            if self.preemption.requested(self.rt.device):
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
            write_json(os.path.join(t.run_dir, "summary.json"), summary)
            self.logger.close()              # flushed now for callers of fit() alone; close() finds it closed
        if last_val:
            self.log(f"step {self.step}: val loss {last_val['val_loss']:.4f}  macro F1 {last_val['val_macro_f1']:.3f}"
                     f"  macro IoU {last_val['val_macro_iou']:.3f}  -> {path}")
        return summary


def run_training(cfg: Config, *, resume: bool = False, overwrite: bool = False, log=print):
    """The one way to run training (CLI, Slurm job, study): start the process group (torchrun, srun, the
    deepspeed launcher, or none), set train.threads, build the Trainer, fit. Returns (trainer, summary,
    None), or (trainer, None, Preempted) when a preemption signal ended the run with a checkpoint. Config and
    data errors raise from the Trainer's constructor (ConfigError, ManifestError) before anything runs."""
    cfg = validate(cfg)
    env = hdist.init_distributed(deepspeed=bool(cfg.train.deepspeed))   # the process group, once, here
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)                         # process-wide: set by the run, not a component
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite, log=log, env=env)
    try:
        return trainer, trainer.fit(), None
    except Preempted as p:
        checkpoint = p.checkpoint
    finally:
        trainer.close()     # every way out: no DataLoader worker outlives the run (loaders.py: how workers end)
    return trainer, None, Preempted(checkpoint)
