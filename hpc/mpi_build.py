"""Run `sgmagnet build` over MPI ranks (mpi4py): rank 0 plans, granules are balanced by profile count
(LPT), each rank writes its own shards and records, rank 0 merges the manifest after a barrier.
Without MPI (or with one rank) it runs as one process. Plans travel as JSON text."""
from __future__ import annotations

import json

from sgmagnet.build import BuildConfig, assign, merge_manifest, plan, run_rank


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


def build(cfg: BuildConfig, log=print) -> dict:
    comm = get_comm()
    rank, size = (comm.Get_rank(), comm.Get_size()) if comm else (0, 1)
    p = plan(cfg) if rank == 0 else None
    if comm:
        p = json.loads(comm.bcast(json.dumps(p) if rank == 0 else None, root=0))
    my = assign(p["granules"], size)[rank]
    stats = run_rank(cfg, p, my, log=(lambda m: log(f"[rank {rank}] {m}")) if comm else log)
    all_stats = comm.gather(json.dumps(stats), root=0) if comm else [json.dumps(stats)]
    if comm:
        comm.Barrier()
    man = None
    if rank == 0:
        man = merge_manifest(cfg, p)
        ranks = [json.loads(s) for s in all_stats]
        with open(f"{cfg.out}/build_stats.json", "w") as f:   # timing only; not part of the manifest
            json.dump({"ranks": ranks}, f, indent=1)
    if comm:
        comm.Barrier()
    return {"rank": rank, "size": size, "stats": stats, "manifest": man}


def chunk_of(n: int, index: int, count: int) -> list[int]:
    """Granule indices of chunk `index` of `count` contiguous, time-ordered chunks (a job-array task)."""
    if not 0 <= index < count:
        raise ValueError(f"chunk {index} of {count}")
    return list(range(index * n // count, (index + 1) * n // count))


def build_chunk(cfg: BuildConfig, index: int, count: int, log=print) -> dict:
    """Process one chunk of granules (records and shards only; the manifest is merged by `merge`)."""
    p = plan(cfg)
    return run_rank(cfg, p, chunk_of(len(p["granules"]), index, count), log=log)


def merge(cfg: BuildConfig) -> dict:
    """Merge the records of every granule into manifest.json (after all chunks are done)."""
    return merge_manifest(cfg, plan(cfg))
