"""Run `sgmagnet build` over MPI ranks (mpi4py): rank 0 plans, granules are balanced by profile count
(LPT), each rank writes its own shards and records, rank 0 merges the manifest after a barrier.
Without MPI (or with one rank) it runs as one process. Plans travel as JSON text."""
from __future__ import annotations

import json

from sgmagnet.build import BuildConfig, BuildFailed, BuildRefused, assign, check_out, merge_manifest, plan, run_rank


def get_comm():
    """COMM_WORLD when launched under mpirun/srun with more than one rank, else None."""
    import os

    if not any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")):
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _bcast(comm, obj):
    return json.loads(comm.bcast(json.dumps(obj), root=0)) if comm else obj


def build(cfg: BuildConfig, log=print, overwrite: bool = False) -> dict:
    """Every rank returns, or every rank raises the same BuildRefused (bad input/options; nothing built) or
    BuildFailed (an environment failure on some rank: the manifest is not rewritten; re-run to retry)."""
    comm = get_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    p, refused = None, None
    if rank == 0:
        try:
            p = plan(cfg)
            check_out(cfg, p, overwrite, log)
        except BuildRefused as e:
            refused = str(e)
    p, refused = _bcast(comm, [p, refused]) if comm else (p, refused)
    if refused:
        raise BuildRefused(refused)
    my = assign(p["granules"], size)[rank]
    stats = run_rank(cfg, p, my, log=(lambda m: log(f"[rank {rank}] {m}")) if comm else log)
    ranks = [json.loads(s) for s in comm.allgather(json.dumps(stats))] if comm else [stats]
    errors = [r["error"] for r in ranks if "error" in r]
    if errors:
        raise BuildFailed(errors[0] + (f" (and {len(errors) - 1} more rank(s) failed)" if len(errors) > 1 else ""))
    man = None
    if rank == 0:
        man = merge_manifest(cfg, p)
        with open(f"{cfg.out}/build_stats.json", "w") as f:   # timing only; not part of the manifest
            json.dump({"ranks": ranks}, f, indent=1)
    total = _bcast(comm, sum(man["counts"].values()) if rank == 0 else None)
    if total == 0:
        first = (man or {}).get("skipped", [{}])[:1]
        why = f"; first skipped input: {first[0].get('file')}: {first[0].get('reason')}" if first and first[0] else ""
        raise BuildRefused(f"no sample was produced from {len(p['granules'])} granule(s) and {len(p['scenes'])} "
                           f"scene(s) (manifest.json lists the skipped inputs{why})")
    return {"rank": rank, "size": size, "stats": stats, "manifest": man}


def chunk_of(n: int, index: int, count: int) -> list[int]:
    """Granule indices of chunk `index` of `count` contiguous, time-ordered chunks (a job-array task)."""
    if not 0 <= index < count:
        raise ValueError(f"chunk {index} of {count}")
    return list(range(index * n // count, (index + 1) * n // count))


def build_chunk(cfg: BuildConfig, index: int, count: int, log=print) -> dict:
    """Process one chunk of granules (records and shards only; the manifest is merged by `merge`)."""
    p = plan(cfg)
    check_out(cfg, p, overwrite=False, log=log)
    stats = run_rank(cfg, p, chunk_of(len(p["granules"]), index, count), log=log)
    if "error" in stats:
        raise BuildFailed(stats["error"])
    return stats


def merge(cfg: BuildConfig) -> dict:
    """Merge the records of every granule into manifest.json (after all chunks are done)."""
    return merge_manifest(cfg, plan(cfg))
