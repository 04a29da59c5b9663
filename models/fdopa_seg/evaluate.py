"""Voxel-level evaluation of the exported FDOPA U-Net on the native PET grid.

For each study of the in-distribution test split (``index % 5 == 0`` of the
training sites) or of the held-out site (every study of ``site_d_unseen``;
generated here for evaluation only, never for training or tuning), the served
model (:class:`service.pipelines.fdopa_pet.segment.TumourSegmenter`, the
node's own path: preprocessing, onnxruntime, inverse resampling) gives the
probability on the native grid, and:

* ``dice``: candidates (probability >= 0.5) against the PET-active truth (label 2);
* ``dice_rano``: candidates further restricted to voxels >= 1.6 x the mean of
  the truth background crescent (label 3), the PET RANO rule with a perfect
  background (the pipeline's own background comes from the atlas);
* ``found``: a measurable truth tumour (> 0.5 mL) overlaps the candidates;
* ``fp_ml``: candidate volume in studies without a PET-active tumour.

This is the model's part of issue 12 point 8; the paper-format table with
TBR, MTV and T/S agreement runs the whole pipeline.

``python -m models.fdopa_seg.evaluate --model models/dopanode_fdopa_seg.onnx
--data .cache/fdopa_seg/data --site site_a --site site_b --site site_c``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.fdopa_seg.data import SampleId, generate, sample_path

RANO_X = 1.6
MEASURABLE_ML = 0.5


def evaluation_ids(site: str, limit: int | None = None) -> list[SampleId]:
    """Test studies of a training site, or every study of the held-out site."""
    from service.sim.fdopa.benchmark import SITES

    s = SITES[site]
    ids = [SampleId(site, i) for i in range(s.n_studies)
           if s.role == "unseen" or i % 5 == 0]
    return ids[:limit]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def evaluate_study(segmenter: Any, path: Path) -> dict[str, Any]:
    """The metrics of one cached study (module docstring)."""
    with np.load(path) as data:
        image, labels, affine = data["image_zyx"], data["labels_zyx"], data["affine"]
    voxel_ml = float(np.prod(np.linalg.norm(affine[:3, :3], axis=0))) / 1000.0
    candidates = segmenter.segment(image, affine) >= 0.5
    truth = labels == 2
    row: dict[str, Any] = {"study": path.stem, "truth_ml": float(truth.sum()) * voxel_ml,
                           "pred_ml": float(candidates.sum()) * voxel_ml}
    if truth.any():
        background = float(image[labels == 3].mean())
        rano = candidates & (image >= RANO_X * background)
        row |= {"dice": _dice(candidates, truth), "dice_rano": _dice(rano, truth),
                "measurable": row["truth_ml"] > MEASURABLE_ML,
                "found": bool((candidates & truth).any())}
    else:
        row["fp_ml"] = row["pred_ml"]
    return row


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median (IQR) and mean +- SD of the Dice values, detection and false positives."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in ("dice", "dice_rano"):
        v = np.array([r[key] for r in rows if key in r])
        if v.size:
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            out[key] = {"n": int(v.size), "median": float(med), "iqr": [float(q1), float(q3)],
                        "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0}
    measurable = [r for r in rows if r.get("measurable")]
    if measurable:
        out["measurable_found"] = sum(r["found"] for r in measurable) / len(measurable)
        out["n_measurable"] = len(measurable)
    fp = [r["fp_ml"] for r in rows if "fp_ml" in r]
    if fp:
        out["no_tumour_fp_ml_mean"] = float(np.mean(fp))
        out["no_tumour_any_fp"] = sum(v > 0 for v in fp) / len(fp)
    return out


CARD_BEGIN = "<!-- evaluation: begin -->"
CARD_END = "<!-- evaluation: end -->"


def card_section(report: dict[str, Any], sites: Sequence[str], limit: int | None) -> str:
    """The evaluation table for the model card (between :data:`CARD_BEGIN` and :data:`CARD_END`)."""
    lines = [CARD_BEGIN, "",
             "`python -m models.fdopa_seg.evaluate` (native grid, through `TumourSegmenter`; "
             f"{'first ' + str(limit) + ' test studies per site' if limit else 'all test studies'}"
             "; simulated data, not patients):", "",
             "| site | studies | with PET-active tumour | Dice median (IQR) | Dice mean +- SD "
             "| Dice, >= 1.6 x true background | measurable found | no-tumour studies with "
             "any candidate |", "|---|---|---|---|---|---|---|---|"]
    for site in sites:
        m = report[site]["summary"]
        d, r = m.get("dice", {}), m.get("dice_rano", {})
        lines.append(
            f"| {site} | {m['n']} | {d.get('n', 0)} | "
            + (f"{d['median']:.3f} ({d['iqr'][0]:.3f}-{d['iqr'][1]:.3f}) | "
               f"{d['mean']:.3f} +- {d['sd']:.3f} | {r['median']:.3f} (median) | " if d
               else "- | - | - | ")
            + (f"{m['measurable_found']:.0%} of {m['n_measurable']} | " if "n_measurable" in m
               else "- | ")
            + (f"{m['no_tumour_any_fp']:.0%} |" if "no_tumour_any_fp" in m else "- |"))
    return "\n".join([*lines, "", CARD_END])


def update_card(card: Path, section: str) -> None:
    """Replace (or append) the evaluation section of a model card."""
    text = card.read_text()
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + section + rest.split(CARD_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Evaluation\n\n" + section + "\n"
    card.write_text(text)


def main(argv: list[str] | None = None) -> None:
    from service.pipelines.fdopa_pet.segment import DEFAULT_MODEL, TumourSegmenter

    p = argparse.ArgumentParser(prog="python -m models.fdopa_seg.evaluate")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, default=Path(".cache/fdopa_seg/data"))
    p.add_argument("--site", action="append", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--card", type=Path, default=None, help="model card to put the table in")
    a = p.parse_args(argv)
    segmenter = TumourSegmenter(a.model)
    report: dict[str, Any] = {"model": segmenter.info.model_name,
                              "sha256": segmenter.info.model_sha256}
    for site in a.site:
        ids = evaluation_ids(site, a.limit)
        generate(a.data, ids, a.workers)
        rows = [evaluate_study(segmenter, sample_path(a.data, s)) for s in ids]
        report[site] = {"summary": summarise(rows), "studies": rows}
        print(site, json.dumps(report[site]["summary"]))
    if a.json is not None:
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    if a.card is not None:
        update_card(a.card, card_section(report, a.site, a.limit))


if __name__ == "__main__":
    main()
