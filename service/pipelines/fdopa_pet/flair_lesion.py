"""The FLAIR lesion of the MR-guided route: which segmenter, and the classical one.

The paediatric route (issue 13; ``research/fdopa.md`` section 1a) segments the
tumour (BraTS "whole tumour": tumour, oedema, necrosis) on the FLAIR and
carries it into the PET. Two segmenters, chosen once when the pipeline is
built (:func:`flair_segmenter`) and named in every output:

* the FLAIR U-Net, ``FlairSegmenter(model_path).probabilities(flair)`` of
  :mod:`service.pipelines.fdopa_pet.flair_segment` (written apart), when its
  ONNX model exists;
* else the classical threshold of this module (:func:`flair_threshold_lesion`),
  named "classical threshold (no FLAIR U-Net shipped)".

Classical rule (pure, on the FLAIR's native grid):

1. head: :func:`.flair_registration.flair_head_mask` (Otsu, closed, filled);
2. normal-appearing brain level: the median of the voxels more than
   :data:`REFERENCE_DEPTH_MM` inside the head outline (no scalp, no skull)
   that are above half their own median (no CSF, which FLAIR nulls); white
   and grey matter together, since the lesion is brighter than both;
3. hyperintense: above :data:`HYPERINTENSITY_X_REFERENCE` x that level and
   more than :data:`EDGE_MM` inside the head outline (bright scalp fat);
4. one opening (single bright voxels, vessels), components of at least
   :data:`MIN_COMPONENT_ML` kept, holes filled (a darker necrotic core is
   part of the whole tumour).

On the simulated ``ax2d_3t`` test study this gives Dice 0.90 against the
FLAIR truth (tumour + oedema); lesion voxels were 1.6-2.6 x the level,
normal tissue at most 1.35 x (99th percentile). On eight training-split
benchmark studies with a lesion 0.76 +- 0.19 (``scripts/flair_threshold_dice.py``;
faint small lesions are missed). A real FLAIR's white-matter
hyperintensities (small-vessel disease, gliosis) are hyperintense too; in
children they are rare, and the reader sees the outline in the picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Literal

import numpy as np
from scipy import ndimage

from service.errors import AnalysisError
from service.imaging.mr_volume import MrVolume
from service.paths import default_models_dir
from service.pipelines.fdopa_pet.flair_registration import flair_head_mask

#: The FLAIR U-Net's file name in :func:`service.paths.default_models_dir`.
FLAIR_MODEL_FILE = "dopanode_flair_seg.onnx"
#: Depth inside the head outline of the voxels that give the brain level, mm.
REFERENCE_DEPTH_MM = 10.0
#: Depth inside the head outline below which nothing is lesion (scalp), mm.
EDGE_MM = 4.0
#: Hyperintense: above this x the normal-appearing brain level.
HYPERINTENSITY_X_REFERENCE = 1.5
#: Smallest lesion component kept, mL.
MIN_COMPONENT_ML = 1.0

FlairMethod = Literal["unet", "threshold"]
THRESHOLD_TEXT = "classical threshold (no FLAIR U-Net shipped)"


def default_flair_model() -> Path:
    """``models/dopanode_flair_seg.onnx`` (or under ``$DOPANODE_MODELS_DIR``)."""
    return default_models_dir() / FLAIR_MODEL_FILE


@dataclass(frozen=True)
class FlairLesionSegmenter:
    """A FLAIR lesion segmenter and its name.

    Attributes
    ----------
    method : {"unet", "threshold"}
    description : str
        For the reader, e.g. "classical threshold (no FLAIR U-Net shipped)"
        or "FLAIR U-Net dopanode_flair_seg.onnx".
    probabilities : callable
        ``MrVolume -> (z, y, x) float32 array`` on the FLAIR's native grid,
        in [0, 1]; voxels >= 0.5 are lesion.
    """

    method: FlairMethod
    description: str
    probabilities: Callable[[MrVolume], np.ndarray]


def flair_threshold_lesion(flair: MrVolume) -> np.ndarray:
    """The classical FLAIR lesion (module docstring), float32 0/1 on the FLAIR grid.

    Parameters
    ----------
    flair : MrVolume

    Returns
    -------
    (z, y, x) float32 array
        1 in the lesion, 0 elsewhere (may be all 0).

    Raises
    ------
    AnalysisError
        ``flair_unusable`` when no head is found.
    """
    image = np.asarray(flair.array_zyx, np.float32)
    head = flair_head_mask(image)
    if head.sum() < 1000:
        raise AnalysisError("no head found in the FLAIR", "flair_unusable")
    spacing = flair.spacing_zyx_mm
    depth = ndimage.distance_transform_edt(head, sampling=spacing)
    inner = image[depth > REFERENCE_DEPTH_MM]
    if inner.size < 1000:
        raise AnalysisError("FLAIR head too small for a brain level", "flair_unusable")
    level = float(np.median(inner[inner > 0.5 * float(np.median(inner))]))
    mask = (image > HYPERINTENSITY_X_REFERENCE * level) & (depth > EDGE_MM)
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    if n:
        voxel_ml = float(np.prod(spacing)) / 1000.0
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1)) * voxel_ml
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= MIN_COMPONENT_ML))
        mask = ndimage.binary_fill_holes(mask)
    return np.asarray(mask, np.float32)


THRESHOLD_SEGMENTER = FlairLesionSegmenter("threshold", THRESHOLD_TEXT, flair_threshold_lesion)


def flair_segmenter(choice: Literal["auto", "unet", "threshold"],
                    model_path: Path | None = None) -> FlairLesionSegmenter:
    """The FLAIR segmenter a pipeline uses (chosen once, at start-up).

    Parameters
    ----------
    choice : {"auto", "unet", "threshold"}
        ``"auto"``: the U-Net when ``model_path`` exists, else the classical
        threshold (named so); ``"unet"``: the U-Net or a refusal to start;
        ``"threshold"``: the classical threshold.
    model_path : Path, optional
        The FLAIR U-Net (default :func:`default_flair_model`).

    Raises
    ------
    FileNotFoundError
        ``"unet"`` without the model file.
    """
    path = model_path if model_path is not None else default_flair_model()
    if choice == "threshold" or (choice == "auto" and not path.is_file()):
        return THRESHOLD_SEGMENTER
    if not path.is_file():
        raise FileNotFoundError(f"FLAIR U-Net model not found: {path.name}")
    module = import_module("service.pipelines.fdopa_pet.flair_segment")
    model = module.FlairSegmenter(path)
    return FlairLesionSegmenter("unet", f"FLAIR U-Net {path.name}", model.probabilities)
