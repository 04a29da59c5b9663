"""Digital brain (anatomy transform, components) and the disease model's truth."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging.atlas import LABELS, load_atlas
from service.sim.anatomy import (
    COMPONENTS,
    STRIATAL_COMPONENTS,
    ScanGrid,
    SubjectTransform,
    atlas_centre_lps_mm,
    build_phantom,
    component_maps,
    sample_transform,
)
from service.sim.disease import CLASS_MIX, sample_state

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

GRID = ScanGrid((40, 56, 56), 4.0, np.array([0.0, 0.0, 0.0]))


def _transform(scale: float = 1.0, translation=(0.0, 0.0, 0.0)) -> SubjectTransform:
    return SubjectTransform(
        scale=np.full(3, scale),
        rotation_deg=np.zeros(3),
        translation_mm=np.asarray(translation, float),
        control_displacement_mm=np.zeros((3, 4, 4, 4)),
    )


def _centroid_mm(mask: np.ndarray, grid: ScanGrid) -> np.ndarray:
    idx = np.argwhere(mask).mean(axis=0)[::-1]
    return grid.origin_lps_mm + grid.voxel_mm * idx


def test_components_are_disjoint_where_they_should_be() -> None:
    maps = component_maps(2.0)
    striatum = sum(maps[c] for c in STRIATAL_COMPONENTS)
    assert striatum.max() == pytest.approx(1.0)
    assert float(maps["grey_matter"][striatum > 0].max()) == 0.0
    assert set(maps) == set(COMPONENTS) | {"mu"}
    assert maps["mu"].max() == pytest.approx(0.025)  # bone
    assert (maps["salivary"] > 0).sum() > 500


def test_translation_moves_the_striatum_and_scale_grows_it() -> None:
    atlas = load_atlas()
    base = build_phantom(_transform(), GRID)
    moved = build_phantom(_transform(translation=(12.0, -8.0, 10.0)), GRID)
    bigger = build_phantom(_transform(scale=1.08), GRID)
    label = LABELS["putamen_left"]
    shift = _centroid_mm(moved.labels_zyx == label, GRID) - _centroid_mm(
        base.labels_zyx == label, GRID
    )
    np.testing.assert_allclose(shift, [12.0, -8.0, 10.0], atol=2.0)
    # identity transform: the brain centre sits at the scan centre
    brain = base.components_czyx[COMPONENTS.index("grey_matter")] > 0.3
    assert np.linalg.norm(_centroid_mm(brain, GRID)) < 8.0
    assert atlas_centre_lps_mm(atlas).shape == (3,)
    striatal = slice(0, len(STRIATAL_COMPONENTS))
    ratio = bigger.components_czyx[striatal].sum() / base.components_czyx[striatal].sum()
    assert ratio == pytest.approx(1.08**3, rel=0.05)
    # the left putamen lies on the patient's left (+x in LPS)
    assert _centroid_mm(base.labels_zyx == label, GRID)[0] > 10.0


def test_random_transforms_stay_in_range(rng: np.random.Generator) -> None:
    for _ in range(20):
        t = sample_transform(rng)
        assert np.all(np.abs(t.scale - 1) <= 0.08)
        assert np.all(np.abs(t.rotation_deg) <= 10)
        assert np.all(np.abs(t.translation_mm) <= 15)


def test_class_mix_and_disease_patterns(rng: np.random.Generator) -> None:
    states = [sample_state(rng) for _ in range(3000)]
    for cls, p in CLASS_MIX.items():
        share = np.mean([s.disease_class == cls for s in states])
        assert share == pytest.approx(p, abs=0.03)
    normal = [s for s in states if s.disease_class == "normal"]
    pd = [s for s in states if s.disease_class == "pd" and s.severity > 0.4]

    def worse_side(s, family):  # noqa: ANN001, ANN202
        return s.binding[f"{family}_{s.more_affected_side}"]

    def norm(s, family):  # noqa: ANN001, ANN202
        return np.mean([n.binding[f"{family}_left"] for n in normal])

    rel = {
        f: np.mean([worse_side(s, f) / norm(s, f) for s in pd])
        for f in ("putamen_posterior", "putamen_anterior", "caudate")
    }
    assert rel["putamen_posterior"] < rel["putamen_anterior"] < rel["caudate"]
    assert min(worse_side(s, "putamen_posterior") for s in pd) < 0.1  # almost missing
    asym = [
        abs(s.binding["putamen_posterior_left"] - s.binding["putamen_posterior_right"]) for s in pd
    ]
    assert np.mean(asym) > 0.3
    atypical = [s for s in states if s.disease_class == "atypical" and s.severity > 0.5]
    caud = np.mean([s.binding["caudate_left"] for s in atypical])
    assert caud < 0.6 * np.mean([s.binding["caudate_left"] for s in normal])


def test_age_decline_is_about_five_percent_per_decade(rng: np.random.Generator) -> None:
    young = [sample_state(rng, "normal", age_years=30, sex="M") for _ in range(400)]
    old = [sample_state(rng, "normal", age_years=70, sex="M") for _ in range(400)]
    ratio = np.mean([s.binding["caudate_left"] for s in old]) / np.mean(
        [s.binding["caudate_left"] for s in young]
    )
    assert ratio == pytest.approx(0.95**4, abs=0.03)
    women = [sample_state(rng, "normal", age_years=30, sex="F") for _ in range(400)]
    assert np.mean([s.binding["caudate_left"] for s in women]) > np.mean(
        [s.binding["caudate_left"] for s in young]
    )
