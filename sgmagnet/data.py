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
has already seen (`loaders.EpochStream`). The loaders themselves are built in loaders.py.
"""
from __future__ import annotations

import random
import signal
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds

from .shards import decode_sample, read_manifest


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
    """Latitude, longitude (bilinear between the patch's four corner pixels: exact on P-Tree's regular grid,
    within a small fraction of a pixel on the native 2 km grid of a 128 px patch) and solar zenith of the
    labelled pixels."""
    c = meta["corners"]
    v = pix[:, 0].astype(np.float64) / max(geom.shape[1] - 1, 1)
    u = pix[:, 1].astype(np.float64) / max(geom.shape[2] - 1, 1)
    def bilinear(k):
        return ((1 - v) * ((1 - u) * c["nw"][k] + u * c["ne"][k]) + v * ((1 - u) * c["sw"][k] + u * c["se"][k]))
    lat, lon = bilinear(0), bilinear(1)
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
