"""`sgmagnet inspect`: statistics of a shard set from its manifest (and optionally re-hashed shards)."""
from __future__ import annotations

import json
import os

import numpy as np

from .grid import BAND_VARS, CLASS_NAMES
from .shards import read_manifest, verify_shards


def summary(root: str, verify: bool = False, as_json: bool = False) -> str:
    """The statistics as text/JSON; with verify, every shard is re-hashed (see `checksum_failures`)."""
    return inspect_shards(root, verify, as_json)[0]


def inspect_shards(root: str, verify: bool = False, as_json: bool = False) -> tuple[str, list[str]]:
    """(report, shards failing verification). Raises ManifestError on a bad manifest."""
    m = read_manifest(root)
    bad = verify_shards(root, m) if verify else []
    if as_json:
        return json.dumps({"counts": m.counts, "class_histogram": m.class_histogram,
                           "band_stats": m.band_stats, "provenance": m.provenance, "shards": len(m.shards),
                           "skipped": len(m.skipped), "checksum_failures": bad}, indent=1), bad
    lines = [f"shards: {len(m.shards)}   samples: " + ", ".join(f"{k} {v}" for k, v in m.counts.items())
             + f"   profiles matched: {m.profiles['matched_profiles']} of {m.profiles['profiles']}"]
    lines.append("class histogram of labelled voxels:")
    lines.append("  split  " + "".join(f"{c:>12}" for c in CLASS_NAMES) + "   clear %")
    for s, h in m.class_histogram.items():
        h = np.asarray(h)
        pct = 100 * h[0] / h.sum() if h.sum() else float("nan")
        lines.append(f"  {s:<6} " + "".join(f"{int(v):>12}" for v in h) + f"   {pct:6.1f}")
    if any(m.provenance.values()):
        lines.append("samples by label product / day-night (solar zenith at the labelled pixels) / imager:")
        for s, d in m.provenance.items():
            for k, n in d.items():
                lines.append(f"  {s:<6} {k:<40} {n:>8}")
    lines.append("band statistics (training split):")
    bs = m.band_stats
    for k, b in enumerate(BAND_VARS):
        lines.append(f"  {b:<10} mean {bs['mean'][k]:9.4f}  std {bs['std'][k]:8.4f}")
    lines.append(f"skipped inputs: {len(m.skipped)}")
    for s in m.skipped[:10]:
        lines.append(f"  {os.path.basename(s['file'])}: {s['reason']}")
    if verify:
        lines.append("checksums: " + ("all match" if not bad else f"{len(bad)} MISMATCH: {bad[:5]}"))
    return "\n".join(lines), bad
