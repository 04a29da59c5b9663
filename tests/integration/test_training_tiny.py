"""CI keep-alive of the training code: a tiny benchmark of synthetic normalised
volumes, one epoch, ONNX export, torch/onnxruntime parity, evaluation, the
served session, and the ``export`` / ``evaluate`` commands.

The synthetic "benchmark" has three sites (two in-distribution, one unseen)
of 12 studies in anatomy groups of 4. Each study's volume is made on the atlas
grid from known regional levels (striatal uptake scaled per level, blurred,
Poisson noise); the site changes the camera sensitivity and the SBR scale,
as attenuation correction does. The measuring step is swapped for one that
builds that volume and runs the real ``cnn_input`` and ``quantify``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch  # the sim extra; make test installs it
from scipy.ndimage import gaussian_filter  # noqa: E402

from models.training import data, evaluate, workflow  # noqa: E402
from models.training.augment import AugmentConfig, augment, gaussian_blur, shift  # noqa: E402
from models.training.export import check_parity  # noqa: E402
from models.training.network import (  # noqa: E402
    StriatumNet,
    level_probabilities,
    ordinal_loss,
    predicted_levels,
)
from models.training.train import TrainConfig, load_checkpoint, train  # noqa: E402
from service.imaging.atlas import load_atlas  # noqa: E402
from service.pipelines.dat_spect import train_commands as commands  # noqa: E402
from service.pipelines.dat_spect.cnn import CnnSession  # noqa: E402
from service.pipelines.dat_spect.preprocess import cnn_input  # noqa: E402
from service.pipelines.dat_spect.quantify import quantify  # noqa: E402
from service.pipelines.dat_spect.result import REGIONS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.no_storage]  # trains a tiny CNN with torch

SITES = {"site_x": ("train_test", 1.0, 90.0), "site_y": ("train_test", 0.6, 40.0),
         "site_u": ("unseen", 0.8, 60.0)}  # role, SBR scale, counts scale
STUDIES_PER_SITE = 12
NORMAL_BR = {"caudate": 3.0, "putamen": 2.6}
FRACTION_OF_LEVEL = (1.0, 0.8, 0.6, 0.4, 0.15)


def synthetic_measure(series_dir: Path) -> dict:
    """(x, sbr, age) of the synthetic study described by ``series_dir/study.json``."""
    spec = json.loads((series_dir / "study.json").read_text())
    atlas = load_atlas()
    rng = np.random.default_rng(spec["seed"])
    volume = atlas.gm_zyx * 1.0 + atlas.wm_zyx * 0.35
    for region, level in zip(REGIONS, spec["levels"], strict=True):
        br = NORMAL_BR[region.structure] * spec["sbr_scale"] * FRACTION_OF_LEVEL[level]
        volume[atlas.mask(region.value)] = 1.0 + br
    counts = gaussian_filter(volume, 1.5 + rng.uniform(0, 1)) * spec["counts_scale"]
    volume = rng.poisson(np.maximum(counts, 0)).astype(np.float32)
    sbr = quantify(volume, atlas).sbr
    return {"x": cnn_input(volume, atlas), "sbr": np.array([sbr[r] for r in REGIONS]),
            "age": 60.0}


def make_bench(root: Path) -> Path:
    """Manifest and one ``study.json`` per study (seeded)."""
    rng = np.random.default_rng(5)
    rows = []
    for site, (role, sbr_scale, counts_scale) in SITES.items():
        for i in range(STUDIES_PER_SITE):
            sid = f"{site}_{i:05d}"
            normal = rng.random() < 0.4
            levels = [0] * 4 if normal else rng.integers(0, 5, 4).tolist()
            folder = root / site / sid / "series"
            folder.mkdir(parents=True)
            (folder / "study.json").write_text(json.dumps({
                "seed": int(rng.integers(2**31)), "levels": levels, "sbr_scale": sbr_scale,
                "counts_scale": counts_scale}))
            rows.append({"study_id": sid, "site": site, "role": role,
                         "anatomy_id": f"{site}_a{i // 4:04d}",
                         "disease_class": "normal" if normal else "pd"})
    with (root / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    bench = make_bench(root / "bench")
    out_model = root / "models" / "tiny_cnn.onnx"
    config = TrainConfig(epochs=1, batch_size=8, width=4, threads=1, seed=7)
    summary = workflow.run_train(bench, root / "work", out_model, config,
                                 measure_fn=synthetic_measure)
    return {"root": root, "work": root / "work", "model": out_model, "summary": summary}


def test_dataset_cache_labels_and_splits(trained: dict) -> None:
    ts = data.load_training_set(trained["work"])
    assert ts.x.shape == (3 * STUDIES_PER_SITE, 1, 32, 40, 48) and ts.x.dtype == np.float32
    split = ts.column("split")
    assert set(split[ts.column("site") == "site_u"]) == {"test_unseen"}
    assert {"train", "test"} <= set(split)
    for group in set(ts.column("anatomy_id")):  # anatomy groups never straddle splits
        assert len(set(split[ts.column("anatomy_id") == group])) == 1
    for site in SITES:  # per-site GMM labels: a lower level never has a higher SBR
        site_set = ts.subset(ts.column("site") == site)
        for structure in ("caudate", "putamen"):
            cols = [i for i, r in enumerate(REGIONS) if r.structure == structure]
            sbr, lev = site_set.sbr[:, cols].ravel(), site_set.levels[:, cols].ravel()
            order = np.argsort(-sbr)
            assert (np.diff(lev[order]) >= 0).all()
        assert (trained["work"] / "labels" / site / "calibration.json").is_file()


def test_export_parity_and_serving(trained: dict) -> None:
    summary = trained["summary"]
    assert summary["parity"]["ok"] and summary["parity"]["max_abs_diff"] < 1e-4
    assert summary["parity"]["n_scans"] > 0 and len(summary["history"]) == 1
    model = trained["model"]
    assert model.with_name(model.name + ".sha256").read_text().split()[0] == summary["sha256"]
    session = CnnSession(model)
    ts = data.load_training_set(trained["work"])
    pred = session.predict(ts.x[0])
    assert len(pred.regions) == 4
    for region in pred.regions:
        assert sum(region.probabilities) == pytest.approx(1.0, abs=1e-4)
    # a second batch through parity with more scans than one batch
    net, _ = load_checkpoint(trained["work"] / "checkpoint.pt")
    assert check_parity(net, model, ts.x[:20], batch_size=7).ok
    card = model.with_suffix(".card.md").read_text()
    assert summary["sha256"] in card and "$" not in card.replace("$ ", "")


def test_evaluation_report(trained: dict) -> None:
    report = json.loads(trained["model"].with_suffix(".evaluation.json").read_text())
    for group in ("in_distribution", "unseen"):
        for method in ("cnn", "sbr_carried"):
            m = report[group][method]
            assert 0.0 <= m["accuracy_caudate"] <= 1.0
            assert sum(map(sum, m["confusion_putamen"])) == 2 * m["n_scans"]
        assert report[group]["cnn"]["n_inconclusive"] <= report[group]["cnn"]["n_scans"]
    assert report["unseen"]["cnn"]["n_scans"] == STUDIES_PER_SITE
    assert "| unseen | paper |" in report["table"]


def test_metrics_against_hand_counts() -> None:
    true = np.array([[0, 0, 1, 2], [3, 4, 4, 0]])
    pred = np.array([[0, 1, 1, 4], [3, 4, 2, 0]])
    m = evaluate.level_metrics(true, pred)
    assert m["accuracy_caudate"] == 0.75 and m["accuracy_putamen"] == 0.5
    assert m["all_four_correct"] == 0.0 and m["within_one_putamen"] == 0.5
    assert m["confusion_caudate"][0] == [1, 1, 0, 0, 0]
    b = evaluate.binary_metrics(np.array([True, False, True]), np.array([True, True, True]),
                                np.array([False, True, False]))
    assert b["binary_accuracy"] == pytest.approx(2 / 3) and b["specificity"] == 0.0
    assert b["n_inconclusive"] == 1 and b["binary_accuracy_conclusive"] == 1.0
    assert evaluate.carried_calibration("site_b", ["site_a", "site_b"]) == "site_a"
    assert evaluate.carried_calibration("site_d", ["site_a", "site_b"]) == "site_a"
    levels = evaluate.sbr_levels(np.array([[3.0, 1.0, 2.0, 0.1]]),
                                 {"caudate": [2.5, 2.0, 1.3, 0.7], "putamen": [1.8, 1.5, 1.0, 0.5]})
    assert levels.tolist() == [[0, 3, 0, 4]]


def test_commands_export_and_evaluate(trained: dict, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    other = trained["root"] / "again.onnx"
    args = parser.parse_args(["export", str(trained["work"]), "--out", str(other)])
    assert args.func(args) == 0
    assert "ok" in capsys.readouterr().out
    report_path = trained["root"] / "report.json"
    args = parser.parse_args(["evaluate", str(trained["work"]), "--model", str(other),
                              "--json", str(report_path)])
    assert args.func(args) == 0
    assert "in_distribution | cnn" in capsys.readouterr().out
    assert json.loads(report_path.read_text())["sha256"] == CnnSession(other).sha256


def test_training_is_reproducible_with_a_seed(rng) -> None:
    x = rng.normal(0.0, 1.0, (6, 1, 16, 16, 16)).astype(np.float32)
    y = rng.integers(0, 5, (6, 4))
    r = y.max(axis=1) >= 2
    config = TrainConfig(epochs=1, batch_size=3, width=2, threads=1, seed=11)
    nets = [train(x, y, r, x[:2], y[:2], r[:2], config).net.state_dict() for _ in range(2)]
    assert all(torch.equal(nets[0][k], nets[1][k]) for k in nets[0])
    other = train(x, y, r, x[:2], y[:2], r[:2], replace(config, seed=12)).net.state_dict()
    assert not all(torch.equal(nets[0][k], other[k]) for k in nets[0])


def test_ordinal_heads_are_rank_consistent() -> None:
    net = StriatumNet((16, 16, 16), width=2).eval()
    with torch.no_grad():
        net.heads.bias_steps.normal_(0.0, 3.0)  # any value keeps the order
        thresholds = net.heads.thresholds()
        assert (thresholds[:, 1:] < thresholds[:, :-1]).all()
        probs = level_probabilities(net(torch.randn(5, 1, 16, 16, 16)))
    assert probs.shape == (5, 4, 5) and (probs >= 0).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, 4))
    logits = torch.tensor([[[2.0, 0.5, -0.5, -3.0]] * 4])
    assert predicted_levels(logits).tolist() == [[2, 2, 2, 2]]
    perfect = ordinal_loss(torch.tensor([[[9.0, 9.0, -9.0, -9.0]] * 4]), torch.tensor([[2] * 4]))
    wrong = ordinal_loss(torch.tensor([[[9.0, 9.0, -9.0, -9.0]] * 4]), torch.tensor([[4] * 4]))
    assert float(perfect) < 1e-3 < float(wrong)


def test_augmentation() -> None:
    x = torch.zeros(1, 4, 5, 6)
    x[0, 1, 2, 3] = 1.0
    moved = shift(x, (1, -2, 2))
    assert moved[0, 2, 0, 5] == 1.0 and moved.sum() == 1.0
    assert shift(x, (0, 3, 0)).sum() == 0.0  # shifted out of the box, zero filled
    blob = torch.zeros(1, 1, 21, 21, 21)
    blob[0, 0, 10, 10, 10] = 1.0
    blurred = gaussian_blur(blob, 1.5)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float(blurred.max()) < 0.1 and int(blurred.argmax()) == int(blob.argmax())
    batch = torch.rand(3, 1, 8, 8, 8)
    a = augment(batch, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment(batch, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, batch) and a.x.shape == batch.shape


def test_pipeline_serves_the_exported_cnn(trained: dict, tmp_path: Path) -> None:
    """The node's pipeline with the tiny model: CNN levels beside the SBR levels, in the SR."""
    import highdicom as hd
    import pydicom

    from service.dicom.header import read_series
    from service.imaging.atlas import load_atlas
    from service.pipelines.base import JobContext
    from service.pipelines.dat_spect import codes
    from service.pipelines.dat_spect.pipeline import DatSpectPipeline
    from service.testing.dat_phantom import make_phantom, normal_sbr, random_pose
    from service.testing.nmdata import write_marker_study

    rng = np.random.default_rng(3)
    phantom = make_phantom(load_atlas(), normal_sbr(), random_pose(rng), rng)
    paths = write_marker_study(tmp_path / "study", "multiframe", image=phantom.image,
                               uid_seed="tiny-cnn-pipeline")
    session = CnnSession(trained["model"])
    pipeline = DatSpectPipeline(cnn=session)
    datasets = read_series(paths)
    result = pipeline.analyse(datasets, {})
    sr, _ = pipeline.build_reports(result, datasets, JobContext("job-tiny-cnn", 0.0))
    assert result.global_score.method == "cnn"
    assert result.algorithm.model_sha256 == trained["summary"]["sha256"]
    for r in result.regions:
        assert r.level_cnn is not None and r.level == r.level_cnn
        assert r.cnn_probabilities is not None and len(r.cnn_probabilities) == 5
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
    report = hd.sr.srread(io.BytesIO(buffer.getvalue()))
    groups = {g.tracking_identifier: g for g in report.content.get_image_measurement_groups()}
    for r in result.regions:
        group = groups[r.region.value.replace("_", " ")]
        names = {e.name.value for e in group.get_qualitative_evaluations()}
        assert {codes.UPTAKE_LEVEL_CONCEPT.value, "DN-0002", "DN-0003"} <= names
    assert trained["summary"]["sha256"].encode() in buffer.getvalue()  # algorithm parameters
