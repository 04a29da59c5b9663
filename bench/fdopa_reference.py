"""FDOPA registration and reference regions against the simulator's truth.

For each study (by default 3 per site of the FDOPA benchmark, i.e. the same
plans as ``dopanode sim fdopa``, static series only, all four sites; the held-out
``site_d_unseen`` is evaluated, never tuned on):

1. simulate it to DICOM in a temporary folder, read ``PT_STATIC`` with
   :func:`service.imaging.pet_volume.volume_from_datasets`;
2. :func:`register_to_template` (timed) and :func:`reference_regions` with the
   TRUE lesion (truth labels 1+2) as the candidates, so that only the reference
   stage is measured;
3. compare with ``truth_seg.nii.gz`` (labels 3 crescent, 4 contralateral
   striatum, 5 contralateral eroded WM) resampled onto the PET grid: side
   agreement, Dice, centroid error of the striatum (mm), and the relative
   difference of crescent mean, striatum max and WM max (and WM mean) measured on
   the same reconstruction in our masks vs in the truth masks.

Usage::

    PYTHONPATH=$PWD .venv/bin/python bench/fdopa_reference.py --per-site 3 --json out.json

(``--work DIR`` keeps the simulated studies and reuses them on the next run;
``--synthetic`` runs only known rotations/scales/shifts of the template itself, with
and without large hot spheres.)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from service.imaging.pet_volume import volume_from_datasets
from service.imaging.suv import suv_scale
from service.pipelines.fdopa_pet.reference import (
    load_fdopa_template,
    reference_regions,
    register_to_template,
)
from service.pipelines.fdopa_pet.template import image_from_affine
from service.sim.fdopa.benchmark import SITES, plan_study
from service.sim.fdopa.study import simulate_study


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / s if s else float("nan")


def _centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.asarray(affine[:3, :3] @ np.argwhere(mask).mean(axis=0) + affine[:3, 3])


def evaluate_study(site: str, index: int, work: Path) -> dict[str, object]:
    """Simulate one study and compare our reference regions with its truth."""
    plan = replace(plan_study(SITES[site], index), schedule=None, flair=None)
    folder = work / plan.study_id
    if (folder / "truth.json").exists():  # kept from an earlier run (--work)
        truth = json.loads((folder / "truth.json").read_text())
    else:
        truth = simulate_study(plan, work)
    datasets = [pydicom.dcmread(p) for p in sorted((folder / "PT_STATIC").iterdir())]
    pet = volume_from_datasets(datasets)
    volume, affine = pet.frames[0].volume_zyx, pet.affine
    seg = sitk.Resample(sitk.ReadImage(str(folder / "truth_seg.nii.gz")),
                        image_from_affine(np.zeros(volume.shape, np.uint8), affine),
                        sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    labels = sitk.GetArrayFromImage(seg)
    lesion = np.isin(labels, [1, 2])
    t0 = time.perf_counter()
    atlas = register_to_template(volume, affine, load_fdopa_template())
    reg_s = time.perf_counter() - t0
    regions = reference_regions(atlas, lesion if lesion.any() else None, affine)
    ref_s = time.perf_counter() - t0 - reg_s
    true_bg, true_st, true_wm = labels == 3, labels == 4, labels == 5
    true_side = "left" if float(atlas.lateral_mm_zyx[true_st].mean()) > 0 else "right"
    row: dict[str, object] = {
        "study": plan.study_id, "profile": plan.profile, "class": plan.tumour_class,
        "paediatric": plan.paediatric, "age": truth["age_years"],
        "location": truth["location"], "register_s": round(reg_s, 2),
        "reference_s": round(ref_s, 2), "quality": round(atlas.quality, 3),
        "side": regions.side, "true_side": true_side, "rule": regions.rule,
        "warnings": list(atlas.warnings),
        "dice_background": round(_dice(regions.background_zyx, true_bg), 3),
        "dice_striatum": round(_dice(regions.striatum_zyx, true_st), 3),
        "dice_white_matter": round(_dice(regions.white_matter_zyx, true_wm), 3),
    }
    if regions.side == true_side:
        row["striatum_centroid_mm"] = round(float(np.linalg.norm(
            _centroid(regions.striatum_zyx, affine) - _centroid(true_st, affine))), 2)
    row |= _against_ideal(truth, datasets[0], pet.first_frame_start, volume,
                          (regions.background_zyx, regions.striatum_zyx,
                           regions.white_matter_zyx), (true_bg, true_st, true_wm))
    for name, ours, ref, fn in (
            ("background_mean", regions.background_zyx, true_bg, np.mean),
            ("striatum_max", regions.striatum_zyx, true_st, np.max),
            ("white_matter_max", regions.white_matter_zyx, true_wm, np.max),
            ("white_matter_mean", regions.white_matter_zyx, true_wm, np.mean)):
        row[f"rel_{name}"] = round(float(fn(volume[ours])) / float(fn(volume[ref])) - 1.0, 4)
    return row


def _against_ideal(truth: dict[str, object], header: pydicom.Dataset, first_start: object,
                   volume: np.ndarray, ours: tuple[np.ndarray, ...],
                   true_masks: tuple[np.ndarray, ...]) -> dict[str, object]:
    """SUV in our masks and in the truth masks vs the truth's ideal (noise- and blur-free) values.

    The ideal WM max is ``suvmax / t_n`` (only for studies with a lesion).
    """
    scale = suv_scale(header, first_start)  # type: ignore[arg-type]
    if scale.factor is None:
        return {}
    ideal = {"background_mean": truth.get("background_suv_mean"),
             "striatum_max": truth.get("striatum_suvmax")}
    if truth.get("t_n"):
        ideal["white_matter_max"] = float(truth["suvmax"]) / float(truth["t_n"])  # type: ignore[arg-type]
    out: dict[str, object] = {}
    fns: dict[str, Callable[[np.ndarray], float]] = {
        "background_mean": np.mean, "striatum_max": np.max, "white_matter_max": np.max}
    for i, (name, fn) in enumerate(fns.items()):
        if ideal.get(name) is None:
            continue
        ref = float(ideal[name])  # type: ignore[arg-type]
        out[f"ideal_{name}_ours"] = round(float(fn(volume[ours[i]])) * scale.factor / ref - 1, 4)
        out[f"ideal_{name}_truthmask"] = round(
            float(fn(volume[true_masks[i]])) * scale.factor / ref - 1, 4)
    return out


def summarise(rows: list[dict[str, object]]) -> str:
    """A markdown table per profile and overall."""
    keys = ("register_s", "quality", "striatum_centroid_mm", "dice_background",
            "dice_striatum", "dice_white_matter", "rel_background_mean", "rel_striatum_max",
            "rel_white_matter_max", "rel_white_matter_mean", "ideal_background_mean_ours",
            "ideal_background_mean_truthmask", "ideal_striatum_max_ours",
            "ideal_striatum_max_truthmask", "ideal_white_matter_max_ours",
            "ideal_white_matter_max_truthmask")
    lines = ["| profile | n | side ok | " + " | ".join(keys) + " |",
             "|---" * (len(keys) + 3) + "|"]
    groups = sorted({str(r["profile"]) for r in rows}) + ["all"]
    for g in groups:
        sel = [r for r in rows if g in ("all", r["profile"])]
        cells = [g, str(len(sel)), f"{sum(r['side'] == r['true_side'] for r in sel)}/{len(sel)}"]
        for k in keys:
            v = np.array([float(r[k]) for r in sel if k in r])  # type: ignore[arg-type]
            if not v.size:
                cells.append("-")
            elif k.startswith(("rel_", "ideal_")):
                cells.append(f"{100 * v.mean():+.1f} % (max abs {100 * np.abs(v).max():.1f})")
            elif k in ("register_s", "striatum_centroid_mm"):
                cells.append(f"{v.mean():.2f} (max {v.max():.2f})" if v.size else "-")
            else:
                cells.append(f"{v.mean():.3f} (min {v.min():.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Synthetic cases: (rotation deg about x, y, z; scale x, y, z; shift mm; hot sphere
#: radius mm (0: none); its value x brain).
SYNTHETIC_CASES = (
    ((18.0, 0.0, 0.0), (0.86, 0.86, 0.83), (5.0, 5.0, -10.0), 0.0, 0.0),
    ((-25.0, 5.0, 0.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 0.0, 0.0),
    ((0.0, 0.0, 30.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 0.0, 0.0),
    ((5.0, -5.0, 5.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 25.0, 8.0),
    ((5.0, -5.0, 5.0), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), 25.0, 20.0),
    ((5.0, -5.0, 5.0), (0.9, 0.9, 0.9), (0.0, 0.0, 0.0), 35.0, 10.0),
)


def synthetic_poses() -> list[dict[str, object]]:
    """The template itself, moved by known transforms (optionally with a hot sphere in the
    right hemisphere), on the rotated anisotropic grid of the unit tests; striatal
    centroid errors in mm."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "unit"))
    import test_fdopa_reference as t  # the unit tests' grid and helpers

    template = load_fdopa_template()
    rows: list[dict[str, object]] = []
    for angles, scale, shift, radius, hot in SYNTHETIC_CASES:
        truth = sitk.AffineTransform(3)
        rot = sitk.Euler3DTransform()
        rot.SetRotation(*np.deg2rad(angles).tolist())
        truth.SetMatrix((np.asarray(rot.GetMatrix()).reshape(3, 3) @ np.diag(scale)).ravel())
        truth.SetTranslation(shift)
        x, y, z = t._lps_grid(template)
        sphere = (x + 30) ** 2 + (y - 10) ** 2 + (z - 20) ** 2 < radius**2
        image = np.where(sphere, hot, template.image_zyx).astype(np.float32)
        moved = type(template)(image, template.labels_zyx, template.names, template.affine)
        volume, affine = t._native(moved, truth, False)
        atlas = register_to_template(volume, affine, template)
        errors = []
        for side in ("left", "right"):
            names = [f"{s}_{side}" for s in t.STRIATUM]
            expected = np.array(truth.TransformPoint(
                t._centroid_lps(template.mask(*names), template.affine).tolist()))
            errors.append(float(np.linalg.norm(t._centroid_lps(atlas.mask(*names), affine)
                                               - expected)))
        rows.append({"rotation_deg": angles, "scale": scale, "shift_mm": shift,
                     "hot_sphere_diameter_mm": 2 * radius, "hot_x_brain": hot,
                     "quality": round(atlas.quality, 3),
                     "striatum_error_mm": [round(e, 2) for e in errors]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-site", type=int, default=3)
    ap.add_argument("--sites", nargs="*", default=list(SITES))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="keep the simulated studies here (reused)")
    ap.add_argument("--synthetic", action="store_true",
                    help="only the known-transform cases of the template itself")
    args = ap.parse_args()
    if args.synthetic:
        synthetic_poses()
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for site in args.sites:
            for i in range(args.per_site):
                row = evaluate_study(site, i, work)
                print(json.dumps(row), flush=True)
                rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(summarise(rows))


if __name__ == "__main__":
    main()
