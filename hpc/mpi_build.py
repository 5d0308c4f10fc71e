"""Archive builds across many processes: `sgmagnet build` under mpirun/srun runs `sgmagnet.build.build`
(rank 0 plans, granules are balanced by profile count, each rank writes its own shards and records, rank
0 merges the manifest after a barrier); a Slurm job array runs contiguous time chunks of granules
(`build_chunk`) and a dependent job merges the manifest (`merge`)."""
from __future__ import annotations

from sgmagnet.build import (BuildConfig, BuildFailed, build, check_out, get_comm, merge_manifest,  # noqa: F401
                            plan, run_rank)
from sgmagnet.shards import Manifest


def chunk_of(n: int, index: int, count: int) -> list[int]:
    """Granule indices of chunk `index` of `count` contiguous, time-ordered chunks (a job-array task)."""
    if not 0 <= index < count:
        raise ValueError(f"chunk {index} of {count}")
    return list(range(index * n // count, (index + 1) * n // count))


def build_chunk(cfg: BuildConfig, index: int, count: int, log=print) -> dict:
    """Process one chunk of granules (records and shards only; the manifest is merged by `merge`)."""
    p = plan(cfg)
    check_out(cfg, p, overwrite=False, log=log)
    stats = run_rank(cfg, p, chunk_of(len(p.granules), index, count), log=log)
    if "error" in stats:
        raise BuildFailed(stats["error"])
    return stats


def merge(cfg: BuildConfig) -> Manifest:
    """Merge the records of every granule into manifest.json (after all chunks are done)."""
    return merge_manifest(cfg, plan(cfg))
