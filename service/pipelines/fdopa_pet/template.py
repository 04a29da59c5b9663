"""The FDOPA PET template and its analysis atlas on the MNI 2 mm grid.

The shipped template (``models/fdopa_template/fdopa_template_mni2mm.npz``) is
the smoothed, left-right symmetrised mean of simulated normal [18F]FDOPA scans
of three PET/CT profiles, adults and children, each normalised to MNI space
and scaled to a brain mean of 1 (``models/fdopa_template/build_template.py``,
its README and PROVENANCE). :func:`model_template` is the scan-free starting
point of that build.

Grid: the 91 x 109 x 91 MNI 2 mm lattice of ``models/atlas/mni_2mm.npz``;
arrays are ``[z, y, x]``, ``affine`` maps a voxel index ``(z, y, x)`` to the
LPS millimetres of the voxel centre (x towards the patient's left). The
mid-sagittal plane is LPS x = 0.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from service.imaging.atlas import Atlas
from service.paths import default_models_dir
from service.pipelines.fdopa_pet.atlas_labels import FDOPA_LABELS, fdopa_atlas_labels

TEMPLATE_FILE = "fdopa_template_mni2mm.npz"
#: FWHM = 2 sqrt(2 ln 2) sigma.
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Relative uptake of the model template (brain grey matter = 1): static
#: 10-30 min FDOPA, research note fdopa_sim_and_product.md section 1.1.
MODEL_UPTAKE: dict[str, float] = {
    "grey": 1.0, "white": 0.7, "striatum": 2.2, "extracerebral": 0.35,
}
#: Smoothing of the model template, mm FWHM (about a brain PET's resolution).
MODEL_FWHM_MM = 7.0


@dataclass(frozen=True, eq=False)
class FdopaTemplate:
    """Registration target and analysis atlas.

    Attributes
    ----------
    image_zyx : (91, 109, 91) float32 array
        Template PET, unitless (mean inside the brain labels = 1).
    labels_zyx : (91, 109, 91) int16 array
        Analysis atlas (:data:`service.pipelines.fdopa_pet.atlas_labels.FDOPA_LABELS`).
    names : mapping of str to int
        Label name to value in ``labels_zyx``.
    affine : (4, 4) float64 array
        Voxel index ``(z, y, x)`` to LPS mm of the voxel centre.
    sha256 : str
        Of the file it was loaded from (``""`` for an in-memory template).
    provenance : str
        How it was made (JSON text for the shipped file).
    """

    image_zyx: np.ndarray
    labels_zyx: np.ndarray
    names: Mapping[str, int]
    affine: np.ndarray
    sha256: str = ""
    provenance: str = ""

    @property
    def brain_zyx(self) -> np.ndarray:
        """Boolean mask of every atlas label."""
        return np.asarray(self.labels_zyx > 0)

    def mask(self, *names: str) -> np.ndarray:
        """Boolean mask of the union of the named labels."""
        return np.isin(self.labels_zyx, [self.names[n] for n in names])

    def image(self, array_zyx: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image on the template grid (the template, or ``array_zyx``)."""
        return image_from_affine(self.image_zyx if array_zyx is None else array_zyx,
                                 self.affine)


def image_from_affine(array_zyx: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """SimpleITK image of a ``[z, y, x]`` array with an index-to-LPS affine.

    Parameters
    ----------
    array_zyx : (z, y, x) array
    affine : (4, 4) array
        Column 0 steps along z (axis 0), column 1 along y, column 2 along x,
        mm; column 3 is the LPS centre of voxel (0, 0, 0).
    """
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(tuple(float(v) for v in spacing[::-1]))
    image.SetOrigin(tuple(float(v) for v in affine[:3, 3]))
    cols = affine[:3, :3] / spacing
    image.SetDirection(tuple(float(v) for v in cols[:, ::-1].ravel()))
    return image


def atlas_affine(atlas: Atlas) -> np.ndarray:
    """(4, 4) index ``(z, y, x)`` to LPS affine of the atlas grid."""
    direction = np.asarray(atlas.direction, float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = (direction * atlas.spacing_mm)[:, ::-1]
    affine[:3, 3] = atlas.origin_lps_mm
    return affine


def model_template(atlas: Atlas) -> FdopaTemplate:
    """A scan-free FDOPA template from the atlas tissue maps (the build's start).

    Grey and white matter at :data:`MODEL_UPTAKE` levels, striatum (caudate,
    putamen, pallidum) at the striatal level, skull and scalp at the
    extracerebral level, smoothed to :data:`MODEL_FWHM_MM`, scaled to a brain
    mean of 1.
    """
    labels = fdopa_atlas_labels(atlas)
    u = MODEL_UPTAKE
    striatum = np.isin(labels, [FDOPA_LABELS[f"{s}_{side}"] for s in ("caudate", "putamen",
                                                                       "pallidum")
                                for side in ("left", "right")])
    img = u["grey"] * atlas.gm_zyx + u["white"] * atlas.wm_zyx
    img = np.where(striatum, u["striatum"], img)
    img = img + u["extracerebral"] * (atlas.skull_zyx | atlas.scalp_zyx)
    sigma_vox = MODEL_FWHM_MM / FWHM_PER_SIGMA / float(atlas.spacing_mm[0])
    img = ndimage.gaussian_filter(img.astype(np.float32), sigma_vox)
    img = img / float(img[labels > 0].mean())
    return FdopaTemplate(img.astype(np.float32), labels, dict(FDOPA_LABELS), atlas_affine(atlas),
                         provenance="model template from models/atlas/mni_2mm.npz")


def save_fdopa_template(template: FdopaTemplate, path: Path) -> str:
    """Write ``template`` as a compressed npz plus ``<path>.sha256``; return the hash."""
    np.savez_compressed(
        path, template=template.image_zyx.astype(np.float32),
        labels=template.labels_zyx.astype(np.int16),
        names=np.array(json.dumps(dict(template.names))), affine=template.affine,
        provenance=np.array(template.provenance),
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def load_fdopa_template(path: Path | None = None) -> FdopaTemplate:
    """Load the FDOPA template (the shipped one when ``path`` is None).

    The file's SHA-256 is checked against ``<path>.sha256`` when that exists.
    Loads are cached per path, size and modification time (the arrays are
    read-only), so repeated calls return the same object and the registration's
    prepared copy of it is reused.

    Raises
    ------
    FileNotFoundError
        No template at ``path``.
    ValueError
        Checksum mismatch, or arrays of inconsistent shape.
    """
    path = (path or default_models_dir() / "fdopa_template" / TEMPLATE_FILE).resolve()
    stat = path.stat()
    return _load(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=4)
def _load(path: Path, size: int, mtime_ns: int) -> FdopaTemplate:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = Path(f"{path}.sha256")
    if sidecar.exists() and sidecar.read_text().split()[0] != digest:
        raise ValueError(f"FDOPA template {path.name}: SHA-256 does not match {sidecar.name}")
    with np.load(path) as npz:
        image = npz["template"].astype(np.float32)
        labels = npz["labels"].astype(np.int16)
        names = {str(k): int(v) for k, v in json.loads(str(npz["names"])).items()}
        affine = npz["affine"].astype(float)
        provenance = str(npz["provenance"])
    if image.shape != labels.shape or affine.shape != (4, 4):
        raise ValueError(f"FDOPA template {path.name}: inconsistent arrays")
    for a in (image, labels, affine):
        a.setflags(write=False)
    return FdopaTemplate(image, labels, MappingProxyType(names), affine, digest, provenance)
