"""A tiny training run of the FDOPA tumour U-Net, resume, export, parity and serving."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from models.fdopa_seg.augment import AugmentConfig, make_patch  # noqa: E402
from models.fdopa_seg.data import Sample, check_anatomy, split_of  # noqa: E402
from models.fdopa_seg.export import export_onnx, export_run  # noqa: E402
from models.fdopa_seg.network import UNet3d  # noqa: E402
from models.fdopa_seg.train import (  # noqa: E402
    TrainConfig,
    _batch,
    combine,
    load_net,
    loss_fn,
    loss_text,
    recompute_batch_norm,
    train,
    training_loss,
    tversky_loss,
)
from service.errors import AnalysisError  # noqa: E402
from service.inference.manifest import sidecar_path  # noqa: E402
from service.pipelines.fdopa_pet.segment import (  # noqa: E402
    CONTRACT,
    SegContract,
    TumourSegmenter,
)
from service.testing.fdopa_sample import tiny_static_sample  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.no_storage]

CONFIG = TrainConfig(steps=4, width=2, checkpoint_every=2, val_every=2, threads=1,
                     augment=AugmentConfig(patch_zyx=(16, 16, 16)))


def _sample(seed: int) -> Sample:
    """A box with brain level 1 and one hot sphere (the target)."""
    rng = np.random.default_rng(seed)
    shape = CONTRACT.box_shape_zyx
    z, y, x = np.indices(shape)
    image = np.zeros(shape, np.float32)
    image[8:72, 10:86, 12:68] = 1.0
    centre = rng.integers([20, 25, 25], [60, 70, 55])
    target = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 16
    image[target] = 3.0
    image += rng.normal(0, 0.05, shape).astype(np.float32)
    mask = target.astype(np.uint8)
    return Sample(f"synthetic_{seed}", image, mask, mask)


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [_sample(s) for s in range(3)]


@pytest.fixture(scope="module")
def run(samples: list[Sample], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(CONFIG, samples[:2], samples[2:], out)
    return out


def test_splits_keep_the_benchmark_test_indices_out() -> None:
    assert [split_of(i) for i in (0, 5, 3, 23, 1, 4)] == [
        "test", "test", "val", "val", "train", "train"]


def test_patches_are_aligned_and_biased_to_the_tumour(samples: list[Sample]) -> None:
    gen = torch.Generator().manual_seed(1)
    config = replace(CONFIG.augment, tumour_bias=1.0, blur_sigma_max_vox=0.0, noise_max=0.0,
                     gamma_range=(1.0, 1.0), intensity_range=(1.0, 1.0))
    for _ in range(4):
        x, y = make_patch(samples[0].image_zyx, samples[0].target_zyx, config, gen)
        assert x.shape == y.shape == (1, 16, 16, 16)
        assert y.sum() > 0  # centred on a tumour voxel
        assert float(x[y > 0].mean()) > 2.0 > float(x[y == 0].mean())


def _assert_resume_is_exact(config: TrainConfig, full_run: Path, samples: list[Sample],
                            partial: Path) -> None:
    """A run stopped after 2 steps and started again ends with ``full_run``'s weights."""
    full, _ = load_net(full_run / "checkpoint.pt")
    train(replace(config, steps=2), samples[:2], samples[2:], partial)
    state = torch.load(partial / "checkpoint.pt", weights_only=False)
    state["config"]["steps"] = config.steps
    torch.save(state, partial / "checkpoint.pt")
    train(config, samples[:2], samples[2:], partial)
    resumed, _ = load_net(partial / "checkpoint.pt")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_training_writes_history_checkpoints_and_resumes_to_the_same_weights(
        run: Path, samples: list[Sample], tmp_path: Path) -> None:
    lines = (run / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 and (run / "best.pt").exists()
    _assert_resume_is_exact(CONFIG, run, samples, tmp_path / "partial")


def test_clipping_and_precise_batch_norm_resume_exactly(samples: list[Sample],
                                                        tmp_path: Path) -> None:
    config = replace(CONFIG, grad_clip=0.5, precise_bn_batches=2)
    train(config, samples[:2], samples[2:], tmp_path / "full")
    _assert_resume_is_exact(config, tmp_path / "full", samples, tmp_path / "partial")
    net, _ = load_net(tmp_path / "full" / "checkpoint.pt")
    assert all(m.momentum == 0.1 for m in net.modules()
               if isinstance(m, torch.nn.BatchNorm3d))  # restored after the re-estimate


def test_the_tversky_loss_charges_a_missed_small_lesion_its_whole_patch() -> None:
    """Two patches: a large tumour found, a small one missed whole. The batch-wide
    Dice barely notices the miss; the per-patch Tversky index charges it fully."""
    target = torch.zeros(2, 1, 8, 8, 8)
    target[0, 0, :6, :6, :6] = 1  # 216 voxels, found
    target[1, 0, 3:5, 3:5, 3:5] = 1  # 8 voxels, missed
    logits = torch.where(target > 0, 8.0, -8.0)
    logits[1] = -8.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(loss_fn(logits, target) - bce) < 0.05
    assert float(tversky_loss(logits, target, 0.7) - bce) > 0.4  # (1 - 1/6.6) / 2
    # beta weighs misses against false positives
    assert tversky_loss(logits, target, 0.9) > tversky_loss(logits, target, 0.5)
    config = replace(CONFIG, loss="tversky_bce", tversky_beta=0.7)
    assert torch.equal(training_loss(config, logits, target), tversky_loss(logits, target, 0.7))
    assert "Tversky" in loss_text(config) and "soft Dice" in loss_text(CONFIG)
    with pytest.raises(ValueError, match="unknown loss"):
        training_loss(replace(CONFIG, loss="focal"), logits, target)


def test_fine_tuning_starts_from_the_given_weights(run: Path, samples: list[Sample],
                                                   tmp_path: Path) -> None:
    config = replace(CONFIG, steps=2, init=str(run / "best.pt"), loss="tversky_bce",
                     learning_rate=0.0)
    train(config, samples[:2], samples[2:], tmp_path / "tuned")
    start, _ = load_net(run / "best.pt")
    tuned, _ = load_net(tmp_path / "tuned" / "checkpoint.pt")
    for name, value in start.state_dict().items():  # lr 0: weights unchanged
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(value, tuned.state_dict()[name]), name


def test_precise_batch_norm_is_the_average_over_the_batches(samples: list[Sample]) -> None:
    config = replace(CONFIG, precise_bn_batches=3)
    torch.manual_seed(0)
    net = UNet3d(config.width).train()
    recompute_batch_norm(net, samples, config, step=7)
    conv, bn = net.down[0][0], net.down[0][1]
    gen = torch.Generator().manual_seed(config.seed + 7)
    with torch.no_grad():
        means = [conv(_batch(samples, config, gen)[0]).mean(dim=(0, 2, 3, 4))
                 for _ in range(3)]
    assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
    assert bn.num_batches_tracked == 3 and bn.momentum == 0.1


def test_a_cache_of_the_other_anatomy_is_refused(tmp_path: Path) -> None:
    from service.sim.fdopa.head import head_labels

    now = head_labels()[1]
    assert check_anatomy(tmp_path) == now
    assert (tmp_path / "anatomy.txt").read_text().strip() == now
    other = tmp_path / "other"
    other.mkdir()
    (other / "anatomy.txt").write_text("synthetic\n" if now != "synthetic" else "desikan_killiany\n")
    with pytest.raises(ValueError, match="DOPANODE_FDOPA_ANATOMY="):
        check_anatomy(other)


def test_validation_per_anatomy_and_the_best_step_on_their_mean(
        samples: list[Sample], tmp_path: Path) -> None:
    import json

    assert combine({"a": {"val_dice_mean": 0.2, "val_dice_median": 0.4, "val_n_tumour": 3,
                          "val_fp_ml_no_tumour": 1.0},
                    "b": {"val_dice_mean": 0.8, "val_dice_median": 0.6, "val_n_tumour": 9,
                          "val_fp_ml_no_tumour": 0.0}}) == {
        "val_dice_mean": 0.5, "val_dice_median": 0.5, "val_n_tumour": 12,
        "val_fp_ml_no_tumour": 0.5}  # each anatomy weighs the same, whatever its n
    out = tmp_path / "multi"
    val = {"desikan_killiany": samples[2:], "harvard_oxford": samples[:1] * 2}
    best = train(CONFIG, samples[:2], val, out)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    for record in history:
        per = record["val_by_anatomy"]
        assert set(per) == set(val) and per["harvard_oxford"]["val_n_tumour"] == 2
        assert record["val_dice_mean"] == pytest.approx(
            np.mean([r["val_dice_mean"] for r in per.values()]))
    assert best == max(history, key=lambda r: r["val_dice_mean"])
    (out / "command.json").write_text(json.dumps({
        "anatomy": "desikan_killiany and harvard_oxford", "anatomy_scope": "2 head anatomies",
        "n_train": 2, "n_val": 3, "caches": [{"data": "dk"}, {"data": "ho"}]}))
    card = export_run(out, tmp_path / "multi.onnx", {"command_seconds": 0})
    text = (tmp_path / "multi.card.md").read_text()
    assert "2 head anatomies (desikan_killiany and harvard_oxford labels)" in text
    assert "Per anatomy" in text and "harvard_oxford Dice mean" in text
    assert card["val_by_anatomy"] in text


def test_one_anatomy_keeps_the_record_and_the_card_text(run: Path, tmp_path: Path) -> None:
    import json

    for line in (run / "history.jsonl").read_text().splitlines():
        assert "val_by_anatomy" not in json.loads(line)
    export_run(run, tmp_path / "one.onnx", {"command_seconds": 0})
    text = (tmp_path / "one.card.md").read_text()
    assert "one head anatomy (synthetic labels)" in text and "Per anatomy" not in text
    assert "in validation studies without one.\nThese are" in text


def test_export_parity_and_the_segmenter_round_trip(run: Path, tmp_path: Path) -> None:
    onnx_path = tmp_path / "seg.onnx"
    fields = export_run(run, onnx_path, {"n_train": 2, "n_val": 1, "command_seconds": 0,
                                              "limit_arg": "--limit 1 "})
    assert float(fields["parity"]) < 1e-4
    card = onnx_path.with_suffix(".card.md").read_text()
    assert "not for diagnosis" in card and "SIMULATED" in card and fields["sha256"] in card
    seg = TumourSegmenter(onnx_path)
    assert seg.info.method == "unet" and seg.info.model_sha256 == fields["sha256"]
    assert seg.info.model_name == "seg"
    # a native volume on an anisotropic grid: probability on that grid
    shape = (40, 100, 100)
    affine = np.diag([3.0, 1.9, 1.9, 1.0])
    affine[:3, 3] = [-95.0, -95.0, -60.0]
    vol = np.zeros(shape, np.float32)
    vol[5:35, 15:85, 20:80] = 4000.0
    prob = seg.segment(vol, affine)
    assert prob.shape == shape and prob.dtype == np.float32
    assert 0.0 <= float(prob.min()) and float(prob.max()) <= 1.0
    net, _ = load_net(run / "best.pt")
    box = np.random.default_rng(3).random(CONTRACT.box_shape_zyx).astype(np.float32)
    with torch.no_grad():
        ref = torch.sigmoid(net(torch.from_numpy(box)[None, None]))[0, 0].numpy()
    assert float(np.abs(ref - seg.predict_box(box)).max()) < 1e-4


def test_a_wrong_checksum_or_contract_is_refused(run: Path, tmp_path: Path) -> None:
    net, _ = load_net(run / "best.pt")
    good = tmp_path / "good.onnx"
    sha = export_onnx(net, good)
    with pytest.raises(AnalysisError) as err:
        TumourSegmenter(good, expected_sha256="0" * 64)
    assert err.value.code == "model_checksum_mismatch"
    tampered = tmp_path / "tampered.onnx"
    shutil.copy(good, tampered)
    sidecar_path(tampered).write_text(sha + "\n")
    with tampered.open("ab") as f:
        f.write(b"\0")
    with pytest.raises(AnalysisError) as err:
        TumourSegmenter(tampered)
    assert err.value.code == "model_checksum_mismatch"
    other = tmp_path / "other.onnx"
    export_onnx(net, other, SegContract(brain_fraction=0.4))
    with pytest.raises(AnalysisError) as err:
        TumourSegmenter(other)
    assert err.value.code == "model_contract" and "contract" in err.value.reason
    assert TumourSegmenter(good).info.model_sha256 == sha


def test_the_network_keeps_the_box_shape() -> None:
    net = UNet3d(width=2)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 16, 24, 16))
    assert out.shape == (1, 1, 16, 24, 16)


def test_the_evaluation_summary(run: Path, tmp_path: Path) -> None:
    from models.fdopa_seg.evaluate import (
        card_section,
        evaluate_study,
        evaluation_ids,
        summarise,
        update_card,
    )

    assert [s.index for s in evaluation_ids("site_a", 3)] == [0, 5, 10]
    assert [s.index for s in evaluation_ids("site_d_unseen", 3)] == [0, 1, 2]
    onnx_path = tmp_path / "seg.onnx"
    export_onnx(load_net(run / "best.pt")[0], onnx_path)
    image, labels, affine = tiny_static_sample()
    np.savez_compressed(tmp_path / "s.npz", image_zyx=image, labels_zyx=labels, affine=affine)
    row = evaluate_study(TumourSegmenter(onnx_path), tmp_path / "s.npz")
    assert row["truth_ml"] == pytest.approx(216 * 0.008) and 0.0 <= row["dice"] <= 1.0
    summary = summarise([row, {"dice": 0.5, "dice_rano": 0.5, "measurable": True,
                               "found": True}, {"fp_ml": 0.0}])
    assert summary["n"] == 3 and summary["dice"]["n"] == 2 and summary["no_tumour_any_fp"] == 0
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    for _ in range(2):  # replaced, not appended twice
        update_card(card, card_section({"site_a": {"summary": summary}}, ["site_a"], 12))
    text = card.read_text()
    assert text.count("## Evaluation") == 1 and "| site_a | 3 | 2 |" in text
