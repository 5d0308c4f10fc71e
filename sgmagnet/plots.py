"""Pictures: along-track curtains (truth vs prediction), confusion matrices, loss curves (matplotlib, Agg)."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402

from .grid import CLASS_NAMES, IGNORE, LEVEL_DZ_KM, N_LEVELS  # noqa: E402

PHASE_COLOURS = ["#f2f2f2", "#4a90d9", "#9b59b6", "#e67e22"]  # clear, ice, mixed, liquid
KM_PER_DEG = 111.2


def _phase_image(ax, cols: np.ndarray, dist_km: np.ndarray, title: str):
    """cols [N, L] classes (255 = none) drawn as height (km) vs along-track distance (km)."""
    img = np.ma.masked_equal(cols.T.astype(np.int16), IGNORE)
    cmap = ListedColormap(PHASE_COLOURS).with_extremes(bad="#555555")
    edges = np.concatenate([dist_km, [dist_km[-1] + (dist_km[-1] - dist_km[-2] if len(dist_km) > 1 else 1.0)]])
    m = ax.pcolormesh(edges, np.arange(N_LEVELS + 1) * LEVEL_DZ_KM, img, cmap=cmap,
                      norm=BoundaryNorm(np.arange(-0.5, 4.5), 4), shading="flat")
    ax.set_ylabel("altitude (km)")
    ax.set_title(title, fontsize=9)
    return m


def curtain_png(c: dict, path: str, title: str):
    """c: {"truth": [N,L], "pred": [N,L], "lat": [N]} in along-track order."""
    lat = np.asarray(c["lat"], np.float64)
    dist = np.concatenate([[0.0], np.cumsum(np.abs(np.diff(lat)) * KM_PER_DEG)]) if len(lat) else np.zeros(0)
    if len(dist) > 1 and dist[-1] == 0:
        dist = np.arange(len(lat), dtype=np.float64)
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True, constrained_layout=True)
    _phase_image(axes[0], np.asarray(c["truth"]), dist, "CloudSat/CALIPSO label (truth)")
    m = _phase_image(axes[1], np.where(np.asarray(c["truth"]) == IGNORE, IGNORE, c["pred"]), dist, "prediction")
    axes[1].set_xlabel("along-track distance (km)")
    cb = fig.colorbar(m, ax=axes, ticks=range(4))
    cb.ax.set_yticklabels(CLASS_NAMES)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_png(cm: np.ndarray, path: str, title: str):
    cm = np.asarray(cm, np.float64)
    rown = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.6, 4), constrained_layout=True)
    im = ax.imshow(rown, vmin=0, vmax=1, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{rown[i, j]:.2f}\n{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if rown[i, j] > 0.5 else "black")
    ax.set_xticks(range(4), CLASS_NAMES)
    ax.set_yticks(range(4), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title + " (row-normalised)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curves_png(logs: dict[str, str], path: str):
    """logs: label -> log.jsonl of a run. Training loss per step and validation loss / macro F1."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for label, p in logs.items():
        recs = read_log(p)
        tr = [(r["step"], r["loss"]) for r in recs if r.get("kind") == "train"]
        va = [(r["step"], r["val_loss"], r["val_macro_f1"]) for r in recs if r.get("kind") == "val"]
        if tr:
            axes[0].plot(*zip(*tr), label=f"{label} train")
        if va:
            s, lv, f1 = zip(*va)
            axes[0].plot(s, lv, "o--", label=f"{label} val")
            axes[1].plot(s, f1, "o-", label=label)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("class-weighted gated CE")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation macro F1")
    for a in axes:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
