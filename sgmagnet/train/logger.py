"""What a run writes as it goes: log.jsonl (one record per line), TensorBoard scalars and images, the header."""
from __future__ import annotations

import json
import os
import time

from ..config import Config, dump


class Logger:
    def __init__(self, run_dir: str, tensorboard: bool = True):
        self.f = open(os.path.join(run_dir, "log.jsonl"), "a")
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(run_dir, "tb"))

    def log(self, rec: dict):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None and rec["kind"] != "header":
            pre = rec["kind"] + "_"
            for k, v in rec.items():
                if k not in ("step", "kind", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{rec['kind']}/{k[len(pre):] if k.startswith(pre) else k}", v, rec["step"])

    def images(self, step: int, confusion, curtain: dict | None, title: str):
        """TensorBoard images at a validation: the confusion matrix and one along-track curtain."""
        if self.tb is None:
            return
        from .. import plots

        figs = [("val/confusion", plots.confusion_figure(confusion, title))]
        if curtain is not None:
            figs.append(("val/curtain", plots.curtain_figure(curtain, f"{title} · {curtain['key']}")))
        for tag, fig in figs:
            self.tb.add_figure(tag, fig, step, close=True)

    def close(self):
        """Idempotent (the trainer closes its logger however a run ends)."""
        self.f.close()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def run_header(cfg: Config, step: int, world_size: int) -> dict:
    """The first record of every (re)start in log.jsonl: what ran, where, with which code and packages."""
    import datetime as dt
    import hashlib
    import platform
    import subprocess
    from importlib import metadata

    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    text = dump(cfg)
    return {"kind": "header", "step": step, "time": time.time(),
            "time_iso": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit, "config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
            "host": platform.node(), "world_size": world_size, "python": platform.python_version(),
            "versions": {p: version(p) for p in ("sgmagnet", "torch", "numpy", "triton", "deepspeed", "webdataset")}}
