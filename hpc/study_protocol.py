"""The study's protocol: presets (hardware, sizes, schedules), the runs it compares, and a run's config.

Everything the study decides before it trains anything lives here (hpc/study.py's docstring says how the
protocol is applied); the runner, the statistics and the report read it.
"""
from __future__ import annotations

import json

PRESETS = {
    # 2-core CPU, 64-pixel patches of the study archive (hpc/study_data.py), demo-size models
    "cpu": {"hardware": "2 CPU cores shared with other work", "size": "demo", "max_steps": 3000, "batch": 8, "lr": 0.004, "warmup": 100, "val_every": 150,
            "patience": 4, "workers": 1, "sweep_lrs": [0.001, 0.002, 0.004, 0.008], "sweep_steps": 900, "threads": 1,
            # the 3D UNet trains ~16x slower per step than the Transformer on 2 cores (~45 min per 900-step trial):
            # its sweep is cut to the rate every other family chose (said in study.md)
            "sweep_lrs_family": {"unet3d": [0.002]}},
    # one GPU, 128-pixel patches, paper-size models
    "gpu": {"hardware": "one GPU", "size": "paper", "max_steps": 40000, "batch": 16, "lr": 0.001, "warmup": 500, "val_every": 1000,
            "patience": 5, "workers": 8, "sweep_lrs": [0.0005, 0.001, 0.002], "sweep_steps": 8000, "threads": 0},
    # tests: seconds (the tiny test archive has no validation days: validates on test, never for results)
    "tiny": {"hardware": "the test machine", "size": "tiny", "max_steps": 6, "batch": 2, "lr": 0.003, "warmup": 2, "val_every": 2,
             "patience": 2, "workers": 0, "sweep_lrs": [0.003, 0.01], "sweep_steps": 2, "threads": 1,
             "val_split": "test"},
}
# name -> (model, model options, extra config overrides, family whose learning rate it uses)
RUNS = {
    "sgmagnet": ("sgmagnet", {}, [], "sgmagnet"),
    "unet": ("unet", {}, [], "unet"),
    "unet3d": ("unet3d", {}, [], "unet3d"),
    "segnet": ("segnet", {}, [], "segnet"),
    "transformer": ("transformer", {}, [], "transformer"),
    "sgmagnet-static-height": ("sgmagnet", {"height": "static"}, [], "sgmagnet"),
    "sgmagnet-single-scale": ("sgmagnet", {"scales": [1]}, [], "sgmagnet"),
    "sgmagnet-no-gating": ("sgmagnet", {"gating": False}, ["loss.form=softmax"], "sgmagnet"),
    "sgmagnet-unweighted": ("sgmagnet", {}, ["loss.weights=none"], "sgmagnet"),
    "sgmagnet-focal": ("sgmagnet", {}, ["loss.gamma=2.0"], "sgmagnet"),
    "sgmagnet-aux": ("sgmagnet", {"aux": True}, ["loss.aux_weight=0.5"], "sgmagnet"),   # + coarse-scale aux losses
    # size-matched to SGMAGNet v2 demo (121,408 parameters; 1.21 GFLOP per 128-px sample on the column path)
    "unet-params": ("unet", {"width": 8}, [], "unet"),            # 123,688 parameters
    "unet-flops": ("unet", {"width": 16}, [], "unet"),            # 1.24 GFLOP
    "segnet-params": ("segnet", {"width": 14}, [], "segnet"),     # 125,410 parameters
    "segnet-flops": ("segnet", {"width": 20}, [], "segnet"),      # 1.15 GFLOP
    "unet3d-params": ("unet3d", {"width": 10}, [], "unet3d"),     # 116,654 parameters
}
MIN_BOOT = 40                          # bootstrap draws: 2.5 % of 40 is the first draw that is not the minimum
MODELS = ("sgmagnet", "unet", "unet3d", "segnet", "transformer")
ABLATIONS = tuple(n for n in RUNS if n.startswith("sgmagnet-"))
MATCHED = tuple(n for n in RUNS if n.endswith(("-params", "-flops")))


def overrides(a, preset: dict, model: str, opts: dict, extra: list, run: str, seed: int, lr: float,
              steps: int) -> list[str]:
    return [f"data.shards={a.shards}", f"train.run_dir={run}", f"train.steps={steps}", f"train.seed={seed}",
            f"model.name={model}", f"model.size={preset['size']}", f"data.batch_size={preset['batch']}",
            f"data.workers={preset['workers']}", f"optim.lr={lr}", f"optim.warmup_steps={preset['warmup']}",
            f"train.val_every={preset['val_every']}", f"train.ckpt_every={preset['val_every']}",
            f"train.patience={preset['patience']}", f"train.threads={preset['threads']}", "train.log_every=10",
            "train.progress=false", "model.options=" + json.dumps(opts)] + list(extra) + (
                [f"data.val_split={preset['val_split']}"] if "val_split" in preset else [])


def sweep_grid(preset: dict, fam: str) -> list[float]:
    """The learning rates a family is swept over: the preset's grid, or its per-family grid where it has one."""
    return list(preset.get("sweep_lrs_family", {}).get(fam, preset["sweep_lrs"]))
