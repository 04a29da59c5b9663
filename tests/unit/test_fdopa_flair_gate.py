"""Which MR series is a FLAIR (issue 13 point 1): hand-made headers of every encoding."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from service.pipelines.fdopa_pet.flair_gate import classify_mr_series


def _per_slice(scanning: object = ("SE", "IR"), ti: object = "2500", description: str = "AX T2 FLAIR",
               modality: str = "MR") -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = modality, "1.2.3", description
    if scanning is not None:
        ds.ScanningSequence = list(scanning) if isinstance(scanning, tuple) else scanning
    if ti is not None:
        ds.InversionTime = ti
    return ds


def _enhanced(recovery: str | None = "YES", times: object = (2200.0,), legacy: bool = False
              ) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesDescription = "MR", "1.2.4", "sag 3d"
    shared = Dataset()
    if legacy:
        unassigned = Dataset()
        unassigned.ScanningSequence, unassigned.InversionTime = ["SE", "IR"], "1800"
        shared.UnassignedSharedConvertedAttributesSequence = [unassigned]
    else:
        if recovery is not None:
            ds.InversionRecovery = recovery
        modifier = Dataset()
        if times is not None:
            modifier.InversionTimes = list(times) if isinstance(times, tuple) else times
        shared.MRModifierSequence = [modifier]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [Dataset()]
    return ds


@pytest.mark.parametrize("ds, expected, words", [
    (_per_slice(), True, "inversion time 2500 ms"),
    (_per_slice(scanning="IR"), True, "inversion recovery"),
    (_per_slice(ti="160", description="AX STIR"), False, "160 ms is not fluid-attenuating"),
    (_per_slice(ti="860", description="T1 FLAIR"), False, "860 ms"),  # T1-FLAIR: TI decides
    (_per_slice(scanning=("SE",), ti=None, description="AX T2"), False, "not an inversion"),
    (_per_slice(scanning=None, ti=None), True, "keyword 'FLAIR'"),
    (_per_slice(scanning=None, ti=None, description="AX T2"), False, "no FLAIR keyword"),
    (_per_slice(modality="PT"), False, "not an MR series"),
    (_enhanced(), True, "inversion time 2200 ms"),
    (_enhanced(times=2000.0), True, "2000 ms"),
    (_enhanced(recovery="NO", times=None), False, "not an inversion"),
    (_enhanced(times=(200.0,)), False, "200 ms"),
    (_enhanced(legacy=True), True, "1800 ms"),
])
def test_flair_decisions(ds: Dataset, expected: bool, words: str) -> None:
    decision = classify_mr_series(ds)
    assert decision.is_flair is expected
    assert words in decision.reason
    assert decision.series_uid == ds.SeriesInstanceUID


def test_keywords_are_configurable() -> None:
    ds = _per_slice(scanning=None, ti=None, description="AX DARK FLUID")
    assert not classify_mr_series(ds).is_flair
    assert classify_mr_series(ds, keywords=("DARK FLUID",)).is_flair
