"""Build the shipped template, calibration and normal database from simulated scans.

Reproducible (seeded) and self-contained: it drives the simulator library
(:mod:`service.sim`) in memory, then uses the same functions as the
``dopanode build-template``, ``label`` and ``build-normals`` commands:

1. ``--anatomies`` subjects (random pose, size, deformation, background) are
   simulated under one camera profile; each is scanned once as a normal
   subject and ``--states`` - 1 times in states drawn from the referral mix
   (normal, borderline, PD, atypical; :data:`service.sim.disease.CLASS_MIX`).
2. Every scan is normalised to the current template (the model-based one to
   start with) and quantified.
3. Template: mean of the normalised normal scans; steps 2-3 repeat
   ``--iterations`` times.
4. Calibration: GMM labels of all scans (the dataset), thresholds per
   structure (:mod:`service.pipelines.dat_spect.levels`).
5. Normal database: age regression over the normal scans.

Usage (from the repository root, simulation extra installed)::

    .venv/bin/python models/template/build_from_sim.py --out models/template

Outputs: ``fpcit_template_mni2mm.npz``, ``calibration.json``, ``normals.json``,
``sim_<profile>_caudate.png`` / ``_putamen.png`` and ``build_log.json``.

Calibration and normals only, against the template already shipped (the
template file is then left as it is)::

    .venv/bin/python models/template/build_from_sim.py --out models/template \
        --start-template models/template/fpcit_template_mni2mm.npz --iterations 0
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from service.errors import AnalysisError
from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.assets import CALIBRATION_FILE, NORMALS_FILE, TEMPLATE_FILE
from service.pipelines.dat_spect.labelling import label_dataset, plot_fit
from service.pipelines.dat_spect.normalise import normalise
from service.pipelines.dat_spect.normals import fit_normals
from service.pipelines.dat_spect.quantify import quantify
from service.pipelines.dat_spect.result import REGIONS
from service.pipelines.dat_spect.template import (
    average_template,
    load_template,
    model_template,
    save_template,
)
from service.sim.anatomy import sample_transform
from service.sim.disease import sample_background, sample_state
from service.sim.profiles import PROFILES
from service.sim.scan import AnatomyScanner, measure_sbr, to_image


def simulate(profile_name: str, n_anatomies: int, n_states: int, seed: int) -> list[dict]:
    """Scans as dicts: ``image`` (SimpleITK), ``age``, ``disease_class``."""
    rng = np.random.default_rng(seed)
    profile = PROFILES[profile_name]
    scans = []
    for i in range(n_anatomies):
        scanner = AnatomyScanner(profile, sample_transform(rng), sample_background(rng))
        for k in range(n_states):
            state = sample_state(rng, "normal" if k == 0 else None)
            sim = scanner.scan(state, rng)
            scans.append({
                "image": to_image(sim.volume_zyx, sim.grid, profile.matrix),
                "age": float(state.age_years),
                "disease_class": state.disease_class,
                "truth": measure_sbr(sim.volume_zyx, sim.labels_zyx),
            })
        print(f"anatomy {i + 1}/{n_anatomies} simulated", flush=True)
    return scans


def sbr_vs_truth(scans: list[dict]) -> dict[str, float]:
    """Pearson r and mean relative bias of measured SBR against the simulation's ROI SBR."""
    measured = np.array([s["sbr"][r] for s in scans for r in REGIONS])
    truth = np.array([s["truth"][r.value] for s in scans for r in REGIONS])
    return {
        "pearson_r": round(float(np.corrcoef(measured, truth)[0, 1]), 4),
        "mean_bias_pct": round(float(np.mean((measured - truth) / truth) * 100), 2),
        "mean_abs_error": round(float(np.mean(np.abs(measured - truth))), 3),
    }


def write_table(path: Path, scans: list[dict], levels: tuple) -> None:
    names = [r.value for r in REGIONS]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *names, "age", "disease_class", "quality",
                    *(f"true_{n}" for n in names), *(f"level_{n}" for n in names)])
        for i, (s, lv) in enumerate(zip(scans, levels, strict=True)):
            w.writerow([f"sim{i:04d}", *(f"{s['sbr'][r]:.4f}" for r in REGIONS), s["age"],
                        s["disease_class"], f"{s['quality']:.4f}",
                        *(f"{s['truth'][n]:.4f}" for n in names), *(int(lv[r]) for r in REGIONS)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--profile", default="siemens_lehr_osem_ctac", choices=sorted(PROFILES))
    parser.add_argument("--anatomies", type=int, default=20)
    parser.add_argument("--states", type=int, default=4, help="scans per anatomy (first normal)")
    parser.add_argument("--iterations", type=int, default=2,
                        help="template rounds; 0 measures against --start-template only")
    parser.add_argument("--start-template", type=Path,
                        help="template .npz to start from (default: the model-based one)")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--table", type=Path, help="also write measured and true SBR as CSV")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    atlas = load_atlas()
    scans = simulate(args.profile, args.anatomies, args.states, args.seed)
    template = load_template(args.start_template, atlas) if args.start_template else (
        model_template(atlas))
    n_failed = 0
    for iteration in range(args.iterations + 1):
        for scan in scans:
            try:
                norm = normalise(scan["image"], template, atlas)
            except AnalysisError as exc:  # reported in the build log, left out
                scan["failed"] = exc.reason
                continue
            scan["volume"], scan["quality"] = norm.volume_zyx, norm.quality
            scan["sbr"] = quantify(norm.volume_zyx, atlas).sbr
        n_failed += sum("failed" in s for s in scans)
        scans = [s for s in scans if "failed" not in s]
        if iteration < args.iterations:  # the last pass only measures
            normals = [s["volume"] for s in scans if s["disease_class"] == "normal"]
            template = average_template(normals, atlas)
    dataset = f"sim_{args.profile}"
    labels = label_dataset(dataset, [s["sbr"] for s in scans], np.random.default_rng(args.seed))
    normal_scans = [s for s in scans if s["disease_class"] == "normal"]
    source = (f"SIMULATED normals (service.sim, profile {args.profile}, seed {args.seed}); "
              "not patient data")
    db = fit_normals([s["sbr"] for s in normal_scans], [s["age"] for s in normal_scans], source,
                     provenance="simulated")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.iterations > 0:
        save_template(args.out / TEMPLATE_FILE, np.round(template, 3),
                      f"mean of {len(normal_scans)} simulated normal scans ({args.profile}), "
                      f"{args.iterations} iterations from "
                      f"{args.start_template.name if args.start_template else 'the model template'}")
    calibration = labels.calibration().to_dict()
    calibration["source"] = f"GMM labels of {len(scans)} SIMULATED scans ({args.profile})"
    calibration["provenance"] = "simulated"
    (args.out / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2) + "\n")
    (args.out / NORMALS_FILE).write_text(json.dumps(db.to_dict(), indent=2) + "\n")
    for name, fit in labels.fits.items():
        plot_fit(fit, dataset, args.out / f"{dataset}_{name}.png")
    log = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "n_scans": len(scans),
        "n_failed_normalisation": n_failed,
        "n_normals": len(normal_scans),
        "quality_min": min(s["quality"] for s in scans),
        "components": {k: f.mixture.n_components for k, f in labels.fits.items()},
        "elapsed_s": round(time.perf_counter() - start, 1),
    }
    if args.table:
        write_table(args.table, scans, labels.levels)
    log["sbr_vs_truth"] = sbr_vs_truth(scans)
    (args.out / "build_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(json.dumps(log, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
