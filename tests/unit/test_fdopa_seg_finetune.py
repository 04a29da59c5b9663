"""Fine-tuning from an exported U-Net (models/fdopa_seg/from_onnx.py) and the bias-field
augmentation (models/fdopa_seg/augment.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from models.fdopa_seg.augment import (  # noqa: E402
    AugmentConfig,
    augment_text,
    bias_field,
    make_patch,
)
from models.fdopa_seg.export import _config, check_parity, export_onnx, synthetic_boxes  # noqa: E402
from models.fdopa_seg.from_onnx import calibrate, unfold  # noqa: E402
from models.fdopa_seg.network import UNet3d  # noqa: E402
from models.fdopa_seg.train import TrainConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.no_storage]


def _trained_looking_net(seed: int) -> UNet3d:
    """A width-2 U-Net whose batch norms hold non-trivial statistics and parameters."""
    torch.manual_seed(seed)
    net = UNet3d(width=2)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net.eval()


def test_unfolding_an_export_gives_the_same_function_before_and_after_calibration(
        tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    export_onnx(_trained_looking_net(1), onnx_path)
    net, folded = unfold(onnx_path, width=2)
    assert len(folded) == sum(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())
    assert check_parity(net, onnx_path, synthetic_boxes(1, 0)) < 1e-4
    boxes = synthetic_boxes(2, 3)
    calibrate(net, folded, boxes, [np.zeros_like(b) for b in boxes], n_patches=4)
    assert check_parity(net, onnx_path, synthetic_boxes(1, 4)) < 1e-4
    # the norms now carry statistics of their inputs, not the identity
    first = folded[0][0]
    assert float(first.running_var.min()) > 0 and not torch.allclose(
        first.running_var, torch.ones_like(first.running_var))
    assert torch.allclose(first.weight, torch.sqrt(first.running_var + first.eps))


def test_unfolding_refuses_another_architecture(tmp_path: Path) -> None:
    onnx_path = tmp_path / "m.onnx"
    export_onnx(_trained_looking_net(2), onnx_path)
    with pytest.raises(ValueError, match="weight"):
        unfold(onnx_path, width=4)


def test_the_bias_field_is_smooth_bounded_and_seeded() -> None:
    shape = (16, 20, 24)
    a = bias_field(shape, 0.3, torch.Generator().manual_seed(5))
    b = bias_field(shape, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == shape
    log = torch.log(a)
    assert float(log.abs().max()) == pytest.approx(0.3, abs=1e-5)  # scaled to max |f| = 1
    # a quadratic of the coordinates: second differences are constant along each axis
    d2 = log[2:] - 2 * log[1:-1] + log[:-2]
    assert float((d2 - d2.mean(dim=0)).abs().max()) < 1e-4
    assert torch.equal(bias_field(shape, 0.0, torch.Generator().manual_seed(1)),
                       torch.ones(shape))


def test_the_bias_field_changes_only_the_image_and_only_when_asked() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((40, 40, 40)).astype(np.float32) + 0.5
    target = np.zeros(image.shape, np.uint8)
    target[15:25, 15:25, 15:25] = 1
    small = AugmentConfig(patch_zyx=(16, 16, 16), noise_max=0.0)
    x0, y0 = make_patch(image, target, small, torch.Generator().manual_seed(7))
    again, _ = make_patch(image, target, small, torch.Generator().manual_seed(7))
    assert torch.equal(x0, again)
    field = AugmentConfig(patch_zyx=(16, 16, 16), noise_max=0.0, bias_field_max=0.4)
    x1, y1 = make_patch(image, target, field, torch.Generator().manual_seed(7))
    assert torch.equal(y0, y1) and not torch.allclose(x0, x1)


def test_the_card_describes_the_augmentation_of_the_run() -> None:
    assert augment_text(AugmentConfig()) == (
        "rotation up to 10 degrees, scale 0.9-1.1, left-right mirror, extra blur up to sigma "
        "1.5 voxels, gamma 0.8-1.25, intensity 0.85-1.15, Poisson-like noise")
    assert "bias field up to exp(+-0.25)" in augment_text(AugmentConfig(bias_field_max=0.25))
    # a saved configuration (lists from JSON-like dicts, fields it lacks: defaults)
    saved = {"steps": 10, "augment": {"patch_zyx": [64, 64, 64], "bias_field_max": 0.25}}
    config = _config(saved)
    assert isinstance(config, TrainConfig) and config.augment.bias_field_max == 0.25
    assert config.augment.patch_zyx == (64, 64, 64)
    assert _config({"steps": 10}).augment == AugmentConfig()
