"""WebDataset input pipeline: shards -> decoded, normalised samples -> sparse-label batches.

One batch is a dict of tensors:
  x      float32 [B, 16, H, W]  bands normalised with the manifest's training-split mean/std; NaN where
                                 missing (models mask it themselves, see models/common.py)
  geom   float32 [B, 2, H, W]   solar and satellite zenith (deg)
  index  int64   [N, 3]         (sample in batch, row, col) of every labelled pixel
  prof   uint8   [N, 38]        its labels per level (255 = none)
  lat    float32 [N]            its latitude (from the patch corners; the grid is regular in lat/lon)
  lon    float32 [N]            its longitude (likewise; curtains use it for geodesic distances and ticks)
  soz    float32 [N]            its solar zenith
  ctype  uint8   [N]            cloud type of its top layer (CloudLayerType 1 Ci .. 8 DC; 0 = clear/unknown)
  keys   list[str]              sample keys
The variable number of labelled pixels per sample is handled by concatenating them with a batch index,
so no dense label volume is ever built.

Stages are plain webdataset pipeline stages: shard list (shuffled per epoch with a seeded RNG) -> rank
splitter (shard i to rank i % world) -> worker splitter -> tar reader -> seeded shuffle buffer -> decode
-> batch. Across ranks, training instead draws shards with replacement (`ResampledShards`, seeded by
seed/epoch/rank/worker) and the consumer fixes the epoch length, so no rank can run dry. Everything is a
pure function of (seed, epoch, rank), so an epoch can be replayed and a resumed run skips the batches it
has already seen (`EpochStream`).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import random
import signal
import weakref
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds

from .shards import ShardError, decode_sample, read_manifest, shard_paths  # noqa: F401  (read_manifest: re-exported)


@dataclass
class Normaliser:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def from_manifest(cls, shards_dir: str) -> "Normaliser":
        m = read_manifest(shards_dir)
        mean = np.asarray(m.band_stats["mean"], np.float32)
        std = np.asarray(m.band_stats["std"], np.float32)
        return cls(mean, np.where(std > 0, std, 1.0).astype(np.float32))

    @classmethod
    def from_checkpoint(cls, saved) -> "Normaliser":
        """The statistics a model was trained with (checkpoint.SavedModel.normaliser)."""
        n = saved.normaliser
        return cls(np.asarray(n["mean"], np.float32), np.asarray(n["std"], np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean[:, None, None]) / self.std[:, None, None]


def pixel_columns(meta: dict, pix: np.ndarray, geom: np.ndarray):
    """Latitude, longitude (from the patch corners; the grid is regular in lat/lon) and solar zenith of the
    labelled pixels."""
    c = meta["corners"]
    rows, cols = pix[:, 0].astype(np.float64), pix[:, 1].astype(np.float64)
    lat = c["nw"][0] + (c["sw"][0] - c["nw"][0]) * rows / max(geom.shape[1] - 1, 1)
    lon = c["nw"][1] + (c["ne"][1] - c["nw"][1]) * cols / max(geom.shape[2] - 1, 1)
    return lat.astype(np.float32), lon.astype(np.float32), geom[0][pix[:, 0], pix[:, 1]].astype(np.float32)


class Decode:
    """Raw tar members -> a sample dict of numpy arrays (picklable, so it runs inside DataLoader workers)."""

    def __init__(self, norm: Normaliser):
        self.norm = norm

    def __call__(self, raw: dict) -> dict:
        s = decode_sample(raw)
        x = s["input"].astype(np.float32)
        if x.shape[0] != len(self.norm.mean):
            raise ValueError(f"sample {s['__key__']}: {x.shape[0]} bands, expected {len(self.norm.mean)}")
        lat, lon, soz = pixel_columns(s["meta"], s["pix"], s["geom"])
        return {"key": s["__key__"], "x": self.norm(x), "geom": s["geom"].astype(np.float32),
                "pix": s["pix"].astype(np.int64), "prof": s["prof"], "lat": lat, "lon": lon, "soz": soz,
                "ctype": s["ctype"].astype(np.uint8)}


def collate(samples: list[dict]) -> dict:
    """Stack images; concatenate labelled pixels with their sample index."""
    index = [np.concatenate([np.full((len(s["pix"]), 1), b, np.int64), s["pix"]], 1) for b, s in enumerate(samples)]
    return {"x": torch.from_numpy(np.stack([s["x"] for s in samples])),
            "geom": torch.from_numpy(np.stack([s["geom"] for s in samples])),
            "index": torch.from_numpy(np.concatenate(index).reshape(-1, 3)),
            "prof": torch.from_numpy(np.concatenate([s["prof"] for s in samples])),
            "lat": torch.from_numpy(np.concatenate([s["lat"] for s in samples])),
            "lon": torch.from_numpy(np.concatenate([s["lon"] for s in samples])),
            "soz": torch.from_numpy(np.concatenate([s["soz"] for s in samples])),
            "ctype": torch.from_numpy(np.concatenate([s.get("ctype", np.zeros(len(s["pix"]), np.uint8))
                                                      for s in samples])),
            "keys": [s["key"] for s in samples]}


def identity_splitter(src):
    yield from src


class RankSplitter:
    """Node/rank splitter stage: shard i goes to rank i % world (picklable, for DataLoader workers)."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def __call__(self, src):
        for i, s in enumerate(src):
            if i % self.world == self.rank:
                yield s


class ResampledShards(torch.utils.data.IterableDataset):
    """Endless shard URLs drawn with replacement, seeded by (seed, epoch, rank, worker): no rank or worker
    can run dry, and the sequence replays exactly for a resumed run."""

    def __init__(self, urls, seed: int, epoch: int, rank: int):
        self.urls, self.seed, self.epoch, self.rank = list(urls), seed, epoch, rank

    def __iter__(self):
        wi = torch.utils.data.get_worker_info()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{wi.id if wi else 0}")
        while True:
            yield {"url": rng.choice(self.urls)}


@dataclass
class LoaderConfig:
    batch_size: int = 8
    workers: int = 0
    shuffle_buffer: int = 64
    shuffle_shards: bool = True
    rank: int = 0
    world: int = 1
    resample: bool = False     # endless resampled shards (training across ranks); the consumer fixes the epoch length


def make_pipeline(urls: list[str], norm: Normaliser, batch_size: int, *, train: bool, seed: int = 0, epoch: int = 0,
                  shuffle_buffer: int = 64, shuffle_shards: bool = True, rank: int = 0, world: int = 1,
                  workers: int = 0, resample: bool = False, strict: bool = False):
    """A webdataset DataPipeline for one epoch (deterministic in seed, epoch and rank). strict: an unreadable
    tar member or sample raises (evaluation) instead of being skipped with a warning (training)."""
    urls = list(urls)
    if not urls:
        raise ValueError("no shards to read")
    stage_seed = (seed * 1_000_003 + epoch) & 0x7FFFFFFF
    if resample:
        stages = [ResampledShards(urls, seed, epoch, rank)]
    else:
        if len(urls) < world * max(1, workers) and world > 1:
            raise ValueError(f"{len(urls)} shards cannot feed {world} ranks x {max(1, workers)} workers without "
                             f"resampling: use data.resample=true, fewer workers, or more shards (sgmagnet build "
                             f"--shard-maxcount)")
        if train and shuffle_shards:
            random.Random(stage_seed).shuffle(urls)
        stages = [wds.SimpleShardList(urls), RankSplitter(rank, world) if world > 1 else identity_splitter,
                  wds.split_by_worker]
    handler = wds.reraise_exception if strict else skip_with_warning
    stages.append(wds.tarfile_to_samples(handler=handler))
    if train and shuffle_buffer > 1:
        stages.append(wds.shuffle(shuffle_buffer, initial=shuffle_buffer, seed=stage_seed + 7919 * rank))
    stages += [wds.map(Decode(norm), handler=handler),
               wds.batched(batch_size, collation_fn=collate, partial=True)]
    return wds.DataPipeline(*stages)


def skip_with_warning(exn) -> bool:
    """The training loader's handler for an unreadable tar member or sample: one line on stderr, go on (webdataset's
    warn_and_continue prints two lines per sample, the second the source line of its own warnings.warn)."""
    import sys

    sys.stderr.write(f"WARNING: skipped an unreadable sample ({type(exn).__name__}: {' '.join(str(exn).split())[:300]})\n")
    return True


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)

# How DataLoader workers end (issue: a finished run hung at exit behind workers that ignored SIGTERM):
#  * While their parent lives, workers ignore the preemption signals: Slurm (and `kill -- -PGID`) signal every
#    process of a step, and only the trainer decides when to stop -- it finishes the step, checkpoints and
#    exits; a worker killed first would turn a clean preemption into a failed run.
#  * A worker whose parent is gone honours them (it exits at once; PyTorch's watchdog would notice within 5 s).
#  * Loaders are shut down explicitly by whoever iterates them (`close_iterator`, `iterate`, EpochStream.close,
#    the trainer's finally): the workers get PyTorch's polite "done" message and leave on their own.
#  * Last resort, at interpreter exit: an iterator still alive then (a reference cycle, an exception that
#    kept a frame) is shut down the same way, and a worker still alive after that is SIGKILLed. It must be
#    SIGKILL: SIGTERM -- which PyTorch's shutdown and multiprocessing's exit handler send before joining
#    forever -- is the one signal these workers are built to ignore. The hook is registered after
#    multiprocessing's own (atexit runs last-in first-out), so it runs before that join.
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


class WorkerSignals:
    """DataLoader worker init (picklable): ignore the preemption signals while the parent process lives; an
    orphaned worker exits on them. The worker was forked with them blocked (Loader.__iter__); a signal that
    arrived since is handled here, when the block is lifted."""

    parent = None

    def __call__(self, worker_id: int = 0):
        self.parent = os.getppid()         # runs in the worker, just after the fork
        for s in PREEMPTION_SIGNALS:
            signal.signal(s, self.on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, PREEMPTION_SIGNALS)

    def on_signal(self, signum, frame):
        if os.getppid() != self.parent:
            os._exit(0)


def _worker_processes(it) -> list:
    return list(getattr(it, "_workers", None) or [])


def close_iterator(it, grace_s: float = 5.0):
    """Shut down a DataLoader iterator's workers now: PyTorch's own shutdown (the workers are told to leave and
    joined), then SIGKILL for any worker still alive after `grace_s`. Safe on any iterator and twice."""
    workers = _worker_processes(it)
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        with contextlib.suppress(Exception):
            shutdown()
    for w in workers:
        with contextlib.suppress(Exception):
            w.join(timeout=grace_s if w.is_alive() else 0)
            if w.is_alive():
                os.kill(w.pid, signal.SIGKILL)
                w.join(timeout=grace_s)
    with contextlib.suppress(TypeError):           # an iterator that cannot be weakly referenced was never tracked
        _LIVE_ITERATORS.discard(it)


@atexit.register
def _close_live_iterators():
    for it in list(_LIVE_ITERATORS):
        close_iterator(it, grace_s=2.0)


@contextlib.contextmanager
def iterate(loader):
    """`with iterate(loader) as batches:` -- the loader's iterator, whose workers are gone when the block ends
    (however it ends: exhausted, broken out of, an exception)."""
    it = iter(loader)
    try:
        yield it
    finally:
        close_iterator(it)


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers cannot die of a preemption signal while their parent lives (WorkerSignals): they
    are started (forked) with SIGTERM and SIGUSR2 blocked until their init handles them. A new set of workers
    starts every epoch; without the block, a signal landing between a worker's fork and its init killed it
    and the trainer failed ("DataLoader worker exited unexpectedly") instead of checkpointing. The parent's
    signals stay pending for those milliseconds and reach its handler when the mask is restored. Every
    iterator with workers is tracked, so the exit hook above can end it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("worker_init_fn", WorkerSignals())   # the other half of the block below
        super().__init__(*args, **kwargs)

    def __iter__(self):
        if not self.num_workers:
            return super().__iter__()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
        try:
            it = super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        _LIVE_ITERATORS.add(it)
        return it


def make_loader(urls, norm, cfg: LoaderConfig, *, train: bool, seed: int = 0, epoch: int = 0, strict: bool = False):
    pipe = make_pipeline(urls, norm, cfg.batch_size, train=train, seed=seed, epoch=epoch,
                         shuffle_buffer=cfg.shuffle_buffer, shuffle_shards=cfg.shuffle_shards, rank=cfg.rank,
                         world=cfg.world, workers=cfg.workers, resample=cfg.resample and train, strict=strict)
    # batches are made in the workers (batch_size=None); a private generator keeps the global RNG untouched
    return Loader(pipe, batch_size=None, num_workers=cfg.workers,
                  generator=torch.Generator().manual_seed(seed + epoch))


class EpochStream:
    """Endless training batches, epoch after epoch, with a position (epoch, batch) that resumes exactly:
    epoch e is replayed from (seed, e, rank) and its first `batch` batches are skipped. With resampled
    shards an epoch is `epoch_batches` batches (the same on every rank, so none runs dry)."""

    def __init__(self, urls, norm, cfg: LoaderConfig, seed: int = 0, epoch: int = 0, batch: int = 0,
                 epoch_batches: int = 0):
        self.urls, self.norm, self.cfg, self.seed = list(urls), norm, cfg, seed
        self.epoch, self.batch = epoch, batch
        if cfg.resample and epoch_batches <= 0:
            raise ValueError("resampled shards need a fixed epoch length (epoch_batches > 0)")
        self.epoch_batches = epoch_batches if cfg.resample else 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, d: dict):
        self.epoch, self.batch = int(d["epoch"]), int(d["batch"])

    def __iter__(self):
        while True:
            skip, n = self.batch, 0
            with iterate(make_loader(self.urls, self.norm, self.cfg, train=True, seed=self.seed,
                                     epoch=self.epoch)) as batches:
                self._current = batches
                for n, b in enumerate(batches, 1):
                    if self.epoch_batches and n > self.epoch_batches:
                        n -= 1
                        break
                    if n <= skip:
                        continue
                    self.batch = n
                    yield b
            self._current = None
            if n == 0:
                raise ShardError(f"{os.path.dirname(self.urls[0])}: an epoch over {len(self.urls)} shard(s) gave no "
                                 f"readable sample (truncated or damaged since the build? `sgmagnet inspect --verify`)")
            self.epoch, self.batch = self.epoch + 1, 0

    def close(self):
        """End the current epoch's workers now (the trainer calls it however a run ends)."""
        it, self._current = getattr(self, "_current", None), None
        if it is not None:
            close_iterator(it)


def split_urls(shards_dir: str, split: str) -> list[str]:
    urls = shard_paths(shards_dir, split)
    if not urls:
        raise FileNotFoundError(f"{shards_dir}: no shards for split {split!r} (looked for {split}/*.tar)")
    return urls
