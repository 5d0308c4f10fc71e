"""The Markdown tables of an evaluation (`eval_<split>.md`, `sgmagnet report`): scores of the model and the
reference rows, and the paper-comparable block."""
from __future__ import annotations

from .grid import CLASS_NAMES
from .metrics import paper_comparable
from .references import ORACLE_TOP_ERROR_KM


HEAD = ("macro P", "macro R", "macro F1", "macro IoU", "phase F1", "mask F1",
        "F1 clear", "F1 ice", "F1 mixed", "F1 liquid")


def _row(name: str, r: dict) -> str:
    m, ph, cm, pc = r["macro"], r["phase_macro"], r["cloud_mask"], r["per_class"]
    vals = [m["precision"], m["recall"], m["f1"], m["iou"], ph["f1"], cm["f1"]] + [pc[c]["f1"] for c in CLASS_NAMES]
    return f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |"


def markdown(rows: list[tuple[str, dict]]) -> str:
    lines = ["| model | " + " | ".join(HEAD) + " |", "|---" * (len(HEAD) + 1) + "|"]
    lines += [_row(n, r) for n, r in rows]
    return "\n".join(lines)


PAPER_HEAD = ("micro-phase P", "micro-phase R", "micro-phase F1", "micro-phase IoU", "weighted P", "weighted R",
              "weighted F1", "mask F1 (pooled)", "mask IoU (pooled)")

PAPER_NOTE = ("Paper-comparable block (the paper's P 0.922 / R 0.858 / F1 0.763 / IoU 0.617 cannot all be macro "
              "scores): *micro-phase* = pooled counts over ice, mixed, liquid with clear as the negative; "
              "*weighted* = per-class scores over the 4 classes weighted by support; *mask* = clear vs cloud, "
              "pooled. Real-data paper numbers are not comparable with this synthetic benchmark.")


def paper_markdown(rows: list[tuple[str, dict]]) -> str:
    lines = ["| model | " + " | ".join(PAPER_HEAD) + " |", "|---" * (len(PAPER_HEAD) + 1) + "|"]
    for name, r in rows:
        pc = r.get("paper_comparable") or paper_comparable(r["confusion"])
        m, w, k = pc["micro_phase"], pc["weighted"], pc["mask_pooled"]
        vals = [m["precision"], m["recall"], m["f1"], m["iou"], w["precision"], w["recall"], w["f1"], k["f1"], k["iou"]]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
    return "\n".join(lines)


def report_markdown(res: dict) -> str:
    """Full Markdown report of one evaluation result (overall table + stratified tables)."""
    name = res["model"]
    rows = [(name, res["metrics"]["overall"])] + [(_ref_name(k, res), v["overall"]) for k, v in res["references"].items()]
    out = [f"## {name} on split `{res['split']}` ({res['metrics']['overall']['voxels']} labelled voxels, "
           f"{res['metrics']['patches']} patches)", "", markdown(rows), "", PAPER_NOTE, "", paper_markdown(rows)]
    if res.get("decision", {}).get("rule") == "prior":
        d = res["decision"]
        out += ["", f"Decision rule: argmax after undoing {d['alpha']:g} x the class-weight prior (alpha chosen on "
                    f"split `{d['chosen_on']}` by macro F1; the reference rows are unchanged)."]
    if "calibration" in res:
        ece = res["calibration"]["ece"]
        out += ["", "Calibration of the phase-gated probabilities (expected calibration error per class, 10 bins): "
                + ", ".join(f"{c} {v:.3f}" for c, v in ece.items()) + f"; mean {res['calibration']['ece_mean']:.3f}"]
    for fam, strata in res["metrics"]["strata"].items():
        out += ["", f"### by {fam}", "",
                markdown([(f"{name} · {s} ({r['voxels']} vox)", r) for s, r in strata.items()]
                         + [(f"climatology · {s}", res["references"]["climatology"]["strata"][fam][s])
                            for s in strata if s in res["references"]["climatology"]["strata"][fam]])]
    return "\n".join(out) + "\n"


def _ref_name(key: str, res: dict) -> str:
    if key == "oracle":
        return f"top-layer oracle (±{res.get('oracle_error_km', ORACLE_TOP_ERROR_KM):g} km)"
    return key.replace("_", " ")


def compare_markdown(results: list[dict]) -> str:
    """Side-by-side overall table of several evaluations of the same split, the reference rows, and the
    paper-comparable block."""
    rows = [(r["model"], r["metrics"]["overall"]) for r in results]
    rows += [(_ref_name(k, results[0]), v["overall"]) for k, v in results[0]["references"].items()]
    return markdown(rows) + "\n\n" + PAPER_NOTE + "\n\n" + paper_markdown(rows)
