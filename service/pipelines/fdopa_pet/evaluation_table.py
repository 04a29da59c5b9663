"""The FDOPA evaluation table in the papers' format, from per-study rows (:mod:`.evaluation`).

Pure: rows in, a report dict and markdown text out. Populations (stated in the
printed text):

* **Dice**: studies analysed (``done``) whose truth tumour is measurable (ideal
  MTV > 0.5 mL): a PET-active truth of a few voxels gives a Dice that says
  nothing about the segmentation; a study where the pipeline found nothing
  has Dice 0.
* **Measurable found**: studies whose truth is measurable; a failed analysis
  counts as not found.
* **Measurable on the image, found**: the same over the studies whose tumour
  is measurable on the image (``img_mtv_ml`` > 0.5 mL: truth lesion voxels at
  >= 1.6 x the image background); partial volume can take a tumour measurable
  in the ideal activity below that on a coarse scanner.
* **Ceiling of the 1.6 x rule** (information, :func:`.evaluation.rule_ceiling`):
  over the Dice population, the Dice of label 2 intersected with the image's
  >= 1.6 x background region against label 2, the best any segmentation that
  follows PET RANO's rule can reach on that image; and over the measurable
  studies with an image reference, those whose image holds at least the
  method's minimum lesion volume at >= 1.6 x (``img_mtv_ml``; U-Net
  :data:`.lesions.UNET_MIN_LESION_ML`, baseline :data:`.lesions.MIN_LESION_ML`):
  a smaller one cannot be reported by that method.
* **False-positive studies**: no-tumour controls (``tumour_class`` ``none``)
  with at least one pipeline lesion.
* **Agreement** (bias [95 % LoA], ICC(A,1)): studies analysed with a
  PET-active truth tumour; MTV of a study without a pipeline lesion is 0 and
  stays in; its ratios are missing and the ``no lesion`` column counts them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from service.pipelines.fdopa_pet.evaluation import INDICES, min_lesion_ml
from service.pipelines.fdopa_pet.evaluation_stats import (
    Agreement,
    Summary,
    agreement,
    fraction,
    summarise,
)
from service.pipelines.fdopa_pet.result import MEASURABLE_ML

UNSEEN = "site_d_unseen"
CLASSES = ("hgg", "lgg", "dmg", "treatment_change", "low_uptake", "none")
CLASS_NAMES = {"hgg": "high grade", "lgg": "low grade", "dmg": "diffuse midline",
               "treatment_change": "treatment change", "low_uptake": "low uptake",
               "none": "no tumour"}
INDEX_NAMES = {"tbr_max": "TBRmax", "tbr_mean": "TBRmean", "mtv_ml": "MTV (cm3)",
               "ts": "T/S", "tn": "T/N"}
#: The papers' figures (research note fdopa.md §1a, §1c).
PAPERS = (
    ("Paediatric seed (Genoa), Dice", "0.82 +- 0.11 (mean +- SD)"),
    ("PET RANO (Zaragori 2026), Dice external test", "0.851 [0.733; 0.911] (median [IQR])"),
    ("PET RANO, TBRmax bias [LoA]", "0.056 [-0.189; 0.301]"),
    ("PET RANO, TBRmean bias [LoA]", "-0.139 [-0.424; 0.146]"),
    ("PET RANO, MTV bias [LoA]", "2.293 mL [-4.734; 9.321]"),
    ("PET RANO, ICC", "> 0.93"),
    ("PET RANO, measurable lesions identified", "> 97 %"),
    ("Mureddu 2024, ICC of T/S (tool vs ground truth)", "0.94"),
)

Rows = Sequence[Mapping[str, Any]]


def groups(rows: Rows) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """The row classes of the table: all, by site split and site, by tumour class, by age."""
    out: list[tuple[str, list[Mapping[str, Any]]]] = [("all", list(rows))]
    out.append(("training sites, held-out", [r for r in rows if r["site"] != UNSEEN]))
    out.append(("unseen scanner (site_d_unseen)", [r for r in rows if r["site"] == UNSEEN]))
    for site in sorted({r["site"] for r in rows}):
        out.append((f"site {site}", [r for r in rows if r["site"] == site]))
    for cls in CLASSES:
        out.append((CLASS_NAMES[cls], [r for r in rows if r.get("tumour_class") == cls]))
    out.append(("paediatric", [r for r in rows if r.get("paediatric")]))
    out.append(("adult", [r for r in rows if not r.get("paediatric")]))
    return [(name, g) for name, g in out if g]


def _tumour(rows: Rows) -> list[Mapping[str, Any]]:
    return [r for r in rows if r["status"] == "done" and r.get("dice") is not None]


def group_metrics(rows: Rows, reference: str = "img") -> dict[str, Any]:
    """Every figure of one group and method (module docstring for the populations)."""
    tumour = _tumour(rows)
    dice_rows = [r for r in tumour if r.get("truth_measurable")]
    measurable = [bool(r.get("overlaps_truth")) for r in rows if r.get("truth_measurable")]
    controls = [r["pred_lesions"] > 0 for r in rows
                if r.get("tumour_class") == "none" and r["status"] == "done"]
    out: dict[str, Any] = {
        "studies": len(rows), "failed": sum(r["status"] != "done" for r in rows),
        "with_tumour": len(tumour), "dice_studies": len(dice_rows),
        "no_lesion": sum(r["pred_lesions"] == 0 for r in tumour),
        "dice": asdict(summarise([r["dice"] for r in dice_rows])),
        "dice_img": asdict(summarise([r.get("dice_img") for r in dice_rows])),
        "dice_ceiling": asdict(summarise([r.get("dice_ceiling") for r in dice_rows])),
        "measurable_found": fraction(measurable),
        "measurable_found_img": fraction([bool(r.get("overlaps_truth")) for r in rows
                                          if (r.get("img_mtv_ml") or 0.0) > MEASURABLE_ML]),
        "measurable_reportable": fraction([r["img_mtv_ml"] >= min_lesion_ml(r["method"])
                                          for r in rows if r.get("truth_measurable")
                                          and r.get("img_mtv_ml") is not None]),
        "fp_studies": fraction(controls),
        "fp_lesions": sum(r.get("fp_lesions", 0) for r in rows),
    }
    for key, _ in INDICES:
        out[key] = asdict(agreement([r.get(f"pred_{key}") for r in tumour],
                                    [r.get(f"{reference}_{key}") for r in tumour]))
    dyn = [r for r in rows if r["status"] == "done" and r.get("dynamic")]
    out["dynamic_studies"] = len(dyn)
    # the Genoa reading: a negative late tumour slope (washout) suggests high grade
    out["slope_sign"] = fraction([(r["pred_slope_pct_min"] < 0) == (r["ideal_slope_pct_min"] < 0)
                                  for r in dyn if r.get("pred_slope_pct_min") is not None
                                  and r.get("ideal_slope_pct_min") is not None])
    for key in ("ttp_s", "slope_pct_min", "slope_ratio"):
        out[key] = asdict(agreement([r.get(f"pred_{key}") for r in dyn],
                                    [r.get(f"ideal_{key}") for r in dyn]))
    return out


def build_report(rows: Rows, methods: Sequence[str]) -> dict[str, Any]:
    """Metrics per group and method, against the image reference and the ideal truth."""
    report: dict[str, Any] = {"groups": {}, "ideal": {}}
    for name, g in groups(rows):
        report["groups"][name] = {m: group_metrics([r for r in g if r["method"] == m])
                                  for m in methods}
        report["ideal"][name] = {m: group_metrics([r for r in g if r["method"] == m], "ideal")
                                 for m in methods}
    report["goals"] = {m: goals(report["groups"].get("unseen scanner (site_d_unseen)", {})
                                .get(m)) for m in methods}
    return report


def fmt(v: float | None, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, ``-`` when missing or not finite."""
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _dice(d: Mapping[str, Any]) -> tuple[str, str]:
    s = Summary(**d)
    if s.n == 0:
        return "-", "-"
    return (f"{fmt(s.median)} [{fmt(s.q1)}; {fmt(s.q3)}] (n={s.n})",
            f"{fmt(s.mean)} +- {fmt(s.sd)}")


def _frac(t: Sequence[Any]) -> str:
    k, n, p = t
    return "-" if n == 0 else f"{k}/{n} ({100 * p:.0f} %)"


def agreement_cell(a: Mapping[str, Any], digits: int = 3) -> str:
    """One agreement as a table cell: bias [limits] ICC (n)."""
    g = Agreement(**a)
    if g.n == 0:
        return "-"
    return (f"{fmt(g.bias, digits)} [{fmt(g.loa_low, digits)}; {fmt(g.loa_high, digits)}] "
            f"ICC {fmt(g.icc_agreement, 2)} (n={g.n})")


def goals(m: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """The issue's goals on the unseen scanner: (goal, value, "met" / "not met by X")."""
    if m is None or m["studies"] == 0:
        return [("unseen scanner", "no studies", "not evaluated")]

    def at_least(value: float, goal: float) -> str:
        if not math.isfinite(value):
            return "not evaluated"
        return "met" if value >= goal else f"not met by {goal - value:.3f}"

    def at_most(value: float, goal: float) -> str:
        if not math.isfinite(value):
            return "not evaluated"
        return "met" if value <= goal else f"not met by {value - goal:.3f}"

    dice_median = m["dice"]["median"]
    found = m["measurable_found"][2]
    tbr, mtv = m["tbr_max"], m["mtv_ml"]
    loa = max(abs(tbr["loa_low"]), abs(tbr["loa_high"]))
    img_median = m["dice_img"]["median"]
    out = [("median Dice >= 0.88", fmt(dice_median), at_least(dice_median, 0.88)),
           ("(information) median Dice vs image reference >= 0.88", fmt(img_median),
            at_least(img_median, 0.88)),
           ("(information) the ceiling of the 1.6 x rule on these images: median of the best "
            "Dice a segmentation within >= 1.6 x background can reach >= 0.88",
            fmt(m["dice_ceiling"]["median"]), at_least(m["dice_ceiling"]["median"], 0.88)),
           ("measurable lesions found >= 98 %", _frac(m["measurable_found"]),
            at_least(100 * found, 98.0).replace("not met by ", "not met by (% points) ")),
           ("(information) measurable on the image (MTV > 0.5 mL with the truth mask) found "
            ">= 98 %", _frac(m["measurable_found_img"]),
            at_least(100 * m["measurable_found_img"][2], 98.0).replace(
                "not met by ", "not met by (% points) ")),
           ("(information) the ceiling of the 1.6 x rule: measurable tumours whose image holds "
            "the method's minimum lesion volume at >= 1.6 x background >= 98 %",
            _frac(m["measurable_reportable"]),
            at_least(100 * m["measurable_reportable"][2], 98.0).replace(
                "not met by ", "not met by (% points) ")),
           ("|TBRmax bias| <= 0.05", fmt(tbr["bias"]), at_most(abs(tbr["bias"]), 0.05)),
           ("TBRmax LoA within +-0.2", f"[{fmt(tbr['loa_low'])}; {fmt(tbr['loa_high'])}]",
            at_most(loa, 0.2)),
           ("|MTV bias| <= 1 cm3", fmt(mtv["bias"]), at_most(abs(mtv["bias"]), 1.0))]
    for key in ("tbr_max", "tbr_mean", "mtv_ml", "ts"):
        icc = m[key]["icc_agreement"]
        out.append((f"ICC(A,1) {INDEX_NAMES[key]} >= 0.95", fmt(icc), at_least(icc, 0.95)))
    return out


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def _per_group(report: Mapping[str, Any], methods: Sequence[str], part: str,
               cells: Callable[[Mapping[str, Any]], list[str]]) -> list[list[str]]:
    return [[name, method, *cells(by_method[method])]
            for name, by_method in report[part].items() for method in methods]


def markdown(report: Mapping[str, Any], methods: Sequence[str], header: Sequence[str]) -> str:
    """The printed table (markdown): header lines, then the tables of the module docstring."""
    seg = _per_group(report, methods, "groups", lambda m: [
        str(m["studies"]), str(m["failed"]), str(m["with_tumour"]), *_dice(m["dice"]),
        _dice(m["dice_img"])[0], _dice(m["dice_ceiling"])[0],
        str(m["no_lesion"]), _frac(m["measurable_found"]), _frac(m["measurable_found_img"]),
        _frac(m["measurable_reportable"]),
        _frac(m["fp_studies"]),
        str(m["fp_lesions"])])
    agree = _per_group(report, methods, "groups", lambda m: [
        agreement_cell(m[k], 2 if k == "mtv_ml" else 3) for k, _ in INDICES])
    ideal = _per_group({"ideal": {k: v for k, v in report["ideal"].items()
                                  if k in ("all", "training sites, held-out",
                                           "unseen scanner (site_d_unseen)")}},
                       methods, "ideal", lambda m: [agreement_cell(m[k], 2 if k == "mtv_ml" else 3)
                                                    for k, _ in INDICES])
    dyn = _per_group(report, methods, "groups", lambda m: [
        str(m["dynamic_studies"]), agreement_cell(m["ttp_s"], 0), agreement_cell(m["slope_pct_min"], 2),
        _frac(m["slope_sign"]), agreement_cell(m["slope_ratio"], 3)])
    names = [INDEX_NAMES[k] for k, _ in INDICES]
    out = [*header, "",
           "### Segmentation and detection", "",
           *_table(["class", "segmentation", "studies", "failed", "with PET-active tumour",
                    "Dice median [IQR]", "Dice mean +- SD",
                    "Dice vs image reference, median [IQR]",
                    "ceiling of the 1.6 x rule: Dice median [IQR]", "no lesion found",
                    "measurable found", "measurable on the image, found",
                    "measurable, reportable under the 1.6 x rule",
                    "FP studies (controls)", "FP lesions"], seg), "",
           "### Agreement with the reference measured on the image with the truth masks "
           "(bias [95 % LoA], ICC(A,1))", "",
           *_table(["class", "segmentation", *names], agree), "",
           "### Agreement with the ideal-activity truth (noise- and blur-free)", "",
           *_table(["class", "segmentation", *names], ideal), "",
           "### Dynamic: tumour TTP (s), slope (%/min), tumour/striatum slope ratio "
           "against the ideal truth (frame starts)", "",
           *_table(["class", "segmentation", "dynamic studies", "TTP (s)", "slope (%/min)",
                    "slope sign agrees", "slope ratio"], [r for r in dyn if r[2] != "0"]), "",
           "### The papers' figures (patients)", "",
           *_table(["source", "figure"], [list(p) for p in PAPERS]), ""]
    for method in methods:
        out += [f"### Goals of issue 12 on the unseen scanner: {method}", "",
                *_table(["goal", "value", "verdict"], [list(g) for g in report["goals"][method]]),
                ""]
    return "\n".join(out)
