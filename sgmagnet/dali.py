"""NVIDIA DALI loader: the same batches as data.py, read by `fn.readers.webdataset`.

DALI reads the tar shards through the index files the builder wrote (`<shard>.tar.idx`, made by DALI's
wds2idx), with `shard_id`/`num_shards` from the rank, decodes the .npy members with
`fn.decoders.numpy`, and normalises the bands (on the GPU when a device is given, on the CPU in tests).
Labels are variable-length per sample, so they leave DALI as per-sample arrays and are concatenated with
their batch index on the host, exactly as data.collate does.

Position and resume: DALI's own pipeline checkpointing (`enable_checkpointing=True`) records the reader
state; `state_dict()` returns it as a string with the batch counters, and a resumed pipeline continues
from it. Epochs: the reader wraps around its shard set; with resampling semantics an epoch is counted as
`epoch_batches` batches, and `pad_last_batch` keeps every rank's batch count equal.
"""
from __future__ import annotations

import json

import numpy as np

from .data import LoaderConfig, Normaliser, collate, pixel_columns

EXT = ["input.npy", "pix.npy", "prof.npy", "geom.npy", "meta.json"]


def sample_key(meta: dict) -> str:
    """The WebDataset __key__ the builder gave this sample (scene minute, granule number, window)."""
    t = meta["scene_time"].replace("-", "").replace(":", "")[:13]
    return f"{t}_{int(meta['granule'].split('_')[1]):05d}_{meta['window_index']:03d}"


def build_pipeline(urls, norm: Normaliser, batch_size: int, shard_id: int, num_shards: int, train: bool,
                   seed: int, device_id=None, checkpoint: str | None = None, threads: int = 2):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=seed, exec_dynamic=True,
                  enable_checkpointing=True)
    def pipe():
        inp, pix, prof, geom, meta = fn.readers.webdataset(
            paths=list(urls), index_paths=[u + ".idx" for u in urls], ext=EXT, missing_component_behavior="error",
            random_shuffle=train, initial_fill=max(2, 4 * batch_size) if train else 1, seed=seed,
            shard_id=shard_id, num_shards=num_shards, pad_last_batch=True, name="Reader",
            dtypes=[types.UINT8] * len(EXT))
        x = fn.decoders.numpy(inp)
        if device_id is not None:
            x = x.gpu()
        mean = types.Constant(norm.mean.reshape(16, 1, 1).astype(np.float32))
        std = types.Constant(norm.std.reshape(16, 1, 1).astype(np.float32))
        x = (x - mean) / std
        return x, fn.decoders.numpy(pix), fn.decoders.numpy(prof), fn.decoders.numpy(geom), meta

    p = pipe(checkpoint=checkpoint) if checkpoint else pipe()
    p.build()
    return p


def _host(tl) -> list:
    """A DALI TensorList (CPU or GPU) -> per-sample numpy arrays."""
    if hasattr(tl, "as_cpu"):
        tl = tl.as_cpu()
    return [np.array(tl[i]) for i in range(len(tl))]


def to_batch(outs) -> dict:
    """DALI pipeline outputs -> the batch dict of data.collate (labels concatenated with a batch index)."""
    samples = []
    for x, pix, prof, geom, raw in zip(*(_host(o) for o in outs)):
        meta = json.loads(bytes(raw).decode())
        pix = pix.astype(np.int64)
        lat, lon, soz = pixel_columns(meta, pix, geom)
        samples.append({"key": sample_key(meta), "x": x, "geom": geom.astype(np.float32), "pix": pix, "prof": prof,
                        "lat": lat, "lon": lon, "soz": soz})   # no ctype: DALI does not read it (strata only), collate fills 0
    return collate(samples)


def epoch_batches_of(urls, batch_size: int, shard_id: int, num_shards: int, norm: Normaliser) -> list[dict]:
    """One pass over this rank's share of the shards without shuffling (evaluation; tests)."""
    p = build_pipeline(urls, norm, batch_size, shard_id, num_shards, train=False, seed=0)
    total = p.reader_meta("Reader")["epoch_size"]
    # DALI gives shard i the samples [floor(i N / k), floor((i+1) N / k)); beyond that it pads with repeats
    n = (shard_id + 1) * total // num_shards - shard_id * total // num_shards
    out, left = [], n
    while left > 0:
        b = to_batch(p.run())
        k = min(left, len(b["keys"]))
        if k < len(b["keys"]):  # drop the padding at the end of the epoch
            sel = b["index"][:, 0] < k
            b = {**b, "x": b["x"][:k], "geom": b["geom"][:k], "index": b["index"][sel], "prof": b["prof"][sel],
                 "lat": b["lat"][sel], "lon": b["lon"][sel], "soz": b["soz"][sel], "ctype": b["ctype"][sel], "keys": b["keys"][:k]}
        out.append(b)
        left -= k
    return out


class DaliStream:
    """Endless training batches from DALI; position = DALI checkpoint + counters (exact resume)."""

    def __init__(self, urls, norm: Normaliser, cfg: LoaderConfig, seed: int = 0, device=None, epoch_batches: int = 0):
        self.urls, self.norm, self.cfg, self.seed = list(urls), norm, cfg, seed
        self.device_id = device.index if device is not None and device.type == "cuda" else None
        self.epoch_batches = epoch_batches
        self.epoch, self.batch, self._ckpt, self._pipe = 0, 0, None, None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch,
                "dali": self._pipe.checkpoint() if self._pipe is not None else (self._ckpt or "")}

    def load_state_dict(self, d: dict):
        self.epoch, self.batch, self._ckpt = int(d["epoch"]), int(d["batch"]), d.get("dali") or None

    def close(self):
        """Release the pipeline (its threads) now, keeping its position for a later state_dict()."""
        if self._pipe is not None:
            self._ckpt, self._pipe = self._pipe.checkpoint(), None

    def __iter__(self):
        self._pipe = build_pipeline(self.urls, self.norm, self.cfg.batch_size, self.cfg.rank, self.cfg.world,
                                    train=True, seed=self.seed + 7919 * self.cfg.rank, device_id=self.device_id,
                                    checkpoint=self._ckpt)
        per_epoch = self.epoch_batches or max(
            1, self._pipe.reader_meta("Reader")["epoch_size_padded"] // (self.cfg.world * self.cfg.batch_size))
        while True:
            b = to_batch(self._pipe.run())
            self.batch += 1
            if self.batch >= per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            yield b
