"""WebDataset shard I/O (no pickle): sample encoding, shard writing with DALI indexes, reading back."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os

import numpy as np

SAMPLE_KEYS = ("input.npy", "pix.npy", "prof.npy", "geom.npy", "meta.json")
OPTIONAL_KEYS = ("ctype.npy",)   # uint8 [N]: CloudLayerType of the top layer per labelled pixel (0 = clear)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def npy_load(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def encode_sample(key: str, s: dict) -> dict:
    return {"__key__": key, "input.npy": npy_bytes(s["input"].astype(np.float32)),
            "pix.npy": npy_bytes(s["pix"].astype(np.int16)), "prof.npy": npy_bytes(s["prof"].astype(np.uint8)),
            "geom.npy": npy_bytes(s["geom"].astype(np.float32)),
            "meta.json": json.dumps(s["meta"], sort_keys=True).encode(),
            **({"ctype.npy": npy_bytes(s["ctype"].astype(np.uint8))} if "ctype" in s else {})}


def decode_sample(raw: dict) -> dict:
    out = {"__key__": raw["__key__"]}
    for k in SAMPLE_KEYS:
        if k not in raw:
            raise ValueError(f"sample {raw['__key__']} lacks {k}")
    out["input"] = npy_load(raw["input.npy"])
    out["pix"] = npy_load(raw["pix.npy"])
    out["prof"] = npy_load(raw["prof.npy"])
    out["geom"] = npy_load(raw["geom.npy"])
    out["meta"] = json.loads(raw["meta.json"])
    out["ctype"] = npy_load(raw["ctype.npy"]) if "ctype.npy" in raw else np.zeros(len(out["pix"]), np.uint8)
    return out


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_dali_index(tar_path: str) -> str:
    """DALI index for fn.readers.webdataset, made with DALI's own wds2idx."""
    from wds2idx import IndexCreator

    idx = tar_path + ".idx"
    with IndexCreator(tar_path, idx, verbose=False) as ic:
        ic.create_index()
    return idx


def iter_shard(path: str):
    """Decoded samples of one tar shard, in order (webdataset's own tar reader; no pickle)."""
    import webdataset as wds

    for raw in wds.WebDataset(path, shardshuffle=False, empty_check=False):
        yield decode_sample(raw)


def shard_paths(root: str, split: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, split, "*.tar")))
