"""The MR-guided FDOPA route (issue 13): FLAIR lesion, route choice and wording, paediatric measures.

One small simulated study (static + 6-frame dynamic PET and a 2D axial 3 T
FLAIR whose pose against the PET is known; :func:`service.testing.fdopa_study.small_study`)
analysed by the pipeline's analysis and output builders (what
:meth:`FdopaPetPipeline.run` does, not the node), once with its FLAIR and
once without; values against the simulator's truth. The threshold-only PET
segmentation keeps it fast; the FLAIR lesion is the classical threshold.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.imaging.mr_volume import mr_volume_from_datasets
from service.pipelines.base import JobContext
from service.pipelines.fdopa_pet import report_codes as rc
from service.pipelines.fdopa_pet.analysis import AnalysisOptions, analyse_study, split_note
from service.pipelines.fdopa_pet.flair_lesion import (
    THRESHOLD_SEGMENTER,
    THRESHOLD_TEXT,
    flair_segmenter,
    flair_threshold_lesion,
)
from service.pipelines.fdopa_pet.mr_route import flair_guided_measures, flair_lesion_on_pet
from service.pipelines.fdopa_pet.pipeline import FdopaPetPipeline, algorithm_info
from service.pipelines.fdopa_pet.reference import load_fdopa_template
from service.pipelines.fdopa_pet.render import footer_lines
from service.pipelines.fdopa_pet.result import FdopaResult
from service.pipelines.fdopa_pet.summary import summary_dict
from service.testing.fdopa_study import small_study
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage

KEY = "b" * 64
NOW = 1_800_000_000.0


def _read(folder: Path) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder, truth = small_study(tmp_path_factory.mktemp("mr_route"), flair="ax2d_3t")
    return {"folder": folder, "truth": truth, "static": _read(folder / "PT_STATIC"),
            "dynamic": _read(folder / "PT_DYNAMIC"), "flair": _read(folder / "MR_FLAIR")}


def _analyse(study: dict[str, Any], flair: bool, note: str = "") -> FdopaResult:
    template = load_fdopa_template(None)
    return analyse_study(study["static"], study["dynamic"], template, None,
                         algorithm_info(template, None), AnalysisOptions(), {}, note=note,
                         flair=study["flair"] if flair else None)


@pytest.fixture(scope="module")
def mr_result(study: dict[str, Any]) -> FdopaResult:
    return _analyse(study, flair=True)


@pytest.fixture(scope="module")
def pet_result(study: dict[str, Any]) -> FdopaResult:
    return _analyse(study, flair=False,
                    note="PET-only route: no FLAIR in the study after 600 s")


def _outputs(result: FdopaResult, study: dict[str, Any], flair: bool = False
             ) -> tuple[Dataset, ...]:
    template: Any = SimpleNamespace(sha256="0" * 64)
    pipeline = FdopaPetPipeline(template, None)
    outputs = pipeline.build_outputs(result, study["static"], JobContext(KEY, NOW), {},
                                     flair=study["flair"] if flair else None)
    return tuple(pydicom.dcmread(BytesIO(_bytes(ds))) for ds in outputs)  # round trip


def _bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _items(sr: Dataset) -> list[Dataset]:
    out, todo = [], list(sr.ContentSequence)
    while todo:
        item = todo.pop(0)
        out.append(item)
        todo.extend(item.get("ContentSequence", []))
    return out


def _concept(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue) if "ConceptNameCodeSequence" in item \
        else ""


def _group(sr: Dataset, identifier: str) -> Dataset:
    for item in _items(sr):
        for child in item.get("ContentSequence", []):
            if getattr(child, "TextValue", None) == identifier:
                return item
    raise AssertionError(f"no group {identifier}")


# --- the classical FLAIR lesion ------------------------------------------------------
def test_classical_flair_lesion_against_the_truth(study: dict[str, Any]) -> None:
    mr = mr_volume_from_datasets(study["flair"])
    lesion = flair_threshold_lesion(mr) >= 0.5
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(study["folder"]
                                                      / "truth_flair_seg.nii.gz"))) > 0
    dice = 2 * (lesion & truth).sum() / (lesion.sum() + truth.sum())
    assert dice > 0.85, dice
    assert flair_segmenter("auto", Path("/nonexistent/flair.onnx")) is THRESHOLD_SEGMENTER
    with pytest.raises(FileNotFoundError):
        flair_segmenter("unet", Path("/nonexistent/flair.onnx"))


# --- the MR-guided route, end to end -------------------------------------------------
def test_mr_guided_route_against_the_truth(mr_result: FdopaResult,
                                           study: dict[str, Any]) -> None:
    truth, g = study["truth"], mr_result.flair_guided
    route = mr_result.route
    assert route.route == "mr_guided" and g is not None
    assert re.fullmatch(r"MR-guided route: FLAIR series 10 registered \(quality 0\.9\d\)",
                        route.reason), route.reason
    assert route.flair_method == f"FLAIR lesion: {THRESHOLD_TEXT}"
    assert route.flair_series_uid == str(study["flair"][0].SeriesInstanceUID)
    # the paper's VOI: FLAIR-lesion voxels above the contralateral white-matter maximum
    volume = mr_result.static.frames[0].volume_zyx
    wm_max = g.reference_measures.white_matter_max_units
    assert g.pet_voi and g.voi_zyx.any() and not (g.voi_zyx & ~g.flair_lesion_zyx).any()
    assert volume[g.voi_zyx].min() > wm_max
    # refined as the reference code does (dynamic study: sinus removal, not the static cut)
    assert [n.split(":")[0] for n in g.voi_refinements] == [
        "striatum removal", "sinus removal (k-means on distance and early-frame maps)"]
    above = g.flair_lesion_zyx & (volume > wm_max)
    assert 0.2 * above.sum() <= g.voi_zyx.sum() < above.sum()
    # a hemispheric high-grade glioma: T/S against the truth measured on the same image
    assert g.ts_ratio == pytest.approx(truth["measured_t_s"], rel=0.03)
    assert g.tn_ratio == pytest.approx(g.voi_max_units / wm_max)
    assert g.flair_lesion_ml == pytest.approx(
        truth["flair_lesion_ml"] + truth["flair_oedema_ml"], rel=0.2)
    # dynamic on the VOI, frame-start convention, from 120 s
    assert g.dynamic is not None
    tumour = g.dynamic.get("tumour", "start")
    assert tumour.fit_from_s == 120.0
    assert tumour.ttp_min == pytest.approx(truth["dyn_tumour_ttp_min_start"])
    assert tumour.slope_bqml_per_s is not None and tumour.slope_bqml_per_s < 0
    assert tumour.slope_suv_per_min is not None and tumour.slope_suv_per_min < 0
    assert g.dynamic.slope_ratios["start"] == pytest.approx(truth["dyn_dsr_start"], abs=0.15)


def test_the_pet_rano_numbers_stay_as_they_are(mr_result: FdopaResult,
                                               pet_result: FdopaResult) -> None:
    assert pet_result.flair_guided is None
    assert pet_result.route.route == "pet_only"
    assert pet_result.route.reason == "PET-only route: no FLAIR in the study after 600 s"
    assert mr_result.measures == pet_result.measures
    assert mr_result.flags == pet_result.flags
    assert not any("FLAIR" in w for w in pet_result.warnings)  # said once, as the reason
    assert split_note("dynamic series still arriving after 300 s: analysed without curves; "
                      "PET-only route: no FLAIR in the study after 600 s") == (
        "dynamic series still arriving after 300 s: analysed without curves",
        "PET-only route: no FLAIR in the study after 600 s")


def test_low_uptake_fallback_takes_the_whole_flair_lesion(mr_result: FdopaResult) -> None:
    g = mr_result.flair_guided
    assert g is not None
    wm_max = g.reference_measures.white_matter_max_units
    volume = mr_result.static.frames[0].volume_zyx.copy()
    volume[g.flair_lesion_zyx] = np.minimum(volume[g.flair_lesion_zyx], 0.9 * wm_max)
    frame = replace(mr_result.static.frames[0], volume_zyx=volume)
    low = flair_guided_measures(replace(mr_result.static, frames=(frame,)), mr_result.suv,
                                mr_result.atlas, g.flair_lesion_zyx)
    assert low.reference_measures.white_matter_max_units == pytest.approx(wm_max)
    assert not low.pet_voi and np.array_equal(low.voi_zyx, g.flair_lesion_zyx)
    assert low.voi_rule == "low uptake (T/N or T/S < 1): the lesion itself"
    assert low.tn_ratio < 1.0 and low.voi_ml == pytest.approx(low.flair_lesion_ml)


# --- the SR and the picture say which route ran and why ---------------------------------
def test_sr_and_picture_of_the_mr_guided_route(mr_result: FdopaResult,
                                               study: dict[str, Any]) -> None:
    seg, sr, picture = _outputs(mr_result, study)
    g = mr_result.flair_guided
    assert g is not None
    items = _items(sr)
    route = next(i for i in items if _concept(i) == rc.ANALYSIS_ROUTE.value)
    assert route.ConceptCodeSequence[0].CodeValue == rc.MR_GUIDED_ROUTE.value
    texts = {_concept(i): i.TextValue for i in items if "TextValue" in i}
    assert texts[rc.ROUTE_REASON.value] == mr_result.route.reason
    assert texts[rc.FLAIR_LESION_METHOD.value] == (
        "FLAIR lesion: classical threshold (no FLAIR U-Net shipped)")
    refinements = texts[rc.FLAIR_GUIDED_VOI_REFINEMENTS.value]  # DN-0133, named steps
    assert refinements == "; ".join(g.voi_refinements)
    assert refinements.startswith("striatum removal: ") and "; sinus removal" in refinements
    group = _group(sr, "Tumour VOI (paediatric FLAIR-guided)")
    nums = {_concept(i): float(i.MeasuredValueSequence[0].NumericValue)
            for i in group.ContentSequence if "MeasuredValueSequence" in i}
    assert nums[rc.FLAIR_GUIDED_TS.value] == pytest.approx(g.ts_ratio, rel=1e-6)
    assert nums[rc.FLAIR_GUIDED_TN.value] == pytest.approx(g.tn_ratio, rel=1e-6)
    assert rc.FLAIR_GUIDED_SLOPE_RATIO.value in nums and rc.TIME_TO_PEAK.value in nums
    assert rc.TUMOUR_TO_STRIATUM.value not in nums  # the PET RANO-side concept stays apart
    pet_tumour = _group(sr, "Tumour (all lesions)")
    assert rc.FLAIR_GUIDED_TS.value not in {_concept(i) for i in pet_tumour.ContentSequence}
    assert any(_concept(i) == rc.TUMOUR_TO_STRIATUM.value for i in pet_tumour.ContentSequence)
    assert footer_lines(mr_result)[-2].startswith(mr_result.route.reason)
    assert footer_lines(mr_result)[-1].startswith("Paediatric FLAIR-guided (not PET RANO): T/S")
    summary = summary_dict(mr_result)
    assert summary["route"]["route"] == "mr_guided"
    assert summary["flair_guided"]["ts_ratio"] == pytest.approx(g.ts_ratio)
    assert picture.Rows > 0 and seg.Modality == "SEG"


def test_sr_of_the_pet_only_route(pet_result: FdopaResult, study: dict[str, Any]) -> None:
    _, sr, _ = _outputs(pet_result, study)
    items = _items(sr)
    route = next(i for i in items if _concept(i) == rc.ANALYSIS_ROUTE.value)
    assert route.ConceptCodeSequence[0].CodeValue == rc.PET_ONLY_ROUTE.value
    reason = next(i for i in items if _concept(i) == rc.ROUTE_REASON.value)
    assert reason.TextValue == "PET-only route: no FLAIR in the study after 600 s"
    codes = {_concept(i) for i in items}
    assert rc.FLAIR_GUIDED_TS.value not in codes and rc.FLAIR_LESION_METHOD.value not in codes
    assert footer_lines(pet_result)[-1] == "PET-only route: no FLAIR in the study after 600 s"


# --- the route refused, with its reason -------------------------------------------------
def test_registration_refused_gives_the_pet_only_route(mr_result: FdopaResult,
                                                       study: dict[str, Any]) -> None:
    route, lesion = flair_lesion_on_pet(study["flair"], mr_result.static, THRESHOLD_SEGMENTER,
                                        min_quality=0.99)
    assert lesion is None and route.route == "pet_only"
    assert re.fullmatch(r"PET-only route: FLAIR registration refused \(quality 0\.9\d < 0\.99\)",
                        route.reason), route.reason
    assert route.registration_quality is not None


def test_unusable_or_foreign_flair_gives_the_pet_only_route(mr_result: FdopaResult,
                                                            study: dict[str, Any]) -> None:
    flair = study["flair"]
    gap = flair[:10] + flair[11:]
    route, lesion = flair_lesion_on_pet(gap, mr_result.static, THRESHOLD_SEGMENTER)
    assert lesion is None
    assert route.reason == ("PET-only route: FLAIR not a usable volume: missing slices: gap in "
                            "the stack of the MR series")
    stir = [pydicom.dcmread(BytesIO(_bytes(ds))) for ds in flair[:2]]
    for ds in stir:
        ds.InversionTime = 160
    route, lesion = flair_lesion_on_pet(stir, mr_result.static, THRESHOLD_SEGMENTER)
    assert lesion is None and route.reason == (
        "PET-only route: series is not a FLAIR: inversion time 160 ms is not "
        "fluid-attenuating (needs at least 1500 ms)")
    route, _ = flair_lesion_on_pet([], mr_result.static, THRESHOLD_SEGMENTER)
    assert route.reason == "PET-only route: no FLAIR in the study"


def test_offline_analyze_finds_the_flair_of_the_study(study: dict[str, Any]) -> None:
    from service.pipelines.fdopa_pet.commands import find_studies

    folder = study["folder"]
    series = {name: sorted((folder / name).glob("*.dcm"))
              for name in ("PT_STATIC", "PT_DYNAMIC", "MR_FLAIR", "CT_AC")}
    [found], claimed = find_studies(series)
    flair_uid = str(study["flair"][0].SeriesInstanceUID)
    assert found.flair_uid == flair_uid and flair_uid in claimed
    assert (flair_uid, "flair", "inversion recovery, inversion time 2500 ms") in found.decisions


# --- the MR-guided route's SEGs, SR references and picture -----------------------------
def _dciodvfy_errors(ds: Dataset, path: Path) -> list[str]:
    path.write_bytes(_bytes(ds))
    out = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True,
                         check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]


def _referenced_segments(group: Dataset) -> list[tuple[str, int]]:
    return [(str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
             int(i.ReferencedSOPSequence[0].ReferencedSegmentNumber))
            for i in group.ContentSequence
            if "ReferencedSegmentNumber" in i.get("ReferencedSOPSequence", [Dataset()])[0]]


def test_seg_of_the_mr_guided_route_flair_lesion_and_voi(mr_result: FdopaResult,
                                                         study: dict[str, Any],
                                                         tmp_path: Path) -> None:
    seg_ds, flair_ds, sr, picture = _outputs(mr_result, study, flair=True)
    g = mr_result.flair_guided
    assert g is not None and g.flair is not None
    flair = study["flair"]
    # the FLAIR SEG: one segment on the FLAIR's own planes, referencing the MR instances
    seg = hd.seg.Segmentation.from_dataset(flair_ds)
    assert seg.StudyInstanceUID == flair[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == flair[0].FrameOfReferenceUID
    [referenced] = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == flair[0].SeriesInstanceUID
    [desc] = seg.SegmentSequence
    assert desc.SegmentLabel == "FLAIR lesion (paediatric route)"
    assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SCT Lesion
    assert desc.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algorithm = desc.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "dopanode FDOPA paediatric FLAIR-guided route"
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Morphological Operations"
    assert "classical threshold" in algorithm.AlgorithmParameters
    uids = [str(ds.SOPInstanceUID) for ds in flair]
    normal = np.cross(*np.reshape(np.asarray(flair[0].ImageOrientationPatient, float), (2, 3)))
    ordered = sorted(flair, key=lambda ds: float(np.dot(normal, ds.ImagePositionPatient)))
    if g.flair.affine[:3, 0] @ normal < 0:  # the volume's slice axis runs against the normal
        ordered.reverse()
    mask = seg.get_pixels_by_source_instance([str(ds.SOPInstanceUID) for ds in ordered],
                                             segment_numbers=[1])[..., 0]
    assert np.array_equal(mask > 0, g.flair.lesion_zyx)  # slice by slice on the FLAIR's planes
    for item in flair_ds.PerFrameFunctionalGroupsSequence:  # every frame: its own MR slice
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert str(source.ReferencedSOPInstanceUID) in uids
    # the PET SEG: the FLAIR-guided VOI as its last segment, named apart from the lesions
    pet_seg = hd.seg.Segmentation.from_dataset(seg_ds)
    n = len(mr_result.lesions) + 4
    last = pet_seg.SegmentSequence[-1]
    assert int(last.SegmentNumber) == n and last.SegmentLabel == "Paediatric FLAIR-guided PET VOI"
    assert last.TrackingID == "Tumour VOI (paediatric FLAIR-guided)"
    assert all(d.SegmentLabel.startswith("Tumour lesion")
               for d in pet_seg.SegmentSequence[:len(mr_result.lesions)])
    voi = pet_seg.get_pixels_by_source_instance(
        [str(ds.SOPInstanceUID) for ds in study["static"]], segment_numbers=[n])
    assert int(voi.sum()) == int(g.voi_zyx.sum())
    # the SR: the VOI group on the PET SEG's VOI segment, the FLAIR lesion group on the FLAIR SEG
    voi_group = _group(sr, "Tumour VOI (paediatric FLAIR-guided)")
    assert _referenced_segments(voi_group) == [(str(seg_ds.SOPInstanceUID), n)]
    lesion_group = _group(sr, "FLAIR lesion (paediatric FLAIR-guided)")
    assert _referenced_segments(lesion_group) == [(str(flair_ds.SOPInstanceUID), 1)]
    [volume] = [float(i.MeasuredValueSequence[0].NumericValue)
                for i in lesion_group.ContentSequence if _concept(i) == rc.VOLUME.value]
    assert volume == pytest.approx(g.flair.lesion_ml, rel=1e-6)
    assert volume == pytest.approx(g.flair_lesion_ml, rel=0.15)  # same lesion, PET grid
    evidence = {str(r.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert {str(flair_ds.SOPInstanceUID), *uids} <= evidence
    again = _outputs(mr_result, study, flair=True)  # a retried job: the same bytes
    assert [_bytes(ds) for ds in again] == [_bytes(ds) for ds in (seg_ds, flair_ds, sr, picture)]
    for name, ds in (("seg", seg_ds), ("flair_seg", flair_ds), ("sr", sr)):
        assert not _dciodvfy_errors(ds, tmp_path / f"{name}.dcm"), name


def test_picture_of_the_mr_guided_route(mr_result: FdopaResult) -> None:
    from service.pipelines.fdopa_pet.render import render_report_figure

    fig = render_report_figure(mr_result)
    texts = [t.get_text() for t in fig.texts] + [a.get_title() for a in fig.axes]
    assert "RESEARCH USE - NOT FOR DIAGNOSIS - derived from simulated data" in texts
    assert mr_result.route.reason in texts
    assert any(t.startswith("[18F]FDOPA PET: MR-guided: FLAIR-guided T/S 1.") for t in texts)
    assert "FLAIR with the lesion (classical threshold)" in texts
    assert "PET > white-matter max over the registered FLAIR" in texts
    legends = [a.get_legend() for a in fig.axes]
    legend = [t.get_text() for leg in legends if leg is not None for t in leg.get_texts()]
    assert any(t.startswith("FLAIR-guided VOI: TTP 5.0 min") for t in legend)
