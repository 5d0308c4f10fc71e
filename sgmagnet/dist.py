"""Distributed runtime: one `init_distributed()` for torchrun, the deepspeed launcher, srun and plain runs.

Environment, in order of precedence:
  torchrun / deepspeed launcher   RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
  srun (Slurm)                    SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR = first host of
                                  SLURM_JOB_NODELIST (SLURM_STEP_NODELIST), MASTER_PORT = 20000 + job id % 20000
  anything else                   a single process (rank 0 of 1); no process group is created, except for
                                  DeepSpeed, which gets a group of one
Backend: NCCL when CUDA is available, gloo otherwise (override with SGMAGNET_DIST_BACKEND). Under
`DS_ACCELERATOR=cpu` DeepSpeed is told to use gloo as well.

The rendezvous variables a launcher did not set (srun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*, DeepSpeed's group
of one) are written into os.environ, because torch's env:// rendezvous and DeepSpeed read them there; every
variable written is recorded and `shutdown()` puts the environment back as it was.

`shutdown()` ends cleanly: barrier, destroy the process group, restore the environment. `hard_exit(code)`
then skips native destructors (a rare "terminate called without an active exception" abort at interpreter exit was seen
with gloo + DeepSpeed on CPU; exiting with os._exit after the group is destroyed avoids it).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    launcher: str = "single"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0



def first_host(nodelist: str) -> str:
    """First host name of a Slurm node list: 'gpu[003-005,9],cpu1' -> 'gpu003'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        raise ValueError(f"cannot parse Slurm node list {nodelist!r}")
    prefix, rng = m.group(1), m.group(3)
    if rng is None:
        return prefix
    return prefix + rng.split(",")[0].split("-")[0]


def detect() -> DistEnv:
    e = os.environ
    if "RANK" in e and "WORLD_SIZE" in e:
        launcher = "deepspeed" if "DEEPSPEED_ENVIRONMENT_NAME" in e or "CROSS_RANK" in e else "torchrun"
        return DistEnv(int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)), launcher=launcher)
    if "SLURM_PROCID" in e and int(e.get("SLURM_NTASKS", "1")) > 1:
        return DistEnv(int(e["SLURM_PROCID"]), int(e["SLURM_NTASKS"]), int(e.get("SLURM_LOCALID", 0)), launcher="srun")
    return DistEnv()


def slurm_master_port(job_id) -> int:
    """The rendezvous port of a Slurm job (one formula for srun and submitit; array ids "123_4" use 123):
    20000 + job id mod 20000, so concurrent jobs on a node rarely collide."""
    return 20000 + int(str(job_id).split("_")[0]) % 20000


_ENV_BEFORE: dict[str, str | None] = {}     # variables init_distributed wrote -> their value before (None: unset)


def _setenv(name: str, value: str, *, default: bool = False):
    """os.environ[name] = value (default=True: only where unset), recorded so that shutdown() can undo it."""
    if default and name in os.environ:
        return
    _ENV_BEFORE.setdefault(name, os.environ.get(name))
    os.environ[name] = value


def _restore_env():
    for name, value in _ENV_BEFORE.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _ENV_BEFORE.clear()


def _slurm_rendezvous():
    e = os.environ
    nodes = e.get("SLURM_STEP_NODELIST") or e.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    _setenv("MASTER_ADDR", first_host(nodes), default=True)
    _setenv("MASTER_PORT", str(slurm_master_port(e.get("SLURM_JOB_ID", "9533"))), default=True)
    for name, value in (("RANK", e["SLURM_PROCID"]), ("WORLD_SIZE", e["SLURM_NTASKS"]),
                        ("LOCAL_RANK", e.get("SLURM_LOCALID", "0"))):
        _setenv(name, value)


def init_distributed(backend: str | None = None, deepspeed: bool = False) -> DistEnv:
    """Initialise the default process group if this is a multi-process run (idempotent)."""
    env = detect()
    if not env.distributed and not deepspeed:
        return env
    if not env.distributed:  # DeepSpeed needs a process group even for one process
        for name in ("RANK", "LOCAL_RANK"):
            _setenv(name, "0")
        _setenv("WORLD_SIZE", "1")
        _setenv("MASTER_PORT", str(29400 + os.getpid() % 500), default=True)
    if env.launcher == "srun":
        _slurm_rendezvous()
    _setenv("MASTER_ADDR", "127.0.0.1", default=True)
    _setenv("MASTER_PORT", "29500", default=True)
    env.backend = backend or os.environ.get("SGMAGNET_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if env.backend == "nccl":
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        if deepspeed:
            import deepspeed as ds
            ds.init_distributed(dist_backend=env.backend)
        else:
            dist.init_process_group(env.backend, rank=env.rank, world_size=env.world_size)
    return env


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) across ranks, on a copy; identity in a single process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _restore_env()


def hard_exit(code: int = 0):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
