"""SBR, ratios and asymmetry against hand-made volumes with known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.errors import AnalysisError
from service.imaging.atlas import LABELS, load_atlas
from service.pipelines.dat_spect.normals import fit_normals
from service.pipelines.dat_spect.quantify import asymmetry_pct, quantify, ratios
from service.pipelines.dat_spect.result import REGIONS, Region

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

ATLAS = load_atlas()


def _piecewise_volume(concentration: dict[str, float]) -> np.ndarray:
    volume = np.full(ATLAS.shape_zyx, 0.3, np.float32)
    for name, value in concentration.items():
        volume[ATLAS.labels_zyx == LABELS[name]] = value
    return volume


def test_sbr_exact_on_piecewise_constant_volume() -> None:
    volume = _piecewise_volume(
        {"occipital": 2.0, "caudate_left": 8.0, "caudate_right": 6.0,
         "putamen_left": 5.0, "putamen_right": 2.0}
    )
    q = quantify(volume * 37.5, ATLAS)  # count scale must not matter
    assert q.sbr[Region.CAUDATE_LEFT] == pytest.approx(3.0)
    assert q.sbr[Region.CAUDATE_RIGHT] == pytest.approx(2.0)
    assert q.sbr[Region.PUTAMEN_LEFT] == pytest.approx(1.5)
    assert q.sbr[Region.PUTAMEN_RIGHT] == pytest.approx(0.0)
    assert q.ratios.putamen_caudate_left == pytest.approx(0.5)
    assert q.ratios.putamen_caudate_right == pytest.approx(0.0)
    assert q.ratios.asymmetry_caudate_pct == pytest.approx(40.0)
    assert q.ratios.asymmetry_putamen_pct == pytest.approx(200.0)
    assert q.reference_mean == pytest.approx(75.0)


def test_left_right_follow_atlas_sides() -> None:
    """Patient left is +x in LPS: the left caudate lies at positive x."""
    zz, yy, xx = np.nonzero(ATLAS.mask("caudate_left"))
    x_mm = ATLAS.origin_lps_mm[0] + ATLAS.spacing_mm[0] * xx.mean()
    assert x_mm > 5.0


def test_no_reference_counts() -> None:
    with pytest.raises(AnalysisError) as info:
        quantify(np.zeros(ATLAS.shape_zyx, np.float32), ATLAS)
    assert info.value.code == "no_reference"


def test_ratios_nan_without_binding() -> None:
    r = ratios({region: 0.0 for region in REGIONS})
    assert math.isnan(r.putamen_caudate_left) and math.isnan(r.asymmetry_putamen_pct)
    assert asymmetry_pct(2.0, 1.0) == pytest.approx(100.0 / 1.5)


def test_normals_recover_age_regression(rng: np.random.Generator) -> None:
    ages = rng.uniform(40, 80, 400)
    rows = []
    for age in ages:
        base = {Region.CAUDATE_LEFT: 3.3, Region.CAUDATE_RIGHT: 3.3,
                Region.PUTAMEN_LEFT: 2.0, Region.PUTAMEN_RIGHT: 2.0}
        rows.append({r: v * (1 - 0.005 * (age - 60)) + rng.normal(0, 0.2) for r, v in base.items()})
    db = fit_normals(rows, list(ages), source="test")
    mean, sd = db.expected(Region.PUTAMEN_LEFT, 70.0)
    assert mean == pytest.approx(2.0 * 0.95, abs=0.03)
    assert sd == pytest.approx(0.2, rel=0.1)
    assert db.norms[Region.CAUDATE_RIGHT].slope_per_year == pytest.approx(-0.0165, abs=0.003)
    assert db.z_score(Region.PUTAMEN_LEFT, mean - 2 * sd, 70.0) == pytest.approx(-2.0)
    again = type(db).from_dict(db.to_dict())
    assert again.expected(Region.PUTAMEN_LEFT, 70.0) == pytest.approx((mean, sd))


def test_normals_without_ages_and_too_few() -> None:
    rows = [{r: 2.0 + 0.1 * i for r in REGIONS} for i in range(6)]
    db = fit_normals(rows, [None] * 6, source="test")
    assert db.norms[Region.CAUDATE_LEFT].slope_per_year == 0.0
    assert db.expected(Region.CAUDATE_LEFT, 77.0)[0] == pytest.approx(2.25)
    with pytest.raises(ValueError, match="at least"):
        fit_normals(rows[:3], [50.0] * 3, source="test")


def test_report_images_display_orientation() -> None:
    """Row 0 anterior, column 0 patient right; outlines on the same grid."""
    from service.pipelines.dat_spect.pipeline import report_images

    volume = ATLAS.labels_zyx.astype(np.float32)
    images = report_images(volume, ATLAS)
    rows, cols = np.nonzero(images.labels_yx == LABELS["caudate_left"])
    assert cols.mean() > images.labels_yx.shape[1] / 2  # patient left on the viewer's right
    occipital_rows, _ = np.nonzero(images.labels_yx == LABELS["occipital"])
    assert rows.mean() < 50 < occipital_rows.mean()  # striatum anterior (top), occipital bottom
    assert images.slab_yx.shape == images.labels_yx.shape == (109, 91)


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
@pytest.mark.parametrize(
    ("value", "years"), [("064Y", 64.0), ("018M", 1.5), ("", None), ("64", None), ("X64Y", None)]
)
def test_patient_age(value: str, years: float | None) -> None:
    from pydicom.dataset import Dataset

    from service.pipelines.dat_spect.pipeline import patient_age_years

    ds = Dataset()
    ds.PatientAge = value
    assert patient_age_years(ds) == (pytest.approx(years) if years is not None else None)
