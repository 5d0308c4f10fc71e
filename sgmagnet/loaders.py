"""The one place loaders are built: `loader(purpose, ...)` for training, validation, evaluation and the benchmarks.

    loader("train", urls, norm, batch_size=8, rt=rt, ...)   the endless, resumable training stream of rt.loader:
            torch  EpochStream: WebDataset + DataLoader workers (any machine)
            dali   dali.DaliStream: DALI's webdataset reader (GPU machines with nvidia-dali)
        both yield the same batch dicts (data.collate) and resume exactly from their state_dict()
    loader("validation", urls, norm, batch_size=8, workers=2)    one pass, unreadable samples skipped with a warning
    loader("evaluation", urls, norm, batch_size=8, strict=True)  one pass, an unreadable sample stops the pass
    loader("bench", urls, norm, batch_size=8, workers=2)         one pass, as evaluation but never strict (with a
                                                                 dali runtime: one pass of DALI's reader)

    StreamShare({v: loader("train", ..., rank=v, world=V)}, k, j)   a rank's share of the run's V data streams
        (train.state.DataLayout): whole batches of several streams in turn, or slice j of k of one stream's batches

Which loader kind a run uses is decided once (runtime.Runtime.loader); the pipeline stages themselves
(decode, normalise, collate, shard splitting) are in data.py. Also here: how DataLoader workers end.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import weakref

import torch

from .data import PREEMPTION_SIGNALS, LoaderConfig, Normaliser, make_pipeline
from .shards import ShardError

PURPOSES = ("train", "validation", "evaluation", "bench")


def loader(purpose: str, urls, norm: Normaliser, *, batch_size: int, workers: int = 0, rt=None, seed: int = 0,
           rank: int = 0, world: int = 1, shuffle_buffer: int = 64, resample: bool = False, epoch_batches: int = 0,
           strict: bool = False):
    """The loader for `purpose` (module docstring). "train" needs the run's Runtime `rt` (its loader kind and
    device); epoch_batches fixes the epoch length (needed with resampled shards; DALI uses it only then)."""
    if purpose not in PURPOSES:
        raise ValueError(f"loader purpose must be one of {PURPOSES}, got {purpose!r}")
    urls = list(urls)
    if purpose == "train":
        cfg = LoaderConfig(batch_size=batch_size, workers=workers, shuffle_buffer=shuffle_buffer, rank=rank,
                           world=world, resample=resample)
        if rt is not None and rt.loader == "dali":
            from .dali import DaliStream

            return DaliStream(urls, norm, cfg, seed=seed, device=rt.device,
                              epoch_batches=epoch_batches if resample else 0)
        return EpochStream(urls, norm, cfg, seed=seed, epoch_batches=epoch_batches)
    if purpose == "bench" and rt is not None and rt.loader == "dali":
        from .dali import epoch_batches_of

        return epoch_batches_of(urls, batch_size, rank, world, norm)
    cfg = LoaderConfig(batch_size=batch_size, workers=min(workers, len(urls)))
    return make_loader(urls, norm, cfg, train=False, strict=strict and purpose == "evaluation")


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
    """One pass over `urls` in DataLoader workers (private to this module: callers use `loader`)."""
    pipe = make_pipeline(urls, norm, cfg.batch_size, train=train, seed=seed, epoch=epoch,
                         shuffle_buffer=cfg.shuffle_buffer, shuffle_shards=cfg.shuffle_shards, rank=cfg.rank,
                         world=cfg.world, workers=cfg.workers, resample=cfg.resample and train, strict=strict)
    # batches are made in the workers (batch_size=None); a private generator keeps the global RNG untouched
    return Loader(pipe, batch_size=None, num_workers=cfg.workers,
                  generator=torch.Generator().manual_seed(seed + epoch))


def slice_batch(b: dict, j: int, k: int) -> dict:
    """Samples [j n/k, (j+1) n/k) of a batch (n/k rounded up), with their labelled pixels re-indexed. A slice
    with no sample (a short last batch of an epoch) is one blank sample without labels: the rank still runs
    its forward and backward (DDP and ZeRO need every rank), and the step's loss and gradient are unchanged
    (no labelled column; the models normalise per sample)."""
    n = len(b["keys"])
    size = -(-n // k)
    lo, hi = min(n, j * size), min(n, (j + 1) * size)
    blank = hi <= lo
    sel = (b["index"][:, 0] >= lo) & (b["index"][:, 0] < hi)
    out = {name: v[sel] for name, v in b.items() if isinstance(v, torch.Tensor) and len(v) == len(b["index"])}
    out["index"] = b["index"][sel].clone()
    out["index"][:, 0] -= lo
    if blank:
        out.update(x=torch.zeros_like(b["x"][:1]), geom=torch.zeros_like(b["geom"][:1]), keys=[])
    else:
        out.update(x=b["x"][lo:hi], geom=b["geom"][lo:hi], keys=b["keys"][lo:hi])
    return out


class StreamShare:
    """One rank's share of a run's data streams: the streams {v: stream} in turn, a whole batch each (a rank
    reading V/W streams accumulates one micro-batch per stream), or with k > 1 slice j of k of every batch
    of its one stream (W = k V ranks). The position is each stream's own (epoch, batch)."""

    def __init__(self, streams: dict, k: int = 1, j: int = 0):
        self.streams, self.k, self.j = dict(streams), k, j
        self.order = sorted(self.streams)
        self._its = {}

    @property
    def epoch(self) -> int:
        return min(getattr(s, "epoch", 0) for s in self.streams.values())

    def state_dict(self) -> dict:
        return {"streams": {v: s.state_dict() for v, s in self.streams.items()}}

    def load_state_dict(self, d: dict):
        pos = {int(v): p for v, p in d["streams"].items()}
        for v, s in self.streams.items():
            if v not in pos:
                raise ValueError(f"the checkpoint holds no position for data stream {v} (it has {sorted(pos)})")
            s.load_state_dict(pos[v])

    def __iter__(self):
        self._its = {v: iter(self.streams[v]) for v in self.order}
        try:
            i = 0
            while True:
                b = next(self._its[self.order[i % len(self.order)]])
                i += 1
                yield b if self.k == 1 else slice_batch(b, self.j, self.k)
        finally:
            for it in self._its.values():
                it.close()                     # GeneratorExit in each stream: its workers end
            self._its = {}

    def close(self):
        for s in self.streams.values():
            close = getattr(s, "close", None)
            if close is not None:
                close()


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
