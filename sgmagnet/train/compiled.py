"""The compiled training step of the column path (train.compile = none | default | graphs).

    step = compiled.build(cfg, rt, strategy.forward, loss_fn, patch, log)   # None: run eagerly (train.compile=none, or a fallback)
    batch = step.pad(batch)                                  # the index padded to a fixed N (static shapes)
    loss = step(batch, profiles, denominator, invalid)       # forward + loss through the compiled graph

default  torch.compile(dynamic=False) of the forward and the loss; AOTAutograd compiles their backward too.
graphs   the same with mode="reduce-overhead": forward and backward replay as CUDA graphs (cudagraph trees), so
         a step costs a few launches instead of hundreds (CUDA only; elsewhere it falls back to default).

Static shapes: a batch's labelled columns vary in number, so the index [N, 3] is padded to a fixed
N_static = batch x train.static_columns (0: 2 x the patch side, the most pixels a straight track can cross in
a square patch) with rows (b, 0, 0) whose profiles are all the ignore label: the model computes those columns
and the loss gives them no weight, so padding changes neither the loss nor the gradient (tests/test_compile.py).
A batch with more columns takes the next multiple of N_static (one more compiled shape, noted once).
Index rows outside the patch are checked here on the host, before anything reaches the device: they become
padding and their labelled voxels are counted into the step's `invalid` counter, as the loss counts them.

bf16: autocast stays where it is (the strategy's forward) and lies inside the compiled region, so Inductor
fuses each cast into the kernel that consumes it instead of launching a `copy_` per op (the eager bf16 step
made 239 of them on an H100). Parameters and optimizer state stay fp32: a bf16 master copy would lose the
small AdamW updates, and the columns are few, so the fp32 weights cost little.

The optimizer is not compiled: on CUDA it is the fused AdamW (components.build_optimizer: one kernel for all
parameters), and it reads the learning rate the schedule sets each step without recompiling.
Falls back (one line in the log, the run goes on eagerly) where this cannot hold: DeepSpeed (the engine owns
forward, backward and step), the dense path (train.columns=false), and SGMAGNet's auxiliary losses.
"""
from __future__ import annotations

import torch

from ..grid import IGNORE

MODES = ("none", "default", "graphs")


def resolve(cfg, rt) -> tuple[str, str | None]:
    """(the mode this run gets, a one-line note when it is not the one asked for)."""
    mode = cfg.train.compile
    if mode == "none":
        return "none", None
    why = ("DeepSpeed owns forward, backward and step" if cfg.train.deepspeed else
           "the dense path (train.columns=false) is not compiled" if not cfg.train.columns else
           "SGMAGNet's auxiliary losses (loss.aux_weight > 0) are not compiled" if cfg.loss.aux_weight > 0 else None)
    if why:
        return "none", f"train.compile={mode}: {why}; running eagerly"
    if mode == "graphs" and rt.device.type != "cuda":
        return "default", f"train.compile=graphs: CUDA graphs need a CUDA device (this run is on {rt.device}); " \
                          f"compiling without them (train.compile=default)"
    return mode, None


def static_columns(cfg, patch: int) -> int:
    """Columns per patch the index is padded to (train.static_columns, 0 = 2 x the patch side)."""
    return cfg.train.static_columns or 2 * patch


def pad_columns(index: torch.Tensor, profiles: torch.Tensor, n_static: int, shape) -> tuple[torch.Tensor,
                                                                                                torch.Tensor, int]:
    """index [N, 3] and profiles [N, L] (host tensors) -> ([M, 3], [M, L], bad): M = the smallest multiple of
    n_static >= N (at least n_static); the added rows are (b, 0, 0) with every level IGNORE. Rows outside a
    batch of `shape` (B, H, W) become such rows too, and `bad` is the number of labelled voxels they held
    (what the loss would have counted as invalid)."""
    B, H, W = shape
    index = index.long()
    hi = torch.tensor([B, H, W])
    inside = ((index >= 0) & (index < hi)).all(1)
    bad = 0
    if not bool(inside.all()):
        bad = int((profiles[~inside] != IGNORE).sum())
        index = torch.where(inside[:, None], index, 0)
        profiles = torch.where(inside[:, None], profiles, IGNORE).to(profiles.dtype)
    n = index.shape[0]
    m = max(1, -(-n // n_static)) * n_static
    if m == n:
        return index, profiles, bad
    pad_idx = torch.zeros(m - n, 3, dtype=index.dtype)
    pad_idx[:, 0] = torch.arange(m - n) % B            # spread over the samples: no single sample's pixel (0, 0)
    pad_prof = torch.full((m - n, profiles.shape[1]), IGNORE, dtype=profiles.dtype)
    return torch.cat([index, pad_idx]), torch.cat([profiles, pad_prof]), bad


class CompiledStep:
    """Forward + loss of one micro-batch through torch.compile (the module docstring)."""

    def __init__(self, forward, loss_fn, mode: str, per_patch: int, device: torch.device, log=print):
        """forward(x, geom, columns=index) -> logits [N, 4, L] (the strategy's, with its autocast)."""
        self.forward, self.loss_fn, self.mode, self.per_patch, self.log = forward, loss_fn, mode, per_patch, log
        if device.type == "cpu":
            # Inductor's vectorised C++ kernels (AVX2 and AVX-512 alike) corrupted the heap in SGMAGNet's
            # backward (torch 2.13, Xeon with AVX-512; "free(): corrupted unsorted chunks"); its scalar C++
            # kernels give the eager losses (tests/test_compile.py). Process-wide: it concerns CPU kernels only.
            import torch._inductor.config as inductor

            inductor.cpp.simdlen = 1
        self.shapes: set[int] = set()
        self.fn = torch.compile(self._forward_loss, dynamic=False,
                                mode="reduce-overhead" if mode == "graphs" else None)

    def describe(self) -> str:
        return f"compiled ({self.mode}, {self.per_patch} columns per patch)"

    def _forward_loss(self, x, geom, index, profiles, denominator):
        invalid = torch.zeros((), device=x.device)
        out = self.forward(x, geom, columns=index)
        return self.loss_fn(out, None, profiles, denominator=denominator, invalid=invalid), invalid

    def pad(self, batch: dict) -> dict:
        """The batch with its index and profiles padded to the static N (on the host), and `bad_voxels`."""
        x = batch["x"]
        shape = (x.shape[0], x.shape[-2], x.shape[-1])
        index, prof, bad = pad_columns(batch["index"], batch["prof"], self.per_patch * shape[0], shape)
        if index.shape[0] not in self.shapes:
            if self.shapes:
                self.log(f"train.compile: a batch of {batch['index'].shape[0]} columns; compiling for N = "
                         f"{index.shape[0]} (raise train.static_columns above {self.per_patch} to avoid this)")
            self.shapes.add(index.shape[0])
        return {**batch, "index": index, "prof": prof, "bad_voxels": bad}

    def __call__(self, batch: dict, index, profiles, denominator, invalid) -> torch.Tensor:
        d = profiles.device
        x = batch["x"].to(d, non_blocking=True)
        geom = batch["geom"].to(d, non_blocking=True)
        if self.mode == "graphs":
            torch.compiler.cudagraph_mark_step_begin()     # the previous step's outputs are consumed
        loss, bad = self.fn(x, geom, index, profiles, denominator.reshape(()))
        invalid += bad + batch.get("bad_voxels", 0)
        return loss


def build(cfg, rt, forward, loss_fn, patch: int, log=print) -> CompiledStep | None:
    mode, note = resolve(cfg, rt)
    if note:
        log(note)
    if mode == "none":
        return None
    return CompiledStep(forward, loss_fn, mode, static_columns(cfg, patch), rt.device, log)
