"""PET-only tumour segmentation: the U-Net's preprocessing contract and its serving.

The preprocessing contract (:class:`SegContract`) is implemented once, here,
in numpy and SimpleITK (no torch), and imported by the training code
(``models/fdopa_seg``), so training and serving cannot drift apart. It is
written into the ONNX model's metadata (key :data:`CONTRACT_METADATA_KEY`),
covered by the model's SHA-256, and compared with this module's contract when
the model is loaded: a model trained under another contract is refused.

The contract, for a static PET volume ``(z, y, x)`` with its LPS affine (any
orientation, spacing or Units: BQML, CNTS, GML):

1. **head centre**: the mean LPS position of the native voxels above
   ``head_fraction`` x the ``percentile``-th percentile of the native volume
   (an unweighted centroid of the head, so a hot tumour does not pull it);
2. **box**: an axis-aligned LPS grid (identity direction: index x runs to
   patient left, y to posterior, z to superior) of ``box_shape_zyx`` voxels
   of ``spacing_mm``, centred on the head centre; the volume is resampled
   onto it by linear interpolation (SimpleITK, voxel centres; outside the
   native field of view: 0);
3. **intensity**: the box divided by the median of the box voxels above
   ``brain_fraction`` x the box's ``percentile``-th percentile (a brain-level
   statistic: about the healthy grey/white matter level), so the network
   sees unit-free values near 1 in healthy brain; no reference region and no
   SUV are needed;
4. **inverse**: the network's probability on the box is resampled onto the
   native grid by linear interpolation (0 outside the box); the caller
   thresholds it (>= 0.5 is a tumour candidate).

Serving (not part of the contract, the model is unchanged): the probability
is the mean of the prediction on the box and on the left-right mirrored box
(:data:`MIRROR_TTA`, :func:`mirrored_probability`), chosen on validation with
the U-Net's minimum lesion volume (0.25 mL, :mod:`.lesions`).

Research use, not for diagnosis; the shipped model was trained on simulated
data only (``models/dopanode_fdopa_seg.card.md``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from service.errors import AnalysisError
from service.paths import default_models_dir
from service.pipelines.fdopa_pet.result import SegmentationInfo

#: The shipped model's file name, in :func:`service.paths.default_models_dir`.
MODEL_FILE = "dopanode_fdopa_seg.onnx"
#: The shipped ONNX model (``models/`` or ``$DOPANODE_MODELS_DIR`` at import time).
DEFAULT_MODEL: Path = default_models_dir() / MODEL_FILE
#: Metadata key of the preprocessing contract in the ONNX model.
CONTRACT_METADATA_KEY = "dopanode_fdopa_seg_contract"
INPUT_NAME = "volume"
OUTPUT_NAME = "probability"
#: Probability at and above which a voxel is a tumour candidate (the caller's threshold).
CANDIDATE_PROBABILITY = 0.5
#: Whether :meth:`TumourSegmenter.segment` averages with the left-right mirrored
#: prediction (:func:`mirrored_probability`); chosen on validation
#: (docs/fdopa_analysis.md, "False-positive suppression").
MIRROR_TTA = True


@dataclass(frozen=True)
class SegContract:
    """Constants of the segmentation model's input, recorded with the model.

    Attributes
    ----------
    version : int
        Bumped when the rule (not only a constant) changes.
    spacing_mm : float
        Isotropic voxel size of the box, mm.
    box_shape_zyx : tuple of 3 int
        Box size in voxels, ``(z, y, x)``; each divisible by 8 (three poolings).
    percentile : float
        The high percentile the head and brain fractions refer to.
    head_fraction : float
        Native voxels above this fraction of the native percentile form the head (centre).
    brain_fraction : float
        Box voxels above this fraction of the box percentile give the median (scale).
    """

    version: int = 1
    spacing_mm: float = 2.0
    box_shape_zyx: tuple[int, int, int] = (80, 96, 80)
    percentile: float = 99.5
    head_fraction: float = 0.15
    brain_fraction: float = 0.3

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SegContract:
        """Inverse of :meth:`to_json`; ValueError on malformed text or unknown fields."""
        try:
            data: dict[str, Any] = json.loads(text)
            data["box_shape_zyx"] = tuple(int(v) for v in data["box_shape_zyx"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"malformed segmentation contract: {type(exc).__name__}") from exc


#: The contract of this code; a model with another one is refused.
CONTRACT = SegContract()


class BoxGeometry(Protocol):
    """What the box functions need of a contract (:class:`SegContract` and the FLAIR one)."""

    @property
    def spacing_mm(self) -> float: ...

    @property
    def box_shape_zyx(self) -> tuple[int, int, int]: ...


@dataclass(frozen=True, eq=False)
class NetInput:
    """A static PET volume prepared for the network.

    Attributes
    ----------
    image_zyx : (D, H, W) float32 array
        The normalised box (``contract.box_shape_zyx``), unit-free (healthy brain near 1).
    origin_lps_mm : (3,) float64 array
        LPS position of the centre of box voxel ``(0, 0, 0)``, mm (x, y, z order).
    scale_units : float
        The brain-level statistic the box was divided by, in the volume's units.
    contract : BoxGeometry
        The contract the box was made under (:class:`SegContract` for the PET).
    """

    image_zyx: np.ndarray
    origin_lps_mm: np.ndarray
    scale_units: float
    contract: BoxGeometry


def image_from_zyx(volume_zyx: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image of a ``(z, y, x)`` array with its LPS voxel-centre affine.

    Parameters
    ----------
    volume_zyx : (z, y, x) array
    affine : (4, 4) float array
        Maps the index ``(z, y, x)`` to the LPS position (mm) of the voxel centre;
        column 0 is the slice step, 1 the row step, 2 the column step.
    """
    affine = np.asarray(affine, float)
    spacing_zyx = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing_zyx <= 0) or not np.all(np.isfinite(affine)):
        raise AnalysisError("volume geometry is degenerate", "missing_geometry")
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume_zyx, np.float32))
    image.SetSpacing(tuple(float(v) for v in spacing_zyx[::-1]))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    cols = affine[:3, :3] / spacing_zyx
    image.SetDirection(tuple(float(v) for v in cols[:, ::-1].ravel()))
    return image


def head_centre_lps_mm(volume_zyx: np.ndarray, affine: np.ndarray,
                       contract: SegContract = CONTRACT) -> np.ndarray:
    """(3,) LPS centre (mm) of the head: centroid of the voxels above the head level."""
    values = np.asarray(volume_zyx, np.float32)
    finite = np.where(np.isfinite(values), values, 0.0)
    top = float(np.percentile(finite, contract.percentile))
    if not top > 0:
        raise AnalysisError("PET volume has no positive uptake", "empty_volume")
    index_zyx = np.argwhere(finite > contract.head_fraction * top).mean(axis=0)
    return np.asarray(affine, float)[:3, :3] @ index_zyx + np.asarray(affine, float)[:3, 3]


def box_reference(centre_lps_mm: np.ndarray, contract: BoxGeometry = CONTRACT) -> sitk.Image:
    """The contract's box (identity direction, LPS) centred on ``centre_lps_mm``."""
    size_xyz = tuple(int(v) for v in contract.box_shape_zyx[::-1])
    ref = sitk.Image(size_xyz, sitk.sitkFloat32)
    ref.SetSpacing((contract.spacing_mm,) * 3)
    half = (np.array(size_xyz, float) - 1.0) / 2.0
    origin = np.asarray(centre_lps_mm, float) - contract.spacing_mm * half
    ref.SetOrigin(tuple(float(v) for v in origin))
    return ref


def brain_scale(box_zyx: np.ndarray, contract: SegContract = CONTRACT) -> float:
    """Median of the box voxels above ``brain_fraction`` x the box percentile (units)."""
    top = float(np.percentile(box_zyx, contract.percentile))
    brain = box_zyx[box_zyx > contract.brain_fraction * top]
    if not top > 0 or brain.size == 0:
        raise AnalysisError("PET volume has no brain-level uptake", "empty_volume")
    return float(np.median(brain))


def preprocess(volume_zyx: np.ndarray, affine: np.ndarray,
               contract: SegContract = CONTRACT) -> NetInput:
    """The network's input for a static PET volume (module docstring, steps 1-3).

    Parameters
    ----------
    volume_zyx : (z, y, x) float array
        Static PET in any Units (BQML, CNTS, GML); only ratios matter.
    affine : (4, 4) float array
        Voxel index ``(z, y, x)`` to LPS mm of the voxel centre.
    contract : SegContract
    """
    centre = head_centre_lps_mm(volume_zyx, affine, contract)
    ref = box_reference(centre, contract)
    moving = image_from_zyx(np.nan_to_num(np.asarray(volume_zyx, np.float32)), affine)
    box = sitk.GetArrayFromImage(sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkLinear,
                                               0.0, sitk.sitkFloat32))
    scale = brain_scale(box, contract)
    return NetInput((box / scale).astype(np.float32), np.array(ref.GetOrigin(), float),
                    scale, contract)


def resample_to_box(array_zyx: np.ndarray, affine: np.ndarray, net_input: NetInput,
                    nearest: bool = False) -> np.ndarray:
    """Any native-grid array (e.g. truth labels) on the box of ``net_input`` (0 outside)."""
    ref = box_reference(_box_centre(net_input), net_input.contract)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    moving = image_from_zyx(np.asarray(array_zyx, np.float32), affine)
    out = sitk.Resample(moving, ref, sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def to_native(probability_box_zyx: np.ndarray, net_input: NetInput,
              shape_zyx: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The box probability on the native grid (linear interpolation, 0 outside the box).

    Returns
    -------
    (z, y, x) float32 array of ``shape_zyx``, values in [0, 1].
    """
    box = sitk.GetImageFromArray(np.ascontiguousarray(probability_box_zyx, np.float32))
    box.SetSpacing((net_input.contract.spacing_mm,) * 3)
    box.SetOrigin(tuple(float(v) for v in net_input.origin_lps_mm))
    native = image_from_zyx(np.zeros(shape_zyx, np.float32), affine)
    out = sitk.Resample(box, native, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.clip(sitk.GetArrayFromImage(out), 0.0, 1.0).astype(np.float32)


def _box_centre(net_input: NetInput) -> np.ndarray:
    half = (np.array(net_input.contract.box_shape_zyx[::-1], float) - 1.0) / 2.0
    return net_input.origin_lps_mm + net_input.contract.spacing_mm * half


def mirrored_probability(predict: Callable[[np.ndarray], np.ndarray],
                         image_zyx: np.ndarray) -> np.ndarray:
    """Left-right mirror test-time augmentation on the box.

    The mean of the prediction on the box and the prediction on the box
    mirrored along x (the box's x axis runs to patient left, so this swaps the
    hemispheres about the box's mid-sagittal plane), mirrored back: the
    normal brain is nearly symmetric, the tumour is not, and a voxel the
    network calls tumour in one view only is halved.
    """
    plain = predict(image_zyx)
    flipped = predict(np.ascontiguousarray(image_zyx[:, :, ::-1]))[:, :, ::-1]
    return np.asarray(0.5 * (plain + flipped), np.float32)


class ContractModel:
    """A box-in, box-out U-Net served by :class:`service.inference.onnx.OnnxModel`,
    its preprocessing contract checked at load (shared by the PET and FLAIR segmenters).

    ``parse`` reads the contract from the model's metadata under
    ``metadata_key``; it must equal ``expected``. ``label`` names the contract
    in the refusals (``model_contract``).
    """

    def __init__(self, model_path: Path, expected: Any, parse: Callable[[str], Any],
                 metadata_key: str, label: str, expected_sha256: str | None = None,
                 intra_op_threads: int = 1) -> None:
        from service.inference.onnx import ModelSignature, OnnxModel, TensorSpec

        box = expected.box_shape_zyx
        signature = ModelSignature(
            inputs=(TensorSpec(INPUT_NAME, shape=(1, *box)),),
            outputs=(TensorSpec(OUTPUT_NAME, shape=(1, *box)),))
        self._model = OnnxModel(Path(model_path), signature, expected_sha256, intra_op_threads)
        text = self._model.metadata.get(metadata_key)
        if text is None:
            raise AnalysisError(f"model has no {label} contract in its metadata",
                                "model_contract")
        try:
            contract = parse(text)
        except ValueError as exc:
            raise AnalysisError(str(exc), "model_contract") from exc
        if contract != expected:
            raise AnalysisError(f"model's {label} contract differs from this code's",
                                "model_contract")
        self.contract = contract

    @property
    def info(self) -> SegmentationInfo:
        """``method="unet"`` with the model's name and SHA-256."""
        return SegmentationInfo("unet", self._model.name, self._model.sha256)

    def predict_box(self, image_zyx: np.ndarray) -> np.ndarray:
        """The model's probability ``(D, H, W)`` float32 for one normalised box."""
        x = np.ascontiguousarray(image_zyx, np.float32)[None, None]
        (prob,) = self._model.run(x)
        return np.asarray(prob[0, 0], np.float32)

    def predict(self, image_zyx: np.ndarray, mirror: bool) -> np.ndarray:
        """:meth:`predict_box`, averaged with the mirrored box when ``mirror``
        (:func:`mirrored_probability`)."""
        if mirror:
            return mirrored_probability(self.predict_box, image_zyx)
        return self.predict_box(image_zyx)


class TumourSegmenter(ContractModel):
    """The PET-only tumour U-Net served through :class:`service.inference.onnx.OnnxModel`.

    Parameters
    ----------
    model_path : Path
        The ONNX model (its ``.sha256`` sidecar gives the checksum unless
        ``expected_sha256`` is set).
    expected_sha256 : str or None

    Raises
    ------
    AnalysisError
        ``model_<status>`` when the checksum check fails (missing file, no or
        wrong checksum); ``model_contract`` when the signature or the
        preprocessing contract in the metadata differs from this code's.
    """

    def __init__(self, model_path: Path, expected_sha256: str | None = None,
                 intra_op_threads: int = 1) -> None:
        super().__init__(model_path, CONTRACT, SegContract.from_json, CONTRACT_METADATA_KEY,
                         "segmentation", expected_sha256, intra_op_threads)

    def segment(self, volume_zyx: np.ndarray, affine: np.ndarray,
                mirror: bool = MIRROR_TTA) -> np.ndarray:
        """Tumour probability of every voxel of the static PET.

        Parameters
        ----------
        volume_zyx : (z, y, x) float array
            Static attenuation-corrected PET, any Units.
        affine : (4, 4) float array
            Voxel index ``(z, y, x)`` to LPS mm of the voxel centre.
        mirror : bool
            Test-time augmentation (:func:`mirrored_probability`); default
            :data:`MIRROR_TTA`.

        Returns
        -------
        (z, y, x) float32 array
            Probability in [0, 1] on the given grid; candidates are >= 0.5.
        """
        net_input = preprocess(volume_zyx, affine, self.contract)
        prob = self.predict(net_input.image_zyx, mirror)
        return to_native(prob, net_input, tuple(np.shape(volume_zyx)), affine)

