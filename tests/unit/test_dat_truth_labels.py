"""Training labels from the simulated truth (``dopanode train --labels truth``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models.training import data, workflow
from service.sim.reference import LEVEL_FRACTIONS, fraction_level

REGION_NAMES = ("caudate_left", "caudate_right", "putamen_left", "putamen_right")


def _bench(root: Path, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """A manifest of 16 studies (4 anatomy groups, 2 sites) with true and normal binding."""
    rows, truth = [], []
    for i in range(16):
        site = "site_a" if i < 8 else "site_b"
        fractions = rng.choice([1.0, 0.9, 0.7, 0.5, 0.3, 0.1], 4)
        row = {"study_id": f"{site}_{i:05d}", "site": site, "role": "train_test",
               "anatomy_id": f"{site}_a{i // 4:04d}", "disease_class": "pd",
               "age_years": "60", "sex": "M"}
        for name, f in zip(REGION_NAMES, fractions, strict=True):
            row[f"normal_br_{name}"] = "2.5"
            row[f"true_br_{name}"] = f"{2.5 * f:.4f}"
        rows.append(row)
        truth.append(tuple(fraction_level(f) for f in fractions))
        cache = root / "work" / "cache"
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(cache / f"{row['study_id']}.npz", x=np.zeros((1, 2, 2, 2), np.float32),
                 sbr=rng.uniform(0.5, 3.0, 4), age=60.0)
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return truth


def test_fraction_levels_cut_at_documented_points() -> None:
    assert LEVEL_FRACTIONS == (0.80, 0.65, 0.45, 0.25)
    assert [fraction_level(f) for f in (1.0, 0.80, 0.79, 0.65, 0.5, 0.45, 0.3, 0.2)] == [
        0, 0, 1, 1, 2, 2, 3, 4]


@pytest.mark.parametrize("source", ["truth", "gmm"])
def test_index_levels_come_from_the_chosen_source(tmp_path: Path, source: str) -> None:
    truth = _bench(tmp_path, np.random.default_rng(3))
    studies = data.read_manifest(tmp_path)
    assert [s.truth_levels for s in studies] == truth
    data.label_sites(studies, tmp_path / "work", seed=1, label_source=source)
    ts = data.load_training_set(tmp_path / "work")
    if source == "truth":
        assert ts.levels.tolist() == [list(t) for t in truth]
        assert workflow.scan_targets(ts, "truth").tolist() == [max(t) >= 2 for t in truth]
    else:  # GMM levels: monotone in the SBR within a site and structure
        assert workflow.scan_targets(ts, "gmm").all()  # disease class pd
    assert (tmp_path / "work" / "labels" / "site_a" / "calibration.json").is_file()


def test_truth_labels_need_true_binding(tmp_path: Path) -> None:
    _bench(tmp_path, np.random.default_rng(3))
    studies = [data.Study(s.study_id, s.site, s.role, s.anatomy_id, s.disease_class,
                          s.series_dir) for s in data.read_manifest(tmp_path)]
    with pytest.raises(SystemExit, match="true binding"):
        data.label_sites(studies, tmp_path / "work", seed=1, label_source="truth")
    with pytest.raises(ValueError, match="label source"):
        data.label_sites(studies, tmp_path / "work", seed=1, label_source="reader")


def test_kept_splits_stay_and_only_new_groups_are_split(tmp_path: Path) -> None:
    """`dopanode train --keep-splits INDEX`: an earlier training's studies keep their split
    (so a grown benchmark is compared on the same validation and test scans)."""
    def study(sid: str, group: str, role: str = "train_test") -> data.Study:
        return data.Study(sid, sid.split("_")[0], role, group, "normal", tmp_path)

    old = [study(f"a_{i:03d}", f"g{i // 4}") for i in range(80)] + [study("d_000", "u0", "unseen")]
    before = data.assign_splits(old, seed=3)
    new = [study(f"n_{i:03d}", f"h{i // 4}") for i in range(40)]
    grown = old + new + [study("a_999", "g0")]  # a new scan of a kept group joins its split
    index = tmp_path / "index.csv"
    with index.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["study_id", "split"])
        writer.writerows(before.items())
    kept = data.read_splits(index)
    after = data.assign_splits(grown, seed=3, keep=kept)
    assert {sid: after[sid] for sid in before} == before
    assert after["a_999"] == before["a_000"]
    assert after["d_000"] == "test_unseen"
    groups = {s.anatomy_id: after[s.study_id] for s in new}
    assert set(groups.values()) == {"train", "val", "test"}  # 10 groups split 7 / 1 / 2
    assert sorted(groups.values()).count("train") == 7
    # without keep the grown benchmark would be split anew (what --keep-splits avoids)
    assert {sid: data.assign_splits(grown, seed=3)[sid] for sid in before} != before

    # --new-groups-split val: every new group (and nothing kept) becomes validation
    extended = data.extend_splits(grown + [study("d_001", "u9", "unseen")], kept, "val")
    after = data.assign_splits(grown, seed=3, keep=extended)
    assert {sid: after[sid] for sid in before} == before
    assert {after[s.study_id] for s in new} == {"val"}
    assert after["a_999"] == before["a_000"]  # a kept group's new scan: its group's split
    assert extended["d_001"] == "test_unseen"
    with pytest.raises(ValueError, match="unknown split"):
        data.extend_splits(grown, kept, "validation")
