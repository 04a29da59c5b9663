"""The picture report: rendered, wrapped as Secondary Capture, written, read, decoded."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from service.dicom import codes
from service.pipelines.dat_spect import render
from service.pipelines.dat_spect.example import example_evidence, example_result
from service.pipelines.dat_spect.picture import build_picture_report
from service.pipelines.dat_spect.result import StudyResult
from service.pipelines.dat_spect.sr import RESEARCH_USE_TEXT, build_sr
from service.report.uids import derive_uid

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

JOB = "job-picture-1"


@pytest.fixture(scope="module")
def reduced() -> StudyResult:
    return example_result(reduced=True, with_cnn=True)


@pytest.fixture(scope="module")
def normal() -> StudyResult:
    return example_result(reduced=False, with_cnn=False)


def roundtrip(result: StudyResult, job_key: str = JOB) -> pydicom.Dataset:
    image = build_picture_report(result, example_evidence(result), job_key)
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, image, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def colour_pixels(rgb: np.ndarray, hex_colour: str, tolerance: int = 12) -> np.ndarray:
    """Boolean mask of pixels within ``tolerance`` of a ``#rrggbb`` colour."""
    target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(rgb.astype(int) - target) <= tolerance).all(axis=-1)


def test_roundtrip_header_and_pixels(reduced: StudyResult) -> None:
    ds = roundtrip(reduced)
    assert ds.SOPClassUID == codes.SECONDARY_CAPTURE_STORAGE
    assert ds.StudyInstanceUID == reduced.source.study_instance_uid
    assert ds.SeriesInstanceUID == derive_uid(JOB, reduced.algorithm, "picture-series")
    assert ds.SeriesInstanceUID != reduced.source.series_instance_uid
    sr = build_sr(reduced, example_evidence(reduced), JOB)
    assert ds.SeriesInstanceUID != sr.SeriesInstanceUID
    assert ds.SOPInstanceUID != sr.SOPInstanceUID
    assert ds.PatientID == "DN-EXAMPLE-1" and ds.AccessionNumber == "ACC-EXAMPLE"
    assert (ds.PhotometricInterpretation, ds.SamplesPerPixel) == ("RGB", 3)
    assert (ds.BitsAllocated, ds.BitsStored, ds.PlanarConfiguration) == (8, 8, 0)
    assert (ds.Rows, ds.Columns) == (render.HEIGHT_PX, render.WIDTH_PX)
    assert ds.BurnedInAnnotation == "NO" and ds.ConversionType == "WSD"
    assert ds.BodyPartExamined == "BRAIN" and "Laterality" not in ds
    assert "research use, not for diagnosis" in ds.SeriesDescription
    assert ds.ImageComments == RESEARCH_USE_TEXT
    refs = [i.ReferencedSOPInstanceUID for i in ds.SourceImageSequence]
    assert refs == list(reduced.source.sop_instance_uids)
    pixels = ds.pixel_array
    assert pixels.shape == (render.HEIGHT_PX, render.WIDTH_PX, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, render.render_report_rgb(reduced))


def test_uids_are_deterministic(reduced: StudyResult) -> None:
    first = build_picture_report(reduced, example_evidence(reduced), JOB)
    again = build_picture_report(reduced, example_evidence(reduced), JOB)
    other = build_picture_report(reduced, example_evidence(reduced), "job-other")
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert first.SeriesInstanceUID == again.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_headline_colour_follows_the_global_result(
    reduced: StudyResult, normal: StudyResult
) -> None:
    top_rows = slice(0, int(0.14 * render.HEIGHT_PX))
    red, green = render.LEVEL_COLOURS[3], render.LEVEL_COLOURS[0]
    reduced_top = render.render_report_rgb(reduced)[top_rows]
    normal_top = render.render_report_rgb(normal)[top_rows]
    # Large type: thousands of pixels in the headline colour, none of the other.
    assert colour_pixels(reduced_top, red).sum() > 3000
    assert colour_pixels(reduced_top, green).sum() == 0
    assert colour_pixels(normal_top, green).sum() > 3000
    assert colour_pixels(normal_top, red).sum() == 0
    # The research-use banner is on both.
    for top in (reduced_top, normal_top):
        assert colour_pixels(top, "#b71c1c", tolerance=4).sum() > 5000


def test_headline_text() -> None:
    result = example_result(reduced=True, with_cnn=False)
    assert render.headline(result)[0].startswith("REDUCED")
    unsure = replace(result, global_score=replace(result.global_score, inconclusive=True))
    assert render.headline(unsure)[0] == "INCONCLUSIVE - reduced?"
    assert render.headline(example_result(reduced=False))[0].startswith("NORMAL")


def test_regions_are_outlined_on_the_slab(reduced: StudyResult) -> None:
    rgb = render.render_report_rgb(reduced)
    left_half = rgb[:, : render.WIDTH_PX // 2]
    for value in (1, 3, 5):  # caudate, putamen, reference outlines
        assert colour_pixels(left_half, render.OUTLINE_COLOURS[value], tolerance=20).sum() > 50


def test_without_images_or_normal_range() -> None:
    base = example_result(reduced=True, with_cnn=False)
    regions = tuple(
        replace(r, z_score=None, normal_mean=None, normal_sd=None) for r in base.regions
    )
    bare = replace(base, images=None, regions=regions, warnings=("a warning",))
    ds = roundtrip(bare)
    assert ds.pixel_array.shape == (render.HEIGHT_PX, render.WIDTH_PX, 3)
    # No normal band drawn: none of its fill colour anywhere.
    assert colour_pixels(ds.pixel_array, "#c8e6c9", tolerance=2).sum() == 0
    assert colour_pixels(render.render_report_rgb(base), "#c8e6c9", tolerance=2).sum() > 1000


def test_png_is_a_png(reduced: StudyResult) -> None:
    png = render.render_report_png(reduced)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000


def test_degenerate_slab_still_renders() -> None:
    base = example_result(reduced=True, with_cnn=False)
    assert base.images is not None
    slab = np.full_like(base.images.slab_yx, np.nan)
    images = replace(base.images, slab_yx=slab)
    rgb = render.render_report_rgb(replace(base, images=images))
    assert rgb.shape == (render.HEIGHT_PX, render.WIDTH_PX, 3)
