"""``dopanode analyze`` for FDOPA studies (the DaT command hands them over).

A study is analysed as the node does: the series of one study are chosen by
the gate (:func:`.gate.select_series`: the attenuation-corrected static
series, the dynamic series for the curves, or the static image summed from
the dynamic frames when there is no static series; a complete FLAIR of the
study, :mod:`.flair_gate`, for the MR-guided route), the job key is the
node's (SHA-256 over every input instance UID), so the same study gets the
same output UIDs offline and in the node. Outputs per study, in
``<out>/<primary series UID>/``: ``seg.dcm``, ``sr.dcm``, ``picture.dcm``
(on the MR-guided route also ``flair_seg.dcm``, the FLAIR lesion SEG) and
``summary.json`` (with the stage durations and every series' role and
reason). Folder names come from validated UIDs only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.pipelines.fdopa_pet.pipeline import FdopaPetPipeline

#: Output file names, in the order the pipeline returns the objects.
OUTPUT_FILES = ("seg.dcm", "sr.dcm", "picture.dcm")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The FDOPA options of ``dopanode analyze``."""
    p.add_argument("--fdopa-segmentation", choices=("unet", "threshold"), default="unet",
                   help="FDOPA tumour candidates: the U-Net (default; refuses without its "
                        "model) or the classical threshold-only baseline")
    p.add_argument("--fdopa-model", type=Path, default=None,
                   help="FDOPA U-Net ONNX (with its .sha256 sidecar); default: the shipped one")
    p.add_argument("--fdopa-template", type=Path, default=None,
                   help="FDOPA template file; default: the shipped one")
    p.add_argument("--fdopa-flair-segmentation", choices=("auto", "unet", "threshold"),
                   default="auto",
                   help="FLAIR lesion of the MR-guided route: the FLAIR U-Net when its model "
                        "exists (auto, default), the U-Net or refuse (unet), or the classical "
                        "threshold")


@dataclass(frozen=True)
class FdopaStudy:
    """The series of one study that hold FDOPA PET, by role."""

    study_uid: str
    static_uid: str | None
    dynamic_uid: str | None
    decisions: tuple[tuple[str, str, str], ...]  # (series UID, role, reason)
    flair_uid: str | None = None


def first_flair(headers: list[Any]) -> tuple[str | None, tuple[tuple[str, str, str], ...]]:
    """The FLAIR of a study's MR series (lowest Series Number) and every MR series' decision."""
    from service.pipelines.fdopa_pet.flair_gate import classify_mr_series

    mr = sorted((h for h in headers if str(h.get("Modality", "")).upper() == "MR"),
                key=lambda h: (int(h.get("SeriesNumber") or 1 << 30), str(h.SeriesInstanceUID)))
    decisions = [classify_mr_series(h) for h in mr]
    chosen = next((d.series_uid for d in decisions if d.is_flair), None)
    return chosen, tuple((d.series_uid, "flair" if d.series_uid == chosen else "ignored",
                          d.reason) for d in decisions)


def find_studies(series: Mapping[str, list[Path]]) -> tuple[list[FdopaStudy], set[str]]:
    """FDOPA studies among the series, and every series UID of those studies.

    A study is an FDOPA study when one of its series is an analysable FDOPA
    PET series; its other series (non-AC PET, CT, ...) are claimed with it
    (listed with their reasons) unless they are NM (left to the DaT analysis).
    """
    import pydicom

    from service.errors import AnalysisError
    from service.pipelines.fdopa_pet.codes import DEFAULT_KEYWORDS
    from service.pipelines.fdopa_pet.gate import select_series

    by_study: dict[str, list[Any]] = {}
    for paths in series.values():
        header = pydicom.dcmread(paths[0], stop_before_pixels=True)
        by_study.setdefault(str(header.get("StudyInstanceUID", "")), []).append(header)
    studies, claimed = [], set()
    for study_uid, headers in sorted(by_study.items()):
        try:
            chosen = select_series(headers, DEFAULT_KEYWORDS)
        except AnalysisError:
            continue  # no FDOPA series here
        decisions = tuple((d.series_uid, d.role, d.reason) for d in chosen.decisions
                          if d.series_uid not in {str(h.SeriesInstanceUID) for h in headers
                                                  if h.get("Modality") == "MR"})
        flair_uid, mr_decisions = first_flair(headers)
        studies.append(FdopaStudy(study_uid, chosen.static_series_uid,
                                  chosen.dynamic_series_uid, decisions + mr_decisions,
                                  flair_uid))
        claimed |= {str(h.SeriesInstanceUID) for h in headers if h.get("Modality") != "NM"}
    return studies, claimed


def load_pipeline(args: argparse.Namespace) -> FdopaPetPipeline:
    """The FDOPA pipeline as ``[pipelines.fdopa_pet]`` with the command's options would build it."""
    from service.pipelines.fdopa_pet.pipeline import FdopaPetPipeline
    from service.pipelines.fdopa_pet.plugin import FdopaPetSettings, build

    settings = FdopaPetSettings(segmentation=args.fdopa_segmentation,
                                model_path=args.fdopa_model, template_path=args.fdopa_template,
                                flair_segmentation=getattr(args, "fdopa_flair_segmentation",
                                                           "auto"))
    pipeline = build(settings)
    assert isinstance(pipeline, FdopaPetPipeline)
    return pipeline


def analyse_one(pipeline: FdopaPetPipeline, study: FdopaStudy,
                series: Mapping[str, list[Path]], out: Path) -> dict[str, Any]:
    """Run one study; write its outputs and summary.json; the summary."""
    from pydicom import dcmwrite

    from service.dicom.header import read_series
    from service.dicom.uids import content_hash
    from service.errors import AnalysisError
    from service.pipelines.base import PRIMARY, JobContext, LoadedInputs
    from service.pipelines.fdopa_pet.plan import DYNAMIC, FLAIR

    primary_uid = study.static_uid or study.dynamic_uid
    assert primary_uid is not None
    folder = out / primary_uid
    folder.mkdir(parents=True, exist_ok=True)
    roles = {PRIMARY: primary_uid}
    if study.static_uid and study.dynamic_uid:
        roles[DYNAMIC] = study.dynamic_uid
    if study.flair_uid:
        roles[FLAIR] = study.flair_uid
    summary: dict[str, Any]
    try:
        loaded = {role: read_series(series[uid]) for role, uid in roles.items()}
        key = content_hash([str(ds.SOPInstanceUID) for dss in loaded.values() for ds in dss])
        output = pipeline.run(LoadedInputs(loaded), JobContext(key, time.time()))
    except AnalysisError as exc:
        summary = {"status": "failed", "code": exc.code, "reason": exc.reason}
    else:
        for ds in output.datasets:
            dcmwrite(folder / output_file(ds), ds, enforce_file_format=True)
        summary = {"status": "done", **output.summary,
                   "stage_durations_s": {k: round(v, 3)
                                         for k, v in output.stage_durations_s.items()}}
    summary["series_roles"] = [{"series_instance_uid": uid, "role": role, "reason": reason}
                               for uid, role, reason in study.decisions]
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def output_file(ds: Any) -> str:
    """The file name of one output object: :data:`OUTPUT_FILES` or ``flair_seg.dcm``."""
    from service.pipelines.fdopa_pet.seg_flair import FLAIR_SEG_SERIES_NUMBER

    if ds.Modality == "SEG":
        return "flair_seg.dcm" if int(ds.SeriesNumber) == FLAIR_SEG_SERIES_NUMBER else "seg.dcm"
    return "sr.dcm" if ds.Modality == "SR" else "picture.dcm"


def describe(summary: Mapping[str, Any]) -> str:
    """One line for the terminal (no identifiers beyond the UIDs already in the path)."""
    if summary["status"] != "done":
        return f"failed: {summary['reason']}"
    tumour = summary.get("tumour")
    total = sum(summary.get("stage_durations_s", {}).values())
    if tumour is None:
        found = "no PET-active lesion"
    else:
        found = (f"{len(summary['lesions'])} lesion(s), MTV {tumour['volume_ml']:.2f} mL, "
                 f"TBRmax {tumour['tbr_max']:.2f}, T/S {tumour['ts_ratio']:.2f}")
    curves = "with curves" if summary.get("dynamic") else "no curves"
    route = summary.get("route", {}).get("reason", "")
    guided = summary.get("flair_guided")
    if guided:
        route += (f"; FLAIR-guided T/S {guided['ts_ratio']:.2f}, "
                  f"T/N {guided['tn_ratio']:.2f}")
    return f"{found}; {curves}; {route}; {total:.2f} s"


def analyze_studies(series: Mapping[str, list[Path]], args: argparse.Namespace
                    ) -> tuple[set[str], int]:
    """Analyse every FDOPA study among ``series``; (series UIDs handled, failures)."""
    from service.errors import AnalysisError

    studies, claimed = find_studies(series)
    if not studies:
        return set(), 0
    try:
        pipeline = load_pipeline(args)
    except (OSError, ValueError, AnalysisError) as exc:
        raise SystemExit(f"cannot load the FDOPA template or model: {exc}") from exc
    failures = 0
    for study in studies:
        summary = analyse_one(pipeline, study, series, args.out)
        failures += summary["status"] != "done"
        print(f"{study.static_uid or study.dynamic_uid}: FDOPA {describe(summary)}")
    return claimed, failures
