"""`sgmagnet train --profile START:STEPS` (train.profile): torch.profiler over training steps START .. START+STEPS-1,
written to the run folder as

    profile/trace.json     Chrome trace (chrome://tracing, https://ui.perfetto.dev): host ops, device kernels and
                           the ranges forward / loss / backward / optimizer (record_function, shown as NVTX-like
                           user annotations)
    profile/summary.txt    what a user reads first: wall time per step, host time vs device time, device-busy
                           fraction (the union of kernel intervals over the wall time), launches per step, and
                           per-kernel time and count
    profile/summary.json   the same numbers for scripts

On CPU there are no device kernels: the table lists host operators and the busy fraction is not defined.
"""
from __future__ import annotations

import json
import os
import time

import torch

RANGES = ("forward", "loss", "forward+loss", "backward", "optimizer")


def parse(spec: str) -> tuple[int, int]:
    """"START:STEPS" -> (start, steps) (config.check_combinations has checked the form)."""
    a, b = spec.split(":")
    return int(a), int(b)


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _outer_ops(events) -> list:
    """Host operators not called from inside another operator (aten:: events with no aten:: ancestor): each
    unit of host work once, also inside the record_function ranges and the autograd engine."""
    from torch.autograd import DeviceType

    out = []
    for e in events:
        if e.device_type != DeviceType.CPU or not e.name.startswith("aten::"):
            continue
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        if p is None:
            out.append(e)
    return out


def summarize(prof, steps: int, wall_s: float, device: torch.device, top: int = 20) -> dict:
    """The summary of a finished profile of `steps` steps that took `wall_s` seconds of wall time."""
    from torch.autograd import DeviceType

    events = [e for e in prof.events() if e.time_range.end > e.time_range.start]
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    per, outer = {}, _outer_ops(events)
    for e in (kernels or outer):
        n = per.setdefault(e.name, [0, 0.0])
        n[0] += 1
        n[1] += (e.time_range.end - e.time_range.start) / 1e3          # ms
    busy_ms = _union([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e3 if kernels else None
    ranges = {}
    for e in events:
        if e.name in RANGES and e.device_type == DeviceType.CPU:
            ranges[e.name] = ranges.get(e.name, 0.0) + (e.time_range.end - e.time_range.start) / 1e3
    wall_ms = wall_s * 1e3
    rows = sorted(per.items(), key=lambda kv: -kv[1][1])
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "steps": steps, "wall_ms_per_step": wall_ms / steps,
            "host_ms_per_step": {k: v / steps for k, v in ranges.items()},
            "device_busy_ms_per_step": None if busy_ms is None else busy_ms / steps,
            "device_busy_fraction": None if busy_ms is None else busy_ms / wall_ms,
            "launches_per_step": len(kernels) / steps if kernels else None,
            "host_ops_per_step": len(outer) / steps,
            "top": [{"name": k, "count": c, "ms": ms, "ms_per_step": ms / steps, "share": ms / max(1e-9, sum(
                v[1] for v in per.values()))} for k, (c, ms) in rows[:top]],
            "kind": "kernels" if kernels else "host operators"}


def format_summary(s: dict) -> str:
    f = lambda v, spec: "n/a" if v is None else format(v, spec)   # noqa: E731
    lines = [f"profile of {s['steps']} training step(s) on {s['device']}",
             f"wall time per step        {s['wall_ms_per_step']:10.2f} ms",
             f"device busy per step      {f(s['device_busy_ms_per_step'], '10.2f')} ms"
             f"   (busy fraction {f(s['device_busy_fraction'], '.1%')}: union of kernel intervals / wall time)",
             f"kernel launches per step  {f(s['launches_per_step'], '10.0f')}",
             f"host operators per step   {s['host_ops_per_step']:10.0f}",
             "host time per step in the ranges (record_function): " + ", ".join(
                 f"{k} {v:.2f} ms" for k, v in s["host_ms_per_step"].items()),
             "", f"top {len(s['top'])} {s['kind']} by time:",
             f"{'ms/step':>10}{'share':>8}{'count':>8}  name"]
    for r in s["top"]:
        lines.append(f"{r['ms_per_step']:>10.3f}{r['share']:>8.1%}{r['count']:>8}  {r['name'][:100]}")
    return "\n".join(lines) + "\n"


class StepProfiler:
    """Start the profiler before step START, stop it after STEPS steps, write the trace and the summary."""

    def __init__(self, spec: str, run_dir: str, device: torch.device, log=print):
        self.start, self.steps = parse(spec)
        self.folder, self.device, self.log = os.path.join(run_dir, "profile"), device, log
        self.prof, self.t0, self.done = None, 0.0, False

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def before(self, step: int):
        """Called before step `step` (1-based) runs."""
        if self.done or self.prof is not None or step != self.start:
            return
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        self._sync()
        self.prof = profile(activities=acts)
        self.prof.__enter__()
        self.t0 = time.perf_counter()

    def after(self, step: int):
        """Called after step `step` ran."""
        if self.prof is None or step < self.start + self.steps - 1:
            return
        self._sync()
        wall = time.perf_counter() - self.t0
        self.prof.__exit__(None, None, None)
        os.makedirs(self.folder, exist_ok=True)
        self.prof.export_chrome_trace(os.path.join(self.folder, "trace.json"))
        s = summarize(self.prof, self.steps, wall, self.device)
        with open(os.path.join(self.folder, "summary.json"), "w") as f:
            json.dump(s, f, indent=1)
        text = format_summary(s)
        with open(os.path.join(self.folder, "summary.txt"), "w") as f:
            f.write(text)
        self.prof, self.done = None, True
        self.log(f"profile of steps {self.start}..{step}: {self.folder}/summary.txt, trace.json\n{text}")

    def close(self):
        if self.prof is not None:              # the run ended inside the window: drop it
            self.prof.__exit__(None, None, None)
            self.prof = None
