"""The MR-guided route's evaluation table beside the paediatric paper (issue 13, point 6). Pure.

Rows come from :class:`.evaluation_mr_run.MrEvaluator`; the statistics are the
PET evaluation's (:mod:`.evaluation_stats`: Dice mean +- SD and median [IQR];
Bland-Altman bias and 95 % limits; ICC(A,1)). Populations:

* **FLAIR Dice**: analysed studies with a true FLAIR lesion; a lesion the
  U-Net missed has Dice 0 (counted, never dropped);
* **T/S, T/N agreement**: studies on the MR-guided route with a true lesion
  (the route's numbers against :func:`.evaluation_mr.flair_truth`'s), with
  the reference code's VOI refinements (as the node reports) and without;
  the ideal-activity ratios (PET-active tumour, noise-free) as information;
* **dynamic**: the same studies with a dynamic series;
* **low-uptake fallback**: how often it fired on the MR-guided route, how
  often it agrees with the truth's branch, and of the studies where it
  fired, how many the PET-only route found a lesion in (one overlapping the
  true lesion); **PET-only misses**: tumour studies on the MR-guided route
  where the PET-only route found no lesion on the true lesion;
* **route**: MR-guided, or PET-only with the refusal's category;
* **registration**: the edge-alignment quality of every registered study,
  and on the MR-guided route the registration's error at the lesion (the
  segmented lesion's centroid through the route's registration against the
  known pose, mm; rows that carry it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from service.pipelines.fdopa_pet.evaluation_stats import agreement, summarise
from service.pipelines.fdopa_pet.evaluation_table import UNSEEN, agreement_cell, fmt

Rows = Sequence[Mapping[str, Any]]
#: The paper's and the issue's figures.
PAPER_DICE, GOAL_DICE = "0.82 +- 0.11 (best model, 103 patients)", ">= 0.88 +- 0.08"
PAPER_ICC, GOAL_ICC = "0.94 (Mureddu 2024, tool vs ground truth, n = 68)", ">= 0.95"
VARIANTS = (("pred", "refined (node)"), ("unrefined", "no refinement"))
DYNAMIC = (("ttp_s", "TTP (s)", 0), ("slope_bqml_s", "tumour slope (Bq/mL/s)", 3),
           ("slope_ratio", "slope ratio", 3))


def groups(rows: Rows) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Paediatric held-out training sites, paediatric unseen site, all paediatric, adults."""
    child = [r for r in rows if r.get("paediatric")]
    out = [("paediatric, sites a-c held out", [r for r in child if r["site"] != UNSEEN]),
           ("paediatric, site_d_unseen", [r for r in child if r["site"] == UNSEEN]),
           ("paediatric, all", child),
           ("adults with a FLAIR, all sites", [r for r in rows if not r.get("paediatric")])]
    return [(name, g) for name, g in out if g]


def _count(rows: Rows, test: Any) -> tuple[int, int]:
    return sum(bool(test(r)) for r in rows), len(rows)


def group_metrics(rows: Rows) -> dict[str, Any]:
    """Every figure of one group (module docstring for the populations)."""
    done = [r for r in rows if r["status"] == "done"]
    lesion = [r for r in done if r.get("flair_dice") is not None]
    guided = [r for r in done if r.get("route") == "mr_guided" and r.get("truth_ts") is not None]
    fired = [r for r in guided if r.get("pred_fallback")]
    refusals: dict[str, int] = {}
    for r in done:
        if r.get("refusal"):
            refusals[r["refusal"]] = refusals.get(r["refusal"], 0) + 1
    out: dict[str, Any] = {
        "studies": len(rows), "failed": len(rows) - len(done),
        "mr_guided": sum(r.get("route") == "mr_guided" for r in done),
        "refusals": refusals,
        "flair_dice": asdict(summarise([r["flair_dice"] for r in lesion])),
        "no_tumour_mr_guided": _count([r for r in done if r.get("tumour_class") == "none"],
                                      lambda r: r.get("route") == "mr_guided"),
        "fallback_fired": _count(guided, lambda r: r.get("pred_fallback")),
        "fallback_truth": _count(guided, lambda r: r.get("truth_fallback")),
        "fallback_agrees": _count(guided, lambda r: r.get("pred_fallback")
                                  == r.get("truth_fallback")),
        "fallback_pet_only_found": _count(fired, lambda r: r.get("pet_only_on_truth")),
        "pet_only_misses": _count(guided, lambda r: not r.get("pet_only_on_truth")),
        "guided_with_truth": len(guided),
    }
    for prefix, _ in VARIANTS:
        for key in ("ts", "tn"):
            out[f"{prefix}_{key}"] = asdict(agreement([r.get(f"{prefix}_{key}") for r in guided],
                                                      [r.get(f"truth_{key}") for r in guided]))
        for key, _, _ in DYNAMIC:
            out[f"{prefix}_{key}"] = asdict(agreement(
                [r.get(f"{prefix}_{key}") for r in guided if r.get("dynamic")],
                [r.get(f"truth_{key}") for r in guided if r.get("dynamic")]))
    for key in ("ts", "tn"):
        out[f"ideal_{key}"] = asdict(agreement([r.get(f"pred_{key}") for r in guided],
                                               [r.get(f"ideal_{key}") for r in guided]))
    out |= registration_metrics(done)
    out["dynamic_studies"] = sum(bool(r.get("dynamic")) for r in guided)
    pet_voi = [r for r in guided if r.get("pred_fallback") is False
               and r.get("unrefined_voi_ml")]
    out["refined_volume_fraction"] = asdict(summarise(
        [r["pred_voi_ml"] / r["unrefined_voi_ml"] for r in pet_voi]))
    out["refinement_changed_ts"] = _count(pet_voi, lambda r: r.get("pred_ts")
                                          != r.get("unrefined_ts"))
    return out


def registration_metrics(done: Rows) -> dict[str, Any]:
    """Quality of every registration that ran; lesion shift (mm) and its maximum."""
    shifts = [r["reg_lesion_shift_mm"] for r in done
              if r.get("route") == "mr_guided" and r.get("reg_lesion_shift_mm") is not None]
    return {"registration_quality": asdict(summarise(
                [r.get("registration_quality") for r in done])),
            "registration_shift_mm": asdict(summarise(shifts)),
            "registration_shift_max_mm": max(shifts) if shifts else math.nan}


def _registration_line(name: str, m: Mapping[str, Any]) -> str:
    q, s = m["registration_quality"], m["registration_shift_mm"]
    return (f"* {name}: quality median {fmt(q['median'])} [{fmt(q['q1'])}; {fmt(q['q3'])}] "
            f"(n={q['n']}); lesion shift median {fmt(s['median'], 2)} mm "
            f"[{fmt(s['q1'], 2)}; {fmt(s['q3'], 2)}], max "
            f"{fmt(m['registration_shift_max_mm'], 2)} mm (n={s['n']})")


def build_report(rows: Rows) -> dict[str, Any]:
    """Metrics per group and the goals' verdicts."""
    report: dict[str, Any] = {"groups": {name: group_metrics(g) for name, g in groups(rows)}}
    report["goals"] = goals(report["groups"])
    return report


def _frac(t: Sequence[int]) -> str:
    k, n = t
    return "-" if n == 0 else f"{k}/{n}"


def goals(by_group: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(goal, value, verdict) of the issue's goals on the paediatric held-out groups."""
    out = []
    for name in ("paediatric, sites a-c held out", "paediatric, site_d_unseen"):
        m = by_group.get(name)
        if m is None:
            continue
        d = m["flair_dice"]
        mean, sd = d["mean"], d["sd"]
        ok = math.isfinite(mean) and mean >= 0.88 and math.isfinite(sd) and sd <= 0.08
        out.append((f"FLAIR Dice >= 0.88 +- 0.08, {name}", f"{fmt(mean)} +- {fmt(sd)}",
                    "met" if ok else "not met"))
        icc = m["pred_ts"]["icc_agreement"]
        out.append((f"T/S ICC(A,1) >= 0.95, {name}", fmt(icc, 3),
                    "not evaluated" if not math.isfinite(icc) else
                    "met" if icc >= 0.95 else f"not met by {0.95 - icc:.3f}"))
    return out


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def ablation_lines(ablation: Mapping[str, Any] | None) -> list[str]:
    """The transfer-learning ablation (``models/dopanode_flair_seg.ablation.json``) as a table."""
    if not ablation:
        return ["(no ablation file)"]
    names = {"scratch": "from scratch, paediatric subset only",
             "adult": "adult model, no fine-tuning", "finetune": "adult model fine-tuned",
             "baseline": "classical threshold (no learning)"}
    lines = [[s["group"], names.get(s["method"], s["method"]), str(s["n"]),
              f"{fmt(s.get('dice_mean'))} +- {fmt(s.get('dice_sd'))}",
              f"{fmt(s.get('dice_median'))} [{fmt(s.get('dice_q1'))}; {fmt(s.get('dice_q3'))}]"]
             for s in ablation.get("summaries", [])]
    return _table(["held-out studies", "arm", "n", "Dice mean +- SD", "median [IQR]"], lines)


def markdown(report: Mapping[str, Any], header: Sequence[str],
             ablation: Mapping[str, Any] | None) -> str:
    """The printed table: header, route, Dice, agreement, dynamic, fallback, ablation, goals."""
    g = report["groups"]
    route = [[n, str(m["studies"]), str(m["failed"]), str(m["mr_guided"]),
              "; ".join(f"{k} {v}" for k, v in sorted(m["refusals"].items())) or "-",
              _frac(m["no_tumour_mr_guided"])] for n, m in g.items()]
    dice = [[n, str(m["flair_dice"]["n"]), f"{fmt(m['flair_dice']['mean'])} +- "
             f"{fmt(m['flair_dice']['sd'])}", f"{fmt(m['flair_dice']['median'])} "
             f"[{fmt(m['flair_dice']['q1'])}; {fmt(m['flair_dice']['q3'])}]"] for n, m in g.items()]
    agree = [[n, label, agreement_cell(m[f"{p}_ts"]), agreement_cell(m[f"{p}_tn"])]
             for n, m in g.items() for p, label in VARIANTS]
    agree += [[n, "refined, vs ideal activity (information)", agreement_cell(m["ideal_ts"]),
               agreement_cell(m["ideal_tn"])] for n, m in g.items()]
    dyn = [[n, label, str(m["dynamic_studies"]),
            *(agreement_cell(m[f"{p}_{k}"], d) for k, _, d in DYNAMIC)]
           for n, m in g.items() for p, label in VARIANTS if m["dynamic_studies"]]
    fall = [[n, _frac(m["fallback_fired"]), _frac(m["fallback_truth"]),
             _frac(m["fallback_agrees"]), _frac(m["fallback_pet_only_found"]),
             _frac(m["pet_only_misses"])] for n, m in g.items()]
    return "\n".join([
        *header, "", "### Route", "",
        *_table(["studies", "n", "analysis failed", "MR-guided", "PET-only: why (count)",
                 "no-tumour studies on the MR-guided route"], route), "",
        "### FLAIR lesion (whole tumour) Dice on the FLAIR grid, shipped FLAIR U-Net", "",
        *_table(["studies", "n", "Dice mean +- SD", "median [IQR]"], dice), "",
        f"Paper: {PAPER_DICE}; goal {GOAL_DICE}.", "",
        "### T/S and T/N (paediatric FLAIR-guided, max/max) against the truth: bias [95 % LoA] "
        "ICC(A,1)", "",
        *_table(["studies", "VOI", "T/S", "T/N"], agree), "",
        f"Paper: T/S ICC {PAPER_ICC}; goal {GOAL_ICC}.", "",
        "Refinements (PET-VOI branch only): VOI volume after / before, median [IQR] (n); "
        "studies whose T/S they changed:", "",
        *(f"* {n}: {fmt(m['refined_volume_fraction']['median'], 2)} "
          f"[{fmt(m['refined_volume_fraction']['q1'], 2)}; "
          f"{fmt(m['refined_volume_fraction']['q3'], 2)}] (n={m['refined_volume_fraction']['n']})"
          f"; T/S changed in {_frac(m['refinement_changed_ts'])}" for n, m in g.items()), "",
        "### FLAIR to PET registration", "",
        "Edge-alignment quality (gate 0.90) and the error at the lesion: the segmented "
        "lesion's centroid through the route's registration against the known pose:", "",
        *(_registration_line(n, m) for n, m in g.items()), "",
        "### Dynamic (frame starts; slopes from 120 s or 150 s to the last frame) against the "
        "truth's curves", "",
        *_table(["studies", "VOI", "n", *(name for _, name, _ in DYNAMIC)], dyn), "",
        "### Low-uptake fallback and PET-only misses (MR-guided studies with a true lesion)", "",
        *_table(["studies", "fallback fired", "fallback on the truth", "same branch as the truth",
                 "fallback studies where PET-only found the lesion",
                 "PET-only found no lesion (PET-only misses)"], fall), "",
        "### Transfer-learning ablation (models/dopanode_flair_seg.ablation.json)", "",
        *ablation_lines(ablation), "",
        "### Goals of issue 13", "",
        *_table(["goal", "value", "verdict"], [list(x) for x in report["goals"]]), ""])
