"""The onnxruntime session: checksum, model contract, input/output checks, rating rules.

The models are small ONNX graphs built with ``onnx.helper`` (no torch):
probabilities = softmax(mean(volume) * W + B) per region; with a global head
also p_reduced = sigmoid(mean(volume) * G) (or a raw, unbounded value).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx  # the sim extra; make test installs it
import pytest
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from service.errors import AnalysisError  # noqa: E402
from service.imaging.atlas import load_atlas  # noqa: E402
from service.pipelines.dat_spect.cnn import (  # noqa: E402
    REGIONAL_RULE,
    REGIONS_METADATA_KEY,
    CnnSession,
    rate_region,
    rate_scan,
)
from service.pipelines.dat_spect.preprocess import CONTRACT_METADATA_KEY, contract_for_atlas  # noqa: E402
from service.pipelines.dat_spect.result import REGIONS, Level, Region  # noqa: E402

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

CONTRACT = contract_for_atlas(load_atlas())
W = np.linspace(-2.0, 2.0, 20, dtype=np.float32).reshape(1, 20)
B = np.tile(np.array([2.0, 1.0, 0.0, -1.0, -2.0], np.float32), 4)
G = 3.0


def _model(path: Path, *, softmax: bool = True, box=CONTRACT.box_shape_zyx,
           metadata: bool = True, sidecar: bool = True, global_head: str | None = None) -> Path:
    """``global_head``: None, ``"sigmoid"``, ``"raw"`` or ``"misnamed"``."""
    nodes = [
        helper.make_node("ReduceMean", ["volume"], ["m"], axes=[1, 2, 3, 4], keepdims=0),
        helper.make_node("Reshape", ["m", "shape_n1"], ["m2"]),
        helper.make_node("MatMul", ["m2", "W"], ["z"]),
        helper.make_node("Add", ["z", "B"], ["zb"]),
        helper.make_node("Reshape", ["zb", "shape_n45"], ["logits" if softmax else "probabilities"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1))
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B"),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "shape_n1"),
             numpy_helper.from_array(np.array([-1, 4, 5], np.int64), "shape_n45")]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4, 5])]
    if global_head is not None:
        name = "p_other" if global_head == "misnamed" else "p_reduced"
        inits.append(numpy_helper.from_array(np.array([[G]], np.float32), "G"))
        nodes.append(helper.make_node("MatMul", ["m2", "G"], ["g"]))
        nodes.append(helper.make_node("Sigmoid" if global_head != "raw" else "Identity",
                                      ["g"], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("volume", TensorProto.FLOAT, ["batch", 1, *box])],
        outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata:
        helper.set_model_props(model, {CONTRACT_METADATA_KEY: CONTRACT.to_json(),
                                       REGIONS_METADATA_KEY: ",".join(r.value for r in REGIONS)})
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    path.write_bytes(data)
    if sidecar:
        path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")
    return path


def _code(path: Path, **kwargs) -> str:
    with pytest.raises(AnalysisError) as err:
        CnnSession(path, **kwargs)
    return err.value.code


def test_predicts_like_the_reference(tmp_path: Path, rng) -> None:
    session = CnnSession(_model(tmp_path / "m.onnx"))
    assert session.contract == CONTRACT and len(session.sha256) == 64
    x = rng.normal(0.5, 1.0, (3, *CONTRACT.input_shape)).astype(np.float32)
    probs = session.probabilities(x)
    z = x.reshape(3, -1).astype(np.float64).mean(axis=1)[:, None] * W + B
    z = z.reshape(3, 4, 5)
    ref = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    pred = session.predict(x[1])
    assert [r.region for r in pred.regions] == list(REGIONS)
    np.testing.assert_allclose(pred.region(Region.PUTAMEN_LEFT).probabilities, ref[1, 2], atol=1e-5)


def test_checksum_is_enforced(tmp_path: Path) -> None:
    path = _model(tmp_path / "m.onnx")
    assert _code(path, expected_sha256="0" * 64) == "model_checksum_mismatch"
    path.with_name("m.onnx.sha256").write_text("f" * 64 + "\n")
    assert _code(path) == "model_checksum_mismatch"
    assert _code(_model(tmp_path / "n.onnx", sidecar=False)) == "model_no_checksum"
    assert _code(tmp_path / "absent.onnx") == "model_missing"


def test_model_contract_is_enforced(tmp_path: Path) -> None:
    assert _code(_model(tmp_path / "a.onnx", metadata=False)) == "model_contract"
    assert _code(_model(tmp_path / "b.onnx", box=(32, 40, 40))) == "model_contract"
    bad = tmp_path / "c.onnx"
    bad.write_bytes(b"not an onnx model")
    bad.with_name("c.onnx.sha256").write_text(hashlib.sha256(b"not an onnx model").hexdigest())
    assert _code(bad) == "model_contract"


def test_input_and_output_checks(tmp_path: Path) -> None:
    session = CnnSession(_model(tmp_path / "m.onnx"))
    x = np.zeros((1, *CONTRACT.input_shape), np.float32)
    for bad in (x.astype(np.float64), x[:, :, :-1], np.where(x == 0, np.nan, x).astype(np.float32)):
        with pytest.raises(AnalysisError) as err:
            session.probabilities(bad)
        assert err.value.code == "cnn_input"
    raw = CnnSession(_model(tmp_path / "raw.onnx", softmax=False))
    with pytest.raises(AnalysisError) as err:
        raw.probabilities(x + 1.0)
    assert err.value.code == "cnn_output"


def test_rating_rules() -> None:
    sure = rate_region(Region.CAUDATE_LEFT, np.array([0.02, 0.9, 0.06, 0.01, 0.01]))
    assert sure.level is Level.BORDERLINE and not sure.unsure and sure.spread_levels < 0.5
    split = rate_region(Region.CAUDATE_LEFT, np.array([0.45, 0.0, 0.0, 0.0, 0.55]))
    assert split.level is Level.ALMOST_MISSING and split.unsure  # spread ~2 levels
    median = rate_region(Region.PUTAMEN_RIGHT, np.array([0.3, 0.15, 0.1, 0.25, 0.2]))
    assert median.level is Level.MODERATE_REDUCTION  # cumulative 0.3, 0.45, 0.55
    normal = np.tile([0.97, 0.03, 0.0, 0.0, 0.0], (4, 1))
    pred = rate_scan(normal)
    assert not pred.reduced and not pred.inconclusive and pred.p_reduced == pytest.approx(0.0)
    assert pred.rule == REGIONAL_RULE
    one_reduced = normal.copy()
    one_reduced[3] = [0.0, 0.05, 0.9, 0.05, 0.0]
    pred = rate_scan(one_reduced)
    assert pred.reduced and not pred.inconclusive and pred.p_reduced == pytest.approx(0.95)
    # the call is the regional levels': a median at level 2 means reduced, whatever P(>= 2)
    at_half = normal.copy()
    at_half[2] = [0.0, 0.5, 0.5, 0.0, 0.0]  # cumulative 0.5 at level 1: median level 1
    pred = rate_scan(at_half)
    assert pred.region(Region.PUTAMEN_LEFT).level is Level.BORDERLINE
    assert not pred.reduced and pred.p_reduced == pytest.approx(0.5)
    at_half[2] = [0.0, 0.45, 0.55, 0.0, 0.0]
    assert rate_scan(at_half).reduced
    # three regions each 30 % likely reduced: P(reduced) 1 - 0.7^3 = 0.657 is reported,
    # but every region's median level is borderline, so the call is normal
    several = np.tile([0.0, 0.7, 0.3, 0.0, 0.0], (4, 1))
    several[0] = [0.97, 0.03, 0.0, 0.0, 0.0]
    pred = rate_scan(several)
    assert all(r.level <= Level.BORDERLINE for r in pred.regions)
    assert not pred.reduced and not pred.inconclusive
    assert pred.p_reduced == pytest.approx(1 - 0.7**3)
    # a scattered region is flagged itself; its median decides the call
    scattered = normal.copy()
    scattered[1] = [0.6, 0.0, 0.0, 0.0, 0.4]
    pred = rate_scan(scattered)
    assert pred.region(Region.CAUDATE_RIGHT).unsure and pred.p_reduced == pytest.approx(0.4)
    assert not pred.reduced and not pred.inconclusive


def test_global_head_output(tmp_path: Path, rng) -> None:
    session = CnnSession(_model(tmp_path / "g.onnx", global_head="sigmoid"))
    assert session.has_global_head
    x = rng.normal(0.0, 1.0, (3, *CONTRACT.input_shape)).astype(np.float32)
    probs, p_global = session.outputs(x)
    mean = x.reshape(3, -1).astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(p_global, 1.0 / (1.0 + np.exp(-G * mean)), atol=1e-5)
    np.testing.assert_allclose(probs, session.probabilities(x), atol=0)
    pred = session.predict(x[0])
    assert pred.p_reduced == pytest.approx(float(p_global[0]), abs=1e-6)
    assert pred.rule == REGIONAL_RULE
    plain = CnnSession(_model(tmp_path / "p.onnx"))
    assert not plain.has_global_head and plain.outputs(x)[1] is None
    assert _code(_model(tmp_path / "m.onnx", global_head="misnamed")) == "model_contract"
    raw = CnnSession(_model(tmp_path / "r.onnx", global_head="raw"))
    with pytest.raises(AnalysisError) as err:
        raw.outputs(np.full((1, *CONTRACT.input_shape), 2.0, np.float32))  # 6, not a probability
    assert err.value.code == "cnn_output"


def test_global_head_is_reported_but_the_regions_decide() -> None:
    normal = np.tile([0.97, 0.03, 0.0, 0.0, 0.0], (4, 1))
    sure_normal = rate_scan(normal, 0.05)
    assert not sure_normal.reduced and not sure_normal.inconclusive
    # the head sees a reduction the regional levels do not: normal (the regions'), P reported
    head_only = rate_scan(normal, 0.9)
    assert not head_only.reduced and not head_only.inconclusive and head_only.p_reduced == 0.9
    one_reduced = normal.copy()
    one_reduced[3] = [0.0, 0.05, 0.9, 0.05, 0.0]
    agree = rate_scan(one_reduced, 0.95)
    assert agree.reduced and not agree.inconclusive and agree.rule == REGIONAL_RULE
    head_normal = rate_scan(one_reduced, 0.1)  # a level-2 region, head says normal
    assert head_normal.reduced and head_normal.p_reduced == pytest.approx(0.1)
