"""The FLAIR U-Net's preprocessing contract and its serving class (no torch).

The round trip uses an oblique, anisotropic 2D FLAIR (5 mm slices, 1.1 mm
pixels, tilted 12 degrees) holding a linear intensity ramp inside an
ellipsoidal head: linear interpolation reproduces a linear function exactly,
so the box and its inverse are compared with the analytic values.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from service.errors import AnalysisError  # noqa: E402
from service.imaging.mr_volume import MrVolume  # noqa: E402
from service.inference.manifest import sidecar_path  # noqa: E402
from service.pipelines.fdopa_pet.flair_segment import (  # noqa: E402
    CONTRACT,
    CONTRACT_METADATA_KEY,
    FlairContract,
    FlairSegmenter,
    preprocess_flair,
)
from service.pipelines.fdopa_pet.segment import CONTRACT as PET_CONTRACT  # noqa: E402
from service.pipelines.fdopa_pet.segment import (  # noqa: E402
    CONTRACT_METADATA_KEY as PET_KEY,
)
from service.pipelines.fdopa_pet.segment import mirrored_probability, to_native  # noqa: E402

pytestmark = pytest.mark.no_storage

CENTRE = np.array([8.0, -15.0, 22.0])  # LPS mm
SEMI_AXES = np.array([70.0, 85.0, 60.0])


def _ramp(p: np.ndarray) -> np.ndarray:
    """The FLAIR value at LPS points ``(..., 3)``: 1000 + a gentle linear ramp."""
    return 1000.0 + 2.0 * p[..., 0] - 1.5 * p[..., 1] + 3.0 * p[..., 2]


def _oblique_2d_flair() -> MrVolume:
    """(30, 200, 200) axial-ish stack: 5 mm slices, 1.1 mm pixels, 12 degrees about x."""
    a = np.radians(12.0)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(a), np.sin(a)])
    normal = np.cross(row_dir, col_dir)
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = 5.0 * normal, 1.1 * col_dir, 1.1 * row_dir
    shape = (30, 200, 200)
    affine[:3, 3] = CENTRE - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    idx = np.stack(list(np.indices(shape)), axis=-1).astype(float)
    p = idx @ affine[:3, :3].T + affine[:3, 3]
    inside = (((p - CENTRE) / SEMI_AXES) ** 2).sum(-1) <= 1.0
    array = np.where(inside, _ramp(p), 0.0).astype(np.float32)
    return MrVolume(array, affine, "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2")


@pytest.fixture(scope="module")
def flair() -> MrVolume:
    return _oblique_2d_flair()


def _box_points(origin: np.ndarray) -> np.ndarray:
    d, h, w = CONTRACT.box_shape_zyx
    idx = np.stack(list(np.indices((d, h, w))), axis=-1).astype(float)
    return origin + CONTRACT.spacing_mm * idx[..., ::-1]  # identity LPS grid, (x, y, z)


def test_box_holds_the_flair_on_the_lps_grid(flair: MrVolume) -> None:
    net = preprocess_flair(flair.array_zyx, flair.affine)
    assert net.image_zyx.shape == CONTRACT.box_shape_zyx and net.image_zyx.dtype == np.float32
    # centred on the head: the ellipsoid's centre (the stack cuts it symmetrically)
    centre = net.origin_lps_mm + CONTRACT.spacing_mm * (
        np.array(CONTRACT.box_shape_zyx[::-1]) - 1) / 2
    assert np.abs(centre - CENTRE).max() < 2.0
    p = _box_points(net.origin_lps_mm)
    # well inside the head and the stack's slab (the slab is 150 mm thick, tilted)
    inv = np.linalg.inv(flair.affine)
    idx = p @ inv[:3, :3].T + inv[:3, 3]
    deep = ((((p - CENTRE) / (SEMI_AXES - 8.0)) ** 2).sum(-1) <= 1.0) & \
        (idx[..., 0] > 1) & (idx[..., 0] < 28)
    assert deep.sum() > 50_000
    expected = _ramp(p[deep]) / net.scale_units
    assert np.abs(net.image_zyx[deep] - expected).max() < 1e-3
    # outside the field of view (beyond the slab): 0
    assert np.all(net.image_zyx[(idx[..., 0] < -1) | (idx[..., 0] > 30)] == 0.0)
    # brain level near 1: the median of the bright voxels
    assert 0.95 < float(np.median(net.image_zyx[net.image_zyx > 0.3])) < 1.05


def test_scale_does_not_matter(flair: MrVolume) -> None:
    a = preprocess_flair(flair.array_zyx, flair.affine)
    b = preprocess_flair(3.7 * flair.array_zyx, flair.affine)
    np.testing.assert_allclose(a.image_zyx, b.image_zyx, atol=1e-5)
    np.testing.assert_allclose(b.scale_units, 3.7 * a.scale_units, rtol=1e-5)


def test_inverse_puts_the_box_back_on_the_native_grid(flair: MrVolume) -> None:
    net = preprocess_flair(flair.array_zyx, flair.affine)
    box_p = _box_points(net.origin_lps_mm)
    ramp = (0.5 + (box_p[..., 0] - CENTRE[0]) / 400.0).astype(np.float32)  # in (0, 1)
    native = to_native(ramp, net, flair.array_zyx.shape, flair.affine)
    assert native.shape == flair.array_zyx.shape and native.dtype == np.float32
    idx = np.stack(list(np.indices(flair.array_zyx.shape)), axis=-1).astype(float)
    p = idx @ flair.affine[:3, :3].T + flair.affine[:3, 3]
    lo = net.origin_lps_mm + 2.0
    hi = net.origin_lps_mm + CONTRACT.spacing_mm * (np.array(CONTRACT.box_shape_zyx[::-1]) - 2)
    inside = np.all((p > lo) & (p < hi), axis=-1)
    assert inside.sum() > 100_000
    expected = 0.5 + (p[inside][:, 0] - CENTRE[0]) / 400.0
    assert np.abs(native[inside] - expected).max() < 1e-4
    outside = np.any((p < net.origin_lps_mm - 2.5) | (p > hi + 4.5), axis=-1)
    assert outside.any() and np.all(native[outside] == 0.0)


def test_empty_flair_is_refused(flair: MrVolume) -> None:
    with pytest.raises(AnalysisError) as err:
        preprocess_flair(np.zeros_like(flair.array_zyx), flair.affine)
    assert err.value.code == "empty_volume"


def _sigmoid_model(path: Path, props: dict[str, str]) -> Path:
    """An ONNX graph ``probability = sigmoid(volume - 1.5)`` with the given metadata."""
    from onnx import TensorProto, helper

    shape: list[str | int | None] = ["batch", 1, *CONTRACT.box_shape_zyx]
    graph = helper.make_graph(
        [helper.make_node("Sub", ["volume", "shift"], ["shifted"]),
         helper.make_node("Sigmoid", ["shifted"], ["probability"])], "sigmoid",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, shape)],
        initializer=[helper.make_tensor("shift", TensorProto.FLOAT, [], [1.5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar_path(path).write_text(f"{digest}  {path.name}\n")
    return path


def test_served_probabilities_on_the_native_grid(flair: MrVolume, tmp_path: Path) -> None:
    path = _sigmoid_model(tmp_path / "flair.onnx", {CONTRACT_METADATA_KEY: CONTRACT.to_json()})
    seg = FlairSegmenter(path)
    prob = seg.probabilities(flair, mirror=False)
    # a voxel-wise model gives the same with the mirror test-time augmentation
    assert np.abs(seg.probabilities(flair, mirror=True) - prob).max() < 1e-6
    assert prob.shape == flair.array_zyx.shape and prob.dtype == np.float32
    net = preprocess_flair(flair.array_zyx, flair.affine)
    expected = to_native(1 / (1 + np.exp(-(net.image_zyx - 1.5))), net, prob.shape, flair.affine)
    assert np.abs(prob - expected).max() < 1e-5
    np.testing.assert_array_equal(seg.lesion_mask(flair, cut=0.3), prob >= 0.3)
    assert seg.info.method == "unet" and seg.info.model_sha256 == seg._model.sha256
    with pytest.raises(ValueError):
        seg.lesion_mask(flair, cut=1.0)


def test_mirror_averages_with_the_left_right_flipped_prediction() -> None:
    """Left-right is the box's last (x) axis; the flipped prediction is flipped back."""
    rng = np.random.default_rng(3)
    box = rng.random((4, 5, 6)).astype(np.float32)
    weight = np.linspace(0.0, 1.0, 6, dtype=np.float32)  # a network that is not symmetric

    def predict(x: np.ndarray) -> np.ndarray:
        return x * weight

    out = mirrored_probability(predict, box)
    expected = 0.5 * (box * weight + box * weight[::-1])
    np.testing.assert_allclose(out, expected, atol=1e-7)
    assert out.dtype == np.float32 and not np.allclose(out, predict(box))


@pytest.mark.parametrize("props", [
    {},
    {PET_KEY: PET_CONTRACT.to_json()},
    {CONTRACT_METADATA_KEY: PET_CONTRACT.to_json()},
    {CONTRACT_METADATA_KEY: FlairContract(spacing_mm=3.0).to_json()},
    {CONTRACT_METADATA_KEY: "{not json"},
    {CONTRACT_METADATA_KEY: json.dumps({"kind": "flair_whole_tumour"})},
], ids=["none", "pet_key", "pet_contract", "other_spacing", "malformed", "incomplete"])
def test_model_with_another_contract_is_refused(props: dict[str, str], tmp_path: Path) -> None:
    path = _sigmoid_model(tmp_path / "m.onnx", props)
    with pytest.raises(AnalysisError) as err:
        FlairSegmenter(path)
    assert err.value.code == "model_contract"


def test_wrong_checksum_is_refused(tmp_path: Path) -> None:
    path = _sigmoid_model(tmp_path / "m.onnx", {CONTRACT_METADATA_KEY: CONTRACT.to_json()})
    with pytest.raises(AnalysisError) as err:
        FlairSegmenter(path, expected_sha256="0" * 64)
    assert err.value.code.startswith("model_")
