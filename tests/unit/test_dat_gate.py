"""DaT gatekeeping: coded Ioflupane accepted, anything else refused with a reason."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from service.dicom import codes
from service.errors import AnalysisError
from service.pipelines.dat_spect import codes as dat_codes
from service.pipelines.dat_spect.gate import check_dat_series
from service.sim.nm_writer import build_nm_datasets
from service.testing.nmdata import CAMERA, SUBJECT, marker_image

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


def _series(tracer: str = "dat") -> Dataset:
    image = marker_image(shape_xyz=(16, 16, 8))
    return build_nm_datasets(image, CAMERA, SUBJECT, "multiframe", "gate", tracer=tracer)[0]


def _agent(ds: Dataset) -> Dataset:
    return ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence[0]


def _refused(ds: Dataset, match: str, keywords: tuple[str, ...] = ()) -> None:
    with pytest.raises(AnalysisError, match=f"^not a DaT SPECT series: {match}") as err:
        check_dat_series(ds, keywords)
    assert err.value.code == "not_dat"


def test_written_dat_series_accepted_by_sct_code():
    assert check_dat_series(_series()) == "code SCT 429296007"


@pytest.mark.parametrize("scheme", ["SRT", "SNM3"])
def test_legacy_srt_code_accepted(scheme):
    ds = _series()
    _agent(ds).CodeValue = dat_codes.IOFLUPANE_I123_LEGACY.value
    _agent(ds).CodingSchemeDesignator = scheme
    assert check_dat_series(ds) == "code SRT C-B07EC"


def test_other_tracer_refused_even_with_keyword():
    ds = _series(tracer="other")
    ds.SeriesDescription = "DaTSCAN brain"
    _refused(ds, "radionuclide is SCT 72454006", ("DATSCAN",))
    ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0].CodeValue = "21572004"
    _refused(ds, "radiopharmaceutical is SCT 77313009, not Ioflupane", ("DATSCAN",))


def test_uncoded_series_needs_keyword():
    ds = _series()
    del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence
    _refused(ds, "no radiopharmaceutical code$")
    ds.SeriesDescription = "Brain SPECT IMG"
    _refused(ds, "no radiopharmaceutical code and no keyword", ("DATSCAN", "FP-CIT"))
    ds.SeriesDescription = "Dat_Scan 3h p.i. OSEM"
    assert check_dat_series(ds, ("", "DATSCAN")) == "series description keyword 'DATSCAN'"
    ds.SeriesDescription = "fpcit tomo"
    assert check_dat_series(ds, ("FP-CIT",)) == "series description keyword 'FP-CIT'"


def test_missing_sequence_falls_to_keywords():
    ds = _series()
    del ds.RadiopharmaceuticalInformationSequence
    _refused(ds, "no radiopharmaceutical code")
    assert check_dat_series(ds, ("datscan",)).startswith("series description keyword")


@pytest.mark.parametrize(
    ("keyword", "value", "match"),
    [
        ("Modality", "PT", "modality is PT, not NM"),
        ("SOPClassUID", codes.PET_IMAGE_STORAGE, "SOP class is not NM Image Storage"),
        ("ImageType", ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"], "image type is TOMO"),
        ("ImageType", ["ORIGINAL", "PRIMARY"], "image type is missing"),
    ],
)
def test_wrong_kind_refused(keyword, value, match):
    ds = _series()
    setattr(ds, keyword, value)
    _refused(ds, match, ("DATSCAN",))


def test_modality_missing_refused():
    ds = _series()
    del ds.Modality
    _refused(ds, "modality is missing")
