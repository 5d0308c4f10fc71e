"""The run folder: refuse one that holds checkpoints, lock it against a second trainer, clear it on --overwrite.

    <run_dir>/config.yaml  log.jsonl  tb/  checkpoints/step_NNNNNNN/ + latest + best/  summary.json  .lock
"""
from __future__ import annotations

import contextlib
import os

from ..config import ConfigError


def refuse_existing_run(run_dir: str):
    """A run folder that holds checkpoints is never overwritten by accident."""
    folder = os.path.join(run_dir, "checkpoints")
    held = sorted(d for d in os.listdir(folder) if d.startswith("step_")) if os.path.isdir(folder) else []
    if held:
        raise ConfigError(f"train.run_dir {run_dir!r} already holds checkpoints ({held[-1]}): pass --resume to "
                          f"continue it, --overwrite to start again (its checkpoints and logs are deleted), or "
                          f"choose another train.run_dir")


class RunLock:
    """An exclusive lock on a run folder (`<run_dir>/.lock`), held by rank 0 for the whole run: a second trainer
    on the same train.run_dir -- two sbatch submissions, a typo, `--overwrite` aimed at a running run -- is
    refused (exit 2) before it changes anything, instead of two processes interleaving checkpoints and logs.
    A POSIX record lock (fcntl.lockf), not flock: it belongs to this process only, so the DataLoader workers it
    forks do not inherit it (a flock would outlive a SIGKILLed trainer in its orphaned workers for seconds),
    and the kernel drops it when the process dies: no stale locks. It also works over NFS (lockd). A file
    system without locks (ENOLCK, EOPNOTSUPP) runs unlocked, with a warning."""

    def __init__(self, run_dir: str, log=print):
        import errno
        import fcntl
        import socket

        self.run_dir, self.created = run_dir, not os.path.isdir(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        self.path = os.path.join(run_dir, ".lock")
        self.f = open(self.path, "a+")
        try:
            fcntl.lockf(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                self.f.seek(0)
                holder = self.f.read().strip() or "another process"
                self.f.close()
                raise ConfigError(f"train.run_dir {run_dir!r} is in use by a running trainer ({holder}): wait for "
                                  f"it, stop it, or choose another train.run_dir") from None
            log(f"WARNING: cannot lock {self.path} ({e.strerror}); two trainers on this folder would not be stopped")
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.f.flush()

    def release(self, failed: bool = False):
        """failed: the run never started -- a folder this lock created is removed again if nothing else is in it."""
        if not self.f.closed:
            self.f.close()            # closing the descriptor releases the lock
        if failed and self.created and os.listdir(self.run_dir) == [".lock"]:
            with contextlib.suppress(OSError):
                os.remove(self.path)
                os.rmdir(self.run_dir)


def clear_run(run_dir: str):
    """--overwrite: remove what a previous run left (checkpoints, logs, TensorBoard, summary, evaluations)."""
    import glob
    import shutil

    for name in ("checkpoints", "tb"):
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    names = ["log.jsonl", "summary.json", "config.yaml"] + [os.path.basename(p) for p in
                                                             glob.glob(os.path.join(run_dir, "eval_*"))]
    for f in names:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(run_dir, f))


def prepare(run_dir: str, *, resume: bool, overwrite: bool):
    """Rank 0, once the run is known to start: clear what --overwrite replaces, make sure the folder exists."""
    if overwrite and not resume:
        clear_run(run_dir)
    os.makedirs(run_dir, exist_ok=True)
