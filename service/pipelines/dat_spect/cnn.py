"""The DaT CNN: its model contract and the rating rules over its outputs.

The model file
--------------
An ONNX model (opset >= 17) with one input ``volume`` of shape
``(batch, 1, D, H, W)`` float32 (:func:`service.inference.preprocess.cnn_input`
with a batch axis) and the output ``probabilities`` of shape
``(batch, 4, 5)`` float32: per region (order of :data:`service.result.REGIONS`,
recorded under metadata key :data:`REGIONS_METADATA_KEY`) the probabilities of
levels 0..4; optionally a second output ``p_reduced`` ``(batch, 1)`` float32,
the model's own probability that the scan is reduced (a global head trained
on the scan-level truth). The preprocessing contract is stored in the model's metadata
(:data:`service.inference.preprocess.CONTRACT_METADATA_KEY`), so the SHA-256
checked here covers it.

The global score and the inconclusive rule
------------------------------------------
A region's level is the median of its distribution (smallest ``k`` with
cumulative probability >= 0.5), the natural point estimate for ordinal
(cumulative-logit) models. Its *ordinal spread* is the standard deviation of
the level under the predicted distribution, ``sqrt(sum_k p_k (k - E[k])^2)``,
in levels; the region is *unsure* when the spread exceeds
:data:`MAX_SPREAD_LEVELS` (reported per region).

The CNN's binary call is derived from its regional levels, as the reference
paper derives its global score from the regional 5-scores: *reduced* when any
region's level is 2 (moderate reduction) or worse (:data:`REGIONAL_RULE`).
The call is never contradicted by the CNN's own table. Whether it is
conclusive is decided against the other method, the SBR path
(:func:`service.pipelines.dat_spect.verdict.consistent_score`).

``P(reduced)`` is reported beside the call: the model's global head
(``p_reduced``) where it has one, else ``1 - prod_r (1 - P_r(level >= 2))``
(the regions taken as independent). It no longer decides the call: on the
validation split of benchmark version 2 (62 scans with a binding reference)
the head with its unsure range (:data:`BINARY_UNSURE_RANGE`) left 14 scans
inconclusive and called 48 right; the regional call alone 62, checked against
the SBR path (the node's verdict) 59 (``models/training/README.md``, "Fourth
attempt").

The region spread is not part of the study flag: it marks a third to a half
of the scans (mostly level 0/1/2 mixtures between close GMM thresholds)
without changing the binary accuracy; the 5-level accuracy of the regions it
leaves unflagged is reported by ``python bench/cnn.py``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.errors import AnalysisError
from service.inference.manifest import ModelCheck
from service.inference.onnx import ModelSignature, OnnxModel, TensorSpec
from service.pipelines.dat_spect.preprocess import CONTRACT_METADATA_KEY, PreprocessContract
from service.pipelines.dat_spect.result import REGIONS, Level, Region

log = logging.getLogger(__name__)

INPUT_NAME = "volume"
OUTPUT_NAME = "probabilities"
#: Optional second output: P(reduced) ``(batch, 1)`` from the model's global head.
GLOBAL_OUTPUT_NAME = "p_reduced"
REGIONS_METADATA_KEY = "dopanode_regions"
N_LEVELS = len(Level)
#: The model's declared signature (the input's spatial shape is checked against
#: the preprocessing contract in its metadata).
SIGNATURE = ModelSignature(
    inputs=(TensorSpec(INPUT_NAME, shape=(1, None, None, None)),),
    outputs=(TensorSpec(OUTPUT_NAME, shape=(len(REGIONS), N_LEVELS)),),
    optional_outputs=(TensorSpec(GLOBAL_OUTPUT_NAME, shape=(1,)),),
)
#: Largest ordinal spread (SD of the level distribution, in levels) of a sure region.
MAX_SPREAD_LEVELS = 0.75
#: P(reduced) in this closed range was the old unsure range (kept for the training reports).
BINARY_UNSURE_RANGE = (0.2, 0.8)
#: Tolerance on the sum of one region's five probabilities.
PROBABILITY_SUM_TOL = 1e-3
REGIONAL_RULE = "reduced if any region's CNN level is moderate reduction (2) or worse"


@dataclass(frozen=True)
class RegionPrediction:
    """The CNN's rating of one region.

    Attributes
    ----------
    region : Region
    probabilities : tuple of 5 float
        P(level = k), k = 0..4.
    level : Level
        Median of the distribution.
    spread_levels : float
        SD of the level distribution, in levels.
    unsure : bool
        ``spread_levels > MAX_SPREAD_LEVELS``.
    """

    region: Region
    probabilities: tuple[float, ...]
    level: Level
    spread_levels: float
    unsure: bool


@dataclass(frozen=True)
class CnnPrediction:
    """The CNN's ratings of one scan (rules in the module docstring).

    Attributes
    ----------
    regions : tuple of 4 RegionPrediction, order of REGIONS
    reduced : bool
        A region at level 2 or worse.
    p_reduced : float
        P(reduced), reported: the model's global head, or from the regions when
        the model has none (module docstring).
    inconclusive : bool
        Always False from the CNN alone (kept for the result's shape).
    rule : str
    """

    regions: tuple[RegionPrediction, ...]
    reduced: bool
    p_reduced: float
    inconclusive: bool
    rule: str = REGIONAL_RULE

    def region(self, region: Region) -> RegionPrediction:
        for r in self.regions:
            if r.region is region:
                return r
        raise KeyError(region)

    @property
    def levels(self) -> dict[Region, Level]:
        return {r.region: r.level for r in self.regions}


def rate_region(region: Region, probabilities: np.ndarray) -> RegionPrediction:
    """Level, spread and unsure flag from one region's ``(5,)`` probabilities."""
    p = np.asarray(probabilities, dtype=np.float64)
    k = np.arange(N_LEVELS)
    mean = float((p * k).sum())
    spread = float(np.sqrt(max((p * (k - mean) ** 2).sum(), 0.0)))
    level = Level(int(np.searchsorted(np.cumsum(p), 0.5 - 1e-9)))
    level = min(level, Level.ALMOST_MISSING)
    return RegionPrediction(region, tuple(float(v) for v in p), Level(level), spread,
                            spread > MAX_SPREAD_LEVELS)


def rate_scan(probabilities_rk: np.ndarray, p_global: float | None = None) -> CnnPrediction:
    """Apply the module's rules to one scan's ``(4, 5)`` probabilities.

    ``p_global``: the model's own P(reduced) when it has a global head;
    otherwise P(reduced) comes from the regions (see the module docstring).
    """
    regions = tuple(rate_region(r, probabilities_rk[i]) for i, r in enumerate(REGIONS))
    if p_global is None:
        p_region = np.clip(probabilities_rk[:, 2:].sum(axis=1), 0.0, 1.0)
        p_reduced = float(1.0 - np.prod(1.0 - p_region))
    else:
        p_reduced = float(np.clip(p_global, 0.0, 1.0))
    reduced = any(r.level >= Level.MODERATE_REDUCTION for r in regions)
    return CnnPrediction(regions, reduced, p_reduced, False, REGIONAL_RULE)


class CnnSession:
    """The DaT CNN served through :class:`service.inference.onnx.OnnxModel`.

    Parameters
    ----------
    model_path : Path
    expected_sha256 : str or None
        Configured checksum; None uses the ``<model>.sha256`` sidecar.
    intra_op_threads : int
        onnxruntime intra-op threads.

    Raises
    ------
    AnalysisError
        ``model_<status>`` when the file fails its check; ``model_contract``
        when its inputs, outputs or metadata break the contract in the module
        docstring.
    """

    def __init__(self, model_path: Path, expected_sha256: str | None = None,
                 intra_op_threads: int = 1) -> None:
        self.model = OnnxModel(Path(model_path), SIGNATURE, expected_sha256, intra_op_threads)
        self.check: ModelCheck = self.model.check
        self.name = self.model.name
        self.sha256: str = self.model.sha256
        self.contract = self._read_contract()
        self.has_global_head = GLOBAL_OUTPUT_NAME in self.model.output_names
        want_in = self.contract.input_shape
        declared = self.model.input_shapes[0]
        if declared != tuple(want_in):
            raise AnalysisError(f"model input shape {declared} is not [batch, {list(want_in)}]",
                                "model_contract")

    def _read_contract(self) -> PreprocessContract:
        meta = self.model.metadata
        regions = meta.get(REGIONS_METADATA_KEY, "")
        if regions != ",".join(r.value for r in REGIONS):
            raise AnalysisError(f"model metadata {REGIONS_METADATA_KEY} is {regions!r}, "
                                "not the dopanode region order", "model_contract")
        try:
            return PreprocessContract.from_dict(json.loads(meta[CONTRACT_METADATA_KEY]))
        except (KeyError, ValueError) as exc:
            raise AnalysisError(f"model has no usable preprocessing contract: {exc}",
                                "model_contract") from exc

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Level probabilities for a ``(N, 1, D, H, W)`` float32 batch: ``(N, 4, 5)`` float32.

        Raises as :meth:`outputs`.
        """
        return self.outputs(batch)[0]

    def outputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Level probabilities ``(N, 4, 5)`` and the global P(reduced) ``(N,)`` (None
        when the model has no global head) for a ``(N, 1, D, H, W)`` float32 batch.

        Raises
        ------
        AnalysisError
            ``cnn_input`` for a wrong shape, dtype or non-finite input;
            ``cnn_output`` when the output breaks its contract.
        """
        if batch.dtype != np.float32 or batch.ndim != 5 or batch.shape[1:] != self.contract.input_shape:
            raise AnalysisError(f"CNN input must be float32 (N, {self.contract.input_shape}), "
                                f"got {batch.dtype} {batch.shape}", "cnn_input")
        if not np.isfinite(batch).all():
            raise AnalysisError("CNN input holds NaN or infinite values", "cnn_input")
        results = self.model.run(batch)
        out = np.asarray(results[0])
        if (out.shape != (batch.shape[0], len(REGIONS), N_LEVELS) or not np.isfinite(out).all()
                or (out < -1e-6).any()
                or np.abs(out.sum(axis=-1) - 1.0).max() > PROBABILITY_SUM_TOL):
            raise AnalysisError("CNN output is not a probability distribution per region",
                                "cnn_output")
        if not self.has_global_head:
            return out, None
        p_global = np.asarray(results[1]).reshape(-1)
        if (p_global.shape != (batch.shape[0],) or not np.isfinite(p_global).all()
                or (p_global < -1e-6).any() or (p_global > 1 + 1e-6).any()):
            raise AnalysisError("CNN global output is not a probability", "cnn_output")
        return out, p_global

    def predict(self, cnn_input: np.ndarray) -> CnnPrediction:
        """Rate one scan from its ``(1, D, H, W)`` float32 input (see :mod:`.preprocess`)."""
        probs, p_global = self.outputs(np.asarray(cnn_input)[None])
        return rate_scan(probs[0], None if p_global is None else float(p_global[0]))
