"""Confusion matrices and scores over labelled voxels (DESIGN.md "Metrics").

A 4x4 confusion matrix C[true, pred] (summed over batches and ranks) gives per-class Precision, Recall, F1
and IoU; the headline is the macro mean over the 4 classes, with the macro over the 3 phases and the
binary cloud mask (clear vs any cloud) beside it. A score whose denominator is 0 is reported as 0
(scikit-learn's zero_division=0); the voxel counts are reported so such cases are visible.

Strata (for the stratified tables): every labelled voxel is counted in its overall matrix and in one
matrix per stratum family:
  layers    column type of its profile: `clear` (no cloud), `single` (one contiguous cloudy run), `multi`
  latitude  `tropics` (|lat| < 23.5), `subtropics` (23.5-40), `midlatitudes` (>= 40)
  daynight  `day`, `twilight` or `night` by the solar zenith at the pixel (sgmagnet.solar: < 80, < 90, >= 90 deg)
  cloudtype the 2B-CLDCLASS-LIDAR CloudLayerType of the column's top layer: clear, Ci, As, Ac, St, Sc, Cu,
            Ns, DC (in the synthetic archive, the generator's regime; counted only when the shards carry it)
"""
from __future__ import annotations

import numpy as np
import torch

from .grid import CLASS_NAMES, IGNORE, N_CLASSES
from .solar import STRATA, strata

LAT_BANDS = (("tropics", 0.0, 23.5), ("subtropics", 23.5, 40.0), ("midlatitudes", 40.0, 90.01))


def confusion(true: torch.Tensor, pred: torch.Tensor, n: int = N_CLASSES) -> torch.Tensor:
    """[n, n] int64 counts over entries where true != 255 (rows: truth, columns: prediction)."""
    true, pred = true.reshape(-1).long(), pred.reshape(-1).long()
    keep = true != IGNORE
    return torch.bincount(true[keep] * n + pred[keep], minlength=n * n).reshape(n, n)


def _div(a, b):
    return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def scores(cm) -> dict:
    """Per-class and macro P/R/F1/IoU, phase-only macro, cloud-mask scores and counts from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    p, r = _div(tp, tp + fp), _div(tp, tp + fn)
    f1 = _div(2 * p * r, p + r)
    iou = _div(tp, tp + fp + fn)
    per = {c: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f1[k]), "iou": float(iou[k]),
               "support": int(cm[k].sum())} for k, c in enumerate(CLASS_NAMES)}
    out = {"per_class": per,
           "macro": {m: float(np.mean(v)) for m, v in (("precision", p), ("recall", r), ("f1", f1), ("iou", iou))},
           "phase_macro": {m: float(np.mean(v[1:])) for m, v in (("precision", p), ("recall", r), ("f1", f1),
                                                                   ("iou", iou))},
           "accuracy": float(_div(tp.sum(), cm.sum())),
           "voxels": int(cm.sum()), "confusion": cm.astype(np.int64).tolist()}
    # cloud mask: class 0 vs the rest, scored for the "cloud" class
    ctp = cm[1:, 1:].sum()
    cfp = cm[0, 1:].sum()
    cfn = cm[1:, 0].sum()
    cp, cr = float(_div(ctp, ctp + cfp)), float(_div(ctp, ctp + cfn))
    out["cloud_mask"] = {"precision": cp, "recall": cr, "f1": float(_div(2 * cp * cr, cp + cr)),
                         "iou": float(_div(ctp, ctp + cfp + cfn)),
                         "accuracy": float(_div(cm[0, 0] + ctp, cm.sum()))}
    out["paper_comparable"] = paper_comparable(cm)
    return out


def paper_comparable(cm) -> dict:
    """Scores of the kinds the paper's P 0.922 / R 0.858 / F1 0.763 / IoU 0.617 may be (DESIGN.md, Metrics):
    micro_phase   pooled counts over the 3 phase classes, clear the negative: TP = sum_k C[k,k],
                  FP = predicted phase k but truth differs, FN = true phase k but prediction differs (k = 1..3)
    weighted      per-class P/R/F1 over the 4 classes averaged with weights = class support
    mask_pooled   the binary cloud mask (clear vs any phase) from pooled counts
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp_k = np.diag(cm)[1:]
    tp, fp, fn = tp_k.sum(), (cm[:, 1:].sum(0) - tp_k).sum(), (cm[1:].sum(1) - tp_k).sum()
    p, r = float(_div(tp, tp + fp)), float(_div(tp, tp + fn))
    micro = {"precision": p, "recall": r, "f1": float(_div(2 * p * r, p + r)), "iou": float(_div(tp, tp + fp + fn))}
    d = np.diag(cm)
    pc, rc = _div(d, cm.sum(0)), _div(d, cm.sum(1))
    f1c = _div(2 * pc * rc, pc + rc)
    w = _div(cm.sum(1), cm.sum())
    weighted = {"precision": float((w * pc).sum()), "recall": float((w * rc).sum()), "f1": float((w * f1c).sum())}
    ctp, cfp, cfn = cm[1:, 1:].sum(), cm[0, 1:].sum(), cm[1:, 0].sum()
    mp, mr = float(_div(ctp, ctp + cfp)), float(_div(ctp, ctp + cfn))
    mask = {"f1": float(_div(2 * mp * mr, mp + mr)), "iou": float(_div(ctp, ctp + cfp + cfn))}
    return {"micro_phase": micro, "weighted": weighted, "mask_pooled": mask}


def column_type(profiles: torch.Tensor) -> torch.Tensor:
    """[N, L] uint8 labels -> [N] int64: 0 clear column, 1 single-layer, 2 multi-layer (cloudy runs split by clear)."""
    y = profiles.long()
    cloudy = (y != IGNORE) & (y != 0)
    starts = cloudy[:, 0].long() + (cloudy[:, 1:] & ~cloudy[:, :-1]).sum(1)
    return starts.clamp(max=2)


COLUMN_TYPES = ("clear", "single", "multi")
CLOUD_TYPES = ("clear", "Ci", "As", "Ac", "St", "Sc", "Cu", "Ns", "DC")


def lat_band(lat: torch.Tensor) -> torch.Tensor:
    a = lat.abs()
    out = torch.zeros_like(a, dtype=torch.long)
    for k, (_, lo, hi) in enumerate(LAT_BANDS):
        out[(a >= lo) & (a < hi)] = k
    return out


class ConfusionSet:
    """The overall confusion matrix plus one per stratum; `update` takes a batch's labelled columns."""

    FAMILIES = {"layers": COLUMN_TYPES, "latitude": tuple(b[0] for b in LAT_BANDS), "daynight": STRATA,
                "cloudtype": CLOUD_TYPES}

    def __init__(self):
        self.total = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long)
        self.strata = {f: torch.zeros(len(v), N_CLASSES, N_CLASSES, dtype=torch.long) for f, v in self.FAMILIES.items()}
        self.patches = 0
        self.patch_keys: list[str] = []          # per-patch matrices, for bootstrap confidence intervals
        self.patch_cms: list[np.ndarray] = []

    def update_patches(self, keys, sample: torch.Tensor, true: torch.Tensor, pred: torch.Tensor):
        """One [4, 4] matrix per patch of the batch; `sample` [N] is each labelled column's patch index."""
        n = N_CLASSES
        sample, true, pred = sample.cpu().long(), true.cpu().long(), pred.cpu().long()
        keep = true != IGNORE
        s = sample[:, None].expand_as(true)[keep]
        cm = torch.bincount(s * n * n + true[keep] * n + pred[keep], minlength=len(keys) * n * n)
        self.patch_keys += list(keys)
        self.patch_cms += list(cm.reshape(len(keys), n, n).numpy())

    def update(self, true: torch.Tensor, pred: torch.Tensor, lat: torch.Tensor, soz: torch.Tensor,
               ctype: torch.Tensor | None = None):
        """true/pred [N, L]; lat, soz, ctype [N] (latitude, solar zenith, top cloud type of each labelled pixel)."""
        true, pred = true.cpu(), pred.cpu()
        self.total += confusion(true, pred)
        keys = {"layers": column_type(true), "latitude": lat_band(lat.cpu()),
                "daynight": torch.from_numpy(strata(soz.cpu().numpy())).long(),
                "cloudtype": (ctype.cpu().long().clamp(0, 8) if ctype is not None
                              else torch.full((len(true),), -1, dtype=torch.long))}
        for f, k in keys.items():
            for s in range(len(self.FAMILIES[f])):
                sel = k == s
                if sel.any():
                    self.strata[f][s] += confusion(true[sel], pred[sel])

    def tensors(self) -> list[torch.Tensor]:
        return [self.total] + [self.strata[f] for f in self.FAMILIES]

    def report(self) -> dict:
        out = {"overall": scores(self.total.numpy()), "patches": self.patches, "strata": {}}
        for f, names in self.FAMILIES.items():
            out["strata"][f] = {n: scores(self.strata[f][s].numpy()) for s, n in enumerate(names)
                                if int(self.strata[f][s].sum())}
        return out


class Calibration:
    """Reliability of the predicted class probabilities at labelled voxels, per class (one-vs-rest):
    probabilities are binned in `bins` equal bins; per bin the mean predicted probability (confidence) and
    the observed frequency of the class. ECE_c = sum_b (n_b / N) |freq_b - conf_b| (expected calibration
    error, Guo et al. 2017, per class). Sums only, so ranks can add them up."""

    def __init__(self, bins: int = 10):
        self.bins = bins
        self.n = torch.zeros(N_CLASSES, bins, dtype=torch.float64)
        self.p_sum = torch.zeros(N_CLASSES, bins, dtype=torch.float64)
        self.hit = torch.zeros(N_CLASSES, bins, dtype=torch.float64)

    def update(self, prob: torch.Tensor, true: torch.Tensor):
        """prob [N, C, L] class probabilities; true [N, L] labels (255 = none)."""
        p = prob.detach().double().permute(0, 2, 1).reshape(-1, N_CLASSES).cpu()
        y = true.reshape(-1).long().cpu()
        keep = y != IGNORE
        p, y = p[keep], y[keep]
        b = (p * self.bins).long().clamp_(0, self.bins - 1)
        for c in range(N_CLASSES):
            self.n[c] += torch.bincount(b[:, c], minlength=self.bins).double()
            self.p_sum[c] += torch.bincount(b[:, c], weights=p[:, c], minlength=self.bins)
            self.hit[c] += torch.bincount(b[:, c], weights=(y == c).double(), minlength=self.bins)

    def report(self) -> dict:
        n, ps, hit = self.n.numpy(), self.p_sum.numpy(), self.hit.numpy()
        conf, freq = _div(ps, n), _div(hit, n)
        tot = np.maximum(n.sum(1, keepdims=True), 1)
        ece = (n / tot * np.abs(freq - conf)).sum(1)
        return {"bins": self.bins, "ece": {c: float(ece[k]) for k, c in enumerate(CLASS_NAMES)},
                "ece_mean": float(ece.mean()),
                "reliability": {c: {"confidence": conf[k].tolist(), "frequency": freq[k].tolist(),
                                    "count": n[k].astype(np.int64).tolist()} for k, c in enumerate(CLASS_NAMES)}}


def macro_f1(cm) -> np.ndarray:
    """Macro F1 of confusion matrices [..., 4, 4] (rows truth) -> [...]; the same numbers as scores()."""
    cm = np.asarray(cm, np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    p, r = _div(tp, cm.sum(-2)), _div(tp, cm.sum(-1))
    return _div(2 * p * r, p + r).mean(-1)


def bootstrap_macro_f1(cms: np.ndarray, n_boot: int = 1000, seed: int = 0, base: np.ndarray | None = None,
                       level: float = 0.95) -> dict:
    """Percentile bootstrap over patches of the macro F1 from per-patch confusion matrices cms [P, 4, 4].
    With `base` (another predictor's [P, 4, 4] on the same patches, same order) the interval is of the
    paired difference macro F1(cms) - macro F1(base), resampling the same patches for both (patches, not
    voxels, are the independent units: columns along one track are strongly correlated)."""
    cms = np.asarray(cms, np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(cms), size=(n_boot, len(cms)))
    macro = macro_f1
    stat = lambda c: macro(np.stack([c[i].sum(0) for i in idx]))  # noqa: E731
    point = macro(cms.sum(0)[None])[0]
    draws = stat(cms)
    if base is not None:
        base = np.asarray(base, np.float64)
        point -= macro(base.sum(0)[None])[0]
        draws = draws - stat(base)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return {"point": float(point), "low": float(lo), "high": float(hi), "n_boot": n_boot, "patches": len(cms),
            "p_le_0": float((draws <= 0).mean()) if base is not None else None}
