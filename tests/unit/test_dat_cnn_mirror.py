"""The DaT CNN's mirror-difference channel and one-sided loss weight (issue 10 point 3).

models/training/network.py: ``MirrorDifference`` gives the network the crop
minus its left/right mirror image about the MNI midline, so a one-sided
putamen loss is a signed difference it sees in its first convolution;
train.py weights scans with a one-sided loss.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from models.training.export import check_parity, export_onnx
from models.training.network import (
    MirrorDifference,
    StriatumNet,
    global_loss,
    mirror_index,
    one_sided,
    ordinal_loss,
)
from models.training.train import (
    TrainConfig,
    TrainResult,
    build_net,
    load_checkpoint,
    save_checkpoint,
    scan_weights,
    train,
)
from models.training.workflow import midline_box_index
from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.cnn import CnnSession
from service.pipelines.dat_spect.preprocess import contract_for_atlas

pytestmark = pytest.mark.slow  # torch

SHAPE = (8, 8, 16)


def _slow_mirror(x: np.ndarray, m: float) -> np.ndarray:
    """Reference: column i of the result is column 2 m - i of x, zero outside the box."""
    out = np.zeros_like(x)
    width = x.shape[-1]
    for i in range(width):
        j = int(round(2 * m)) - i
        if 0 <= j < width:
            out[..., i] = x[..., j]
    return out


@pytest.mark.parametrize("mirror", [7.5, 8.0, 5.0, 10.5])
def test_mirror_difference_matches_a_slow_reference(mirror: float) -> None:
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 1, *SHAPE)).astype(np.float32))
    out = MirrorDifference(SHAPE[2], mirror)(x)
    assert out.shape == (2, 2, *SHAPE)
    torch.testing.assert_close(out[:, :1], x)
    expected = x.numpy()[:, 0] - _slow_mirror(x.numpy()[:, 0], mirror)
    np.testing.assert_allclose(out[:, 1].numpy(), expected, atol=1e-6)


def test_mirror_index_refuses_a_midline_between_voxel_centre_and_edge() -> None:
    with pytest.raises(ValueError, match="voxel centre or edge"):
        mirror_index(16, 7.3)
    assert mirror_index(4, 1.0).tolist() == [2, 1, 0, 4]  # column 3 has no mirror: the pad


def test_a_symmetric_scan_has_no_difference_and_a_one_sided_loss_a_signed_one() -> None:
    m = 8.0
    x = torch.zeros(1, 1, *SHAPE)
    x[..., 3:6, 2:6, 4] = 2.0  # "left putamen" at column 4, its mirror at column 12
    x[..., 3:6, 2:6, 12] = 2.0
    diff = MirrorDifference(SHAPE[2], m)(x)[:, 1]
    assert float(diff.abs().max()) == 0.0
    x[..., 3:6, 2:6, 4] = 1.0  # the left side at 50 %
    diff = MirrorDifference(SHAPE[2], m)(x)[:, 1]
    assert float(diff[..., 4].min()) == -1.0 and float(diff[..., 12].max()) == 1.0
    assert float(diff.abs().sum()) == pytest.approx(2 * 3 * 4 * 1.0)


def test_the_shipped_box_mirrors_about_the_mni_midline() -> None:
    atlas = load_atlas()
    contract = contract_for_atlas(atlas)
    m = midline_box_index(contract, atlas)
    net = StriatumNet(contract.box_shape_zyx, 2, mirror_x_vox=m)
    assert isinstance(net.inputs, MirrorDifference)
    # x = 0 mm must map to itself, x = +-10 mm to each other
    index = net.inputs.index.tolist()
    assert index[int(m)] == int(m)
    assert index[int(m) + 5] == int(m) - 5


def test_one_sided_cases_and_their_weights() -> None:
    levels = torch.tensor([[0, 0, 2, 0], [0, 0, 1, 3], [0, 0, 2, 2], [3, 3, 0, 0],
                           [0, 0, 0, 0], [0, 1, 4, 1]])
    assert one_sided(levels).tolist() == [True, True, False, False, False, True]
    assert scan_weights(levels, 1.0) is None
    weights = scan_weights(levels, 3.0)
    assert weights is not None
    assert weights.tolist() == [3.0, 3.0, 1.0, 1.0, 1.0, 3.0]


def test_weighted_losses_are_weighted_means_and_unweighted_ones_unchanged() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, 4, generator=gen)
    levels = torch.randint(0, 5, (5, 4), generator=gen)
    targets = (levels[..., None] > torch.arange(4)).float()
    per_scan = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean((1, 2))
    torch.testing.assert_close(ordinal_loss(logits, levels),
                               F.binary_cross_entropy_with_logits(logits, targets))
    w = torch.tensor([1.0, 2.0, 1.0, 4.0, 1.0])
    torch.testing.assert_close(ordinal_loss(logits, levels, w), (per_scan * w).sum() / w.sum())
    g, r = torch.randn(5, generator=gen), torch.tensor([1, 0, 1, 0, 0])
    per = F.binary_cross_entropy_with_logits(g, r.float(), reduction="none")
    torch.testing.assert_close(global_loss(g, r, w), (per * w).sum() / w.sum())


def _tiny_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two blobs mirrored about column 8; a one-sided case halves one of them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.05, (n, 1, *SHAPE)).astype(np.float32)
    levels = np.zeros((n, 4), np.int64)
    for i in range(n):
        left, right = 2.0, 2.0
        side = i % 3  # 0 normal, 1 left loss, 2 right loss
        if side == 1:
            left, levels[i, 2] = 1.0, 2
        elif side == 2:
            right, levels[i, 3] = 1.0, 2
        x[i, 0, 3:6, 2:6, 4:6] += left
        x[i, 0, 3:6, 2:6, 11:13] += right
    return x, levels, np.asarray((levels >= 2).any(axis=1))


def test_training_with_the_mirror_channel_checkpoint_and_onnx(tmp_path: Path) -> None:
    from service.pipelines.dat_spect.preprocess import PreprocessContract

    x, y, r = _tiny_data(12, 0)
    config = TrainConfig(epochs=2, batch_size=4, width=2, threads=1, mirror_channel=True,
                         one_sided_weight=2.0)
    config = TrainConfig(**{**config.__dict__, "augment": type(config.augment)(
        **{**config.augment.__dict__, "mirror_x_vox": 8.0})})
    result: TrainResult = train(x, y, r, x[:3], y[:3], r[:3], config)
    assert result.net.mirror_x_vox == 8.0
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["val_loss"])
    save_checkpoint(result, config, tmp_path / "checkpoint.pt", {})
    net, ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["mirror_x_vox"] == 8.0
    with torch.no_grad():
        torch.testing.assert_close(net(torch.from_numpy(x)), result.net(torch.from_numpy(x)))
    contract = PreprocessContract((0, 0, 0), SHAPE, (8, 8, 16))
    export_onnx(net, contract, tmp_path / "m.onnx", {"dopanode_mirror_channel": "true"})
    parity = check_parity(net, tmp_path / "m.onnx", x)
    assert parity.ok, parity
    session = CnnSession(tmp_path / "m.onnx")
    probs, p_reduced = session.outputs(x[:2])
    assert probs.shape == (2, 4, 5) and p_reduced is not None


def test_build_net_without_the_mirror_channel_is_the_version_1_network() -> None:
    net = build_net(SHAPE, TrainConfig(width=2))
    assert net.mirror_x_vox is None
    assert _first_conv(net).in_channels == 1
    mirrored = build_net(SHAPE, TrainConfig(width=2, mirror_channel=True))
    assert mirrored.mirror_x_vox == (SHAPE[2] - 1) / 2.0
    assert _first_conv(mirrored).in_channels == 2


def _first_conv(net: StriatumNet) -> torch.nn.Conv3d:
    conv = next(m for m in net.features.modules() if isinstance(m, torch.nn.Conv3d))
    assert isinstance(conv, torch.nn.Conv3d)
    return conv
