"""Evaluation: predictions at the labelled voxels of a split -> confusion matrices -> scores, tables, pictures.

`sgmagnet evaluate --checkpoint CKPT --shards DIR --split test [--out DIR]` writes
  eval_<split>.json   overall + stratified scores for the model and the two reference rows
  eval_<split>.md     the same as Markdown tables
  confusion_<split>.png, curtain_<split>_<k>.png (truth vs prediction along the track), loss_curves.png

Reference rows (DESIGN.md): the "top-layer oracle" knows each column's true cloud-top level (perturbed by
a 1 km Gaussian error) and top phase and fills one layer of the training split's median top-layer
thickness below it -- the skill available from what passive radiances show at best; "climatology"
predicts, per level and latitude band, the class c that maximises freq_train(c | level, band) * w_c, with
w the model's loss weights (the decision a model would make under the same class-weighted objective if it
ignored the bands); "all clear" predicts clear everywhere. A model should land between the climatology and
the oracle; one that does not beat the climatology has learned nothing from the bands. Every table also
has the paper-comparable block (metrics.paper_comparable).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .grid import N_CLASSES
from .io import write_json, write_text
from .losses import argmax, log_probs
from .metrics import Calibration, ConfusionSet
from .references import ORACLE_TOP_ERROR_KM, Climatology, reference_predictors
from .shards import ShardError  # noqa: F401  (defined with the sample format; raised and re-exported here)
from .tables import report_markdown


@dataclass
class EvalResult:
    confusion: ConfusionSet
    curtains: list = field(default_factory=list)
    loss_sum: float = 0.0          # sum over labelled pixels of the batch loss (when a loss_fn is given)
    loss_n: int = 0
    batches: int = 0
    references: dict = field(default_factory=dict)   # name -> ConfusionSet of a reference predictor
    calibration: Calibration = field(default_factory=Calibration)


PRIOR_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def prior_corrected(weights, alpha: float, form: str = "gated"):
    """Decision rule that undoes (a power alpha of) the class-weight prior of the training loss: a model
    trained with weights w_c learns probabilities inflated by about w_c, so predict argmax_c log p_c -
    alpha log w_c. alpha = 0 is the plain argmax."""
    logw = alpha * torch.log(torch.as_tensor(weights, dtype=torch.float32))

    def rule(cols: torch.Tensor) -> torch.Tensor:
        return (log_probs(cols, form) - logw.to(cols.device).view(1, -1, 1)).argmax(1)
    return rule


@torch.no_grad()
def choose_prior_alpha(model, batches, rt, weights, form: str = "gated") -> dict:
    """One pass over (validation) batches scoring every alpha of PRIOR_ALPHAS; the best macro F1 wins."""
    from .metrics import confusion, scores

    rules = {a: prior_corrected(weights, a, form) for a in PRIOR_ALPHAS}
    cms = {a: torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long) for a in PRIOR_ALPHAS}
    was = model.training
    model.eval()
    forward, d = rt.column_forward(model), rt.device
    for b in batches:
        cols = forward(b["x"].to(d), b["geom"].to(d), b["index"].to(d)).float()
        for a, rule in rules.items():
            cms[a] += confusion(b["prof"], rule(cols).cpu())
    model.train(was)
    f1 = {a: scores(cms[a].numpy())["macro"]["f1"] for a in PRIOR_ALPHAS}
    best = max(PRIOR_ALPHAS, key=lambda a: (round(f1[a], 6), -a))
    return {"rule": "prior", "alpha": best, "val_macro_f1": {str(a): v for a, v in f1.items()}}


@torch.no_grad()
def evaluate_batches(model, batches, rt, *, forward=None, keep_curtains: int = 0, loss_fn=None, form: str = "gated",
                     references: dict | None = None, decide=None) -> EvalResult:
    """One pass of the model over batches on the runtime `rt` (device, bf16, fused argmax). forward(x, geom,
    index) -> column logits defaults to rt.column_forward(model) (the trainer passes its strategy's).
    `references`: name -> f(batch) -> predicted classes [N, L], scored on the same labelled voxels in the
    same pass. Sums (not means) are returned so ranks can add them up."""
    was = model.training
    model.eval()
    forward, device = forward or rt.column_forward(model), rt.device
    r = EvalResult(ConfusionSet(), references={k: ConfusionSet() for k in references or {}})
    for b in batches:
        r.batches += 1
        idx = b["index"].to(device)
        cols = forward(b["x"].to(device), b["geom"].to(device), idx)     # only the labelled columns are decoded
        pred = (argmax(cols, rt.fused, form) if decide is None else decide(cols.float())).cpu()
        r.calibration.update(log_probs(cols, form).exp(), b["prof"])
        if loss_fn is not None and len(idx):
            r.loss_sum += float(loss_fn(cols, idx, b["prof"].to(device))) * len(idx)
            r.loss_n += len(idx)
        for cs, p in [(r.confusion, pred)] + [(r.references[k], f(b)) for k, f in (references or {}).items()]:
            cs.update(b["prof"], p, b["lat"], b["soz"], b.get("ctype"))
            cs.update_patches(b["keys"], b["index"][:, 0], b["prof"], p)
            cs.patches += len(b["keys"])
        for k in range(len(b["keys"])):
            if len(r.curtains) >= keep_curtains:
                break
            sel = b["index"][:, 0] == k
            r.curtains.append({"key": b["keys"][k], "truth": b["prof"][sel].numpy(), "pred": pred[sel].numpy(),
                               "lat": b["lat"][sel].numpy(), "lon": b["lon"][sel].numpy()})
    model.train(was)
    return r


def save_patch_confusions(path: str, ev: EvalResult):
    """Per-patch [4, 4] confusion matrices of the model and of each reference row (bootstrap input):
    arrays `keys` [P] (sample keys), `model` and `ref_<name>` [P, 4, 4] int64 (no pickle)."""
    arrays = {"keys": np.asarray(ev.confusion.patch_keys, dtype=str),
              "model": np.asarray(ev.confusion.patch_cms, np.int64).reshape(-1, N_CLASSES, N_CLASSES)}
    for k, cs in ev.references.items():
        arrays[f"ref_{k}"] = np.asarray(cs.patch_cms, np.int64).reshape(-1, N_CLASSES, N_CLASSES)
    np.savez_compressed(path, **arrays)


def load_patch_confusions(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def checked_batches(loader, where: str):
    """The loader's batches; a read/decode failure becomes one ShardError naming the shard folder."""
    it = iter(loader)
    while True:
        try:
            b = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - tar/npy/json errors of many kinds, all mean the same here
            raise ShardError(f"{where}: a sample cannot be read ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:160]})") from None
        yield b


def check_shards(shards: str, manifest, splits, verify: bool, log=print) -> list[str]:
    """sha256 of the splits' shards against the manifest: refuse a mismatch, or (verify=False) warn."""
    from .shards import verify_shards

    bad = [p for s in dict.fromkeys(splits) for p in verify_shards(shards, manifest, s)]
    if bad and verify:
        raise ShardError(f"{shards}: {len(bad)} shard(s) do not match manifest.json (first: {bad[0]}); rebuild "
                         f"them with `sgmagnet build`, or pass --no-verify to score anyway (recorded in the JSON)")
    if bad:
        log(f"WARNING: {len(bad)} shard(s) do not match manifest.json (first: {bad[0]}); scoring anyway (--no-verify)")
    return bad


def evaluate_checkpoint(checkpoint: str, shards: str, split: str = "test", out: str | None = None,
                        batch_size: int = 8, curtains: int = 3, device: str = "auto", log=print,
                        verify: bool = True, decision: str = "argmax") -> dict:
    """decision: argmax (default) or prior (argmax after undoing alpha x the class-weight prior, alpha chosen
    on the checkpoint's validation split; recorded in the JSON as `decision`)."""
    from .data import Normaliser
    from .loaders import loader
    from .runtime import Runtime, load_model_from_checkpoint
    from .shards import manifest_sha256, read_manifest, shard_paths, split_urls

    manifest = read_manifest(shards)
    model, ck = load_model_from_checkpoint(checkpoint, torch.device("cpu"))
    cfg = ck.config
    rt = Runtime.resolve(device, bf16=cfg.train.bf16)        # the fused argmax wherever the kernels run (CUDA)
    model = model.to(rt.device)
    checkpoint = ck.folder
    norm = Normaliser.from_checkpoint(ck)

    def batches(of_split: str):
        return checked_batches(loader("evaluation", split_urls(shards, of_split), norm, batch_size=batch_size,
                                      strict=verify), shards)
    train_split = cfg.data.train_split
    failures = check_shards(shards, manifest, (split, train_split), verify, log)
    clim = Climatology.from_batches(batches(train_split))
    weights = ck.loss_weights
    form = cfg.loss.form
    decision_rec, decide = {"rule": "argmax"}, None
    if decision == "prior":
        val = cfg.data.val_split or ""
        if not val or not shard_paths(shards, val):
            raise ShardError(f"--decision prior chooses its alpha on the validation split, and {shards} has no "
                             f"{val or '(none configured)'} shards")
        decision_rec = choose_prior_alpha(model, batches(val), rt, weights, form)
        decision_rec["chosen_on"] = val
        decide = prior_corrected(weights, decision_rec["alpha"], form)
    ev = evaluate_batches(model, batches(split), rt, keep_curtains=curtains, form=form,
                          references=reference_predictors(clim, weights), decide=decide)
    if ev.confusion.patches == 0:
        raise ShardError(f"{shards}: split {split!r} gave no sample to score")
    cs, curt = ev.confusion, ev.curtains
    refs = {k: v.report() for k, v in ev.references.items()}
    name = cfg.model.name + ("" if not cfg.model.options else
                             "(" + ",".join(f"{k}={v}" for k, v in cfg.model.options.items()) + ")")
    res = {"model": name, "size": cfg.model.size, "checkpoint": os.path.abspath(checkpoint),
           "step": ck.step, "shards": os.path.abspath(shards), "split": split, "metrics": cs.report(),
           "samples": int(cs.patches), "voxels": int(cs.report()["overall"]["voxels"]),
           "manifest_sha256": manifest_sha256(shards), "verified": bool(verify), "checksum_failures": failures,
           "references": refs, "climatology_table": clim.table(weights).tolist(), "loss_weights": list(weights),
           "oracle_error_km": ORACLE_TOP_ERROR_KM, "oracle_thickness_levels": clim.top_thickness_levels,
           "calibration": ev.calibration.report(), "decision": decision_rec}
    out = out or os.path.dirname(os.path.dirname(os.path.abspath(checkpoint)))  # the run folder
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, f"eval_{split}.json"), res)
    write_text(os.path.join(out, f"eval_{split}.md"), report_markdown(res))
    save_patch_confusions(os.path.join(out, f"eval_{split}_patches.npz"), ev)
    from . import plots

    plots.confusion_png(np.asarray(res["metrics"]["overall"]["confusion"]), os.path.join(out, f"confusion_{split}.png"),
                        f"{name} · {split}")
    for k, c in enumerate(curt):
        plots.curtain_png(c, os.path.join(out, f"curtain_{split}_{k}.png"), f"{name} · {c['key']}")
    plots.reliability_png(res["calibration"], os.path.join(out, f"reliability_{split}.png"), f"{name} · {split}")
    log_path = os.path.join(out, "log.jsonl")
    if os.path.exists(log_path):
        plots.loss_curves_png({name: log_path}, os.path.join(out, "loss_curves.png"))
    log(f"wrote {out}/eval_{split}.json, .md and PNGs")
    return res
