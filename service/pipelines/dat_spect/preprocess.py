"""The CNN's input: one function shared by training and serving.

The model contract
------------------
A spatially normalised scan (the pipeline's ``Normalisation.volume_zyx`` on
the MNI 2 mm atlas grid, 91 x 109 x 91, ``[z, y, x]``, LPS, see
:mod:`service.imaging.atlas`) becomes a binding-ratio image cropped around
the striatum:

1. **Intensity**: ``volume / mean(volume[occipital]) - 1``, so every voxel is
   a specific binding ratio against the occipital reference (the same
   reference as the SBR in :mod:`service.pipelines.dat_spect.quantify`); background and
   reference are about 0, the striatum of a normal scan several units.
2. **Crop**: a fixed box of :data:`BOX_SHAPE_ZYX` voxels centred on the
   bounding box of the four striatal atlas labels (caudate and putamen, both
   sides). With the shipped atlas the striatum spans 19 x 27 x 36 voxels, so
   the box leaves a margin of about 6 voxels (12 mm) each side for
   misregistration and partial-volume spill.

The box origin and shape and the normalisation rule form a
:class:`PreprocessContract`. Training writes it into the exported ONNX file's
metadata (key :data:`CONTRACT_METADATA_KEY`), so it is covered by the model's
SHA-256; serving reads it back (:mod:`service.pipelines.dat_spect.cnn`) and calls
:func:`cnn_input` with it. Pure numerics: numpy in, numpy out, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import AnalysisError
from service.imaging.atlas import LABELS, Atlas

#: Version of the preprocessing rule; bump when :func:`cnn_input` changes.
CONTRACT_VERSION = 1
#: Shape of the crop box, voxels ``(z, y, x)`` of 2 mm (divisible by 8 for the CNN).
BOX_SHAPE_ZYX: tuple[int, int, int] = (32, 40, 48)
#: Atlas labels whose bounding box centres the crop.
STRIATAL_LABELS: tuple[str, ...] = ("caudate_left", "caudate_right", "putamen_left",
                                    "putamen_right")
REFERENCE_LABEL = "occipital"
NORMALISATION = "volume / mean(occipital) - 1"
#: Key of the contract JSON in the ONNX model's metadata_props.
CONTRACT_METADATA_KEY = "dopanode_preprocess_contract"


@dataclass(frozen=True)
class PreprocessContract:
    """Constants of the model's input, recorded with the model.

    Attributes
    ----------
    box_start_zyx : tuple of 3 int
        First voxel of the crop box on the atlas grid, ``(z, y, x)`` indices.
    box_shape_zyx : tuple of 3 int
        Box size in voxels.
    grid_shape_zyx : tuple of 3 int
        Atlas grid the box refers to (91, 109, 91).
    reference_label : str
        Atlas label whose mean divides the volume.
    normalisation : str
        The intensity rule, as text.
    version : int
    """

    box_start_zyx: tuple[int, int, int]
    box_shape_zyx: tuple[int, int, int]
    grid_shape_zyx: tuple[int, int, int]
    reference_label: str = REFERENCE_LABEL
    normalisation: str = NORMALISATION
    version: int = CONTRACT_VERSION

    def __post_init__(self) -> None:
        for start, size, grid in zip(self.box_start_zyx, self.box_shape_zyx,
                                     self.grid_shape_zyx, strict=True):
            if size <= 0 or start < 0 or start + size > grid:
                raise ValueError(f"crop box {self.box_start_zyx}+{self.box_shape_zyx} "
                                 f"is not inside the grid {self.grid_shape_zyx}")
        if self.reference_label not in LABELS:
            raise ValueError(f"reference_label {self.reference_label!r} is not an atlas label")

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Shape of one model input, ``(1, D, H, W)`` (channel first)."""
        return (1, *self.box_shape_zyx)

    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(  # type: ignore[return-value]
            slice(s, s + n) for s, n in zip(self.box_start_zyx, self.box_shape_zyx, strict=True)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "box_start_zyx": list(self.box_start_zyx),
            "box_shape_zyx": list(self.box_shape_zyx),
            "grid_shape_zyx": list(self.grid_shape_zyx),
            "reference_label": self.reference_label,
            "normalisation": self.normalisation,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessContract:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed or newer contract."""
        try:
            version = int(data["version"])
            contract = cls(
                box_start_zyx=_triple(data["box_start_zyx"]),
                box_shape_zyx=_triple(data["box_shape_zyx"]),
                grid_shape_zyx=_triple(data["grid_shape_zyx"]),
                reference_label=str(data["reference_label"]),
                normalisation=str(data["normalisation"]),
                version=version,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed preprocessing contract: {exc}") from exc
        if version != CONTRACT_VERSION or contract.normalisation != NORMALISATION:
            raise ValueError(f"preprocessing contract version {version} "
                             f"({contract.normalisation!r}) is not supported")
        return contract


def _triple(values: Any) -> tuple[int, int, int]:
    out = [int(v) for v in values]
    if len(out) != 3:
        raise ValueError(f"expected 3 integers, got {values!r}")
    return (out[0], out[1], out[2])


def contract_for_atlas(
    atlas: Atlas, box_shape_zyx: tuple[int, int, int] = BOX_SHAPE_ZYX
) -> PreprocessContract:
    """The crop box of ``box_shape_zyx`` centred on the atlas striatum.

    The centre is the midpoint of the bounding box of :data:`STRIATAL_LABELS`
    (rounded down), the box is then shifted to lie inside the grid.
    """
    mask = np.isin(atlas.labels_zyx, [LABELS[name] for name in STRIATAL_LABELS])
    if not mask.any():
        raise ValueError("atlas has no striatal labels")
    idx = np.nonzero(mask)
    start = []
    for axis, size in enumerate(box_shape_zyx):
        centre = (int(idx[axis].min()) + int(idx[axis].max()) + 1) // 2
        grid = atlas.shape_zyx[axis]
        start.append(min(max(centre - size // 2, 0), grid - size))
    return PreprocessContract(_triple(start), box_shape_zyx, atlas.shape_zyx)


def cnn_input(
    volume_mni_zyx: np.ndarray, atlas: Atlas, contract: PreprocessContract | None = None
) -> np.ndarray:
    """Binding-ratio crop of a normalised scan, the CNN's input.

    Parameters
    ----------
    volume_mni_zyx : (91, 109, 91) array
        Scan on the atlas grid, ``[z, y, x]``, any non-negative count units.
    atlas : Atlas
        Supplies the occipital reference mask.
    contract : PreprocessContract or None
        The model's contract; :func:`contract_for_atlas` when None.

    Returns
    -------
    (1, D, H, W) float32 array
        ``volume / mean(reference) - 1`` inside the crop box (unitless).

    Raises
    ------
    AnalysisError
        ``bad_volume`` when the volume holds NaN or infinity;
        ``no_reference`` when the reference mean is not positive.
    ValueError
        Wrong grid shape, or a contract made for another grid.
    """
    contract = contract or contract_for_atlas(atlas)
    if volume_mni_zyx.shape != atlas.shape_zyx or atlas.shape_zyx != contract.grid_shape_zyx:
        raise ValueError(f"volume {volume_mni_zyx.shape}, atlas {atlas.shape_zyx} and contract "
                         f"{contract.grid_shape_zyx} grids differ")
    volume = np.asarray(volume_mni_zyx, dtype=np.float64)
    if not np.isfinite(volume).all():
        raise AnalysisError("normalised volume holds NaN or infinite values", "bad_volume")
    reference = float(volume[atlas.mask(contract.reference_label)].mean())
    if not reference > 0:
        raise AnalysisError("no counts in the occipital reference region", "no_reference")
    crop = volume[contract.slices()] / reference - 1.0
    return crop[None].astype(np.float32)
