"""Preemption (Slurm's SIGUSR2 before the time limit, SIGTERM at scancel/requeue): checkpoint at the next step
boundary and exit with EXIT_PREEMPTED (3), which launch/ and slurm/ scripts requeue."""
from __future__ import annotations

import signal

import torch

from .. import dist as hdist
from ..data import PREEMPTION_SIGNALS

EXIT_PREEMPTED = 3   # exit code after a checkpoint taken on SIGUSR2/SIGTERM


class Preemption:
    """SIGUSR2/SIGTERM -> a flag; the loop saves at the next step boundary and exits with EXIT_PREEMPTED.
    Ranks agree through an all-reduce, so a signal delivered to any rank stops all of them together."""

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.flag = False
        self.previous = {s: signal.signal(s, self._handler) for s in signals}

    def _handler(self, signum, frame):
        self.flag = True        # a second signal (e.g. while a checkpoint is written) changes nothing

    def restore(self):
        """Put back the handlers that were there before (the trainer's close)."""
        for s, h in self.previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self.previous = {}

    def requested(self, device) -> bool:
        """Whether any rank got the signal: one process reads its flag (no host sync); ranks all-reduce it."""
        if not (hdist.initialized() and torch.distributed.get_world_size() > 1):
            return self.flag
        return bool(hdist.all_reduce(torch.tensor([int(self.flag)], device=device), "max").item())


class Preempted(SystemExit):
    def __init__(self, checkpoint: str):
        super().__init__(EXIT_PREEMPTED)
        self.checkpoint = checkpoint
