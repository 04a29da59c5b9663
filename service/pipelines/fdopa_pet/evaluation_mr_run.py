"""Running the MR-guided route's evaluation: one row per study (issue 13, point 6).

:class:`MrEvaluator` is the PET evaluation's :class:`.evaluation_run.Evaluator`
(same pipelines, built as the node builds them, the same resumable JSON-lines
cache through :func:`.evaluation_run.run_evaluation`) that also hands the
study's FLAIR to :func:`.analysis.analyse_study` with the shipped FLAIR U-Net,
and compares the route with the truth of :mod:`.evaluation_mr`. Per study:
the route and its reason (a refusal's category), the FLAIR lesion's Dice on
the FLAIR grid (the U-Net run on its own when the route stopped before it),
the route's T/S, T/N, fallback and curves with the reference code's VOI
refinements (``pred_*``, as the node reports) and without them
(``unrefined_*``), the truth's (``truth_*``), the ideal-activity ``t_s`` and
``t_n`` (``ideal_*``), whether the PET-only route found a lesion, and the
registration's error at the lesion (``reg_lesion_*``: the segmented lesion
carried by the route's registration against the known pose; rows cached
before this field existed lack it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.errors import AnalysisError
from service.pipelines.fdopa_pet.evaluation import StudyRef, truth_labels_on, truth_row
from service.pipelines.fdopa_pet.evaluation_mr import (
    flair_dice,
    flair_truth,
    guided_numbers,
    pet_only_numbers,
    refusal,
    registration_shift,
    true_flair_lesion,
    true_registration,
    truth_numbers,
)
from service.pipelines.fdopa_pet.evaluation_run import Evaluator, series_of

#: Version of this evaluation's row definitions (part of the cache fingerprint).
MR_EVALUATION_VERSION = 1


class MrEvaluator(Evaluator):
    """The node's analysis with the FLAIR (MR-guided route) on benchmark studies.

    Parameters as :class:`.evaluation_run.Evaluator`; ``methods`` is the
    PET-only route's segmentation (``("unet",)`` as the node runs it).
    """

    def fingerprint(self, method: str) -> str:
        """The PET evaluation's fingerprint plus the FLAIR model and this row version."""
        from service.pipelines.fdopa_pet.flair_lesion import default_flair_model
        from service.pipelines.fdopa_pet.flair_segment import SERVING_VARIANT
        from service.pipelines.fdopa_pet.voi_refine import DISTANCE_CUT

        pipeline = self.pipelines[method]
        flair = pipeline.flair
        sha = ""
        if flair is not None and flair.method == "unet":
            sidecar = default_flair_model().with_suffix(".onnx.sha256")
            sha = sidecar.read_text().split()[0][:16] if sidecar.is_file() else "unknown"
            sha += SERVING_VARIANT
        return (f"{super().fingerprint(method)} flair:{sha or 'threshold'} "
                f"refine:{DISTANCE_CUT:g} mr:v{MR_EVALUATION_VERSION}")

    def _evaluate(self, ref: StudyRef) -> list[dict[str, Any]]:
        truth = json.loads((ref.folder / "truth.json").read_text())
        rows = []
        for method in self.methods:
            t0 = time.perf_counter()
            base = truth_row(ref, truth, method) | {
                "flair_protocol": truth.get("flair") or None,
                "touches_striatum": bool(truth.get("touches_striatum")),
                "dynamic": bool(truth.get("schedule"))}
            try:
                row = base | self._study(ref, truth, method)
            except AnalysisError as exc:
                row = base | {"status": "failed", "code": exc.code, "reason": exc.reason}
            rows.append(row | {"seconds": round(time.perf_counter() - t0, 2)})
        return rows

    def _study(self, ref: StudyRef, truth: Mapping[str, Any], method: str) -> dict[str, Any]:
        """One analysed study's row (module docstring); AnalysisError when the analysis refuses."""
        from service.dicom.header import read_series
        from service.pipelines.fdopa_pet.analysis import analyse_study
        from service.pipelines.fdopa_pet.commands import find_studies

        series = series_of(ref.folder)
        studies, _ = find_studies(series)
        if len(studies) != 1:
            raise AnalysisError("no analysable FDOPA series in the study", "no_fdopa_series")
        study = studies[0]
        primary = read_series(series[str(study.static_uid or study.dynamic_uid)])
        dynamic = read_series(series[study.dynamic_uid]) if (
            study.static_uid and study.dynamic_uid) else None
        flair = read_series(series[study.flair_uid]) if study.flair_uid else None
        pipeline = self.pipelines[method]
        result = analyse_study(primary, dynamic, pipeline.template, pipeline.segmenter,
                               pipeline.algorithm, pipeline.options.analysis(), {},
                               flair=flair, flair_segmenter=pipeline.flair)
        labels = truth_labels_on(ref.folder / "truth_seg.nii.gz", result.static.shape_zyx,
                                 result.static.affine)
        row: dict[str, Any] = {
            "status": "done", "route": result.route.route, "route_reason": result.route.reason,
            "refusal": refusal(result.route.reason),
            "registration_quality": result.route.registration_quality,
            "ideal_ts": truth.get("t_s"), "ideal_tn": truth.get("t_n"),
        } | pet_only_numbers(result, labels) | guided_numbers("pred", result.flair_guided)
        if flair is None:
            return row
        curves_ds = dynamic if study.static_uid else primary  # a dynamic-only study
        return row | self._against_truth(ref, truth, result, flair,
                                         curves_ds if study.dynamic_uid else None)

    def _against_truth(self, ref: StudyRef, truth: Mapping[str, Any], result: Any,
                       flair: Sequence[Any], dynamic_ds: Sequence[Any] | None
                       ) -> dict[str, Any]:
        """FLAIR Dice, the truth, and the route without refinements (module docstring)."""
        from service.imaging.mr_volume import mr_volume_from_datasets
        from service.imaging.pet_volume import volume_from_datasets
        from service.imaging.suv import suv_scale
        from service.pipelines.fdopa_pet.curves import injection_datetime
        from service.pipelines.fdopa_pet.flair_registration import lesion_on_pet
        from service.pipelines.fdopa_pet.mr_route import (
            flair_guided_dynamic,
            flair_guided_measures,
        )

        mr = mr_volume_from_datasets(flair)
        true_lesion = true_flair_lesion(ref.folder, mr)
        g = result.flair_guided
        pred = g.flair.lesion_zyx if g is not None and g.flair is not None else None
        segmenter = self.pipelines[self.methods[0]].flair
        if pred is None and segmenter is not None:
            try:
                pred = np.asarray(segmenter.probabilities(mr)) >= 0.5
            except AnalysisError:
                pred = None
        static = result.static
        out = flair_dice(pred, true_lesion, float(np.prod(mr.spacing_zyx_mm)) / 1000.0)
        lesion_pet = lesion_on_pet(true_lesion.astype(np.float32), mr.affine,
                                   true_registration(truth), static.shape_zyx, static.affine)
        labels = truth_labels_on(ref.folder / "truth_seg.nii.gz", static.shape_zyx,
                                 static.affine)
        dyn = suv = injection = None
        if dynamic_ds is not None:
            dyn = volume_from_datasets(dynamic_ds)
            suv = suv_scale(dynamic_ds[0], dyn.first_frame_start)
            injection = injection_datetime(dynamic_ds[0])
        voxel_ml = float(np.prod(static.spacing_zyx_mm)) / 1000.0
        out |= truth_numbers(flair_truth(lesion_pet, labels, static, dyn, suv, injection),
                             voxel_ml)
        if g is not None and pred is not None:
            true_pose = lesion_on_pet(pred.astype(np.float32), mr.affine,
                                      true_registration(truth), static.shape_zyx, static.affine)
            out |= registration_shift(g.flair_lesion_zyx, true_pose, static.affine)
        if g is not None:
            plain = flair_guided_measures(static, result.suv, result.atlas, g.flair_lesion_zyx,
                                          refine=False, reference=g.reference)
            plain = flair_guided_dynamic(plain, dyn, static, suv, injection, "")
            out |= guided_numbers("unrefined", plain)
        return out
