"""A putamen SBR estimator learnt from training scans (X): the one-sided override's ratio.

The AAL putamen VOI on a registered scan separates one-sided putamen losses
from normals less well than the image does: blur, a few mm of registration
error and another striatal shape let the caudate's counts into the edge of a
lost putamen's VOI (``models/training/README.md``, "A putamen estimator
learnt from training scans"). X is a linear estimator of each putamen's SBR
from the CNN's input crop (:func:`~service.pipelines.dat_spect.preprocess.cnn_input`):

* features of the left putamen: the crop in :data:`BOX_ATLAS_ZYX` (a box
  around the AAL left putamen on the atlas grid) averaged over
  :data:`POOL` ^ 3 voxels; the right putamen's box is its mirror image
  through the atlas midline, read mirrored, so both sides share one set of
  weights;
* estimate: ``w . features + b`` per putamen (an SBR, unitless);
* fitted by ridge regression on simulated training scans only
  (``bench/dat_putamen_estimator.py --train``; the rule
  ``models/training/rules/dat32_learned_putamen_estimator.md`` fixes it; the
  shipped weights ``models/dopanode_dat_putamen_estimator.npz`` with its card
  and ``.sha256``).

The node uses X's ratio (lower putamen estimate over the other) beside the
VOI SBR ratio in the clear one-sided override
(:func:`service.pipelines.dat_spect.verdict.one_sided_side`; X's clear cut
:data:`X_CLEAR_RATIO`, ``models/training/rules/dat33_both_measures_override.md``).
The reported SBRs, the SBR path and its asymmetry level stay on the AAL VOIs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.imaging.atlas import Atlas
from service.inference.manifest import check_model
from service.pipelines.dat_spect.preprocess import PreprocessContract

#: The shipped weights, in :func:`service.paths.default_models_dir`.
ESTIMATOR_FILE = "dopanode_dat_putamen_estimator.npz"
#: The left putamen's box on the atlas grid, ``[z, y, x]`` start and stop indices: the AAL
#: left putamen's bounding box (z 31-43, y 52-73, x 49-62) grown by 4 voxels (6 at the
#: anterior end, y; 3 at the top, z, cut to an even size); the stage-1 rule fixed these.
BOX_ATLAS_ZYX = ((27, 48, 45), (47, 80, 67))
#: Voxels averaged per feature along each axis.
POOL = 2
#: X's lower putamen ratio below which a normal CNN call becomes *reduced* (chosen on seen
#: normals only: fewer of them below it than below the VOI override's 0.741; rule dat33).
X_CLEAR_RATIO = 0.66


@dataclass(frozen=True)
class Box:
    """The left putamen's box in crop indices ``[z, y, x]`` and the crop's x of the midline."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    mirror_x: int  # crop x index i of the left box maps to mirror_x - i on the right

    @property
    def n_features(self) -> int:
        return int(np.prod([(b - a) // POOL for a, b in zip(self.start, self.stop, strict=True)]))


def putamen_box(atlas: Atlas, contract: PreprocessContract) -> Box:
    """:data:`BOX_ATLAS_ZYX` in the crop's indices of ``contract``, and the crop's mirror of x.

    Raises
    ------
    ValueError
        The box or its mirror image leaves the crop, or is not a multiple of :data:`POOL`.
    """
    lo, hi = np.array(BOX_ATLAS_ZYX[0]), np.array(BOX_ATLAS_ZYX[1])
    crop0 = np.array(contract.box_start_zyx)
    mid = round(-float(atlas.origin_lps_mm[0]) / float(atlas.spacing_mm[0]))  # MNI x = 0
    start, stop = (lo - crop0).tolist(), (hi - crop0).tolist()
    box = Box((start[0], start[1], start[2]), (stop[0], stop[1], stop[2]),
              int(2 * mid - 2 * crop0[2]))
    mirrored = (box.mirror_x - (box.stop[2] - 1), box.mirror_x - box.start[2] + 1)
    shape = contract.box_shape_zyx
    if min(*box.start, mirrored[0]) < 0 or max(box.stop[2], mirrored[1]) > shape[2] or any(
            box.stop[k] > shape[k] for k in (0, 1)):
        raise ValueError(f"the putamen box {box} leaves the crop {shape}")
    if any((b - a) % POOL for a, b in zip(box.start, box.stop, strict=True)):
        raise ValueError(f"the putamen box {box} is not a multiple of {POOL} voxels")
    return box


def side_features(crop_zyx: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The pooled box of the left putamen and the mirrored box of the right one."""
    (z0, y0, x0), (z1, y1, x1) = box.start, box.stop
    left = crop_zyx[z0:z1, y0:y1, x0:x1]
    r0, r1 = box.mirror_x - (x1 - 1), box.mirror_x - x0 + 1
    right = crop_zyx[z0:z1, y0:y1, r0:r1][:, :, ::-1]
    return _pool(left), _pool(right)


def _pool(a: np.ndarray) -> np.ndarray:
    z, y, x = (s // POOL for s in a.shape)
    return a.reshape(z, POOL, y, POOL, x, POOL).mean(axis=(1, 3, 5)).ravel()


def lower_ratio(left: float, right: float) -> float:
    """The lower putamen value over the higher one (NaN where the higher is not positive)."""
    hi = max(left, right)
    return min(left, right) / hi if hi > 0 else float("nan")


@dataclass(frozen=True, eq=False)
class PutamenEstimator:
    """X's weights on one crop geometry.

    Attributes
    ----------
    w : (n,) float64 array
    b : float
    box : Box
    sha256 : str
        Of the weights file ("" for weights made in memory).
    """

    w: np.ndarray
    b: float
    box: Box
    sha256: str = ""

    def __post_init__(self) -> None:
        if self.w.shape != (self.box.n_features,) or not np.all(np.isfinite(self.w)):
            raise ValueError(f"estimator weights of shape {self.w.shape} do not fit the "
                             f"putamen box ({self.box.n_features} features) or are not finite")

    def estimate(self, crop_zyx: np.ndarray) -> tuple[float, float]:
        """Left and right putamen SBR estimates from one crop ``(D, H, W)`` or ``(1, D, H, W)``."""
        crop = crop_zyx[0] if crop_zyx.ndim == 4 else crop_zyx
        left, right = side_features(crop, self.box)
        return float(left @ self.w + self.b), float(right @ self.w + self.b)


def load_putamen_estimator(path: Path, atlas: Atlas, contract: PreprocessContract,
                           expected_sha256: str | None = None) -> PutamenEstimator:
    """X's weights from ``path`` (``w``, ``b``, ``box_atlas_zyx``, ``pool``), checked
    against ``expected_sha256`` or the ``.sha256`` sidecar.

    Raises
    ------
    ValueError
        The file is missing, fails its checksum, or its box is not :data:`BOX_ATLAS_ZYX`.
    """
    check = check_model(path, expected_sha256)
    if not check.ok:
        raise ValueError(f"putamen estimator: {check.detail}")
    with np.load(path, allow_pickle=False) as npz:
        w, b = np.asarray(npz["w"], np.float64), float(npz["b"])
        box_zyx = tuple(tuple(int(v) for v in row) for row in npz["box_atlas_zyx"])
        pool = int(npz["pool"])
    if box_zyx != BOX_ATLAS_ZYX or pool != POOL:
        raise ValueError(f"putamen estimator {path.name}: box {box_zyx} pool {pool}, "
                         f"this node reads box {BOX_ATLAS_ZYX} pool {POOL}")
    return PutamenEstimator(w, b, putamen_box(atlas, contract), check.sha256 or "")
