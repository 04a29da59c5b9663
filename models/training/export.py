"""ONNX export of a trained network, its checksum, and the torch/onnxruntime parity check.

The exported graph is :class:`models.training.network.ProbabilityModel`: input
``volume`` ``(batch, 1, D, H, W)`` float32, outputs ``probabilities``
``(batch, 4, 5)`` and ``p_reduced`` ``(batch, 1)`` float32, dynamic batch axis,
opset :data:`OPSET`. The
preprocessing contract and the region order go into the model's
``metadata_props`` (read back by :class:`service.inference.session.CnnSession`),
so the SHA-256 written beside the model (``<model>.onnx.sha256``,
``sha256sum`` format) covers them.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.training.network import ProbabilityModel, StriatumNet
from service.inference.manifest import sidecar_path
from service.pipelines.dat_spect.cnn import (
    GLOBAL_OUTPUT_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    REGIONS_METADATA_KEY,
)
from service.pipelines.dat_spect.preprocess import CONTRACT_METADATA_KEY, PreprocessContract
from service.pipelines.dat_spect.result import REGIONS

OPSET = 17
#: Largest accepted |torch - onnxruntime| over all outputs.
PARITY_TOLERANCE = 1e-4


def export_onnx(net: StriatumNet, contract: PreprocessContract, path: Path,
                metadata: dict[str, str] | None = None) -> str:
    """Write ``net`` as ONNX to ``path`` and its sidecar checksum; returns the SHA-256.

    Raises
    ------
    ValueError
        When the network's input shape is not the contract's box.
    """
    if tuple(net.input_shape_zyx) != contract.box_shape_zyx:
        raise ValueError(f"network input {net.input_shape_zyx} != contract box "
                         f"{contract.box_shape_zyx}")
    model = ProbabilityModel(net).eval()
    dummy = torch.zeros((1, *contract.input_shape), dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.name + ".raw.tmp")
    with warnings.catch_warnings():
        # the TorchScript exporter: the dynamo one needs onnxscript, not in the sim extra
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(raw), opset_version=OPSET, dynamo=False,
                          input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME, GLOBAL_OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"},
                                        GLOBAL_OUTPUT_NAME: {0: "batch"}})
    props = {CONTRACT_METADATA_KEY: contract.to_json(),
             REGIONS_METADATA_KEY: ",".join(r.value for r in REGIONS), **(metadata or {})}
    return finish_onnx(raw, path, props)


def finish_onnx(raw: Path, path: Path, props: dict[str, str]) -> str:
    """Add ``props`` as ONNX metadata to the exported ``raw`` file, check it, write ``path``.

    ``raw`` (the exporter's temporary output) is removed; the sidecar checksum
    file is written beside ``path``. Returns the SHA-256 of ``path``.
    """
    import onnx

    try:
        proto = onnx.load(str(raw))
    finally:
        raw.unlink(missing_ok=True)
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    sidecar_path(path).write_text(f"{digest}  {path.name}\n", encoding="ascii")
    return digest


@dataclass(frozen=True)
class Parity:
    """Outcome of :func:`check_parity`."""

    n_scans: int
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff < self.tolerance

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"n_scans": self.n_scans, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "ok": self.ok}


def check_parity(net: StriatumNet, onnx_path: Path, x: np.ndarray, batch_size: int = 8,
                 tolerance: float = PARITY_TOLERANCE) -> Parity:
    """Max |torch - onnxruntime| of both outputs over the ``(N, 1, D, H, W)`` inputs.

    onnxruntime runs through :class:`service.inference.session.CnnSession`,
    the node's own serving path (checksum, contract and output checks included).
    """
    from service.pipelines.dat_spect.cnn import CnnSession

    session = CnnSession(onnx_path)
    model = ProbabilityModel(net).eval()
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)
            ref_levels, ref_global = (t.numpy() for t in model(torch.from_numpy(xb)))
            got_levels, got_global = session.outputs(xb)
            if got_global is None:
                raise ValueError(f"{onnx_path} has no {GLOBAL_OUTPUT_NAME} output")
            worst = max(worst, float(np.abs(ref_levels - got_levels).max()),
                        float(np.abs(ref_global[:, 0] - got_global).max()))
    return Parity(len(x), worst, tolerance)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
