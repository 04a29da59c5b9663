"""Sub-commands of this area (see :mod:`service.cli`).

``analyze`` runs the DaT pipeline offline; ``label`` makes GMM reference
labels for a dataset; ``build-template`` and ``build-normals`` make the files
in ``models/template/``. Output file names come from validated UIDs or
counters only, never from other DICOM strings.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.dicom.uids import is_valid_uid
from service.pipelines.dat_spect.levels import NORMAL_CV_MAX
from service.pipelines.dat_spect.provenance import SIMULATED, SITE

if TYPE_CHECKING:
    from service.pipelines.dat_spect.assets import DatModels
    from service.pipelines.dat_spect.pipeline import Measurement

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CSV_REGIONS = ("caudate_left", "caudate_right", "putamen_left", "putamen_right")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add analyze, label, build-template and build-normals."""
    from service.pipelines.fdopa_pet.commands import add_arguments as add_fdopa_arguments

    p = subparsers.add_parser(
        "analyze", help="analyse DaT SPECT series and [18F]FDOPA PET studies offline")
    p.add_argument("paths", nargs="+", type=Path, help="DICOM files or folders")
    p.add_argument("--out", type=Path, default=Path("dopanode-out"), help="output folder")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--model", type=Path, default=None,
                       help="ONNX CNN (with its .sha256 sidecar); default: the shipped model")
    model.add_argument("--no-cnn", action="store_true",
                       help="rate by SBR thresholds only, as with [pipelines.dat_spect] cnn_enabled = false")
    _common(p)
    add_fdopa_arguments(p)
    p.set_defaults(func=cmd_analyze)

    p = subparsers.add_parser("label", help="GMM reference labels for one dataset")
    p.add_argument("input", type=Path, help="folder of scans, or CSV of SBR per region")
    p.add_argument("--dataset", required=True, help="dataset name (letters, digits, _.-)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--min-components", type=int, default=2, help="1 only for normals-only data")
    p.add_argument("--max-components", type=int, default=4)
    p.add_argument("--normal-cv-max", type=float, default=NORMAL_CV_MAX,
                   help="cap on the normal component's SD as a fraction of its mean "
                        "(default %(default)s, from simulated normals; set from a site's own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--simulated", action="store_true",
                   help="mark calibration.json as built from simulated scans (reports then "
                        "call its levels indicative); default: the site's own scans")
    _common(p)
    p.set_defaults(func=cmd_label)

    p = subparsers.add_parser("build-template", help="build the FP-CIT template")
    p.add_argument("scans", nargs="?", type=Path, help="folder of normal scans (omit: --model)")
    p.add_argument("--model", action="store_true", help="model-based template from the atlas")
    p.add_argument("--fwhm-mm", type=float, default=12.0, help="resolution of the model template")
    p.add_argument("--iterations", type=int, default=2, help="normalise-and-average rounds")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _common(p)
    p.set_defaults(func=cmd_build_template)

    p = subparsers.add_parser("build-normals", help="normal database from normal scans or CSV")
    p.add_argument("input", type=Path, help="folder of normal scans, or CSV of SBR (+ age)")
    p.add_argument("--out", type=Path, required=True, help="normals.json to write")
    p.add_argument("--source", default="", help="provenance text stored in the file")
    p.add_argument("--simulated", action="store_true",
                   help="mark normals.json as built from simulated scans (reports then call "
                        "its z-scores indicative); default: the site's own normal scans")
    _common(p)
    p.set_defaults(func=cmd_build_normals)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, default=None, help="template folder (default shipped)")
    p.add_argument(
        "--keyword", action="append", default=[], help="series description fallback keyword"
    )


def _files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            raise SystemExit(f"no such file or folder: {path}")
    return out


def collect_series(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """Group DICOM files by Series Instance UID (non-DICOM files are counted, skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[Path]] = {}
    skipped = 0
    for path in _files(paths):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            uid = str(ds.SeriesInstanceUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            skipped += 1
            continue
        if not is_valid_uid(uid):
            skipped += 1
            continue
        series.setdefault(uid, []).append(path)
    if skipped:
        log.warning("files_skipped", extra={"fields": {"count": skipped}})
    return series


def _progress(items: list[Any], desc: str) -> Iterator[Any]:
    from tqdm import tqdm

    yield from tqdm(items, desc=desc, unit="series", disable=len(items) < 2)


def cmd_analyze(args: argparse.Namespace) -> int:
    """FDOPA studies first (:mod:`service.pipelines.fdopa_pet.commands`), then each DaT series.

    Per DaT series: SR, picture report and summary.json.
    """
    from service.pipelines.fdopa_pet.commands import analyze_studies

    series = collect_series(args.paths)
    if not series:
        print("no DICOM series found")
        return 1
    handled, failures = analyze_studies(series, args)
    rest = {uid: paths for uid, paths in series.items() if uid not in handled}
    if rest:
        failures += _analyze_dat(rest, args)
    return 1 if failures else 0


def _analyze_dat(series: dict[str, list[Path]], args: argparse.Namespace) -> int:
    """Run the DaT pipeline on each series; the number of failures."""
    from pydicom import dcmwrite

    from service.dicom.header import read_series
    from service.dicom.uids import content_hash
    from service.errors import AnalysisError
    from service.paths import default_models_dir
    from service.pipelines.base import PRIMARY, JobContext, LoadedInputs
    from service.pipelines.dat_spect.assets import load_dat_models
    from service.pipelines.dat_spect.cnn import CnnSession
    from service.pipelines.dat_spect.pipeline import DatSpectPipeline
    from service.pipelines.dat_spect.plugin import MODEL_FILE

    try:
        model = None if args.no_cnn else (args.model or default_models_dir() / MODEL_FILE)
        cnn = CnnSession(model) if model is not None else None
        pipeline = DatSpectPipeline(
            load_dat_models(args.models), fallback_keywords=args.keyword, cnn=cnn
        )
    except (OSError, ValueError, AnalysisError) as exc:
        raise SystemExit(f"cannot load the template folder or model: {exc}") from exc
    failures = 0
    for uid in _progress(sorted(series), "analyze"):
        folder = args.out / uid
        folder.mkdir(parents=True, exist_ok=True)
        try:
            datasets = read_series(series[uid])
            # The node's job key: the same series gets the same output UIDs both ways.
            key = content_hash([str(ds.SOPInstanceUID) for ds in datasets])
            output = pipeline.run(LoadedInputs({PRIMARY: datasets}), JobContext(key, time.time()))
        except AnalysisError as exc:
            failures += 1
            summary: dict[str, Any] = {"status": "failed", "code": exc.code, "reason": exc.reason}
            print(f"{uid}: failed: {exc.reason}")
        else:
            for name, ds in zip(("sr.dcm", "picture.dcm"), output.datasets, strict=True):
                dcmwrite(folder / name, ds, enforce_file_format=True)
            summary = {
                "status": "done",
                **output.summary,
                "stage_durations_s": dict(output.stage_durations_s),
            }
            verdict = "reduced" if output.summary["global"]["reduced"] else "normal"
            print(f"{uid}: {verdict}, {sum(output.stage_durations_s.values()):.2f} s")
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return failures


def _models(args: argparse.Namespace) -> DatModels:
    from service.pipelines.dat_spect.assets import load_dat_models

    return load_dat_models(args.models)


def measure_folder(
    folder: Path, models: DatModels, keywords: list[str]
) -> list[tuple[str, Measurement]]:
    """Measure every series under ``folder``; failures are logged and left out."""
    from service.dicom.header import read_series as read_datasets
    from service.errors import AnalysisError
    from service.pipelines.dat_spect.pipeline import measure

    out = []
    series = collect_series([folder])
    for uid in _progress(sorted(series), "measure"):
        try:
            out.append((uid, measure(read_datasets(series[uid]), models, keywords, {})))
        except AnalysisError as exc:
            log.warning("series_failed", extra={"fields": {"code": exc.code, "reason": exc.reason}})
    return out


def read_sbr_csv(path: Path) -> list[dict[str, Any]]:
    """Rows with ``id``, the four region SBR columns and optional ``age``."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in CSV_REGIONS):
        raise SystemExit(f"{path.name}: needs columns {', '.join(CSV_REGIONS)}")
    return [
        {
            "id": row.get("id") or f"row{i + 1}",
            **{c: float(row[c]) for c in CSV_REGIONS},
            "age": float(row["age"]) if row.get("age") else None,
        }
        for i, row in enumerate(rows)
    ]


def _sbr_rows(args: argparse.Namespace, source: Path) -> list[dict[str, Any]]:
    if source.is_file():
        return read_sbr_csv(source)
    rows = []
    for uid, m in measure_folder(source, _models(args), args.keyword):
        sbr = {r.value: v for r, v in m.quantification.sbr.items()}
        rows.append({"id": uid, **sbr, "age": m.age_years})
    if not rows:
        raise SystemExit("no series could be measured")
    return rows


def cmd_label(args: argparse.Namespace) -> int:
    """labels.csv, one PNG per structure, calibration.json and the fits."""
    import numpy as np

    from service.pipelines.dat_spect.labelling import label_dataset, plot_fit
    from service.pipelines.dat_spect.result import Region

    if not _NAME_RE.match(args.dataset):
        raise SystemExit("--dataset: letters, digits, '_', '.', '-' only (max 64)")
    rows = _sbr_rows(args, args.input)
    sbr = [{Region(c): row[c] for c in CSV_REGIONS} for row in rows]
    labels = label_dataset(
        args.dataset, sbr, np.random.default_rng(args.seed), args.max_components,
        args.min_components, cv_max=args.normal_cv_max,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "dataset", *CSV_REGIONS, *(f"level_{c}" for c in CSV_REGIONS)])
        for row, levels in zip(rows, labels.levels, strict=True):
            writer.writerow(
                [row["id"], args.dataset, *(f"{row[c]:.4f}" for c in CSV_REGIONS),
                 *(int(levels[Region(c)]) for c in CSV_REGIONS)]
            )
    fits = {}
    for name, fit in labels.fits.items():
        plot_fit(fit, args.dataset, args.out / f"{args.dataset}_{name}.png")
        m = fit.mixture
        fits[name] = {"weights": m.weights, "means": m.means, "sds": m.sds, "bic": m.bic,
                      "thresholds": fit.thresholds.values}
    calibration = replace(labels.calibration(), provenance=SIMULATED if args.simulated else SITE)
    (args.out / "calibration.json").write_text(json.dumps(calibration.to_dict(), indent=2))
    (args.out / "fits.json").write_text(json.dumps(fits, indent=2))
    print(f"labelled {len(rows)} scans of {args.dataset} into {args.out}")
    return 0


def cmd_build_normals(args: argparse.Namespace) -> int:
    """normals.json from normal scans or a CSV."""
    from service.pipelines.dat_spect.normals import fit_normals
    from service.pipelines.dat_spect.result import Region

    rows = _sbr_rows(args, args.input)
    db = fit_normals(
        [{Region(c): row[c] for c in CSV_REGIONS} for row in rows],
        [row["age"] for row in rows],
        source=args.source or f"normal scans from {args.input.name}",
        provenance=SIMULATED if args.simulated else SITE,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(db.to_dict(), indent=2) + "\n")
    print(f"normal database from {db.n_scans} scans written to {args.out}")
    return 0


def cmd_build_template(args: argparse.Namespace) -> int:
    """Model-based template, or iterated average of normalised normal scans."""
    from dataclasses import replace

    from service.imaging.atlas import load_atlas
    from service.pipelines.dat_spect.assets import TEMPLATE_FILE
    from service.pipelines.dat_spect.template import average_template, model_template, save_template

    args.out.mkdir(parents=True, exist_ok=True)
    if args.model == (args.scans is not None):
        raise SystemExit("give either --model or a folder of normal scans")
    if args.model:
        template = model_template(load_atlas(), args.fwhm_mm)
        source = f"model-based from the atlas, FWHM {args.fwhm_mm} mm"
    else:
        models = _models(args)
        for i in range(args.iterations):
            measured = measure_folder(args.scans, models, args.keyword)
            if not measured:
                raise SystemExit("no series could be normalised")
            volumes = [m.normalisation.volume_zyx for _, m in measured]
            template = average_template(volumes, models.atlas)
            models = replace(models, template_zyx=template)
            print(f"iteration {i + 1}: {len(volumes)} scans averaged")
        source = f"average of {len(volumes)} normal scans, {args.iterations} iterations"
    save_template(args.out / TEMPLATE_FILE, template, source)
    print(f"template written to {args.out / TEMPLATE_FILE}")
    return 0
