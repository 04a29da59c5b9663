"""The robustness set in CI, small: generated, measured by the real pipeline and rated
by the shipped DaT CNN on appearance variants beyond its training ranges.

Generates one anatomy group (normal, loss left, loss right, bilateral; one-sided: the
noise-free image shows the affected putamen at 45-58 % of the other) of each of the cheap 64-matrix variants of
:mod:`service.sim.robustness`, runs the real pipeline's ``measure`` (registration,
quantification, CNN input) and rates with the shipped model through onnxruntime. The
full set and the per-variant table: ``dopanode benchmark robustness`` then
``dopanode robustness`` (models/training/README.md).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from service.sim.robustness import (
    IMAGE_BASIS,
    MATCH_TOLERANCE,
    ONE_SIDED_FRACTION,
    VARIANTS,
    generate_robustness,
    normals_variant,
)

pytestmark = pytest.mark.slow  # simulator (torch) and the whole measuring pipeline

CHEAP = ("matrix64_5p5mm", "fbp_noac_legp", "legacy_lowcount")
#: Site-calibration normals per variant (other subjects, one scan each).
N_NORMALS = 4
#: The goal checks (one-sided loss called reduced, normals called normal on every
#: variant) are not here yet: neither the shipped model nor the candidate retrained on
#: the broad simulator meets them (issue 10 open; per-variant table in
#: models/dopanode_dat_cnn.card.md). A test that could not fail (a non-strict xfail)
#: would hide that; add them when a shipped model passes.


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("robust")
    generate_robustness(root / "bench", 1, [v for v in VARIANTS if v.name in CHEAP])
    return root / "bench"


@pytest.fixture(scope="module")
def rated(bench: Path) -> dict:
    from models.training.robustness import evaluate_folder
    from service.paths import default_models_dir
    from service.pipelines.dat_spect.plugin import MODEL_FILE

    normals = bench.parent / "normals"
    generate_robustness(normals, N_NORMALS,
                        [normals_variant(v) for v in VARIANTS if v.name in CHEAP])
    model = default_models_dir() / MODEL_FILE
    return evaluate_folder(bench, bench.parent / "work", {"shipped": model},
                           normals_dir=normals)


def test_one_sided_cases_show_their_ratio_on_the_image(bench: Path) -> None:
    """The image basis: the noise-free image shows the drawn ratio (within the matching
    tolerance), the binding is lower (spill from the caudate and blur lift the image), the
    truth is one reduced putamen, and the case's own noisy scan shows the loss side."""
    with (bench / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["case"].startswith("loss_")]
    assert len(rows) == 2 * len(CHEAP)
    low, high = ONE_SIDED_FRACTION
    for row in rows:
        assert row["one_sided_basis"] == IMAGE_BASIS
        image, target = float(row["putamen_ratio_image"]), float(row["putamen_ratio_target"])
        assert low <= target <= high
        assert abs(image - target) <= MATCH_TOLERANCE + 0.005, row["study_id"]
        assert float(row["putamen_ratio"]) < image
        side = row["case"].removeprefix("loss_")
        other = "right" if side == "left" else "left"
        assert int(row[f"true_level_putamen_{side}"]) >= 2
        assert int(row[f"true_level_putamen_{other}"]) == 0
        assert float(row[f"roi_sbr_putamen_{side}"]) < float(row[f"roi_sbr_putamen_{other}"])


def test_every_study_is_measured(rated: dict) -> None:
    assert rated["n_failed"] == 0
    assert set(rated["table"]) == {*CHEAP, "all"}


def test_table_counts_add_up(rated: dict) -> None:
    table = rated["table"]
    for method in ("shipped", "shipped+verdict", "shipped+verdict-noasym", "sbr",
                   "shipped+verdict@site", "sbr@site"):
        total = sum(table[v][method]["n_reduced"] for v in CHEAP)
        assert total == table["all"][method]["n_reduced"] == 9
        assert 0.0 <= table["all"][method]["level_accuracy"] <= 1.0
    assert np.isfinite(table["all"]["sbr"]["level_accuracy"])
    assert "| matrix64_5p5mm |" in rated["markdown"]
    assert "sbr@site spec" in rated["markdown"]


def test_site_thresholds_come_from_each_cameras_normals(bench: Path) -> None:
    """Each variant gets its own thresholds from its own normals: camera-specific,
    descending and positive (the site-calibrated columns of the table use them)."""
    from models.training.robustness import site_calibrations

    own = site_calibrations(bench.parent / "normals", bench.parent / "work")
    assert set(own) == set(CHEAP)
    t12 = {name: c.putamen.values[1] for name, c in own.items()}
    assert len(set(t12.values())) == len(CHEAP)  # camera-specific
    for name, c in own.items():
        t01, t12_, t23, t34 = c.putamen.values
        assert t01 > t12_ > t23 > t34 > 0, name
    # the SD cap (`--site-cv-max`) reaches the thresholds: a 1 % cap puts t12 at 0.98 mu
    tight = site_calibrations(bench.parent / "normals", bench.parent / "work", cv_max=0.01)
    for name in CHEAP:
        assert tight[name].putamen.values[1] > own[name].putamen.values[1], name
    # cross-calibration (`--site-rule scaled`) reads each variant's measured normals and
    # their family, and refuses a factor from fewer normals than it needs
    from models.training.cross_calibration import MIN_NORMALS

    assert N_NORMALS < MIN_NORMALS
    with pytest.raises(ValueError, match=f"{N_NORMALS} normal scans; .* at least {MIN_NORMALS}"):
        site_calibrations(bench.parent / "normals", bench.parent / "work", rule="scaled")


def test_a_trainings_held_out_splits_are_tabulated_by_split(bench: Path, rated: dict) -> None:
    """``--splits INDEX``: only val/test studies, one row per split, the same rates."""
    from models.training.robustness import evaluate_folder
    from service.paths import default_models_dir
    from service.pipelines.dat_spect.plugin import MODEL_FILE

    with (bench / "manifest.csv").open() as f:
        ids = [r["study_id"] for r in csv.DictReader(f)]
    names = ("train", "val", "test", "test_unseen")
    splits = {sid: names[(k + k // 4) % 4] for k, sid in enumerate(ids)}  # each case in train once
    result = evaluate_folder(bench, bench.parent / "work", {"shipped": default_models_dir()
                                                            / MODEL_FILE}, splits=splits)
    table = result["table"]
    assert set(table) == {"val", "test", "test_unseen", "all"}
    held_out = sum(1 for s in splits.values() if s != "train")
    all_rates = table["all"]["shipped+verdict"]
    assert all_rates["n_reduced"] + all_rates["n_normal"] <= held_out
    assert sum(table[s]["sbr"]["n_reduced"] for s in ("val", "test", "test_unseen")) == (
        table["all"]["sbr"]["n_reduced"]) < rated["table"]["all"]["sbr"]["n_reduced"]
    assert "| val |" in result["markdown"] and "| train |" not in result["markdown"]


def test_one_sided_by_truth_levels() -> None:
    from models.training.robustness import one_sided_truth

    truth = np.array([[0, 0, 2, 0], [0, 0, 1, 3], [0, 0, 2, 2], [0, 0, 1, 1], [-1, -1, -1, -1],
                      [3, 0, 0, 0]])
    assert one_sided_truth(truth).tolist() == [True, True, False, False, False, False]


def test_the_node_s_putamen_vois_at_the_true_pose_see_the_one_sided_loss(
        bench: Path, rated: dict) -> None:
    """``bench/dat_putamen_ratio_pose.py``: the AAL putamina mapped into the written series
    through the simulator's pose find the lost putamen on its side, as the image does."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "bench" / "dat_putamen_ratio_pose.py"
    spec = importlib.util.spec_from_file_location("dat_putamen_ratio_pose", path)
    assert spec is not None and spec.loader is not None
    pose = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pose)
    rows = [pose._task((bench, row, bench.parent / "work")) for row in pose.studies(bench)]
    assert len(rows) == 3 * len(CHEAP)  # normal and both one-sided cases per variant
    for row in rows:
        assert np.isfinite(row["node"]) and 0.0 < row["node"] <= 1.0
        assert 0.0 < row["image"] <= 1.0 and 0.0 < row["true_pose"] <= 1.0
        if row["case"] == "normal":
            continue
        side = str(row["case"]).removeprefix("loss_")
        other = "right" if side == "left" else "left"
        assert row[f"true_pose_sbr_putamen_{side}"] < row[f"true_pose_sbr_putamen_{other}"], row
        assert row["true_pose"] < 0.85, row
