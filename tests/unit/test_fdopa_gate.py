"""FDOPA gate and study series selection on simulator headers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from service.errors import AnalysisError
from service.pipelines.fdopa_pet import codes
from service.pipelines.fdopa_pet.gate import (
    check_fdopa_series,
    classify_series,
    select_series,
)
from service.sim.fdopa.pet_writer import (
    PetEncoding,
    PetSeriesInfo,
    build_legacy_enhanced,
    build_pet_series,
)

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

IMG = sitk.GetImageFromArray(np.ones((3, 8, 8), np.float32))


def _info(number: int, ac: bool = True) -> PetSeriesInfo:
    return PetSeriesInfo("gate-seed", 70.0, 180.0, 40, "M", "GE", "Discovery", "OSEM", number,
                         f"Brain FDOPA {'AC' if ac else 'NAC'}", attenuation_corrected=ac)


def _static(number: int = 2, ac: bool = True) -> list[Dataset]:
    return build_pet_series([IMG], [600.0], [1200.0], _info(number, ac), PetEncoding(), False)


def _dynamic(number: int = 4) -> list[Dataset]:
    return build_pet_series([IMG, IMG], [0.0, 15.0], [15.0, 15.0], _info(number),
                            PetEncoding(), True)


def _agent(ds: Dataset) -> Dataset:
    return ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence[0]


def _refused(ds: Dataset, match: str, keywords: tuple[str, ...] = ()) -> None:
    with pytest.raises(AnalysisError, match=f"^not an FDOPA PET series: {match}") as err:
        check_fdopa_series(ds, keywords)
    assert err.value.code == "not_fdopa"


def test_simulated_series_accepted_by_sct_code() -> None:
    assert check_fdopa_series(_static()[0]) == "code SCT 5811000122108"
    enhanced = build_legacy_enhanced(_static(), _info(2))
    assert check_fdopa_series(enhanced) == "code SCT 5811000122108"


@pytest.mark.parametrize("scheme", ["SRT", "SNM3"])
def test_legacy_srt_code_accepted(scheme: str) -> None:
    ds = _static()[0]
    _agent(ds).CodeValue, _agent(ds).CodingSchemeDesignator = "C-B1034", scheme
    assert check_fdopa_series(ds) == "code SRT C-B1034"


def test_other_tracers_and_unverified_codes_refused() -> None:
    ds = _static()[0]
    _agent(ds).CodeValue = "129505007"  # proposed "older FDOPA code": meaning unverified
    _refused(ds, "radiopharmaceutical is SCT 129505007, not Fluoro-L-dopa", ("FDOPA",))
    nuclide = ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0]
    nuclide.CodeValue = "88109006"  # ^11^Carbon
    _refused(ds, "radionuclide is SCT 88109006, not 18-Fluorine")
    ct = Dataset()
    ct.Modality = "CT"
    _refused(ct, "modality is CT, not PT")


def test_keywords_only_when_uncoded() -> None:
    ds = _static()[0]
    del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalCodeSequence
    _refused(ds, "no radiopharmaceutical code$")
    ds.SeriesDescription = "Brain PET AC"
    ds.RadiopharmaceuticalInformationSequence[0].Radiopharmaceutical = "unknown"
    _refused(ds, "no radiopharmaceutical code and no keyword", codes.DEFAULT_KEYWORDS)
    ds.RadiopharmaceuticalInformationSequence[0].Radiopharmaceutical = "[18F]F-DOPA"
    assert check_fdopa_series(ds, codes.DEFAULT_KEYWORDS).startswith("keyword 'FDOPA'")


def test_roles_of_simulated_series() -> None:
    assert classify_series(_static()[0]).role == "static"
    assert classify_series(_dynamic()[0]).role == "dynamic"
    nac = classify_series(_static(3, ac=False)[0])
    assert (nac.role, nac.reason) == ("ignored",
                                      "not attenuation-corrected (Corrected Image lacks ATTN)")
    gated = copy.deepcopy(_static()[0])
    gated.SeriesType = ["GATED", "IMAGE"]
    assert classify_series(gated).reason == "series type GATED is not analysed"


def test_study_selection() -> None:
    ct = Dataset()
    ct.Modality, ct.SeriesInstanceUID, ct.SeriesNumber = "CT", "1.2.3.1", 1
    static, nac, dynamic = _static(2)[0], _static(3, ac=False)[0], _dynamic(4)[0]
    sel = select_series([dynamic, nac, ct, static])
    assert sel.static_series_uid == static.SeriesInstanceUID
    assert sel.dynamic_series_uid == dynamic.SeriesInstanceUID
    assert not sel.static_from_dynamic
    roles = {d.series_uid: d.role for d in sel.decisions}
    assert roles[nac.SeriesInstanceUID] == "ignored" and roles["1.2.3.1"] == "declined"
    only_dynamic = select_series([dynamic, nac])
    assert only_dynamic.static_series_uid is None and only_dynamic.static_from_dynamic
    second = _static(7)[0]
    twice = select_series([second, static])
    assert twice.static_series_uid == static.SeriesInstanceUID
    assert "another static series" in next(d.reason for d in twice.decisions
                                           if d.series_uid == second.SeriesInstanceUID)
    with pytest.raises(AnalysisError, match="no analysable FDOPA PET series: .*ATTN") as err:
        select_series([nac, ct])
    assert err.value.code == "no_fdopa_series"
