"""The shipped SBR calibration and normal database, one set per correction family.

Built from the TRAINING split of a simulated benchmark (version 2, every camera
family) measured by the node's own pipeline, where the truth levels are known:

* ``calibration.json``: per correction family (:mod:`service.pipelines.dat_spect.protocol`,
  read from each series' Corrected Image), per structure the four thresholds
  that reproduce the simulated truth levels best
  (:func:`service.pipelines.dat_spect.levels.fit_truth_thresholds`);
* ``normals.json``: per family, the age regression of the normal-class scans
  (:func:`service.pipelines.dat_spect.normals.fit_normals`).

Both are marked ``"provenance": "simulated"``: the node reports levels and
z-scores from them as indicative. A site replaces them with its own
(``models/template/README.md``, "Calibrate your camera").

Usage (the measured work folder is the one the CNN training cached,
``dopanode train-cnn ... --work WORK --label-source truth``; its ``index.csv``
holds the split)::

    python -m models.template.build_calibration --bench BENCH --work WORK --out models/template
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from models.training.data import read_manifest
from service.pipelines.dat_spect.levels import Calibration, fit_truth_thresholds
from service.pipelines.dat_spect.normals import fit_normals
from service.pipelines.dat_spect.protocol import FAMILIES, series_family
from service.pipelines.dat_spect.provenance import SIMULATED
from service.pipelines.dat_spect.result import REGIONS

#: Fewest training scans of a family for its own set.
MIN_SCANS_PER_FAMILY = 40


def training_rows(bench: Path, work: Path, split: str) -> list[dict]:
    """Per training scan: SBR ``(4,)``, truth levels, age, class and family."""
    manifest = {s.study_id: s for s in read_manifest(bench)}
    with (work / "index.csv").open(newline="") as f:
        index = [r for r in csv.DictReader(f) if r["split"] == split]
    rows = []
    for r in index:
        study = manifest[r["study_id"]]
        if study.truth_levels is None:
            raise SystemExit(f"{study.study_id}: no truth levels in the manifest")
        with np.load(work / "cache" / f"{study.study_id}.npz") as npz:
            sbr = np.asarray(npz["sbr"], np.float64)
        rows.append({"study_id": study.study_id, "sbr": sbr, "levels": np.array(study.truth_levels),
                     "age": study.age_years,
                     "normal": study.disease_class == "normal",
                     "family": series_family(study.series_dir).name})
    return rows


def build(rows: list[dict], source: str) -> tuple[dict, dict, dict]:
    """``(calibration dict, normals dict, log)`` from :func:`training_rows`."""
    calibrations, normals, log = {}, {}, {}
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        if len(mine) < MIN_SCANS_PER_FAMILY:
            raise SystemExit(f"{family}: {len(mine)} training scans, need {MIN_SCANS_PER_FAMILY}")
        sbr = np.stack([r["sbr"] for r in mine])
        levels = np.stack([r["levels"] for r in mine])
        thresholds = {}
        for structure in ("caudate", "putamen"):
            idx = [i for i, g in enumerate(REGIONS) if g.structure == structure]
            thresholds[structure] = fit_truth_thresholds(sbr[:, idx].ravel(), levels[:, idx].ravel())
        text = f"{source}; {FAMILIES[family]}: {len(mine)} scans"
        calibration = Calibration(thresholds["caudate"], thresholds["putamen"], text, SIMULATED)
        calibrations[family] = calibration.to_dict()
        normal_rows = [r for r in mine if r["normal"]]
        db = fit_normals([dict(zip(REGIONS, r["sbr"], strict=True)) for r in normal_rows],
                         [r["age"] for r in normal_rows],
                         f"{source}; {FAMILIES[family]}: {len(normal_rows)} normal scans", SIMULATED)
        normals[family] = db.to_dict()
        fitted = np.array([[calibration.for_region(g).level(float(v))
                            for g, v in zip(REGIONS, r["sbr"], strict=True)] for r in mine])
        log[family] = {"scans": len(mine), "normal_scans": len(normal_rows),
                       "region_level_agreement": round(float((fitted == levels).mean()), 4),
                       "thresholds": {k: [round(x, 4) for x in v.values]
                                      for k, v in thresholds.items()}}
    for entry in (*calibrations.values(), *normals.values()):
        entry.pop("provenance", None)  # the file's, at the top
    top = {"source": source, "provenance": SIMULATED}
    return ({**top, "reference_region": "occipital cortex", "protocols": calibrations},
            {**top, "protocols": normals}, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, required=True, help="benchmark folder (manifest.csv)")
    parser.add_argument("--work", type=Path, required=True,
                        help="the training work folder (index.csv with the split, cache/*.npz)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = training_rows(args.bench, args.work, args.split)
    with (args.bench / "benchmark_version.json").open() as f:
        version = json.load(f).get("version", "?")
    source = (f"SIMULATED: truth-fitted on the {args.split} split of dopanode benchmark "
              f"version {version} ({len(rows)} scans)")
    calibration, normals, log = build(rows, source)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
    (args.out / "normals.json").write_text(json.dumps(normals, indent=2) + "\n")
    log_path = args.out / "build_log.json"
    previous = json.loads(log_path.read_text()) if log_path.exists() else {}
    previous["calibration_build"] = {
        "command": "python -m models.template.build_calibration --bench BENCH --work WORK "
                   f"--split {args.split} --out {args.out}",
        "bench_version": version, "n_scans": len(rows), "families": log,
        "elapsed_s": round(time.perf_counter() - start, 1),
    }
    log_path.write_text(json.dumps(previous, indent=1) + "\n")
    print(json.dumps(log, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
