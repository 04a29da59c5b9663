"""Build the second registration target: an FP-CIT template for scans without attenuation correction.

Why: a scan reconstructed without attenuation correction (AC) looks unlike the
shipped template (made from CT-AC scans): the centre of the head is dimmer, the
rim brighter, the head looks larger. The registration engine fitted such heads
16-26 % too large, the affine left its bounds, the rigid fallback stayed
3.6-8.2 mm off and the gate refused about 1 in 8 no-AC scans
(docs/dat_registration.md, "Scans without attenuation correction"). The node
registers a series whose header does not say "attenuation corrected" to this
template only when the shipped one was refused (:mod:`service.pipelines.dat_spect.normalise`,
:func:`~service.pipelines.dat_spect.normalise.register_series`).

How (seeded, in memory, about 20 s per scan on one core):

1. ``--scans`` simulated NORMAL subjects of the broad simulator
   (:mod:`service.sim.broad_profiles`: random camera, collimator, matrix,
   counts, anatomy and extracerebral uptake), every one reconstructed without
   AC or scatter correction: even draws by FBP, odd ones by the drawn
   reconstruction (FBP or OSEM) with AC and SC turned off. The named camera
   profiles (``legacy_legp_lowcount`` of benchmark site C among them) are not
   used, so they stay a test of a camera the template never saw.
2. Striatal shape from the shipped AAL atlas only (``striatal_source=aal``):
   the other sources' licences forbid redistributing derivatives
   (docs/simulator.md, "Licences").
3. Each scan is placed on the atlas grid through its TRUE pose (the
   least-squares affine of the simulator's mapping,
   :meth:`service.sim.pose.PosedScan.best_affine`), not by registration, so the
   template's shape is not biased by the engine it is meant to help.
4. The template is the mean of the scans, each divided by its occipital mean
   (:func:`service.pipelines.dat_spect.template.average_template`).

Usage (from the repository root, simulation extra installed)::

    PYTHONPATH=$PWD .venv/bin/python models/template/build_noac_template.py \\
        --out models/template --workers 2

Writes ``fpcit_template_noac_mni2mm.npz`` and the ``noac_template_build``
entry of ``build_log.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

#: Seed of the ad-hoc site the subjects are drawn from (not a benchmark seed).
SEED = 20261202
#: Profile changes: even draws FBP without AC, odd draws the drawn reconstruction without AC.
CHANGES: tuple[dict[str, object], ...] = (
    {"recon": "fbp", "attenuation_correction": "none", "scatter_correction": False,
     "post_filter_fwhm_mm": 0.0},
    {"attenuation_correction": "none", "scatter_correction": False},
)


def placed_normal(index: int) -> tuple[int, np.ndarray | None, str]:
    """Subject ``index``: its scan on the atlas grid through the true pose, or None if not normal."""
    import SimpleITK as sitk
    import torch

    from service.imaging.atlas import load_atlas
    from service.sim.pose import simulate_posed

    torch.set_num_threads(1)
    changes = CHANGES[index % len(CHANGES)]
    pose_only = simulate_posed("broad", SEED, index, changes, scan=False,
                               anatomy={"striatal_source": "aal"})
    if pose_only.disease_class != "normal":
        return index, None, pose_only.disease_class
    posed = simulate_posed("broad", SEED, index, changes, anatomy={"striatal_source": "aal"})
    atlas = load_atlas()
    placed = sitk.Resample(sitk.Cast(posed.image, sitk.sitkFloat32), atlas.reference_image(),
                           posed.best_affine(atlas), sitk.sitkLinear, 0.0)
    return index, sitk.GetArrayFromImage(placed).astype(np.float32), "normal"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scans", type=int, default=40, help="normal scans to average")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-draws", type=int, default=400,
                        help="subjects drawn at most (most draws are not normal)")
    args = parser.parse_args(argv)

    from service.imaging.atlas import load_atlas
    from service.pipelines.dat_spect.assets import NOAC_TEMPLATE_FILE
    from service.pipelines.dat_spect.template import average_template, save_template

    start = time.perf_counter()
    volumes: dict[int, np.ndarray] = {}
    skipped: dict[str, int] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        batch = 0
        while len(volumes) < args.scans:
            indices = range(batch, min(batch + 4 * args.workers, args.max_draws))
            if not indices:
                raise SystemExit(f"only {len(volumes)} normals in {args.max_draws} draws")
            for index, volume, cls in pool.map(placed_normal, indices):
                if volume is None:
                    skipped[cls] = skipped.get(cls, 0) + 1
                elif len(volumes) < args.scans:
                    volumes[index] = volume
                    print(f"{len(volumes)}/{args.scans} normal (subject {index}) "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
            batch = indices.stop
    atlas = load_atlas()
    template = average_template([volumes[i] for i in sorted(volumes)], atlas)
    args.out.mkdir(parents=True, exist_ok=True)
    save_template(args.out / NOAC_TEMPLATE_FILE, np.round(template, 3),
                  f"mean of {len(volumes)} SIMULATED normal scans without attenuation correction "
                  f"(broad simulator, AAL striatum, true pose; seed {SEED}); not patient data")
    log_path = args.out / "build_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    log["noac_template_build"] = {
        "command": "models/template/build_noac_template.py",
        "args": {k: str(v) for k, v in vars(args).items()},
        "seed": SEED,
        "subjects": sorted(volumes),
        "skipped_not_normal": skipped,
        "profile_changes": [dict(c) for c in CHANGES],
        "elapsed_s": round(time.perf_counter() - start, 1),
    }
    log_path.write_text(json.dumps(log, indent=1) + "\n")
    print(json.dumps(log["noac_template_build"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
