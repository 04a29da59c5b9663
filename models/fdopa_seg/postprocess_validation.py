"""Post-processing options of the U-Net's probabilities, measured on the VALIDATION studies.

Validation only: ``split_of(index) == "val"`` of the training sites
(:mod:`models.fdopa_seg.data`), and with ``--fresh`` studies from fresh seeds
beyond the benchmark; the held-out test split and ``site_d_unseen`` are never
read. The choice rule and the options are in docs/fdopa_analysis.md
("False-positive suppression"); this module measures them.

Per study (cached in ``--cache``, one ``.npz`` each, resumable): the static
image of the training cache (``--data``), the FDOPA template registered onto
it, the shipped model's probability with and without the left-right mirror
TTA, and the truth labels recomputed under the current truth definitions
(:func:`service.sim.fdopa.study.plan_truth`). Then every option's lesions,
through the pipeline's own functions (reference regions from the candidates,
1.6 x their background, :func:`.lesions.lesions_from_candidates`), are
scored: Dice against truth label 2 on studies with a measurable truth tumour,
measurable truth tumours found (a lesion overlapping labels 1-2), false-
positive lesions (overlapping no truth lesion) and their volume, controls
with a lesion.

``python -m models.fdopa_seg.postprocess_validation --data .cache/fdopa_seg/data
--cache .cache/fdopaq/val --json OUT.json [--model CANDIDATE.onnx] [--fresh N]``
(``--fresh N``: N more validation studies per site from fresh seeds beyond the
benchmark, :func:`models.fdopa_seg.data.fresh_ids`) prints the
table (markdown); with ``--model`` it measures a candidate model (a retraining)
instead of the shipped one, so two models are compared on validation only.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from models.fdopa_seg.data import SampleId, fresh_ids, generate, sample_ids, sample_path
from service.errors import AnalysisError
from service.pipelines.fdopa_pet.lesions import (
    FULL_26,
    PROBABILITY_CUT,
    baseline_candidates,
    brain_outside_striatum,
    component_contrast,
    lesions_from_candidates,
)
from service.pipelines.fdopa_pet.result import TUMOUR_THRESHOLD_X_BACKGROUND, AtlasOnPet
from service.pipelines.fdopa_pet.segment import DEFAULT_MODEL, TumourSegmenter

MEASURABLE_ML = 0.5


@dataclass(frozen=True)
class Option:
    """One post-processing option (docs/fdopa_analysis.md)."""

    tta: bool = False
    cut: float = 0.5
    contrast: float | None = None
    min_ml: float = 0.1
    hybrid: bool = False
    #: U-Net candidates plus the baseline's components that touch none
    #: (:func:`with_baseline_components`).
    union: bool = False
    #: U-Net candidates grown into the 1.6 x region by at most this many mm
    #: (:func:`grown_candidates`; ``inf``: the whole connected region).
    grow_mm: float | None = None

    @property
    def name(self) -> str:
        if self.grow_mm is not None:
            return (f"grown {self.grow_mm:g} mm into the 1.6 x region: U-Net"
                    f"{' TTA' if self.tta else ''} p>={self.cut:g}, min {self.min_ml:g} mL")
        if self.union:
            return (f"union: U-Net{' TTA' if self.tta else ''} p>={self.cut:g}, min "
                    f"{self.min_ml:g} mL + separate threshold components")
        if self.hybrid:
            return f"hybrid (threshold components touching U-Net{' TTA' if self.tta else ''})"
        parts = [("TTA " if self.tta else "") + f"p>={self.cut:g}"]
        if self.contrast is not None:
            parts.append(f"peak/shell>={self.contrast:g}")
        parts.append(f"min {self.min_ml:g} mL")
        return ", ".join(parts)


def options() -> list[Option]:
    """Every option and combination the rule compares (O0 first)."""
    out = [Option()]
    for tta in (False, True):
        for cut in (0.3, 0.5, 0.7):
            for contrast in (None, 1.3, 1.5):
                for min_ml in (0.1, 0.25, 0.5):
                    o = Option(tta, cut, contrast, min_ml)
                    if o not in out:
                        out.append(o)
        out.append(Option(tta=tta, hybrid=True))
    out.append(Option(tta=True, min_ml=0.5, union=True))
    out += [Option(tta=True, min_ml=0.25, grow_mm=r) for r in (2.0, 4.0, 6.0, float("inf"))]
    return out


def grown_candidates(candidates_zyx: np.ndarray, volume_zyx: np.ndarray, threshold_units: float,
                     allowed_zyx: np.ndarray, spacing_zyx_mm: np.ndarray,
                     grow_mm: float) -> np.ndarray:
    """The candidates grown into the 1.6 x region (option "grown", measured, not served).

    Voxels of ``allowed & volume >= threshold`` that a 26-connected path
    through that region joins to a candidate voxel at ``>= threshold``, and
    that lie within ``grow_mm`` (Euclidean, mm) of a candidate, are added;
    the candidates themselves are kept. ``grow_mm = inf``: the whole
    connected region.

    Parameters
    ----------
    candidates_zyx, allowed_zyx : (z, y, x) bool arrays
    volume_zyx : (z, y, x) float array
    threshold_units : float
        1.6 x the background, series units.
    spacing_zyx_mm : (3,) array
    grow_mm : float

    Returns
    -------
    (z, y, x) bool array
    """
    cands = np.asarray(candidates_zyx, bool)
    hot = np.asarray(volume_zyx, float) >= threshold_units
    region = hot & np.asarray(allowed_zyx, bool)
    if np.isfinite(grow_mm):
        if not cands.any():
            return cands.copy()
        near = ndimage.distance_transform_edt(~cands, sampling=spacing_zyx_mm) <= grow_mm
        region &= near
    seeds = cands & hot
    labels, n = ndimage.label(region | seeds, structure=FULL_26)
    if n == 0:
        return cands.copy()
    reached = np.unique(labels[seeds])
    return cands | (region & np.isin(labels, reached[reached > 0]))


def with_baseline_components(probability_zyx: np.ndarray, baseline_zyx: np.ndarray
                             ) -> np.ndarray:
    """The U-Net's probability with the baseline's separate components added at 1.0.

    Measured, not served: the option "union" (docs/fdopa_analysis.md,
    "Threshold components the U-Net did not mark"); the node does not use it.

    A 26-connected component of the threshold-only baseline's candidates
    (``lesions.baseline_candidates``) that touches no U-Net candidate
    (probability ``>= PROBABILITY_CUT``, dilated by one voxel in
    26-connectivity) becomes a candidate too; one that touches a U-Net
    candidate adds nothing, so the U-Net's own outlines are kept as they are.
    The result is a probability map for the U-Net's lesion rules (0.5 cut,
    then ``lesions_from_candidates`` with the option's minimum volume).

    Parameters
    ----------
    probability_zyx : (z, y, x) float array
        The U-Net's tumour probability.
    baseline_zyx : (z, y, x) bool array
        The baseline's candidates on the same grid.

    Returns
    -------
    (z, y, x) float32 array
    """
    prob = np.asarray(probability_zyx, np.float32)
    base = np.asarray(baseline_zyx, bool)
    if base.shape != prob.shape:
        raise AnalysisError(f"baseline candidates {base.shape} differ from the probability "
                            f"{prob.shape}", "candidates")
    near_unet = ndimage.binary_dilation(prob >= PROBABILITY_CUT, structure=FULL_26)
    labels, n = ndimage.label(base, structure=FULL_26)
    if n == 0:
        return prob.copy()
    touching = np.unique(labels[near_unet & (labels > 0)])
    separate = (labels > 0) & ~np.isin(labels, touching)
    return np.where(separate, np.float32(1.0), prob)


def _truth_labels(sid: SampleId, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """Truth labels (current definitions) on the sample's grid and the measurable flag."""
    import SimpleITK as sitk

    from service.sim.fdopa.benchmark import SITES, plan_study
    from service.sim.fdopa.scanner import to_output
    from service.sim.fdopa.study import _label_image, plan_truth

    st = plan_truth(plan_study(SITES[sid.site], sid.index))
    labels = sitk.GetArrayFromImage(to_output(_label_image(st.masks), st.maps.grid, st.profile,
                                              nearest=True)).astype(np.uint8)
    if labels.shape != shape:
        raise ValueError(f"{sid.study_id}: truth grid {labels.shape} is not the image's {shape}")
    return labels, bool(st.values.get("measurable"))


def prepare(sid: SampleId, data: Path, cache: Path, seg: TumourSegmenter) -> Path:
    """Cache one validation study's probabilities (of ``seg``'s model), atlas and truth;
    skipped when present for the same model (its SHA-256 is stored)."""
    from service.pipelines.fdopa_pet.normalise import register_to_template
    from service.pipelines.fdopa_pet.template import load_fdopa_template

    out = cache / f"{sid.study_id}.npz"
    if out.exists():
        with np.load(out) as done:
            if "model_sha256" in done.files and str(done["model_sha256"]) == seg.info.model_sha256:
                return out
    sample = np.load(sample_path(data, sid))
    volume, affine = sample["image_zyx"], sample["affine"]
    atlas = register_to_template(volume, affine, load_fdopa_template())
    labels, measurable = _truth_labels(sid, volume.shape)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{sid.study_id}.tmp.npz"
    np.savez_compressed(
        tmp, volume=volume, affine=affine, truth=labels, measurable=measurable,
        prob=seg.segment(volume, affine, mirror=False).astype(np.float16),
        prob_tta=seg.segment(volume, affine, mirror=True).astype(np.float16),
        atlas_labels=atlas.labels_zyx, atlas_lateral=atlas.lateral_mm_zyx.astype(np.float32),
        atlas_names=json.dumps(dict(atlas.names)), atlas_quality=atlas.quality,
        model_sha256=str(seg.info.model_sha256))
    tmp.replace(out)
    return out


class Case:
    """One cached validation study, with the reference threshold of each candidate set."""

    def __init__(self, path: Path) -> None:
        data = np.load(path)
        self.arrays = {k: data[k] for k in data.files}
        self.atlas = AtlasOnPet(data["atlas_labels"], json.loads(str(data["atlas_names"])),
                                data["atlas_lateral"], float(data["atlas_quality"]))
        self._thresholds: dict[tuple[bool, float], float] = {}

    def __getitem__(self, key: str) -> Any:
        return self.arrays[key]

    def threshold(self, tta: bool, cut: float) -> float:
        """1.6 x the background of the reference regions the candidates give (as the pipeline)."""
        if (tta, cut) not in self._thresholds:
            unet = np.asarray(self["prob_tta" if tta else "prob"], np.float32) >= cut
            self._thresholds[(tta, cut)] = self.threshold_of(unet)
        return self._thresholds[(tta, cut)]

    def threshold_of(self, candidates: np.ndarray) -> float:
        """1.6 x the background of the reference regions of a candidate mask."""
        from service.pipelines.fdopa_pet.reference import reference_regions

        reference = reference_regions(self.atlas, candidates, self["affine"])
        return TUMOUR_THRESHOLD_X_BACKGROUND * float(
            self["volume"][reference.background_zyx].mean())


def lesion_masks(option: Option, case: Case) -> list[np.ndarray]:
    """The lesions of one option on one cached study (the pipeline's functions)."""
    volume, affine, atlas = case["volume"], case["affine"], case.atlas
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    unet = np.asarray(case["prob_tta" if option.tta else "prob"], np.float32) >= option.cut
    if option.union:
        cands = with_baseline_components(np.where(unet, 1.0, 0.0),
                                         baseline_candidates(volume, atlas, spacing))
        threshold = case.threshold_of(cands >= PROBABILITY_CUT)
        return [les.mask_zyx for les in lesions_from_candidates(
            cands, volume, threshold, spacing, min_ml=option.min_ml)]
    threshold = case.threshold(option.tta, option.cut)
    if option.grow_mm is not None:
        grown = grown_candidates(unet, volume, threshold,
                                 brain_outside_striatum(atlas, spacing), spacing, option.grow_mm)
        return [les.mask_zyx for les in lesions_from_candidates(
            grown, volume, threshold, spacing, min_ml=option.min_ml)]
    if option.hybrid:
        base = lesions_from_candidates(baseline_candidates(volume, atlas, spacing), volume,
                                       threshold, spacing)
        return [les.mask_zyx for les in base if (les.mask_zyx & unet).any()]
    lesions = lesions_from_candidates(unet, volume, threshold, spacing, min_ml=option.min_ml)
    masks = [les.mask_zyx for les in lesions]
    if option.contrast is not None:
        others = unet & (volume >= threshold)
        masks = [m for m in masks
                 if component_contrast(volume, m, others, spacing, atlas.labels_zyx > 0)
                 >= option.contrast]
    return masks


def score(masks: list[np.ndarray], case: Case) -> dict[str, Any]:
    """Dice, detection and false positives of one study's lesions."""
    truth = np.asarray(case["truth"])
    active, lesion = truth == 2, np.isin(truth, (1, 2))
    spacing = np.linalg.norm(np.asarray(case["affine"])[:3, :3], axis=0)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pred = np.zeros(truth.shape, bool)
    for m in masks:
        pred |= m
    fp = [m for m in masks if not (m & lesion).any()]
    measurable = bool(case["measurable"])
    total = int(pred.sum() + active.sum())
    return {
        "measurable": measurable, "control": not lesion.any(),
        "dice": 2.0 * float((pred & active).sum()) / total if measurable and total else None,
        "found": bool((pred & lesion).any()) if measurable else None,
        "fp_lesions": len(fp), "fp_ml": sum(float(m.sum()) for m in fp) * voxel_ml,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    dices = [r["dice"] for r in rows if r["dice"] is not None]
    return {
        "median_dice": float(np.median(dices)) if dices else None,
        "mean_dice": float(np.mean(dices)) if dices else None,
        "found": sum(bool(r["found"]) for r in rows if r["measurable"]),
        "measurable": sum(r["measurable"] for r in rows),
        "fp_lesions": sum(r["fp_lesions"] for r in rows),
        "fp_ml": round(sum(r["fp_ml"] for r in rows), 2),
        "controls_with_lesion": sum(r["control"] and r["fp_lesions"] > 0 for r in rows),
        "controls": sum(r["control"] for r in rows),
    }


def choose(table: list[tuple[Option, dict[str, Any]]]) -> Option:
    """The documented rule: not fewer found, median Dice >= O0's - 0.01, fewest FP lesions."""
    base = table[0][1]
    ok = [(o, s) for o, s in table
          if s["found"] >= base["found"] and s["median_dice"] >= base["median_dice"] - 0.01]
    steps = {o: (o.tta + (o.cut != 0.5) + (o.contrast is not None) + (o.min_ml != 0.1)
                 + o.hybrid + o.union + (o.grow_mm is not None)) for o, _ in table}
    best = min(ok, key=lambda t: (t[1]["fp_lesions"], -t[1]["median_dice"], steps[t[0]]))
    return best[0] if best[1]["fp_lesions"] < base["fp_lesions"] else table[0][0]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m models.fdopa_seg.postprocess_validation",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="training sample cache (.npz)")
    p.add_argument("--cache", type=Path, required=True, help="per-study cache of this module")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--model", type=Path, default=None, help="U-Net ONNX (default: shipped)")
    p.add_argument("--fresh", type=int, default=0, metavar="N",
                   help="also N fresh-seed studies per training site beyond the benchmark "
                        "(simulated into --data when missing)")
    p.add_argument("--pool", type=Path, action="append", default=[], metavar="CACHE",
                   help="also every study of this filled cache (another anatomy's, made by a "
                        "run in a process of that anatomy with the same model); repeatable")
    args = p.parse_args(argv)
    ids = sample_ids("val") + fresh_ids(args.fresh)
    generate(args.data, ids, workers=2)
    seg = TumourSegmenter(args.model or DEFAULT_MODEL)
    cases = {f"{args.cache.name}/{sid.study_id}": Case(prepare(sid, args.data, args.cache, seg))
             for sid in ids}
    for folder in args.pool:
        for path in sorted(folder.glob("*.npz")):
            with np.load(path) as done:
                if str(done["model_sha256"]) != seg.info.model_sha256:
                    raise SystemExit(f"{path}: made with another model")
            cases[f"{folder.name}/{path.stem}"] = Case(path)
    table = []
    for option in options():
        rows = [score(lesion_masks(option, c), c) for c in cases.values()]
        table.append((option, summarise(rows)))
    chosen = choose(table)
    print(f"{len(cases)} validation studies; chosen: {chosen.name}\n")
    print("| option | median Dice | mean Dice | measurable found | FP lesions | FP mL "
          "| controls with a lesion |\n|---|---|---|---|---|---|---|")
    for o, s in table:
        print(f"| {o.name}{' **(chosen)**' if o == chosen else ''} | {s['median_dice']:.3f} "
              f"| {s['mean_dice']:.3f} | {s['found']}/{s['measurable']} | {s['fp_lesions']} "
              f"| {s['fp_ml']:.2f} | {s['controls_with_lesion']}/{s['controls']} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"studies": sorted(cases), "chosen": chosen.name,
                                         "table": [{"option": o.name} | s for o, s in table]},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
