"""`dopanode analyze`, `label`, `build-normals`, `build-template` on synthetic DICOM studies.

Phantoms with known true SBR and a random pose are written by the simulator's
NM writer in every encoding variant, analysed through the command line, and
the outputs (summary.json, SR, picture report) are read back and checked.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from service import cli
from service.dicom import codes
from service.imaging.atlas import load_atlas
from service.inference.manifest import read_sidecar
from service.paths import default_models_dir
from service.pipelines.dat_spect.plugin import MODEL_FILE
from service.pipelines.dat_spect.quantify import quantify
from service.sim.nm_writer import EncodingVariant
from service.testing.dat_phantom import make_phantom, normal_sbr, random_pose
from service.testing.nmdata import write_marker_study

pytestmark = [pytest.mark.slow, pytest.mark.no_storage]  # simulated scans through the command line

ATLAS = load_atlas()
SHIPPED_MODEL = default_models_dir() / MODEL_FILE
#: Phantom uptake factor per variant: 1 healthy, 0.15 almost no striatal uptake.
FACTORS = {v: (0.15 if i % 3 == 1 else 1.0) for i, v in enumerate(EncodingVariant)}
THRESHOLDS = [2.2, 1.9, 1.27, 0.63]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    assert cli.main(["build-template", "--model", "--out", str(folder)]) == 0
    calibration = {"source": "test", "thresholds": {"caudate": THRESHOLDS, "putamen": THRESHOLDS}}
    (folder / "calibration.json").write_text(json.dumps(calibration))
    rng = np.random.default_rng(4)
    csv_path = folder / "normals.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "caudate_left", "caudate_right", "putamen_left", "putamen_right", "age"])
        for i in range(30):
            w.writerow([f"n{i}", *rng.normal(2.8, 0.25, 4).round(3), rng.integers(40, 80)])
    args = ["build-normals", str(csv_path), "--out", str(folder / "normals.json")]
    assert cli.main(args) == 0
    return folder


@pytest.fixture(scope="session")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    """One study per encoding variant plus one non-DaT study; truth by series UID."""
    root = tmp_path_factory.mktemp("studies")
    rng = np.random.default_rng(21)
    truth: dict[str, dict] = {}
    for variant, factor in FACTORS.items():
        phantom = make_phantom(ATLAS, normal_sbr(factor), random_pose(rng), rng)
        paths = write_marker_study(root / variant.value, variant, image=phantom.image,
                                   uid_seed=f"e2e-{variant.value}")
        uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
        truth[uid] = {"variant": variant.value, "factor": factor,
                      "sbr": quantify(phantom.reference_zyx, ATLAS).sbr}
    phantom = make_phantom(ATLAS, normal_sbr(), random_pose(rng), rng)
    paths = write_marker_study(root / "other", "multiframe", image=phantom.image,
                               uid_seed="e2e-other", tracer="other")
    uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    truth[uid] = {"variant": "other", "factor": None, "sbr": None}
    return root, truth


def test_analyze_every_variant(
    studies: tuple[Path, dict[str, dict]], models_dir: Path, tmp_path: Path
) -> None:
    root, truth = studies
    out = tmp_path / "out"
    code = cli.main(["analyze", str(root), "--out", str(out), "--models", str(models_dir)])
    assert code == 1  # the non-DaT study fails, the others succeed
    assert sorted(p.name for p in out.iterdir()) == sorted(truth)
    for uid, t in truth.items():
        summary = json.loads((out / uid / "summary.json").read_text())
        if t["factor"] is None:
            assert summary["status"] == "failed" and summary["code"] == "not_dat"
            assert not (out / uid / "sr.dcm").exists()
            continue
        assert summary["status"] == "done", (t["variant"], summary)
        assert summary["global"]["method"] == "cnn"  # the shipped model by default
        assert summary["algorithm"]["model_sha256"] == read_sidecar(SHIPPED_MODEL)
        assert summary["registration_quality"] > 0.9
        if t["factor"] < 0.5:
            # never a conclusive NORMAL above an almost empty striatum; the SBR path sees it
            assert summary["global"]["reduced"] or summary["global"]["inconclusive"], t["variant"]
            assert max(r["level_sbr"] for r in summary["regions"].values()) >= 3, t["variant"]
        else:
            assert summary["global"]["reduced"] is False, t["variant"]
        for region, value in t["sbr"].items():
            measured = summary["regions"][region.value]["sbr"]
            assert measured == pytest.approx(value, rel=0.1, abs=0.1), (t["variant"], region)
            assert summary["regions"][region.value]["z_score"] is not None
        assert set(summary["stage_durations_s"]) >= {"volume", "normalise", "report"}
        _check_outputs(out / uid, uid)


@pytest.mark.xfail(strict=True, reason=(
    "issue 10: the shipped CNN (2026-12-02) rates this test phantom's almost empty striatum "
    "(SBR 0.4-0.6, AC + SC) level 0; the node's verdict is inconclusive (the SBR path says 3-4)"))
def test_the_cnn_itself_sees_an_almost_empty_striatum(
    studies: tuple[Path, dict[str, dict]], models_dir: Path, tmp_path: Path
) -> None:
    root, truth = studies
    uid, t = next((u, t) for u, t in truth.items() if t["factor"] is not None and t["factor"] < 0.5)
    out = tmp_path / "out"
    assert cli.main(["analyze", str(root / t["variant"]), "--out", str(out),
                     "--models", str(models_dir)]) == 0
    summary = json.loads((out / uid / "summary.json").read_text())
    assert min(r["level_cnn"] for r in summary["regions"].values()) >= 2


def test_analyze_without_cnn_rates_by_sbr(
    studies: tuple[Path, dict[str, dict]], models_dir: Path, tmp_path: Path
) -> None:
    root, truth = studies
    uid, t = next((u, t) for u, t in truth.items() if t["factor"] is not None)
    out = tmp_path / "out"
    folder = root / t["variant"]
    assert cli.main(["analyze", str(folder), "--out", str(out), "--models", str(models_dir),
                     "--no-cnn"]) == 0
    summary = json.loads((out / uid / "summary.json").read_text())
    assert summary["global"]["method"] == "sbr"
    assert all(r["level_cnn"] is None for r in summary["regions"].values())


def _check_outputs(folder: Path, series_uid: str) -> None:
    sr = pydicom.dcmread(folder / "sr.dcm")
    picture = pydicom.dcmread(folder / "picture.dcm")
    assert sr.SOPClassUID == codes.COMPREHENSIVE_SR_STORAGE
    assert picture.SOPClassUID.startswith(codes.SECONDARY_CAPTURE_STORAGE)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == series_uid
    assert sr.StudyInstanceUID == picture.StudyInstanceUID
    text = json.dumps((folder / "summary.json").read_text())
    assert "SIM^" not in text and "PatientName" not in text


def test_label_folder_writes_csv_png_and_calibration(
    studies: tuple[Path, dict[str, dict]], models_dir: Path, tmp_path: Path
) -> None:
    root, truth = studies
    out = tmp_path / "labels"
    args = ["label", str(root), "--dataset", "phantoms", "--out", str(out),
            "--models", str(models_dir)]
    assert cli.main(args) == 0
    with (out / "labels.csv").open() as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    assert len(rows) == len(truth) - 1  # the non-DaT study is left out
    for uid, row in rows.items():
        reduced = truth[uid]["factor"] < 0.5
        worst = max(int(row[f"level_{r}"]) for r in ("putamen_left", "putamen_right"))
        assert (worst >= 2) is reduced, row
    for structure in ("caudate", "putamen"):
        assert (out / f"phantoms_{structure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    calibration = json.loads((out / "calibration.json").read_text())
    assert len(calibration["thresholds"]["putamen"]) == 4


def test_label_rejects_unsafe_dataset_name(tmp_path: Path) -> None:
    csv_path = tmp_path / "sbr.csv"
    csv_path.write_text("id,caudate_left,caudate_right,putamen_left,putamen_right\na,1,1,1,1\n")
    with pytest.raises(SystemExit, match="dataset"):
        cli.main(["label", str(csv_path), "--dataset", "../x", "--out", str(tmp_path)])


def test_build_template_from_normal_scans(
    studies: tuple[Path, dict[str, dict]], models_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from service.pipelines.dat_spect.template import load_template

    root, _ = studies
    normals = tmp_path / "normals"
    for variant in ("multiframe", "ge_negative_spacing"):
        assert FACTORS[EncodingVariant(variant)] == 1.0
        shutil.copytree(root / variant, normals / variant)
    out = tmp_path / "template"
    args = ["build-template", str(normals), "--iterations", "1", "--out", str(out),
            "--models", str(models_dir)]
    assert cli.main(args) == 0
    template = load_template(out / "fpcit_template_mni2mm.npz", ATLAS)
    sbr = quantify(template, ATLAS).sbr
    assert all(v > 1.5 for v in sbr.values())  # a normal striatum, correctly placed
    assert float(template[ATLAS.mask("occipital")].mean()) == pytest.approx(1.0, rel=1e-4)
