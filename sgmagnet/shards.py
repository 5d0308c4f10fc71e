"""WebDataset shard I/O (no pickle): sample encoding, shard writing with DALI indexes, reading back."""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from .grid import IGNORE, N_CLASSES
from .io import write_json

SAMPLE_KEYS = ("input.npy", "pix.npy", "prof.npy", "geom.npy", "meta.json")
OPTIONAL_KEYS = ("ctype.npy",)   # uint8 [N]: CloudLayerType of the top layer per labelled pixel (0 = clear)


class ShardError(ValueError):
    """Shards that do not match their manifest, or samples that cannot be read (one line, names the folder)."""


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
    check_sample(out)
    return out


def check_sample(s: dict):
    """A decoded sample is what the builder writes, or a ValueError naming the sample and what is wrong: the
    loaders then skip it with a warning (training) or stop (evaluation), instead of a kernel or a gather
    meeting a pixel outside the patch or a label it cannot weigh."""
    key, x, pix, prof, geom = s["__key__"], s["input"], s["pix"], s["prof"], s["geom"]
    if x.ndim != 3 or geom.shape != (2,) + x.shape[1:]:
        raise ValueError(f"sample {key}: input {x.shape} and geom {geom.shape} are not [C, H, W] and [2, H, W]")
    n = len(pix)
    if pix.ndim != 2 or pix.shape[1] != 2 or pix.dtype.kind not in "iu" or prof.ndim != 2 or len(prof) != n \
            or prof.dtype != np.uint8 or s["ctype"].shape != (n,):
        raise ValueError(f"sample {key}: pix {pix.shape} {pix.dtype}, prof {prof.shape} {prof.dtype} and ctype "
                         f"{s['ctype'].shape} do not describe the same N labelled pixels")
    if n and (pix.min() < 0 or pix[:, 0].max() >= x.shape[1] or pix[:, 1].max() >= x.shape[2]):
        raise ValueError(f"sample {key}: a labelled pixel lies outside the {x.shape[1]}x{x.shape[2]} patch")
    bad = (prof >= N_CLASSES) & (prof != IGNORE)
    if bad.any():
        raise ValueError(f"sample {key}: label {int(prof[bad][0])} is not a class (0..{N_CLASSES - 1}) nor {IGNORE} (no label)")


MANIFEST_FORMAT = "sgmagnet-shards/1"
MANIFEST_KEYS = ("format", "config", "counts", "class_histogram", "train_class_frequency", "band_stats", "shards",
                 "skipped", "profiles")          # what every reader needs; the other fields are descriptive


class ManifestError(ValueError):
    """A shard folder's manifest.json is missing, unreadable, truncated or not ours (one line, names the file)."""


@dataclass(frozen=True)
class Manifest:
    """A shard folder's manifest.json, typed: written by `sgmagnet build` (build.merge_manifest -> write) and read
    back by every reader (read_manifest) through this one class."""
    format: str                       # sgmagnet-shards/N
    config: dict                      # the BuildConfig it was built with
    counts: dict                      # split -> samples
    class_histogram: dict             # split -> labelled voxels per class [4]
    train_class_frequency: list       # class frequencies of the training split (loss weights)
    band_stats: dict                  # {"mean": [16], "std": [16], "count": [16]} over the training split
    shards: list                      # [{"path", "split", "sha256"}]
    skipped: list                     # [{"file", "reason"}]
    profiles: dict                    # profiles read / valid / matched
    levels: dict = field(default_factory=dict)      # {"n", "bottom_km", "dz_km"} (grid.py)
    classes: list = field(default_factory=list)     # class names, index = label
    ignore_label: int = IGNORE
    bands: list = field(default_factory=list)       # input channel names, in order
    sources: dict = field(default_factory=dict)     # archive folders, granule and scene counts
    split_anchor: str = ""            # the date the split blocks count from
    config_hash: str = ""             # hash of the BuildConfig fields that change the samples
    provenance: dict = field(default_factory=dict)  # split -> {"<label product>/<day|twilight|night>/<platform>": samples}
    solar_zenith: dict = field(default_factory=dict)  # split -> [min, max] solar zenith (deg) at its labelled pixels

    @property
    def patch_size(self) -> int:
        return int(self.config["patch_size"])

    @classmethod
    def from_json(cls, m: dict) -> "Manifest":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in m.items() if k in names})

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, shards_dir: str) -> str:
        path = os.path.join(shards_dir, "manifest.json")
        write_json(path, self.to_json(), sort_keys=True)
        return path


def read_manifest(shards_dir: str) -> Manifest:
    """manifest.json of a shard folder made by `sgmagnet build`, checked for the keys every reader uses."""
    path = os.path.join(shards_dir, "manifest.json")
    if not os.path.exists(path):
        raise ManifestError(f"{path}: no manifest.json (is {shards_dir!r} a shard folder made by `sgmagnet build`?)")
    try:
        with open(path, "rb") as f:
            m = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise ManifestError(f"{path}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ManifestError(f"{path}: not valid JSON (corrupt or truncated: {' '.join(str(e).split())[:120]}); "
                            f"re-run `sgmagnet build` with the same options to rewrite it") from None
    if not isinstance(m, dict) or not str(m.get("format", "")).startswith("sgmagnet-shards/"):
        raise ManifestError(f"{path}: not an sgmagnet shard manifest (no format 'sgmagnet-shards/N')")
    missing = [k for k in MANIFEST_KEYS if k not in m]
    if missing:
        raise ManifestError(f"{path}: incomplete manifest, missing {', '.join(missing)}")
    return Manifest.from_json(m)


def manifest_sha256(shards_dir: str) -> str:
    return sha256(os.path.join(shards_dir, "manifest.json"))


def verify_shards(shards_dir: str, manifest: Manifest, split: str | None = None) -> list[str]:
    """Shards of the manifest (one split, or all) whose file is missing or whose sha256 differs, plus shard
    files of that split on disk that the manifest does not list."""
    listed = [s for s in manifest.shards if split is None or s.get("split") == split]
    bad = [s["path"] for s in listed if not os.path.exists(os.path.join(shards_dir, s["path"]))
           or sha256(os.path.join(shards_dir, s["path"])) != s["sha256"]]
    names = {s["path"] for s in listed}
    for sp in ([split] if split else sorted({s.get("split") for s in manifest.shards} | {"train", "val", "test"})):
        for p in shard_paths(shards_dir, sp):
            rel = os.path.relpath(p, shards_dir)
            if rel not in names:
                bad.append(f"{rel} (not in the manifest)")
    return bad


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


def split_urls(shards_dir: str, split: str) -> list[str]:
    urls = shard_paths(shards_dir, split)
    if not urls:
        raise FileNotFoundError(f"{shards_dir}: no shards for split {split!r} (looked for {split}/*.tar)")
    return urls
