"""The study's report: study.json, study.md (tables), the figures, and the splice into a results page."""
from __future__ import annotations

import glob
import json
import os

import numpy as np

from sgmagnet.io import write_json, write_text

from .study_logs import StudyLogs
from .study_protocol import ABLATIONS, MATCHED, MODELS, RUNS, sweep_grid
from .study_stats import _ms, bootstrap, granule_of, patch_cms, selected_variant, variant_val_scores

RESULTS_BEGIN = "<!-- study tables: begin (written by hpc/study.py --results; edit the prose around them) -->"
RESULTS_END = "<!-- study tables: end -->"


def tables(results: list[dict], boot: dict, preset_name: str, preset: dict, a, lrs: dict) -> str:
    from sgmagnet.metrics import paper_comparable

    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    ref = results[0]["references"]
    b = boot["runs"]
    r0 = results[0]
    out = [f"Configuration `{preset_name}`: {json.dumps(preset)}; shards `{a.shards}` (manifest sha256 "
           f"`{r0['manifest_sha256'][:16]}…`, {r0['train_days']} training days, {r0['patch']}-px patches); "
           f"learning rates from the validation sweep: {json.dumps(lrs)}. Test split, {boot['patches']} patches from "
           f"{boot.get('clusters', boot['patches'])} {boot.get('resampled', 'patches')}. "
           f"Macro F1: mean ± sd over seeds; 95 % CI: paired cluster bootstrap over whole test "
           f"{boot.get('resampled', 'patches')} ({boot['n_boot']} draws) of the seed-mean; Δ vs SGMAGNet with its "
           f"paired 95 % CI.", ""]
    head = ("| run | seeds | macro F1 | 95 % CI | Δ vs SGMAGNet [95 % CI] | Δ vs oracle [95 % CI] | macro IoU | "
            "phase F1 | mask F1 | selected step | params | GFLOP/sample | samples/s |")
    sep = "|---" * 13 + "|"

    def delta(n, key="minus_sgmagnet"):
        d = b.get(n, {}).get(key)
        return f"{d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d else "–"

    def row(name, rs):
        o = [r["overall"] for r in rs]
        ci = b.get(name)
        return (f"| {name} | {len(rs)} | {_ms([x['macro']['f1'] for x in o])} | "
                + (f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "–") + " | "
                f"{delta(name)} | {delta(name, 'minus_oracle')} | {_ms([x['macro']['iou'] for x in o])} | {_ms([x['phase_macro']['f1'] for x in o])} | "
                f"{_ms([x['cloud_mask']['f1'] for x in o])} | {np.mean([r['selected_step'] for r in rs]):.0f} | "
                f"{rs[0]['parameters']:,} | {rs[0]['gflops_per_sample']:.3f} | "
                f"{np.mean([r['samples_per_s'] or 0 for r in rs]):.1f} |")

    def refrow(name, key):
        r, ci = ref[key]["overall"], b.get(f"ref:{key}")
        return (f"| {name} | – | {r['macro']['f1']:.3f} | " + (f"[{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "–")
                + " | – | " + delta(f"ref:{key}", "minus_oracle")
                + f" | {r['macro']['iou']:.3f} | {r['phase_macro']['f1']:.3f} | {r['cloud_mask']['f1']:.3f} "
                "| – | – | – | – |")
    for title, names in (("Models", MODELS), ("SGMAGNet ablations and the aux-loss variant (one component changed)", ("sgmagnet",) + ABLATIONS),
                         ("Size-matched baselines", ("sgmagnet",) + MATCHED)):
        rows = [row(n, by[n]) for n in names if n in by]
        if len(rows) > (1 if names[0] == "sgmagnet" and title != "Models" else 0):
            out += [f"### {title}", "", head, sep] + rows
            if title == "Models":
                out += [refrow("top-layer oracle ±1 km (reference)", "oracle")] if "oracle" in ref else []
                out += [refrow("climatology (reference)", "climatology"), refrow("all clear (reference)", "all_clear")]
            out.append("")

    sel = boot.get("selected")
    if sel and sel != "sgmagnet":
        val = {n: np.mean(v) for n, v in variant_val_scores(results).items()}
        out += [f"### Baselines vs the validation-selected SGMAGNet configuration (`{sel}`)", "",
                f"The protocol's choice among SGMAGNet and its one-change variants with {len(by['sgmagnet'])} seeds: "
                "the highest seed-mean validation macro F1 (" + ", ".join(f"{n} {v:.3f}" for n, v in
                                                                       sorted(val.items(), key=lambda x: -x[1]))
                + f"). Test Δ = baseline − selected, paired bootstrap over whole test {boot.get('resampled', 'patches')}; "
                "P(Δ ≤ 0) = share of draws "
                "in which the baseline does not beat it.", "",
                f"| run | seeds | macro F1 | Δ vs {sel} [95 % CI] | P(Δ ≤ 0) |", "|---" * 5 + "|"]
        for n in (n for n in ("sgmagnet",) + MODELS[1:] + MATCHED if n in by):
            d = b[n].get("minus_selected")
            out.append(f"| {n} | {len(by[n])} | {_ms([r['overall']['macro']['f1'] for r in by[n]])} | "
                       + (f"{d['point']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['p_le_0']:.2f} |" if d
                          else "– | – |"))
        out.append("")

    def pc(o):
        return o.get("paper_comparable") or paper_comparable(o["confusion"])
    out += ["### Paper-comparable block (micro over the 3 phases with clear as negative; support-weighted over "
            "4 classes; pooled cloud mask)", "", "| run | micro-phase P | micro-phase R | micro-phase F1 | "
            "micro-phase IoU | weighted F1 | mask IoU |", "|---" * 7 + "|"]
    keys = (("micro_phase", "precision"), ("micro_phase", "recall"), ("micro_phase", "f1"), ("micro_phase", "iou"),
            ("weighted", "f1"), ("mask_pooled", "iou"))
    for n in RUNS:
        if n in by:
            ps = [pc(r["overall"]) for r in by[n]]
            out.append(f"| {n} | " + " | ".join(_ms([p[x][y] for p in ps]) for x, y in keys) + " |")
    for k in ("oracle", "climatology", "all_clear"):
        if k in ref:
            p = pc(ref[k]["overall"])
            out.append(f"| {k.replace('_', ' ')} (reference) | " + " | ".join(f"{p[x][y]:.3f}" for x, y in keys) + " |")
    out += ["", "### Per-class F1 (mean over seeds)", "", "| run | clear | ice | mixed | liquid |", "|---" * 5 + "|"]
    for n in RUNS:
        if n in by:
            out.append(f"| {n} | " + " | ".join(_ms([r["overall"]["per_class"][c]["f1"] for r in by[n]])
                                               for c in ("clear", "ice", "mixed", "liquid")) + " |")
    for k in ("oracle", "climatology"):
        if k in ref:
            out.append(f"| {k} (reference) | " + " | ".join(f"{ref[k]['overall']['per_class'][c]['f1']:.3f}"
                                                          for c in ("clear", "ice", "mixed", "liquid")) + " |")
    for fam in results[0]["strata"]:
        strata = sorted({s for r in results for s in r["strata"][fam]})
        out += ["", f"### Macro F1 by {fam}", "", "| run | " + " | ".join(strata) + " |", "|---" * (len(strata) + 1) + "|"]
        for n in RUNS:
            if n not in by:
                continue
            cells = []
            for s in strata:
                v = [r["strata"][fam][s]["macro"]["f1"] for r in by[n] if s in r["strata"][fam]]
                cells.append(_ms(v) if v else "–")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
        for k in ("oracle", "climatology"):
            if k in ref:
                cl = ref[k]["strata"][fam]
                out.append(f"| {k} | " + " | ".join(f"{cl[s]['macro']['f1']:.3f}" if s in cl else "–" for s in strata) + " |")
        counts = [str(results[0]["strata"][fam][s]["voxels"]) if s in results[0]["strata"][fam] else "0" for s in strata]
        out.append("| labelled voxels | " + " | ".join(counts) + " |")
    return "\n".join(out) + "\n"


def run_log(r: dict) -> str:
    """Where a run's log.jsonl lives under --out (loose or in the archive: study_logs.StudyLogs)."""
    return f"runs/{r['name']}_s{r['seed']}/log.jsonl"


def figures(results: list[dict], boot: dict, out: str, logs: StudyLogs):
    """Learning curves (seed 0), macro F1 per run with bootstrap CIs, and the Pareto plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from sgmagnet.plots import loss_curves_png

    s0 = min(r["seed"] for r in results)
    recs = {r["name"]: logs.records(run_log(r)) or [] for r in results if r["seed"] == s0}
    loss_curves_png({n: p for n, p in recs.items() if n in MODELS}, os.path.join(out, "curves_models.png"))
    loss_curves_png({n: p for n, p in recs.items() if n == "sgmagnet" or n in ABLATIONS},
                    os.path.join(out, "curves_ablations.png"))
    b, ref = boot["runs"], results[0]["references"]
    names = [n for n in RUNS if n in b]
    fig, ax = plt.subplots(figsize=(10, 3.8), constrained_layout=True)
    y = [b[n]["macro_f1"] for n in names]
    err = [[b[n]["macro_f1"] - b[n]["low"] for n in names], [b[n]["high"] - b[n]["macro_f1"] for n in names]]
    ax.bar(range(len(names)), y, yerr=err, capsize=3,
           color=["#4a90d9" if n in MODELS else "#9b59b6" if n in ABLATIONS else "#e67e22" for n in names])
    for key, style, label in (("oracle", "-.", "top-layer oracle"), ("climatology", "--", "climatology"),
                              ("all_clear", ":", "all clear")):
        if key in ref:
            ax.axhline(ref[key]["overall"]["macro"]["f1"], color="k", ls=style, lw=1, label=label)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("test macro F1 (seed mean, 95 % CI)")
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "macro_f1.png"), dpi=110)
    plt.close(fig)
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    sel = boot.get("selected") or "sgmagnet"
    labelled = [n for n in names if n not in ABLATIONS or n == sel]      # other ablations: unlabelled dots
    colour = {n: "#4a90d9" if n in MODELS else "#9b59b6" if n in ABLATIONS else "#e67e22" for n in names}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), constrained_layout=True)
    for ax, key, label, better in ((axes[0], "gflops_per_sample", "GFLOP per sample (label-sparse forward)", -1),
                                   (axes[1], "samples_per_s", "training samples/s (this machine)", +1)):
        pts = {n: np.mean([r[key] or np.nan for r in by[n]]) for n in names}
        pts = {n: x for n, x in pts.items() if np.isfinite(x) and x > 0}
        if not pts:                     # e.g. runs too short to record a throughput
            ax.text(0.5, 0.5, "not recorded", ha="center", transform=ax.transAxes)
            ax.set_xlabel(label)
            continue
        for n, x in pts.items():
            y = b[n]["macro_f1"]
            if n in labelled:
                ax.errorbar(x, y, yerr=[[y - b[n]["low"]], [b[n]["high"] - y]], fmt="o", color=colour[n],
                            capsize=2, lw=1)
            else:
                ax.plot(x, y, "o", ms=4, color=colour[n], alpha=0.5)
        # labels of the labelled points, nudged apart vertically so close scores stay readable
        placed = []
        for n in sorted((n for n in pts if n in labelled), key=lambda n: b[n]["macro_f1"]):
            x, y = pts[n], b[n]["macro_f1"]
            ty = y
            while any(abs(np.log10(x / px)) < 0.35 and abs(ty - py) < 0.006 for px, py in placed):
                ty += 0.006
            placed.append((x, ty))
            ax.annotate(n + (" (selected)" if n == sel and n != "sgmagnet" else ""), (x, y), xytext=(x, ty),
                        textcoords="data", fontsize=7, ha="left", va="bottom",
                        arrowprops=None if ty == y else {"arrowstyle": "-", "lw": 0.4, "color": "0.5"})
        # the Pareto front: no other run is both cheaper (faster) and better
        front = sorted(pts, key=lambda n: (-better * pts[n], -b[n]["macro_f1"]))    # best cost first
        best, line = -1.0, []
        for n in front:
            if b[n]["macro_f1"] > best:
                best = b[n]["macro_f1"]
                line.append((pts[n], best))
        ax.step([p[0] for p in line], [p[1] for p in line], where="post",
                color="0.6", lw=0.8, ls="--", label="Pareto front")
        ax.plot([], [], "o", ms=4, color="#9b59b6", alpha=0.5, label="other SGMAGNet ablations")
        if "oracle" in ref:
            ax.axhline(ref["oracle"]["overall"]["macro"]["f1"], color="k", ls="-.", lw=1, label="top-layer oracle")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(label + (" — fewer is better" if better < 0 else " — more is better"))
        ax.set_ylabel("test macro F1 (seed mean, 95 % CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if better < 0 else "lower left")
    fig.savefig(os.path.join(out, "pareto.png"), dpi=110)
    plt.close(fig)


def sweep_table(out: str, preset: dict) -> str:
    """The learning-rate sweep as a table: best validation macro F1 (and its step) per family and rate; the
    chosen rate in bold; a note where the choice sits on the grid's edge or the family's grid was cut."""
    path = os.path.join(out, "lr_sweep.json")
    if not os.path.exists(path):
        return ""
    done = json.load(open(path))
    rates = sorted({float(k) for v in done.values() for k in v.get("trials", {})})
    lines = ["### Learning-rate sweep (validation macro F1 at the best step of "
             f"{preset['sweep_steps']}, seed 0)", "",
             "| family | " + " | ".join(f"lr {r:g}" for r in rates) + " | chosen | note |",
             "|---" * (len(rates) + 3) + "|"]
    for fam, v in sorted(done.items()):
        t = {float(k): x for k, x in v.get("trials", {}).items()}
        cells = []
        for r in rates:
            if r not in t:
                cells.append("–")
                continue
            c = f"{t[r]['best_val_macro_f1']:.3f} (step {t[r]['best_step']})"
            cells.append(f"**{c}**" if v.get("lr") == r else c)
        grid = sorted(sweep_grid(preset, fam))
        note = []
        if len(grid) < len(preset["sweep_lrs"]):
            note.append(f"grid cut to {', '.join(f'{g:g}' for g in grid)} for cost")
        elif "lr" in v and v["lr"] in (grid[0], grid[-1]):
            note.append("chosen rate on the grid's edge")
        if "lr" not in v:
            note.append("unfinished")
        lines.append(f"| {fam} | " + " | ".join(cells) + f" | {v.get('lr', '–')} | {'; '.join(note)} |")
    return "\n".join(lines) + "\n"


def convergence_table(logs: StudyLogs, results: list[dict], preset: dict) -> str:
    """Did each run reach a validation plateau? From its kept log.jsonl: what stopped it (patience or the
    max_steps cap) and, for the cap, how much the best validation macro F1 of its last `patience`
    validations exceeds the best before them (> 0: still improving when the cap stopped it)."""
    k = preset["patience"]
    lines = [f"### Convergence (stopped by `patience` = {k} validations without a better validation macro F1, "
             f"or by the `max_steps` cap)", "",
             "| run | seed | steps | stopped by | selected step | best val macro F1 | gain in the last "
             f"{k} validations |", "|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["name"], r["seed"])):
        val = [x["val_macro_f1"] for x in logs.records(run_log(r)) or [] if x.get("kind") == "val"]
        capped = r["steps"] >= r.get("max_steps", preset["max_steps"])
        gain = f"{max(val[-k:]) - max(val[:-k]):+.3f}" if capped and len(val) > k else "–"
        lines.append(f"| {r['name']} | {r['seed']} | {r['steps']} | {'cap' if capped else 'patience'} | "
                     f"{r['selected_step']} | {r['val_macro_f1']:.3f} | {gain} |")
    return "\n".join(lines) + "\n"


def training_wall(out: str, results: list[dict], logs: StudyLogs) -> dict:
    """Seconds of training the study's files record: every learning-rate sweep trial and every finished run
    (so a study that was stopped and resumed across sessions still adds up correctly). A sweep trial whose log
    is kept (<out>/sweep/<family>_lr<rate>/log.jsonl) counts every session of it; an older trial, without one,
    counts the study's clock (lr_sweep.json's wall_s: its last session only)."""
    path = os.path.join(out, "lr_sweep.json")
    sweep_s = sum(logs.wall_s(f"sweep/{name}_lr{lr}/log.jsonl") or t.get("wall_s", 0.0)
                  for name, fam in (json.load(open(path)).items() if os.path.exists(path) else [])
                  for lr, t in fam.get("trials", {}).items())
    runs_s = sum(r.get("train_wall_s", 0.0) for r in results)
    old_s = sum(logs.wall_s(os.path.relpath(os.path.join(os.path.dirname(p), "log.jsonl"), out))
                or json.load(open(p)).get("train_wall_s", 0.0)
                for p in glob.glob(os.path.join(out, "superseded", "*", "study_run.json")))
    return {"sweep": round(sweep_s, 1), "runs": round(runs_s, 1), "superseded_runs": round(old_s, 1),
            "total": round(sweep_s + runs_s + old_s, 1)}


def report(a, preset_name: str, preset: dict, lrs: dict) -> int:
    results = []
    for p in sorted(glob.glob(os.path.join(a.out, "runs", "*", "study_run.json"))):
        with open(p) as f:
            results.append(json.load(f))
    if not results:
        print("no finished run yet", flush=True)
        return 0
    logs = StudyLogs(a.out)
    for r in results:                   # wall time from the kept log: counts every session of a resumed run
        r["train_wall_s"] = logs.wall_s(run_log(r)) or (
            r.get("train_wall_s", 0.0))
    runs, refs, keys = patch_cms(a.out, results, with_keys=True)
    boot = bootstrap(runs, refs, a.n_boot, selected=selected_variant(results), clusters=[granule_of(k) for k in keys])
    index = [{k: r[k] for k in ("name", "seed", "model", "options", "lr", "steps", "selected_step", "val_macro_f1",
                                 "train_days", "patch", "parameters", "gflops_per_sample", "samples_per_s",
                                 "train_wall_s", "command")} | {"macro": r["overall"]["macro"],
                                                                "metrics": f"runs/{r['name']}_s{r['seed']}/study_run.json"}
             for r in results]
    spent = training_wall(a.out, results, logs)
    write_json(os.path.join(a.out, "study.json"),
               {"config": preset_name, "preset": preset, "shards": a.shards, "manifest_sha256": results[0]["manifest_sha256"],
                "lr": lrs, "bootstrap": boot, "train_wall_s": spent, "runs": index})
    md = tables(results, boot, preset_name, preset, a, lrs) + "\n\n" + sweep_table(a.out, preset) + "\n\n" + (
        convergence_table(logs, results, preset)) + (
        f"\n\nTraining wall time so far (from the runs' own records; evaluation and tables not included): "
        f"sweep {spent['sweep'] / 3600:.2f} h, runs {spent['runs'] / 3600:.2f} h, superseded runs "
        f"{spent['superseded_runs'] / 3600:.2f} h, total {spent['total'] / 3600:.2f} h "
        f"on {preset['hardware']}.\n")
    figures(results, boot, a.out, logs)
    write_text(os.path.join(a.out, "study.md"), md)
    print(md, flush=True)
    if a.results:
        splice_results(a.results, md)
    return 0


def results_problem(path: str) -> str | None:
    """Why `path` cannot take the study's tables (checked before any training), or None."""
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        return getattr(e, "strerror", None) or str(e)
    if text.count(RESULTS_BEGIN) != 1 or text.count(RESULTS_END) != 1 or text.index(RESULTS_BEGIN) > text.index(RESULTS_END):
        return f"needs one line '{RESULTS_BEGIN}' followed by one line '{RESULTS_END}'"
    return None


def splice_results(path: str, md: str):
    """Replace the block between RESULTS_BEGIN and RESULTS_END in `path` with study.md's headline tables (Models
    through the validation-selected comparison and the paper-comparable block, the sweep and the convergence
    table), so the tables a results page shows are the study's own, never copied by hand. Per-class F1 and the
    strata stay in study.md."""
    text = open(path, encoding="utf-8").read()
    head, rest = md.split("\n### Per-class F1", 1)
    tail = rest.split("\n### Learning-rate sweep", 1)
    block = head[head.index("### Models"):].rstrip() + ("\n\n### Learning-rate sweep" + tail[1] if len(tail) > 1 else "")
    block = block.split("\n\nTraining wall time so far")[0].rstrip()
    before, after = text.split(RESULTS_BEGIN)[0], text.split(RESULTS_END)[1]
    write_text(path, before + RESULTS_BEGIN + "\n\n" + block + "\n\n" + RESULTS_END + after)
