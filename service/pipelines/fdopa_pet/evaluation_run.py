"""Running the FDOPA evaluation: the node's analysis per study and method, the resumable cache.

:class:`Evaluator` builds the FDOPA pipeline once per segmentation method as
the node builds it (:func:`.plugin.build`) and turns one benchmark study into
one row per method (:mod:`.evaluation` compares with the truth);
:func:`run_evaluation` keeps the rows in a JSON-lines cache, appended and
fsynced per study, so an interrupted run resumes where it stopped and rows of
another model or template are computed again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from service.errors import AnalysisError
from service.pipelines.fdopa_pet.evaluation import (
    METHODS,
    StudyRef,
    compare,
    dynamic_pairs,
    failed_measurable,
    min_lesion_ml,
    truth_labels_on,
    truth_row,
)

#: What a row holds; 2 added the ceiling of the 1.6 x rule (``dice_ceiling``),
#: so rows made before are computed again.
ROW_VERSION = 2


def series_of(folder: Path) -> dict[str, list[Path]]:
    """Series Instance UID to its sorted files, for every series folder of a study folder."""
    import pydicom

    series: dict[str, list[Path]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(sub.glob("*.dcm")) or sorted(f for f in sub.iterdir() if f.is_file())
        if files:
            uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
            series.setdefault(uid, []).extend(files)
    return series


class Evaluator:
    """The node's analysis, once per segmentation method, on benchmark studies.

    Parameters
    ----------
    methods : sequence of {"unet", "threshold"}
    model_path, template_path : Path or None
        None: the shipped U-Net and template (as the node loads them).
    """

    def __init__(self, methods: Sequence[str], model_path: Path | None = None,
                 template_path: Path | None = None) -> None:
        from service.pipelines.fdopa_pet.pipeline import FdopaPetPipeline
        from service.pipelines.fdopa_pet.plugin import FdopaPetSettings, build

        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"segmentation must be among {', '.join(METHODS)}")
        self.methods = tuple(methods)
        self.pipelines: dict[str, FdopaPetPipeline] = {}
        for method in self.methods:
            settings = FdopaPetSettings.model_validate(
                {"segmentation": method, "model_path": model_path,
                 "template_path": template_path})
            pipeline = build(settings)
            assert isinstance(pipeline, FdopaPetPipeline)
            self.pipelines[method] = pipeline

    def model_info(self) -> dict[str, Any]:
        """Name and SHA-256 of the U-Net (when evaluated) and of the template."""
        first = next(iter(self.pipelines.values()))
        info: dict[str, Any] = {"template_sha256": first.template.sha256}
        unet = self.pipelines.get("unet")
        if unet is not None and unet.segmenter is not None:
            info |= {"model": unet.segmenter.info.model_name,
                     "model_sha256": unet.segmenter.info.model_sha256}
        return info

    def fingerprint(self, method: str) -> str:
        """What a row of ``method`` depends on: template, model and post-processing, truth.

        ``post`` names the U-Net's post-processing (mirror TTA, minimum lesion
        volume) or the baseline's minimum volume; ``truth`` the truth
        definitions' version this code scores against, ``score`` the version
        of what a row holds (:data:`ROW_VERSION`). A row made under another
        of them is computed again.
        """
        from service.pipelines.fdopa_pet.segment import MIRROR_TTA
        from service.sim.fdopa.truth import TRUTH_VERSION

        pipeline = self.pipelines[method]
        model = pipeline.segmenter.info.model_sha256 if pipeline.segmenter is not None else None
        post = (f"tta{int(MIRROR_TTA)}-min{min_lesion_ml('unet'):g}" if model
                else f"min{min_lesion_ml('threshold'):g}")
        return (f"template:{pipeline.template.sha256[:16]} model:{(model or 'none')[:16]} "
                f"post:{post} truth:v{TRUTH_VERSION} score:v{ROW_VERSION}")

    def evaluate(self, ref: StudyRef) -> list[dict[str, Any]]:
        """One row per method for one study, each with its :meth:`fingerprint`."""
        rows = self._evaluate(ref)
        return [r | {"fingerprint": self.fingerprint(r["method"])} for r in rows]

    def _evaluate(self, ref: StudyRef) -> list[dict[str, Any]]:
        """One row per method for one study (module docstring)."""
        from service.dicom.header import read_series
        from service.pipelines.fdopa_pet.analysis import analyse_study
        from service.pipelines.fdopa_pet.commands import find_studies

        truth = json.loads((ref.folder / "truth.json").read_text())
        rows = []
        try:
            series = series_of(ref.folder)
            studies, _ = find_studies(series)
            if len(studies) != 1:
                raise AnalysisError("no analysable FDOPA series in the study", "no_fdopa_series")
            study = studies[0]
            primary_uid = study.static_uid or study.dynamic_uid
            primary = read_series(series[str(primary_uid)])
            dynamic = read_series(series[study.dynamic_uid]) if (
                study.static_uid and study.dynamic_uid) else None
        except AnalysisError as exc:
            return [self._failed(ref, truth, m, exc, 0.0) for m in self.methods]
        for method in self.methods:
            pipeline = self.pipelines[method]
            t0 = time.perf_counter()
            try:
                result = analyse_study(primary, dynamic, pipeline.template, pipeline.segmenter,
                                       pipeline.algorithm, pipeline.options.analysis(), {})
                labels = truth_labels_on(ref.folder / "truth_seg.nii.gz",
                                         result.static.shape_zyx, result.static.affine)
                row = truth_row(ref, truth, method) | {"status": "done"} | compare(
                    result, labels) | dynamic_pairs(result, truth)
            except AnalysisError as exc:
                rows.append(self._failed(ref, truth, method, exc, time.perf_counter() - t0))
                continue
            row["seconds"] = round(time.perf_counter() - t0, 2)
            rows.append(row)
        return rows

    @staticmethod
    def _failed(ref: StudyRef, truth: Mapping[str, Any], method: str, exc: AnalysisError,
                seconds: float) -> dict[str, Any]:
        n = failed_measurable(ref.folder)
        return truth_row(ref, truth, method) | {
            "status": "failed", "code": exc.code, "reason": exc.reason,
            "measurable_lesions": n, "measurable_found": 0, "overlaps_truth": False,
            "pred_lesions": 0, "fp_lesions": 0, "pred_mtv_ml": None,
            "seconds": round(seconds, 2)} | dynamic_pairs(None, truth)


def read_cache(path: Path, fingerprints: Mapping[str, str] | None = None
               ) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows already in a JSON-lines cache by (study id, method); a torn last line is ignored.

    With ``fingerprints`` (method to :meth:`Evaluator.fingerprint`), rows made
    by another model or template are ignored: after a retraining they run again.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # an append cut short by a crash: that study runs again
        if fingerprints is None or row.get("fingerprint") == fingerprints.get(row["method"]):
            rows[(row["study_id"], row["method"])] = row
    return rows


def append_rows(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append rows to the JSON-lines cache, flushed and fsynced (crash-safe resume)."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        text = "\n" + text  # close a line torn by a crash, so this row stays whole
    with path.open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


_WORKER: Evaluator | None = None


def _init_worker(methods: Sequence[str], model_path: Path | None,
                 template_path: Path | None, kind: type[Evaluator] = Evaluator) -> None:
    global _WORKER
    _WORKER = kind(methods, model_path, template_path)


def _evaluate_in_worker(ref: StudyRef) -> list[dict[str, Any]]:
    assert _WORKER is not None
    return _WORKER.evaluate(ref)


def run_evaluation(studies: Sequence[StudyRef], methods: Sequence[str], cache: Path, *,
                   model_path: Path | None = None, template_path: Path | None = None,
                   workers: int = 1, progress: Any = None,
                   kind: type[Evaluator] = Evaluator) -> list[dict[str, Any]]:
    """Rows of every study and method: cached ones read back, the others run and appended.

    ``progress`` (optional) is called with each newly computed study's rows.
    Returns the rows in the order of ``studies`` then ``methods``. Cached rows
    of another model or template are not reused (:func:`read_cache`).
    ``kind``: the evaluator class (the MR-guided route's is
    :class:`.evaluation_mr_run.MrEvaluator`).
    """
    evaluator = kind(methods, model_path, template_path)
    done = read_cache(cache, {m: evaluator.fingerprint(m) for m in methods})
    todo = [s for s in studies if any((s.study_id, m) not in done for m in methods)]
    if todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for rows in _compute(todo, evaluator, model_path, template_path, workers):
            append_rows(cache, rows)
            done |= {(r["study_id"], r["method"]): r for r in rows}
            if progress is not None:
                progress(rows)
    return [done[(s.study_id, m)] for s in studies for m in methods]


def _compute(todo: Sequence[StudyRef], evaluator: Evaluator, model_path: Path | None,
             template_path: Path | None, workers: int) -> Iterable[list[dict[str, Any]]]:
    methods = evaluator.methods
    kind = type(evaluator)
    if workers <= 1:
        for ref in todo:
            yield evaluator.evaluate(ref)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, initializer=_init_worker,
                             initargs=(tuple(methods), model_path, template_path, kind)) as pool:
        yield from pool.map(_evaluate_in_worker, todo)
