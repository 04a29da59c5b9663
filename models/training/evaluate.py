"""Evaluation in the reference paper's format (numpy only).

Per group of test scans (in-distribution test split; unseen camera):

* 5-level accuracy per region, pooled caudate (L+R), pooled putamen (L+R),
  pooled left and pooled right, and all four regions correct;
* within-one-level accuracy (caudate, putamen);
* confusion matrices (rows truth, columns prediction, levels 0..4) for
  caudate and putamen;
* global binary accuracy against the simulated truth: *reduced* when the
  simulated disease class is ``pd`` or ``atypical`` (``normal`` and
  ``borderline`` are *normal*), with sensitivity and specificity; the
  number of scans flagged inconclusive and the binary accuracy on the rest;
* global binary accuracy against the *binding reference*
  (:func:`service.sim.reference.binary_reference`: what a visual read of the
  image can see; borderline-only scans excluded), the figure the paper's
  97.4 / 96.2 % compare with (:func:`reference_metrics`).

Labels are the per-site GMM labels (as the paper). The conventional baseline
rates the same scans with SBR thresholds *carried over from another camera*
(:func:`carried_calibration`), which is what a site without its own
thresholds would do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.pipelines.dat_spect.result import REGIONS

REDUCED_CLASSES = frozenset({"pd", "atypical"})
_CAUDATE = [i for i, r in enumerate(REGIONS) if r.structure == "caudate"]
_PUTAMEN = [i for i, r in enumerate(REGIONS) if r.structure == "putamen"]
_LEFT = [i for i, r in enumerate(REGIONS) if r.side == "left"]
_RIGHT = [i for i, r in enumerate(REGIONS) if r.side == "right"]


def confusion(true: np.ndarray, pred: np.ndarray, n_levels: int = 5) -> list[list[int]]:
    """``n_levels x n_levels`` counts, rows truth, columns prediction."""
    m = np.zeros((n_levels, n_levels), np.int64)
    np.add.at(m, (true.ravel(), pred.ravel()), 1)
    return m.tolist()


def level_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
    """Five-level metrics of ``(N, 4)`` true and predicted levels (fractions 0..1)."""
    hit = true == pred
    near = np.abs(true - pred) <= 1
    return {
        "n_scans": int(len(true)),
        "accuracy": {r.value: float(hit[:, i].mean()) for i, r in enumerate(REGIONS)},
        "accuracy_caudate": float(hit[:, _CAUDATE].mean()),
        "accuracy_putamen": float(hit[:, _PUTAMEN].mean()),
        "accuracy_left": float(hit[:, _LEFT].mean()),
        "accuracy_right": float(hit[:, _RIGHT].mean()),
        "all_four_correct": float(hit.all(axis=1).mean()),
        "within_one_caudate": float(near[:, _CAUDATE].mean()),
        "within_one_putamen": float(near[:, _PUTAMEN].mean()),
        "confusion_caudate": confusion(true[:, _CAUDATE], pred[:, _CAUDATE]),
        "confusion_putamen": confusion(true[:, _PUTAMEN], pred[:, _PUTAMEN]),
    }


def binary_metrics(truth_reduced: np.ndarray, pred_reduced: np.ndarray,
                   inconclusive: np.ndarray | None = None) -> dict[str, Any]:
    """Global binary accuracy, sensitivity, specificity (and on conclusive scans)."""
    ok = truth_reduced == pred_reduced
    pos, neg = truth_reduced, ~truth_reduced
    out: dict[str, Any] = {
        "binary_accuracy": float(ok.mean()),
        "sensitivity": float(ok[pos].mean()) if pos.any() else float("nan"),
        "specificity": float(ok[neg].mean()) if neg.any() else float("nan"),
    }
    if inconclusive is not None:
        sure = ~inconclusive
        out["n_inconclusive"] = int(inconclusive.sum())
        out["binary_accuracy_conclusive"] = float(ok[sure].mean()) if sure.any() else float("nan")
    return out


def reference_metrics(references: Sequence[str], pred_reduced: np.ndarray,
                      inconclusive: np.ndarray | None = None) -> dict[str, Any]:
    """Binary metrics against the binding reference, excluded scans left out.

    ``references`` holds ``normal``/``reduced``/``excluded`` per scan (``""``
    where the manifest had no true binding: then nothing is computed).
    """
    ref = np.asarray(references, dtype=object)
    used = (ref == "normal") | (ref == "reduced")
    out: dict[str, Any] = {"n_reference": int(used.sum()),
                           "n_excluded": int((ref == "excluded").sum())}
    if not used.any():
        return out
    sub = binary_metrics(ref[used] == "reduced", np.asarray(pred_reduced, bool)[used],
                         None if inconclusive is None else np.asarray(inconclusive, bool)[used])
    return {**out, **{f"ref_{k}": v for k, v in sub.items()}}


def truth_reduced(disease_classes: Sequence[str]) -> np.ndarray:
    """Simulated truth of the global score: ``pd`` or ``atypical``."""
    return np.array([c in REDUCED_CLASSES for c in disease_classes], bool)


def binary_ceiling(lower_putamen_binding: np.ndarray, truth_red: np.ndarray) -> float:
    """Best binary accuracy of one threshold on the simulated true binding ratio.

    The simulator draws PD severities from 0.1 upwards, so some scans of
    the ``pd`` class have normal binding: no method that sees the image can
    call them reduced. This is the accuracy an oracle reaches that knows the
    noise-free binding of the lower putamen and picks the best cut-off.
    """
    b = np.asarray(lower_putamen_binding, float)
    cuts = np.append(np.unique(b), np.inf)
    return float(max(((b < c) == truth_red).mean() for c in cuts))


def carried_calibration(site: str, in_distribution_sites: Sequence[str]) -> str:
    """The site whose thresholds rate ``site`` in the baseline: another camera.

    In-distribution sites take the next site in sorted order (cyclic); any
    other (unseen) site takes the first in-distribution site.
    """
    sites = sorted(in_distribution_sites)
    if site in sites:
        if len(sites) < 2:
            raise ValueError("the carried-over baseline needs two in-distribution sites")
        return sites[(sites.index(site) + 1) % len(sites)]
    return sites[0]


def sbr_levels(sbr: np.ndarray, thresholds: Mapping[str, Sequence[float]]) -> np.ndarray:
    """``(N, 4)`` conventional levels: number of a structure's thresholds the SBR is below."""
    out = np.zeros(sbr.shape, np.int64)
    for i, r in enumerate(REGIONS):
        t = np.asarray(thresholds[r.structure], float)
        out[:, i] = (sbr[:, i, None] < t[None, :]).sum(axis=1)
    return out


def group_report(true_levels: np.ndarray, pred_levels: np.ndarray, truth_red: np.ndarray,
                 pred_reduced: np.ndarray, inconclusive: np.ndarray | None,
                 region_unsure: np.ndarray | None = None) -> dict[str, Any]:
    """Level and binary metrics of one group of scans (and of its conclusive scans).

    ``region_unsure`` ``(N, 4)``: regions the model flags (ordinal spread); adds
    their fraction and the 5-level accuracy of the other regions.
    """
    out = {**level_metrics(true_levels, pred_levels),
           **binary_metrics(truth_red, pred_reduced, inconclusive)}
    if region_unsure is not None:
        hit = true_levels == pred_levels
        out["regions_unsure"] = float(region_unsure.mean())
        out["accuracy_sure_regions"] = (float(hit[~region_unsure].mean())
                                        if (~region_unsure).any() else float("nan"))
    if inconclusive is not None and (~inconclusive).any():
        sure = level_metrics(true_levels[~inconclusive], pred_levels[~inconclusive])
        out["conclusive"] = {k: sure[k] for k in ("n_scans", "accuracy_caudate",
                                                  "accuracy_putamen", "all_four_correct")}
    return out


def _pct(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.1%}"


PAPER = {"in_distribution": {"caudate": 0.801, "putamen": 0.780, "binary": 0.974,
                             "all_four": 0.543},
         "unseen": {"caudate": 0.781, "putamen": 0.765, "binary": 0.962, "all_four": 0.526}}


def _ref_cell(m: Mapping[str, Any]) -> str:
    if "ref_binary_accuracy" not in m:
        return "-"
    return (f"{m['ref_binary_accuracy']:.1%} (sens {_pct(m['ref_sensitivity'])}, "
            f"spec {_pct(m['ref_specificity'])}; n={m['n_reference']}, excl. {m['n_excluded']})")


def format_table(report: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of ``{group: {"cnn": metrics, "sbr_carried": metrics}}``."""
    lines = ["| group | method | n | caudate | putamen | all four | within-1 C/P | binary | "
             "inconcl. | binary (conclusive) | regions unsure | 5-level, sure regions | "
             "binary vs binding ref. (n, excl.) |",
             "|" + "---|" * 13]
    for group, methods in report.items():
        for method, m in methods.items():
            if not isinstance(m, Mapping) or "accuracy_caudate" not in m:
                continue
            lines.append(
                f"| {group} | {method} | {m['n_scans']} | {m['accuracy_caudate']:.1%} | "
                f"{m['accuracy_putamen']:.1%} | {m['all_four_correct']:.1%} | "
                f"{m['within_one_caudate']:.1%}/{m['within_one_putamen']:.1%} | "
                f"{m['binary_accuracy']:.1%} | {m.get('n_inconclusive', '-')} | "
                f"{_pct(m.get('binary_accuracy_conclusive'))} | "
                f"{_pct(m.get('regions_unsure'))} | {_pct(m.get('accuracy_sure_regions'))} | "
                f"{_ref_cell(m)} |")
        paper = PAPER.get(group)
        if paper:
            lines.append(f"| {group} | paper | - | {paper['caudate']:.1%} | {paper['putamen']:.1%} "
                         f"| {paper['all_four']:.1%} | - | {paper['binary']:.1%} | - | - | - | - "
                         f"| {paper['binary']:.1%} (the bar) |")
    return "\n".join(lines)
