"""FLAIR tumour segmentation: the FLAIR U-Net's preprocessing contract and its serving.

The paediatric MR-guided route (issue 13, ``docs/fdopa_flair_route.md``)
segments the tumour on the FLAIR. The network's input contract
(:class:`FlairContract`) is implemented once, here, in numpy and SimpleITK
(no torch), and imported by the training code (``models/flair_seg``); it is
written into the ONNX model's metadata (key :data:`CONTRACT_METADATA_KEY`),
covered by the model's SHA-256 and compared with this module's contract at
load, so a model trained under another contract is refused.

The contract, for a FLAIR (:class:`service.imaging.mr_volume.MrVolume`: any
orientation, 2D thick slices or 3D isotropic, any field strength):

1. **head centre**: the mean LPS position of the native voxels above
   ``head_fraction`` x the native ``percentile``-th percentile (scalp and
   brain; the nulled CSF and the air are below it);
2. **box**: an axis-aligned LPS grid of ``box_shape_zyx`` isotropic voxels of
   ``spacing_mm`` centred there (the PET contract's box,
   :func:`service.pipelines.fdopa_pet.segment.box_reference`), the FLAIR
   resampled onto it linearly (0 outside its field of view: a 2D axial FLAIR
   covers about 150 mm in z);
3. **intensity**: the box divided by the median of its voxels above
   ``brain_fraction`` x the box percentile. MR values have no unit: the
   stored scale differs per scanner and series (the writer maps each series'
   maximum to 4000), the white-matter level per field strength, TR/TE/TI and
   receive coil. The median of the bright tissue (white and grey matter,
   scalp; not the nulled CSF, not the air) is a brain-level reference that
   only depends on the tissue ratios, so healthy white matter lands near 1
   whatever the scanner. The remaining differences (grey/white contrast of
   1.5 T vs 3 T and 2D vs 3D protocols, bias field, noise) are left to the
   training mix and the augmentation;
4. **inverse**: the probability on the box is resampled linearly onto the
   FLAIR's native grid (0 outside the box).

The label is the WHOLE TUMOUR: the T2/FLAIR-hyperintense abnormality
(tumour, necrosis and oedema; BraTS "whole tumour", the paper's FLAIR
lesion). Research use, not for diagnosis; the shipped model was trained on
simulated data only (``models/dopanode_flair_seg.card.md``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from service.errors import AnalysisError
from service.imaging.mr_volume import MrVolume
from service.paths import default_models_dir
from service.pipelines.fdopa_pet.segment import (
    ContractModel,
    NetInput,
    box_reference,
    image_from_zyx,
    to_native,
)

#: The shipped model's file name, in :func:`service.paths.default_models_dir`.
MODEL_FILE = "dopanode_flair_seg.onnx"
DEFAULT_MODEL: Path = default_models_dir() / MODEL_FILE
#: Metadata key of the FLAIR preprocessing contract in the ONNX model.
CONTRACT_METADATA_KEY = "dopanode_flair_seg_contract"
INPUT_NAME = "volume"
OUTPUT_NAME = "probability"
#: Default probability cut of :meth:`FlairSegmenter.lesion_mask`.
LESION_PROBABILITY = 0.5
#: Whether :meth:`FlairSegmenter.probabilities` averages with the left-right mirrored
#: prediction (:func:`service.pipelines.fdopa_pet.segment.mirrored_probability`); chosen
#: on the paediatric validation studies (docs/fdopa_flair_route.md, "FLAIR tumour
#: segmentation (transfer learning)").
MIRROR_TTA = True
#: What :data:`MIRROR_TTA` adds to a model's identity in cached evaluation rows.
SERVING_VARIANT = "+mirror" if MIRROR_TTA else ""


@dataclass(frozen=True)
class FlairContract:
    """Constants of the FLAIR network's input, recorded with the model.

    Attributes
    ----------
    kind : str
        What the model segments on which image; a PET contract never matches.
    version : int
        Bumped when the rule (not only a constant) changes.
    spacing_mm : float
        Isotropic voxel size of the box, mm.
    box_shape_zyx : tuple of 3 int
        Box size in voxels ``(z, y, x)``; each divisible by 8 (three poolings).
    percentile : float
        The high percentile the head and brain fractions refer to.
    head_fraction, brain_fraction : float
        Native voxels above ``head_fraction`` x the native percentile give the
        centre; box voxels above ``brain_fraction`` x the box percentile the scale.
    """

    kind: str = "flair_whole_tumour"
    version: int = 1
    spacing_mm: float = 2.0
    box_shape_zyx: tuple[int, int, int] = (80, 96, 80)
    percentile: float = 99.0
    head_fraction: float = 0.1
    brain_fraction: float = 0.3

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FlairContract:
        """Inverse of :meth:`to_json`; ValueError on malformed text or unknown fields."""
        try:
            data: dict[str, Any] = json.loads(text)
            if data.get("kind") != cls.kind:  # a PET contract has none
                raise KeyError("kind")
            data["box_shape_zyx"] = tuple(int(v) for v in data["box_shape_zyx"])
            return cls(**data)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"malformed FLAIR segmentation contract: {type(exc).__name__}") \
                from exc


#: The contract of this code; a model with another one is refused.
CONTRACT = FlairContract()


def flair_head_centre_lps_mm(volume_zyx: np.ndarray, affine: np.ndarray,
                             contract: FlairContract = CONTRACT) -> np.ndarray:
    """(3,) LPS centre (mm) of the head: centroid of the voxels above the head level."""
    values = np.nan_to_num(np.asarray(volume_zyx, np.float32))
    top = float(np.percentile(values, contract.percentile))
    if not top > 0:
        raise AnalysisError("FLAIR volume has no signal", "empty_volume")
    index_zyx = np.argwhere(values > contract.head_fraction * top).mean(axis=0)
    affine = np.asarray(affine, float)
    return affine[:3, :3] @ index_zyx + affine[:3, 3]


def flair_scale(box_zyx: np.ndarray, contract: FlairContract = CONTRACT) -> float:
    """Median of the box voxels above ``brain_fraction`` x the box percentile (stored units)."""
    top = float(np.percentile(box_zyx, contract.percentile))
    bright = box_zyx[box_zyx > contract.brain_fraction * top]
    if not top > 0 or bright.size == 0:
        raise AnalysisError("FLAIR volume has no brain-level signal", "empty_volume")
    return float(np.median(bright))


def preprocess_flair(volume_zyx: np.ndarray, affine: np.ndarray,
                     contract: FlairContract = CONTRACT) -> NetInput:
    """The network's input for a FLAIR (module docstring, steps 1-3).

    Parameters
    ----------
    volume_zyx : (z, y, x) float array
        The FLAIR, stored values through the modality LUT (no unit).
    affine : (4, 4) float array
        Voxel index ``(z, y, x)`` to LPS mm of the voxel centre.

    Returns
    -------
    NetInput
        ``image_zyx`` the ``(D, H, W)`` float32 box, white matter near 1;
        ``contract`` is ``contract`` (the PET :class:`NetInput` record, reused).
    """
    centre = flair_head_centre_lps_mm(volume_zyx, affine, contract)
    ref = box_reference(centre, contract)
    moving = image_from_zyx(np.nan_to_num(np.asarray(volume_zyx, np.float32)), affine)
    box = sitk.GetArrayFromImage(sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkLinear,
                                               0.0, sitk.sitkFloat32))
    scale = flair_scale(box, contract)
    return NetInput((box / scale).astype(np.float32), np.array(ref.GetOrigin(), float),
                    scale, contract)


class FlairSegmenter(ContractModel):
    """The FLAIR whole-tumour U-Net served through :class:`service.inference.onnx.OnnxModel`.

    Parameters
    ----------
    model_path : Path
        The ONNX model (its ``.sha256`` sidecar gives the checksum unless
        ``expected_sha256`` is set).
    expected_sha256 : str or None
    intra_op_threads : int

    Raises
    ------
    AnalysisError
        ``model_<status>`` when the checksum check fails (missing file, no or
        wrong checksum); ``model_contract`` when the signature or the FLAIR
        contract in the metadata differs from this code's (a PET model included).
    """

    def __init__(self, model_path: Path, expected_sha256: str | None = None,
                 intra_op_threads: int = 1) -> None:
        super().__init__(model_path, CONTRACT, FlairContract.from_json, CONTRACT_METADATA_KEY,
                         "FLAIR segmentation", expected_sha256, intra_op_threads)

    def probabilities(self, flair: MrVolume, mirror: bool = MIRROR_TTA) -> np.ndarray:
        """Whole-tumour probability of every voxel of the FLAIR.

        Parameters
        ----------
        flair : MrVolume
            The FLAIR series as one volume (:mod:`service.imaging.mr_volume`).
        mirror : bool
            Test-time augmentation (:meth:`predict`); default
            :data:`MIRROR_TTA`.

        Returns
        -------
        (z, y, x) float32 array
            Probability in [0, 1] on the FLAIR's native grid (the shape of
            ``flair.array_zyx``); 0 outside the contract's box.
        """
        net_input = preprocess_flair(flair.array_zyx, flair.affine, self.contract)
        prob = self.predict(net_input.image_zyx, mirror)
        return to_native(prob, net_input, tuple(np.shape(flair.array_zyx)), flair.affine)

    def lesion_mask(self, flair: MrVolume, cut: float = LESION_PROBABILITY) -> np.ndarray:
        """(z, y, x) bool array on the FLAIR's grid: probability >= ``cut``."""
        if not 0.0 < cut < 1.0:
            raise ValueError(f"cut must lie in (0, 1), got {cut}")
        return self.probabilities(flair) >= cut

