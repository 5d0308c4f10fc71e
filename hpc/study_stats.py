"""The study's statistics: per-patch confusion matrices of every run, the validation-selected SGMAGNet
configuration, and the paired cluster bootstrap over whole test granules (or frames).

Why granules: patches cut from one granule share its weather, its scenes and its label errors, so they are not
independent; resampling patches treats 157 patches from 9 granules as 157 independent draws and gives
intervals that are too narrow. The cluster bootstrap resamples whole granules with replacement, each drawn
granule bringing all of its patches."""
from __future__ import annotations

import os

import numpy as np

from .study_protocol import ABLATIONS


def _ms(vals):
    v = np.asarray(vals, float)
    return f"{v.mean():.3f} ± {v.std(ddof=0):.3f}" if len(v) > 1 else f"{v.mean():.3f}"


def granule_of(key: str) -> str:
    """The label file a sample key comes from: keys are <scene time>_<granule or orbit+frame>_<window>."""
    parts = key.split("_")
    return parts[1] if len(parts) >= 3 else key


def patch_cms(out: str, results: list[dict], with_keys: bool = False):
    """(run name -> [seeds, P, 4, 4], reference name -> [P, 4, 4]) aligned on the test keys common to all;
    with_keys: also the P keys."""
    from sgmagnet.evaluate import load_patch_confusions

    loaded = {(r["name"], r["seed"]): load_patch_confusions(os.path.join(out, "runs", f"{r['name']}_s{r['seed']}",
                                                                         "eval_test_patches.npz"))
              for r in results}
    common = sorted(set.intersection(*(set(z["keys"].tolist()) for z in loaded.values())))
    order = {k: {key: i for i, key in enumerate(z["keys"].tolist())} for k, z in loaded.items()}
    take = lambda k, arr: arr[[order[k][c] for c in common]]  # noqa: E731
    runs = {}
    for (name, seed), z in sorted(loaded.items()):
        runs.setdefault(name, []).append(take((name, seed), z["model"]))
    first = next(iter(loaded))
    refs = {f[4:]: take(first, loaded[first][f]) for f in loaded[first] if f.startswith("ref_")}
    if with_keys:
        return {n: np.stack(v) for n, v in runs.items()}, refs, common
    return {n: np.stack(v) for n, v in runs.items()}, refs


def variant_val_scores(results: list[dict]) -> dict:
    """sgmagnet and each one-change variant -> its runs' best validation macro F1s."""
    val = {}
    for r in results:
        if r["name"] == "sgmagnet" or r["name"] in ABLATIONS:
            val.setdefault(r["name"], []).append(r["val_macro_f1"])
    return val


def selected_variant(results: list[dict]) -> str | None:
    """The SGMAGNet configuration the protocol picks: among sgmagnet and its one-change variants with as many
    seeds as sgmagnet, the highest seed-mean validation macro F1 (test is not looked at; ties keep sgmagnet)."""
    val = variant_val_scores(results)
    if "sgmagnet" not in val:
        return None
    n = len(val["sgmagnet"])
    cands = [k for k, v in val.items() if len(v) == n]
    return max(cands, key=lambda k: (float(np.mean(val[k])), k == "sgmagnet"))


def bootstrap(runs: dict, refs: dict, n_boot: int, seed: int = 0, selected: str | None = None,
              clusters: list | None = None) -> dict:
    """Paired percentile bootstrap: per run the seed-mean macro F1 and its difference to sgmagnet (and to the
    validation-selected SGMAGNet configuration, when given); the same resampled test set for every run and
    reference (95 % intervals). clusters [P] (each patch's granule): whole granules are resampled with
    replacement (cluster bootstrap); None: single patches (the intervals of studies before this change)."""
    from sgmagnet.metrics import macro_f1 as macro

    P = next(iter(runs.values())).shape[1]
    rng = np.random.default_rng(seed)
    if clusters is None:
        weights = np.stack([np.bincount(rng.integers(0, P, P), minlength=P) for _ in range(n_boot)])
        G = P
    else:
        names, cl = np.unique(np.asarray(clusters), return_inverse=True)
        G = names.size
        per = np.stack([np.bincount(rng.integers(0, G, G), minlength=G) for _ in range(n_boot)])   # [B, G]
        weights = per[:, cl]                                                                      # [B, P]
    weights = weights.astype(np.float64)

    def draws(c):                       # [S, P, 4, 4] -> [n_boot] seed-mean macro F1 on the resampled test sets
        c = c.astype(np.float64)
        return np.stack([macro(np.einsum("p,spij->sij", w, c)).mean(0) for w in weights])
    d = {n: draws(c) for n, c in runs.items()}
    d.update({f"ref:{n}": draws(c[None]) for n, c in refs.items()})
    point = {n: float(macro(c.astype(np.float64).sum(1)).mean()) for n, c in runs.items()}
    point.update({f"ref:{n}": float(macro(c.astype(np.float64).sum(0))) for n, c in refs.items()})
    against = {"minus_sgmagnet": "sgmagnet", "minus_selected": selected, "minus_oracle": "ref:oracle"}
    out = {}
    for n, v in d.items():
        lo, hi = np.quantile(v, [0.025, 0.975])
        out[n] = {"macro_f1": point[n], "low": float(lo), "high": float(hi)}
        for key, base in against.items():
            if base in d and n != base:
                diff = v - d[base]
                dlo, dhi = np.quantile(diff, [0.025, 0.975])
                out[n][key] = {"point": point[n] - point[base], "low": float(dlo), "high": float(dhi),
                               "p_le_0": float((diff <= 0).mean())}
    return {"patches": int(P), "clusters": int(G), "resampled": "patches" if clusters is None else "granules",
            "n_boot": n_boot, "selected": selected, "runs": out}
