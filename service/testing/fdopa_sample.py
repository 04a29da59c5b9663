"""A tiny static FDOPA training sample for the U-Net training tests (no simulation)."""

from __future__ import annotations

import numpy as np

#: Truth labels of the sample: brain block 3, PET-active tumour 2 (models/fdopa_seg/data.py).
BRAIN, TUMOUR = 3, 2


def tiny_static_sample(tumour: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image_zyx, labels_zyx, affine)``: a 2 mm, 30 x 60 x 60 volume with a brain block
    (1000) and, when ``tumour``, a hot 6 x 6 x 6 cube (3000, 216 voxels, 1.728 mL)."""
    shape = (30, 60, 60)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-59.0, -59.0, -29.0]
    image = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint8)
    image[3:27, 5:55, 8:52], labels[3:27, 5:55, 8:52] = 1000.0, BRAIN
    if tumour:
        image[12:18, 20:26, 20:26], labels[12:18, 20:26, 20:26] = 3000.0, TUMOUR
    return image, labels, affine
