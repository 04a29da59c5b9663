"""Build the shipped FDOPA template from simulated normal scans (seeded, reproducible).

1. ``--per-profile`` normal (no-tumour) subjects per TRAINING PET profile
   (siemens_biograph_like, ge_discovery_like, philips_vereos_like; never the
   held-out petmr_unseen), a third of them children (2-18 years), each with its
   own random pose, size and smooth deformation, are simulated in memory
   (service.sim.fdopa: static 10-30 min, attenuation corrected, the profile's
   reconstruction and output grid). Subject ``i`` of profile ``p`` draws from
   ``numpy.random.default_rng([seed, p, i])``.
2. Every scan is registered to the current template (first the scan-free
   model template of service.pipelines.fdopa_pet.template.model_template)
   with the node's own register code, resampled onto the MNI 2 mm grid and
   divided by its mean inside the atlas brain.
3. New template = voxel mean of the scans whose registration quality is at
   least ``--min-quality``, averaged with its left-right mirror (the atlas is
   symmetric about MNI x = 0), smoothed by ``--fwhm`` mm and rescaled to a
   brain mean of 1. Steps 2-3 repeat ``--iterations`` times.

Usage, from the repository root::

    PYTHONPATH=$PWD .venv/bin/python models/fdopa_template/build_template.py \
        --out models/fdopa_template

Writes ``fdopa_template_mni2mm.npz`` (+ ``.sha256``) and ``build_log.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.imaging.atlas import load_atlas
from service.pipelines.fdopa_pet.normalise import fit_registration, warp_to_template
from service.pipelines.fdopa_pet.template import (
    FWHM_PER_SIGMA,
    TEMPLATE_FILE,
    FdopaTemplate,
    model_template,
    save_fdopa_template,
)
from service.sim.fdopa.profiles import get_pet_profile
from service.sim.fdopa.scanner import PetScanner, sim_grid, to_output
from service.sim.fdopa.subject import activity_bqml, build_maps, sample_subject

TRAINING_PROFILES = ("siemens_biograph_like", "ge_discovery_like", "philips_vereos_like")


def affine_from_image(image: sitk.Image) -> np.ndarray:
    """(4, 4) index ``(z, y, x)`` to LPS affine of a SimpleITK image."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = (direction * np.asarray(image.GetSpacing()))[:, ::-1]
    affine[:3, 3] = image.GetOrigin()
    return affine


def simulate_normal(profile: str, seed: int, index: int, p_index: int,
                    paediatric: bool) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """One normal static scan: ``(volume_zyx Bq/mL, affine, description)``."""
    rng = np.random.default_rng([seed, p_index, index])
    spec = sample_subject(rng, "none", paediatric)
    prof = get_pet_profile(profile)
    sm = build_maps(spec, sim_grid(prof))
    static = activity_bqml(sm, spec, spec.kinetics.static_suv("10-30"))
    vol, _ = PetScanner(prof, sm).frame(static, 600.0, 1200.0, rng)
    image = to_output(vol, sm.grid, prof)
    info = {"profile": profile, "index": index, "age_years": spec.age_years,
            "paediatric": paediatric,
            "scale": np.round(spec.transform.scale, 3).tolist(),
            "rotation_deg": np.round(spec.transform.rotation_deg, 2).tolist()}
    return sitk.GetArrayFromImage(image).astype(np.float32), affine_from_image(image), info


def build_round(scans: list[tuple[np.ndarray, np.ndarray, dict[str, object]]],
                template: FdopaTemplate, fwhm_mm: float, min_quality: float
                ) -> tuple[FdopaTemplate, list[dict[str, object]]]:
    """Register every scan to ``template`` and average the good ones into a new template."""
    brain = template.brain_zyx
    total = np.zeros(template.image_zyx.shape, np.float64)
    used, log = 0, []
    for volume, affine, info in scans:
        reg = fit_registration(volume, affine, template)
        row = info | {"quality": round(reg.quality, 4), "seconds": round(reg.seconds, 2),
                      "scales": np.round(reg.scales, 3).tolist(), "warnings": list(reg.warnings)}
        log.append(row)
        print(json.dumps(row), flush=True)
        if reg.quality < min_quality:
            continue
        warped = warp_to_template(volume, affine, reg.transform, template).astype(np.float64)
        total += warped / warped[brain].mean()
        used += 1
    if used == 0:
        raise RuntimeError("no scan registered well enough to build a template")
    mean = total / used
    mean = 0.5 * (mean + mean[:, :, ::-1])
    sigma_vox = fwhm_mm / FWHM_PER_SIGMA / float(np.linalg.norm(template.affine[:3, 0]))
    mean = ndimage.gaussian_filter(mean, sigma_vox)
    mean = mean / mean[brain].mean()
    new = FdopaTemplate(mean.astype(np.float32), template.labels_zyx, template.names,
                        template.affine)
    return new, log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=20261130)
    ap.add_argument("--per-profile", type=int, default=9)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--fwhm", type=float, default=4.0)
    ap.add_argument("--min-quality", type=float, default=0.6)
    args = ap.parse_args()
    t0 = time.time()
    scans = []
    for p_index, profile in enumerate(TRAINING_PROFILES):
        for i in range(args.per_profile):
            scans.append(simulate_normal(profile, args.seed, i, p_index, paediatric=i % 3 == 2))
    sim_s = time.time() - t0
    template = model_template(load_atlas())
    rounds: list[dict[str, object]] = []
    used = 0
    for r in range(args.iterations):
        template, log = build_round(scans, template, args.fwhm, args.min_quality)
        rounds.append({"round": r + 1, "scans": log})
        used = len([row for row in log if float(str(row["quality"])) >= args.min_quality])
    provenance = {
        "what": "FDOPA PET template, MNI 2 mm, brain mean 1; SIMULATED normal scans",
        "use": "research use only, not for diagnosis; derived from simulated data",
        "command": "models/fdopa_template/build_template.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "profiles": list(TRAINING_PROFILES), "scans": len(scans),
        "atlas": "models/atlas/mni_2mm.npz (AAL2 striatum, ICBM 2009a GM/WM) + geometric "
                 "construction (service/pipelines/fdopa_pet/atlas_labels.py)",
    }
    template = FdopaTemplate(template.image_zyx, template.labels_zyx, template.names,
                             template.affine, provenance=json.dumps(provenance))
    args.out.mkdir(parents=True, exist_ok=True)
    digest = save_fdopa_template(template, args.out / TEMPLATE_FILE)
    build_log = {"args": {k: str(v) for k, v in vars(args).items()}, "sha256": digest,
                 "simulation_s": round(sim_s, 1), "total_s": round(time.time() - t0, 1),
                 "scans_in_last_average": used, "platform": platform.platform(),
                 "provenance": provenance, "rounds": rounds}
    (args.out / "build_log.json").write_text(json.dumps(build_log, indent=1) + "\n")
    print(f"wrote {args.out / TEMPLATE_FILE} sha256 {digest}")


if __name__ == "__main__":
    main()
