"""Appearance augmentation of the DaT CNN's training (models/training/augment.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch.nn import functional as F

from models.training.augment import (
    MIRROR_REGIONS,
    AugmentConfig,
    augment,
    gaussian_blur,
    pose_theta,
    smooth_field,
    swap_sides,
    warp_field,
)
from models.training.workflow import midline_box_index
from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.preprocess import contract_for_atlas
from service.pipelines.dat_spect.result import REGIONS

pytestmark = pytest.mark.slow  # torch

SHAPE = (8, 10, 12)
STILL = AugmentConfig(scale_jitter=0.0, rotation_max_deg=0.0, shift_max_vox=0.0)


def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta[None], [1, 1, *x.shape[2:]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("mirror", [None, 5.0, 6.5])
def test_flip_mirrors_about_the_given_index(mirror: float | None) -> None:
    x = torch.zeros(1, 1, *SHAPE)
    x[0, 0, 3, 4, 2] = 1.0
    config = AugmentConfig(**{**STILL.__dict__, "mirror_x_vox": mirror})
    m = (SHAPE[2] - 1) / 2 if mirror is None else mirror
    target = 2 * m - 2
    out = _resample(x, pose_theta(SHAPE, torch.rand(9), True, config))
    if target == int(target):
        assert out[0, 0, 3, 4, int(target)] == pytest.approx(1.0, abs=1e-5)
    else:  # between two voxels: split in half
        assert out[0, 0, 3, 4, int(target)] == pytest.approx(0.5, abs=1e-5)
    assert float(out.sum()) == pytest.approx(1.0, abs=1e-5)
    still = _resample(x, pose_theta(SHAPE, torch.rand(9), False, config))
    torch.testing.assert_close(still, x)


def test_swap_sides_exchanges_left_and_right() -> None:
    names = [r.value for r in REGIONS]
    assert [names[i] for i in MIRROR_REGIONS] == [
        n.replace("left", "x").replace("right", "left").replace("x", "right") for n in names]
    levels = torch.tensor([[0, 0, 3, 0], [1, 2, 0, 4]])
    out = swap_sides(levels, torch.tensor([True, False]))
    assert out.tolist() == [[0, 0, 0, 3], [1, 2, 0, 4]]


def test_midline_of_the_shipped_box_is_mni_x_zero() -> None:
    atlas = load_atlas()
    contract = contract_for_atlas(atlas)
    m = midline_box_index(contract, atlas)
    x_mm = atlas.origin_lps_mm[0] + atlas.spacing_mm[0] * (contract.box_start_zyx[2] + m)
    assert x_mm == pytest.approx(0.0)


def test_blur_matches_scipy() -> None:
    rng = np.random.default_rng(4)
    x = rng.random(SHAPE).astype(np.float32)
    ref = gaussian_filter(x.astype(np.float64), 1.0, mode="nearest", truncate=3.0)
    out = gaussian_blur(torch.from_numpy(x)[None, None], 1.0)[0, 0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_smooth_field_is_standardised_and_smooth() -> None:
    field = smooth_field((32, 40, 48), torch.Generator().manual_seed(1))[0]
    assert float(field.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(field.std()) == pytest.approx(1.0, abs=1e-4)
    steps = field.diff(dim=2).abs()  # white noise of unit SD: mean step about 1.1
    assert float(steps.mean()) < 0.2 and float(steps.max()) < 1.0


def test_augment_is_seeded_and_flips_about_half() -> None:
    batch = torch.rand(64, 1, *SHAPE)
    a = augment(batch, AugmentConfig(), torch.Generator().manual_seed(3))
    b = augment(batch, AugmentConfig(), torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.flipped, b.flipped)
    assert a.x.shape == batch.shape and not torch.equal(a.x, batch)
    assert 16 < int(a.flipped.sum()) < 48
    none = augment(batch, AugmentConfig(flip_probability=0.0), torch.Generator().manual_seed(3))
    assert not none.flipped.any()


def test_shape_warp_moves_structures_a_few_voxels_and_is_off_by_default() -> None:
    """The shape term displaces a blob by a smooth field of the configured amplitude
    (at most about three times it), keeps its mass, and without it the random
    stream and the result are exactly those of a recipe that never had it."""
    shape = (32, 40, 48)  # the shipped crop
    x = torch.zeros(1, 1, *shape)
    x[0, 0, 13:19, 17:23, 12:18] = 1.0  # a putamen-sized block
    plain = AugmentConfig(**{**STILL.__dict__, "blur_sigma_max_vox": 0.0, "noise_max": 0.0,
                             "background_max": 0.0, "gamma_range": (1.0, 1.0),
                             "reference_range": (1.0, 1.0), "scale_range": (1.0, 1.0),
                             "flip_probability": 0.0})
    same = augment(x, plain, torch.Generator().manual_seed(5)).x
    assert torch.allclose(same, x, atol=1e-5)  # nothing on: identity
    zz, yy, xx = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape),
                                indexing="ij")
    centre = [float((c * x[0, 0]).sum() / x.sum()) for c in (zz, yy, xx)]
    moved = []
    for seed in range(12):
        out = augment(x, replace(plain, warp_max_vox=1.5), torch.Generator().manual_seed(seed)).x
        assert float(out.sum()) == pytest.approx(float(x.sum()), rel=0.5)  # local stretch
        c = [float((g * out[0, 0]).sum() / out.sum()) for g in (zz, yy, xx)]
        moved.append(max(abs(a - b) for a, b in zip(c, centre, strict=True)))
    assert max(moved) < 4.5 and max(moved) > 0.3  # a few voxels, not nothing
    field = warp_field(shape, 1.0, torch.Generator().manual_seed(0))
    assert field.shape == (*shape, 3)
    vox = field * torch.tensor([shape[2], shape[1], shape[0]]) / 2.0  # back to voxels
    assert 0.0 < float(vox.abs().max()) < 4.0
    batch = torch.rand(3, 1, *SHAPE)
    a = augment(batch, AugmentConfig(), torch.Generator().manual_seed(7))
    b = augment(batch, AugmentConfig(warp_max_vox=0.0), torch.Generator().manual_seed(7))
    assert torch.equal(a.x, b.x)


def test_one_sided_loss_follows_the_flip() -> None:
    """A bright 'left' block lands on the other side of the midline when flipped."""
    x = torch.zeros(2, 1, *SHAPE)
    x[:, 0, 2:6, 3:7, 1:4] = 3.0  # box columns 1-3: one side
    config = AugmentConfig(**{**STILL.__dict__, "blur_sigma_max_vox": 0.0, "noise_max": 0.0,
                              "background_max": 0.0, "gamma_range": (1.0, 1.0),
                              "reference_range": (1.0, 1.0), "scale_range": (1.0, 1.0),
                              "flip_probability": 0.5})
    for seed in range(20):
        out = augment(x, config, torch.Generator().manual_seed(seed))
        for i in range(2):
            half = SHAPE[2] // 2
            left, right = float(out.x[i, 0, ..., :half].sum()), float(out.x[i, 0, ..., half:].sum())
            assert (right > left) == bool(out.flipped[i])


def test_train_flags_reach_the_config_and_the_card(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """`dopanode train --contrast-range LO HI` / `--warp-max VOX` set the augmentation; the
    card's augmentation text and training flags say so (default: no flag, 0.75-1.33)."""
    import argparse

    from models.training.train import TrainConfig
    from models.training.workflow import augment_flags, augment_text
    from service.pipelines.dat_spect import train_commands

    parser = argparse.ArgumentParser()
    train_commands.register(parser.add_subparsers())
    seen = {}

    def fake_run_train(bench, work, out, config, workers, limit, label_source,  # noqa: ANN001, ANN202
                       keep_splits):  # noqa: ANN001
        seen["config"], seen["keep"] = config, keep_splits
        raise SystemExit(0)

    monkeypatch.setattr(train_commands._training("workflow"), "run_train", fake_run_train)
    args = parser.parse_args(["train", "b", "--work", "w", "--contrast-range", "0.5", "1.5"])
    with pytest.raises(SystemExit):
        args.func(args)
    config = seen["config"]
    assert config.augment.scale_range == (0.5, 1.5) and seen["keep"] is None
    index = tmp_path / "index.csv"
    index.write_text("study_id,split\nsite_a_00001,val\n")
    args = parser.parse_args(["train", "b", "--work", "w", "--keep-splits", str(index)])
    with pytest.raises(SystemExit):
        args.func(args)
    assert seen["keep"] == {"site_a_00001": "val"}
    data = train_commands._training("data")
    grown = [data.Study(f"site_a_0000{i}", "site_a", "train_test", f"g{i}", "normal", tmp_path)
             for i in (1, 9)]
    monkeypatch.setattr(data, "read_manifest", lambda bench: grown)
    args = parser.parse_args(["train", "b", "--work", "w", "--keep-splits", str(index),
                              "--new-groups-split", "test"])
    with pytest.raises(SystemExit):
        args.func(args)
    assert seen["keep"] == {"site_a_00001": "val", "site_a_00009": "test"}
    lone = parser.parse_args(["train", "b", "--work", "w", "--new-groups-split", "val"])
    with pytest.raises(SystemExit, match="needs --keep-splits"):
        lone.func(lone)
    assert "intensity scale (0.5-1.5)" in augment_text(config)
    assert augment_flags(config) == " --contrast-range 0.5 1.5"
    assert augment_flags(TrainConfig()) == ""
    assert "intensity scale (0.75-1.33)" in augment_text(TrainConfig())
    bad = parser.parse_args(["train", "b", "--work", "w", "--contrast-range", "1.5", "0.5"])
    with pytest.raises(SystemExit, match="LO <= HI"):
        bad.func(bad)
    args = parser.parse_args(["train", "b", "--work", "w", "--warp-max", "1"])
    with pytest.raises(SystemExit):
        args.func(args)
    warped = seen["config"]
    assert warped.augment.warp_max_vox == 1.0
    assert augment_flags(warped) == " --warp-max 1"
    assert "amplitude up to 1 x the 2 mm voxel" in augment_text(warped)
    assert "displacement" not in augment_text(TrainConfig())
    bad = parser.parse_args(["train", "b", "--work", "w", "--warp-max", "-1"])
    with pytest.raises(SystemExit, match="VOX >= 0"):
        bad.func(bad)
