"""The JSON summary of one FDOPA result (what the API serves and ``dopanode analyze`` writes).

One serialisation of :class:`~service.pipelines.fdopa_pet.result.FdopaResult`:
numbers with their named definitions, UIDs, flags; no masks, no pixels, no
patient identifiers. ``schema`` is bumped whenever a key changes meaning.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from service.pipelines.fdopa_pet.kinetics import DynamicResult
from service.pipelines.fdopa_pet.result import (
    MEASURABLE_ML,
    TUMOUR_THRESHOLD_X_BACKGROUND,
    FdopaResult,
    FlairGuidedMeasures,
    LesionMeasures,
)
from service.report.identity import RESEARCH_USE_TEXT

#: Version of the summary's layout.
SCHEMA = "dopanode.fdopa_pet.summary/1"

#: The named definitions behind the numbers (also in the SR).
DEFINITIONS = {
    "tbr_max": "PET RANO: lesion max / healthy-brain crescent background mean",
    "tbr_mean": "PET RANO: lesion mean / healthy-brain crescent background mean",
    "ts_ratio": "Genoa paediatric: lesion max / contralateral striatum max",
    "tn_ratio": "Genoa paediatric: lesion max / contralateral eroded white-matter max",
    "lesion": (f"voxels >= {TUMOUR_THRESHOLD_X_BACKGROUND} x background mean inside the "
               "tumour candidates, one lesion per connected component"),
    "measurable": f"lesion volume > {MEASURABLE_ML} mL (PET RANO 1.0)",
    "suv_peak": "highest mean over a 1 mL sphere centred in the lesion",
    "flair_guided": ("paediatric FLAIR-guided (MR-guided route): PET tumour VOI = FLAIR "
                     "lesion voxels above the contralateral eroded white-matter max (whole "
                     "lesion when T/N or T/S < 1); T/S, T/N = VOI max / contralateral striatum, "
                     "white-matter max; TTP and slopes at frame start"),
    "dynamic": ("TAC = VOI mean per frame; TTP = time of the highest frame; slope = "
                "least-squares line from the fit start to the last frame; times from "
                "the dynamic acquisition start, taken as the injection"),
}


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _window(result: FdopaResult) -> list[float] | None:
    """Frames summed into the static image, s from the dynamic start (None: a static series)."""
    if not result.selection.static_from_dynamic:
        return None
    frame = result.static.frames[0]
    return [float(frame.start_s), float(frame.start_s + frame.duration_s)]


def _lesion(m: LesionMeasures) -> dict[str, Any]:
    out = {k: (_num(v) if isinstance(v, float) else v) for k, v in asdict(m).items()}
    out["centroid_lps_mm"] = [round(float(v), 2) for v in m.centroid_lps_mm]
    return out


def _dynamic(d: DynamicResult) -> dict[str, Any]:
    return {
        "frame_starts_s": [float(v) for v in d.starts_s],
        "frame_durations_s": [float(v) for v in d.durations_s],
        "tacs_units": {k: [float(v) for v in tac] for k, tac in d.tacs.items()},
        "parameters": [{k: (_num(v) if isinstance(v, float) else v)
                        for k, v in asdict(p).items()} for p in d.parameters],
        "slope_ratios": {k: _num(v) for k, v in d.slope_ratios.items()},
    }


def _flair_guided(g: FlairGuidedMeasures | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"pet_voi": g.pet_voi, "voi_rule": g.voi_rule,
            "voi_refinements": list(g.voi_refinements), "reference_side": g.reference.side,
            "reference_rule": g.reference.rule,
            **{k: _num(getattr(g, k)) for k in ("flair_lesion_ml", "voi_ml", "voi_max_units",
                                                "voi_suv_max", "ts_ratio", "tn_ratio")},
            "reference": {k: _num(v) for k, v in asdict(g.reference_measures).items()},
            "dynamic": None if g.dynamic is None else _dynamic(g.dynamic),
            "dynamic_note": g.dynamic_note}


def summary_dict(result: FdopaResult) -> dict[str, Any]:
    """JSON-ready summary of ``result`` (module docstring)."""
    ref = result.measures.reference
    return {
        "schema": SCHEMA,
        "notice": f"{RESEARCH_USE_TEXT}; models trained on and derived from simulated data",
        "study_instance_uid": result.source.study_instance_uid,
        "series_instance_uid": result.source.series_instance_uid,
        "dynamic_series_instance_uid": (None if result.dynamic_source is None
                                        else result.dynamic_source.series_instance_uid),
        "static_from_dynamic": result.selection.static_from_dynamic,
        "static_window_s": _window(result),
        "static_duration_s": float(result.static.frames[0].duration_s),
        "algorithm": asdict(result.algorithm),
        "segmentation": asdict(result.segmentation),
        "suv": {"available": result.suv.available, "factor": _num(result.suv.factor),
                "method": result.suv.method, "reason": result.suv.reason},
        "registration_quality": _num(result.atlas.quality),
        "reference": {"side": result.reference.side, "rule": result.reference.rule,
                      "midline": result.reference.midline,
                      "infratentorial": result.reference.infratentorial,
                      **{k: _num(v) for k, v in asdict(ref).items()}},
        "threshold_units": _num(result.measures.threshold_units),
        "tumour": None if result.measures.tumour is None else _lesion(result.measures.tumour),
        "lesions": [_lesion(m) for m in result.measures.lesions],
        "dynamic": None if result.dynamic is None else _dynamic(result.dynamic),
        "dynamic_note": result.dynamic_note,
        "route": {"route": result.route.route, "reason": result.route.reason,
                  "flair_series_instance_uid": result.route.flair_series_uid,
                  "registration_quality": _num(result.route.registration_quality),
                  "flair_method": result.route.flair_method},
        "flair_guided": _flair_guided(result.flair_guided),
        "flags": list(result.flags),
        "warnings": list(result.warnings),
        "definitions": DEFINITIONS,
    }
