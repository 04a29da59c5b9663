"""DaT registration error in mm against the pose the simulator drew, before and after.

For each profile (the four site profiles of benchmark version 2 with the
broad appearance, the broad camera family, and three hard corners of it:
64 x 64 with 4.4 mm GE-like voxels, FBP without attenuation correction, a
16 mm FWHM filter) ``--per-profile`` subjects are simulated in memory
(:mod:`service.sim.groups`: one anatomy, appearance, pose and disease state
each, seeds fixed), reconstructed and registered by

* ``before``: the engine of the previous release (``bench/legacy_dat_normalise.py``:
  rigid then free affine, Pearson correlation with the simulated template,
  gate 0.7);
* ``after``: :func:`service.pipelines.dat_spect.normalise.normalise`;
* ``best affine``: the least-squares affine fit of the true mapping over the
  brain: the floor of any affine engine (the simulator deforms non-linearly).

The truth is :func:`service.sim.pose.true_scan_points` (pose, smooth
deformation and atrophy). Per study: whether the gate refused it (and why),
the error (mm) of the four AAL striatal centroids and of eight brain
landmarks mapped by the registration vs by the truth, and the error of the
fitted size (geometric mean of the singular values vs the drawn size, %).
Errors are reported for all studies, refused ones included (both engines are
asked for their transform), so the gate's false refusals are visible.

Usage::

    PYTHONPATH=$PWD .venv/bin/python bench/dat_registration.py --per-profile 4 --json out.json \\
        [--cache DIR] [--engines after]

The simulation dominates the time (3-15 CPU-s a study, more for 128 x 128);
``--cache DIR`` keeps the reconstructions and reuses them on the next run;
``--engines after`` skips the previous engine. The robustness set is measured
the same way by ``bench/dat_registration_robustness.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.errors import AnalysisError  # noqa: E402
from service.imaging.atlas import Atlas, load_atlas  # noqa: E402
from service.sim.pose import simulate_posed  # noqa: E402

REGIONS = ("caudate_left", "caudate_right", "putamen_left", "putamen_right")
#: Brain landmarks, MNI RAS mm: anterior and posterior commissure, frontal and
#: occipital poles, vertex, left and right lateral temporal cortex, cerebellum.
LANDMARKS_RAS_MM = {
    "ac": (0.0, 2.0, -4.0), "pc": (0.0, -26.0, -2.0), "frontal": (0.0, 62.0, 4.0),
    "occipital": (0.0, -96.0, 6.0), "vertex": (0.0, -20.0, 70.0),
    "temporal_l": (-62.0, -22.0, -4.0), "temporal_r": (62.0, -22.0, -4.0),
    "cerebellum": (0.0, -64.0, -36.0),
}
#: Profiles: (site profile or "broad", replacement fields of the drawn profile).
PROFILES: dict[str, tuple[str, dict[str, object]]] = {
    "siemens_lehr_osem_ctac": ("siemens_lehr_osem_ctac", {}),
    "ge_lehr_fbp_chang": ("ge_lehr_fbp_chang", {}),
    "legacy_legp_lowcount": ("legacy_legp_lowcount", {}),
    "fanbeam_hr_osem (unseen)": ("fanbeam_hr_osem", {}),
    "broad": ("broad", {}),
    "broad 64x64 4.4 mm GE": ("broad", {"matrix": 64, "voxel_mm": 4.4,
                                         "manufacturer": "GE MEDICAL SYSTEMS"}),
    "broad FBP no AC": ("broad", {"recon": "fbp", "attenuation_correction": "none",
                                  "scatter_correction": False, "post_filter_fwhm_mm": 0.0}),
    "broad 16 mm FWHM": ("broad", {"recon": "osem", "post_filter_fwhm_mm": 16.0}),
}
SEED = 31337
#: The "after" engine's gate measurements of the last study (into its row).
AFTER_EXTRAS: dict[str, object] = {}
#: Deliberate misregistrations the gate should refuse: the engine's transform
#: composed with a shift (template mm, LPS) or a pitch about the head centre.
PERTURBATIONS: dict[str, tuple[tuple[float, float, float], float]] = {
    "shift S 10 mm": ((0.0, 0.0, 10.0), 0.0), "shift S 20 mm": ((0.0, 0.0, 20.0), 0.0),
    "shift A 20 mm": ((0.0, -20.0, 0.0), 0.0), "shift L 20 mm": ((20.0, 0.0, 0.0), 0.0),
    "pitch 15 deg": ((0.0, 0.0, 0.0), 15.0), "pitch 30 deg": ((0.0, 0.0, 0.0), 30.0),
}

Engine = Callable[[sitk.Image], "tuple[sitk.Transform | None, str]"]


def simulate(profile_key: str, index: int, cache: Path | None = None
             ) -> tuple[sitk.Image, np.ndarray, np.ndarray, float, sitk.Transform, str]:
    """One subject: image, true scan points of regions and landmarks, true size,
    the best affine approximation of the truth (the floor of any affine engine)
    and the disease class. With ``cache``, the reconstruction is kept there as
    NIfTI and reused (the pose is redrawn from the seed, which is cheap)."""
    base, changes = PROFILES[profile_key]
    seed = SEED + list(PROFILES).index(profile_key)
    path = None if cache is None else cache / f"p{list(PROFILES).index(profile_key)}_{index}.nii.gz"
    cached = path is not None and path.exists()
    posed = simulate_posed(base, seed, index, changes, scan=not cached)
    image = sitk.ReadImage(str(path), sitk.sitkFloat32) if cached else posed.image
    if path is not None and not cached:
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(posed.image, str(path))
    atlas = load_atlas()
    mni = _points_mni(atlas)
    return (image, posed.scan_points(mni), mni, posed.size, posed.best_affine(atlas),
            posed.disease_class)


def _points_mni(atlas: Atlas) -> np.ndarray:
    """LPS mm of the AAL striatal centroids then the landmarks."""
    ref = atlas.reference_image()
    pts = []
    for region in REGIONS:
        centre_zyx = np.argwhere(atlas.mask(region)).mean(axis=0)
        pts.append(ref.TransformContinuousIndexToPhysicalPoint(centre_zyx[::-1].tolist()))
    pts += [(-x, -y, z) for x, y, z in LANDMARKS_RAS_MM.values()]
    return np.array(pts, float)


def engines() -> dict[str, Engine]:
    from bench import legacy_dat_normalise as legacy
    from service.pipelines.dat_spect.assets import load_dat_models
    from service.pipelines.dat_spect.normalise import register_scan

    models = load_dat_models()

    def before(image: sitk.Image) -> tuple[sitk.Transform | None, str]:
        try:
            return legacy.normalise(image, models.template_zyx, models.atlas).transform, ""
        except AnalysisError as exc:
            return _legacy_transform(legacy, image, models), exc.reason

    def after(image: sitk.Image) -> tuple[sitk.Transform | None, str]:
        result = register_scan(image, models.template_zyx, models.atlas)
        AFTER_EXTRAS.clear()
        if result.checks is not None:
            AFTER_EXTRAS.update({k: v for k, v in vars(result.checks).items() if k != "failure"})
        AFTER_EXTRAS["stage"] = result.stage
        AFTER_EXTRAS.update(_perturbed_refusals(image, result.transform, models,
                                                scales=result.scales))
        return result.transform, result.refusal or ""

    return {"before": before, "after": after}


def _perturbed_refusals(image: sitk.Image, transform: sitk.Transform, models: Any,
                        template_zyx: np.ndarray | None = None,
                        scales: np.ndarray | None = None) -> dict[str, bool | str]:
    """Whether the gate refuses each of :data:`PERTURBATIONS` of ``transform``
    (``gate_refuses <name>``) and the reason (``gate_reason <name>``), checked
    against ``template_zyx``, by default the standard template; each is judged
    as an affine fit.

    ``scales``: the singular values of the engine's kept transform (a rigid move
    keeps them), which the gate's head-outline allowance reads; default 1."""
    from service.imaging import register
    from service.pipelines.dat_spect.normalise import evaluate
    from service.pipelines.dat_spect.registration_checks import moved

    out: dict[str, bool | str] = {}
    target = models.template_zyx if template_zyx is None else template_zyx
    size = np.ones(3) if scales is None else np.asarray(scales, float)
    for name, (shift, pitch_deg) in PERTURBATIONS.items():
        wrong = moved(transform, (float(np.deg2rad(pitch_deg)), 0.0, 0.0), shift)
        fit = register.Fit(wrong, "affine", size, 1.0, False, ())  # type: ignore[arg-type]
        refusal = evaluate(image, fit, target, models.atlas).refusal
        out[f"gate_refuses {name}"] = refusal is not None
        out[f"gate_reason {name}"] = (refusal or "").removeprefix("normalisation failed: ")
    return out


def _legacy_transform(legacy: Any, image: sitk.Image, models: Any) -> sitk.Transform | None:
    """The old engine's transform without its gate (to measure refused studies too)."""
    try:
        fixed = legacy._prepare_fixed(models.template_zyx, models.atlas)
        work = legacy._working_copy(sitk.Cast(image, sitk.sitkFloat32))
        rigid = legacy._rigid(fixed, work, legacy._best_start(fixed, work))
        return legacy._affine(fixed, work, rigid)
    except (AnalysisError, RuntimeError):
        return None


def measure(transform: sitk.Transform | None, truth: np.ndarray, mni: np.ndarray,
            size: float) -> dict[str, float]:
    if transform is None:
        return {}
    fitted = np.array([transform.TransformPoint(p.tolist()) for p in mni])
    err = np.linalg.norm(fitted - truth, axis=1)
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)  # type: ignore[attr-defined]
    fitted_size = float(abs(np.linalg.det(matrix)) ** (1.0 / 3.0))
    out = {f"err_{r}_mm": float(e) for r, e in zip(REGIONS, err[:4], strict=True)}
    out["err_striatum_max_mm"] = float(err[:4].max())
    out["err_landmark_mean_mm"] = float(err[4:].mean())
    out["err_landmark_max_mm"] = float(err[4:].max())
    out["scale_error_pct"] = 100.0 * (fitted_size / size - 1.0)
    return out


def run(per_profile: int, profiles: list[str], cache: Path | None = None,
        names: tuple[str, ...] = ("before", "after")) -> list[dict[str, object]]:
    import torch

    torch.set_num_threads(1)
    eng = {k: v for k, v in engines().items() if k in names}
    rows: list[dict[str, object]] = []
    for key in profiles:
        for i in range(per_profile):
            image, truth, mni, size, floor, disease = simulate(key, i, cache)
            rows.append({"profile": key, "index": i, "engine": "best affine", "refused": False,
                         "reason": "", "true_size": round(size, 4), "disease_class": disease,
                         **measure(floor, truth, mni, size)})
            for name, engine in eng.items():
                t0 = time.perf_counter()
                transform, reason = engine(image)
                row: dict[str, object] = {"profile": key, "index": i, "engine": name,
                                          "refused": bool(reason), "reason": reason,
                                          "true_size": round(size, 4),
                                          "seconds": round(time.perf_counter() - t0, 2)}
                row.update(measure(transform, truth, mni, size))
                if name == "after":
                    row.update(AFTER_EXTRAS)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    """Markdown table: per profile and engine, means (max) over studies."""
    head = ("| profile | engine | n | refused | caudate L/R mm | putamen L/R mm | "
            "striatum worst mm (max) | landmarks mean mm (max) | size error % mean abs (max) |")
    lines = [head, "|" + "---|" * 9]
    keys = list(dict.fromkeys(str(r["profile"]) for r in rows))
    for key in keys:
        for engine in ("best affine", "before", "after"):
            sel = [r for r in rows if r["profile"] == key and r["engine"] == engine]
            if not sel:
                continue
            ok = [r for r in sel if "err_landmark_mean_mm" in r]

            def m(col: str, rs: list[dict[str, object]] = ok) -> float:
                return float(np.mean([float(r[col]) for r in rs])) if rs else float("nan")  # type: ignore[arg-type]

            def mx(col: str, rs: list[dict[str, object]] = ok) -> float:
                return float(np.max([abs(float(r[col])) for r in rs])) if rs else float("nan")  # type: ignore[arg-type]

            size_abs = float(np.mean([abs(float(r["scale_error_pct"])) for r in ok])) if ok else float("nan")  # type: ignore[arg-type]
            refused = sum(bool(r["refused"]) for r in sel)
            lines.append(
                f"| {key} | {engine} | {len(sel)} | {refused}/{len(sel)} | "
                f"{m('err_caudate_left_mm'):.1f} / {m('err_caudate_right_mm'):.1f} | "
                f"{m('err_putamen_left_mm'):.1f} / {m('err_putamen_right_mm'):.1f} | "
                f"{m('err_striatum_max_mm'):.1f} ({mx('err_striatum_max_mm'):.1f}) | "
                f"{m('err_landmark_mean_mm'):.1f} ({mx('err_landmark_max_mm'):.1f}) | "
                f"{size_abs:.1f} ({mx('scale_error_pct'):.1f}) |")
    return "\n".join(lines)


def gate_table(rows: list[dict[str, object]], group: str = "profile",
               engine: str | None = "after") -> str:
    """Markdown table: per ``group`` value, how often the gate refuses each perturbation.

    Only rows of ``engine`` count (``None``: rows without an engine column).
    """
    lines = [f"| {group} | n | " + " | ".join(PERTURBATIONS) + " |",
             "|" + "---|" * (2 + len(PERTURBATIONS))]
    for key in dict.fromkeys(str(r[group]) for r in rows):
        sel = [r for r in rows if r[group] == key and (engine is None or r["engine"] == engine)]
        cells = [f"{sum(bool(r[f'gate_refuses {p}']) for r in sel)}/{len(sel)}"
                 for p in PERTURBATIONS]
        lines.append(f"| {key} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-profile", type=int, default=4)
    parser.add_argument("--profiles", default=",".join(PROFILES),
                        help="comma-separated keys of PROFILES")
    parser.add_argument("--json", type=Path, help="write every study's row here")
    parser.add_argument("--cache", type=Path,
                        help="keep the simulated reconstructions here and reuse them")
    parser.add_argument("--engines", default="before,after",
                        help="comma-separated engines to run (the gate's table needs 'after')")
    args = parser.parse_args(argv)
    rows = run(args.per_profile, [p for p in args.profiles.split(",") if p], args.cache,
               tuple(args.engines.split(",")))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))
    print("\ngate on deliberate misregistrations (refused / studies):\n")
    print(gate_table(rows))
    reasons = sorted({str(r["reason"]) for r in rows if r["refused"]})
    print("\nrefusal reasons: " + ("; ".join(reasons) if reasons else "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
