"""DaT registration on the standing robustness set: refusals and true pose errors in mm.

The robustness set (``dopanode benchmark robustness OUT``,
:mod:`service.sim.robustness`: 11 appearance variants beyond the training
ranges, seed 7001) is written as DICOM; each study's pose is redrawn from its
seed (:func:`service.sim.robustness.variant_pose`), so a registration of the
written series is measured against the truth exactly as
``bench/dat_registration.py`` measures its in-memory studies (the same
points, :func:`bench.dat_registration.measure`, and the same deliberate
misregistrations, :data:`bench.dat_registration.PERTURBATIONS`).

Per study: whether the gate refused it (and why), the gate's measurements,
the error (mm) of the four AAL striatal centroids and of eight brain
landmarks, the size error (%), and whether the gate refuses each deliberate
misregistration of the engine's transform. A refusal of a study whose
registration is within the broad benchmark's errors is a false refusal of
the gate; one with a large error is the engine's failure.

The site-calibration normals (``dopanode benchmark robustness OUT --normals``,
:func:`service.sim.robustness.normals_variant`) are measured the same way: their
poses are redrawn from their own seed.

Usage::

    PYTHONPATH=$PWD .venv/bin/python bench/dat_registration_robustness.py ROBUST_DIR \\
        --json out.json [--variants a,b] [--studies FILE] [--workers 2] [--before before.json]

``--studies`` takes a file of study ids (one per line): only those are
measured (e.g. the studies a change of the engine can affect).

``--before`` prints refusals per variant of an earlier run's JSON beside this
run's (the same studies, e.g. before and after a change of the gate).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import map_rows  # noqa: E402
from bench.dat_registration import (  # noqa: E402
    _perturbed_refusals,
    _points_mni,
    gate_table,
    measure,
)


def register_study(series_dir: Path, variant: str, study_id: str, second_target: bool = True
                   ) -> dict[str, object]:
    """Register one written study with the pipeline's engine and gate; its row.

    ``second_target``: a series not stated as attenuation corrected that the
    standard template refuses is registered again to the no-AC template, as
    the node does (False measures the standard template alone).
    """
    import torch

    from service.dicom.header import read_series
    from service.imaging.nm_volume import volume_from_datasets
    from service.pipelines.dat_spect.assets import load_dat_models
    from service.pipelines.dat_spect.normalise import NOAC_TARGET, register_series
    from service.pipelines.dat_spect.protocol import correction_family
    from service.sim.robustness import variant_pose

    torch.set_num_threads(1)
    models = load_dat_models()
    files = sorted(p for p in series_dir.rglob("*") if p.is_file())
    datasets = read_series(files)
    image = volume_from_datasets(datasets).image
    posed = variant_pose(variant, int(study_id.rsplit("_", 1)[1]))
    mni = _points_mni(models.atlas)
    family = correction_family(datasets[0].get("CorrectedImage"))
    noac = models.noac_template_zyx if second_target else None
    result = register_series(image, models.template_zyx, models.atlas, noac, family.ac_stated)
    template = noac if result.target == NOAC_TARGET else models.template_zyx
    row: dict[str, object] = {"study_id": study_id, "variant": variant,
                              "refused": result.refusal is not None,
                              "reason": result.refusal or "", "stage": result.stage,
                              "target": result.target, "true_size": round(posed.size, 4)}
    if result.checks is not None:
        row.update({k: v for k, v in vars(result.checks).items() if k != "failure"})
    row.update(measure(result.transform, posed.scan_points(mni), mni, posed.size))
    row.update(_perturbed_refusals(image, result.transform, models, template, result.scales))
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def _task(args: tuple[Path, str, str, bool]) -> dict[str, object]:
    return register_study(*args)


def studies(robust_dir: Path, variants: Sequence[str] | None,
            ids: set[str] | None = None) -> list[tuple[Path, str, str]]:
    """(series dir, variant, study id) of the manifest's studies, in manifest order.

    ``variants`` and ``ids`` (study ids) select; None selects all.
    """
    with (robust_dir / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [(robust_dir / r["site"] / r["study_id"] / "series", r["site"], r["study_id"])
            for r in rows if (variants is None or r["site"] in variants)
            and (ids is None or r["study_id"] in ids)]


def _mean_max(rows: list[dict[str, object]], col: str) -> str:
    vals = [abs(float(r[col])) for r in rows if col in r]  # type: ignore[arg-type]
    return f"{np.mean(vals):.1f} ({np.max(vals):.1f})" if vals else "-"


def table(rows: list[dict[str, object]], before: list[dict[str, object]] | None = None) -> str:
    """Markdown table per variant: refusals (before -> after), errors, gate measurements."""
    lines = ["| variant | n | refused (before -> now) | striatum worst mm (max) | "
             "landmarks mm (max) | size error % (max) | head Dice min | quality min |",
             "|" + "---|" * 8]
    for variant in dict.fromkeys(str(r["variant"]) for r in rows):
        sel = [r for r in rows if r["variant"] == variant]
        refused = f"{sum(bool(r['refused']) for r in sel)}/{len(sel)}"
        if before is not None:
            old = [r for r in before if r["variant"] == variant]
            refused = f"{sum(bool(r['refused']) for r in old)} -> " + refused
        dice = min(float(r["head_dice"]) for r in sel)  # type: ignore[arg-type]
        quality = min(float(r["quality"]) for r in sel)  # type: ignore[arg-type]
        lines.append(f"| {variant} | {len(sel)} | {refused} | "
                     f"{_mean_max(sel, 'err_striatum_max_mm')} | "
                     f"{_mean_max(sel, 'err_landmark_mean_mm')} | "
                     f"{_mean_max(sel, 'scale_error_pct')} | {dice:.2f} | {quality:.2f} |")
    return "\n".join(lines)


def refused_table(rows: list[dict[str, object]]) -> str:
    """Markdown table of every refused study with its true pose error."""
    lines = ["| study | reason | striatum worst mm | landmarks mm | size error % |",
             "|" + "---|" * 5]
    for r in rows:
        if r["refused"]:
            lines.append(f"| {r['study_id']} | {r['reason']} | {float(r['err_striatum_max_mm']):.1f} | "  # type: ignore[arg-type]
                         f"{float(r['err_landmark_mean_mm']):.1f} | "  # type: ignore[arg-type]
                         f"{float(r['scale_error_pct']):+.1f} |")  # type: ignore[arg-type]
    return "\n".join(lines) if len(lines) > 2 else "none refused"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("robust_dir", type=Path, help="the robustness set (manifest.csv)")
    parser.add_argument("--variants", help="comma-separated variant names (default all)")
    parser.add_argument("--studies", type=Path,
                        help="a file of study ids, one per line (default all)")
    parser.add_argument("--json", type=Path, help="write every study's row here")
    parser.add_argument("--before", type=Path, help="an earlier run's JSON to compare with")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--standard-only", action="store_true",
                        help="never try the no-AC template (the node's second target)")
    args = parser.parse_args(argv)
    ids = set(args.studies.read_text().split()) if args.studies else None
    todo = [(*t, not args.standard_only)
            for t in studies(args.robust_dir, args.variants.split(",") if args.variants else None, ids)]
    if ids is not None and (missing := ids - {t[2] for t in studies(args.robust_dir, None)}):
        raise SystemExit(f"--studies: {len(missing)} not in {args.robust_dir / 'manifest.csv'}, "
                         f"e.g. {sorted(missing)[0]}")
    rows = map_rows(_task, todo, args.workers, args.json, chunksize=1)
    before = json.loads(args.before.read_text()) if args.before else None
    print(table(rows, before))
    print("\nrefused studies and their true pose error:\n")
    print(refused_table(rows))
    print("\ngate on deliberate misregistrations (refused / studies):\n")
    print(gate_table(rows, group="variant", engine=None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
