"""Domain randomisation of the digital brain: anatomy and uptake appearance per subject.

The classic phantom (:mod:`service.sim.anatomy`) is one brain (AAL striatum,
ICBM grey/white matter, fixed glands) under a random pose. An
:class:`Appearance` adds, per subject:

* striatal shape and size from one of several atlases
  (:mod:`service.sim.striatal_sources`);
* age-related atrophy: the brain shrinks inside the skull (about 0.2 % of its
  volume per year after 30) and the ventricles grow (volume about
  ``exp(0.022 (age - 30))`` times the template's, log-normal spread), grown
  outwards from the template ventricles by a distance threshold;
* a wide caudate/putamen binding ratio and anterior-posterior putamen
  gradient (factors on :data:`service.sim.disease.BR_YOUNG`);
* grey/white contrast and a smooth random cortical pattern of non-specific
  uptake;
* extracerebral uptake: salivary glands, nasal mucosa and scalp, each with
  its own level, beside the face/neck soft tissue.

The truth ROIs (label map) follow the chosen striatal source through the same
mapping as the activity, so they are exact in scan space.

Pure numerics: a seeded generator in, frozen dataclasses and arrays out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.imaging.atlas import LABELS, PUTAMEN_SPLIT_MNI_Y_MM, Atlas, load_atlas
from service.sim.anatomy import (
    _GLANDS_MNI,
    MU_BONE_PER_MM,
    MU_SOFT_TISSUE_PER_MM,
    STRIATAL_COMPONENTS,
    ScanGrid,
    SubjectPhantom,
    SubjectTransform,
    _ellipsoids,
    _head_mask,
    map_to_atlas_index,
)
from service.sim.disease import BR_YOUNG
from service.sim.striatal_sources import SOURCES, striatal_labels

#: Non-specific components of the broad phantom (amplitudes relative to grey matter).
BROAD_BACKGROUND: tuple[str, ...] = (
    "grey_matter", "white_matter", "extracerebral", "scalp", "salivary", "nasal",
)
#: Salivary glands: the classic phantom's parotids (centre z = -45 mm) lie two
#: thirds inside the skull on this template; here they sit lower and further
#: back, below the ear (78 % outside the skull), submandibular glands as before.
_GLANDS_BROAD_MNI = (
    ((52.0, -20.0, -55.0), (11.0, 16.0, 20.0)),
    ((-52.0, -20.0, -55.0), (11.0, 16.0, 20.0)),
) + _GLANDS_MNI[2:]
#: Nasal mucosa (centre MNI RAS mm, semi-axes mm).
_NASAL_MNI = (((0.0, 62.0, -38.0), (13.0, 20.0, 14.0)),)
#: Ventricle volume growth per year of age after 30 (log scale).
VENTRICLE_GROWTH_PER_YEAR = 0.022
#: Brain volume loss per year after 30 (fraction), before the per-subject factor.
BRAIN_LOSS_PER_YEAR = 0.002


@dataclass(frozen=True)
class Appearance:
    """One subject's anatomy and uptake appearance (see module docstring).

    Attributes
    ----------
    striatal_source : str
        One of :data:`service.sim.striatal_sources.SOURCES`.
    age_years : int
        Age the atrophy was drawn for (the group's scans share it).
    brain_scale : float
        Linear size of the brain relative to the template (<= about 1).
    ventricle_factor : float
        Ventricle volume relative to the template's (about 14 ml).
    caudate_factor, posterior_factor : float
        Factors on the young caudate and posterior-putamen binding.
    cortical_contrast : float
        SD of the log of the smooth cortical uptake pattern.
    pattern_seed : int
        Seed of that pattern.
    white_matter, extracerebral, scalp, salivary, nasal : float
        Concentrations relative to grey matter.
    """

    striatal_source: str
    age_years: int
    brain_scale: float
    ventricle_factor: float
    caudate_factor: float
    posterior_factor: float
    cortical_contrast: float
    pattern_seed: int
    white_matter: float
    extracerebral: float
    scalp: float
    salivary: float
    nasal: float

    def br_young(self) -> dict[str, float]:
        """Young-adult binding per family with this subject's ratio and gradient."""
        return {
            "caudate": BR_YOUNG["caudate"] * self.caudate_factor,
            "putamen_anterior": BR_YOUNG["putamen_anterior"],
            "putamen_posterior": BR_YOUNG["putamen_posterior"] * self.posterior_factor,
        }

    def amplitudes(self) -> np.ndarray:
        """Amplitudes of :data:`BROAD_BACKGROUND`, shape (6,)."""
        return np.array(
            [1.0, self.white_matter, self.extracerebral, self.scalp, self.salivary, self.nasal]
        )

    def fields(self) -> dict[str, object]:
        """Manifest columns (``app_*``)."""
        return {f"app_{k}": (round(v, 4) if isinstance(v, float) else v)
                for k, v in self.__dict__.items() if k != "age_years"}


def sample_appearance(rng: np.random.Generator, age_years: int) -> Appearance:
    """Draw one subject's appearance for ``age_years``."""
    years = max(age_years - 30, 0)
    return Appearance(
        striatal_source=str(rng.choice(SOURCES)),
        age_years=int(age_years),
        brain_scale=float((1.0 - BRAIN_LOSS_PER_YEAR * years * rng.uniform(0.5, 1.5)) ** (1 / 3)),
        ventricle_factor=float(
            max(np.exp(VENTRICLE_GROWTH_PER_YEAR * years + rng.normal(0.0, 0.25)), 0.7)
        ),
        caudate_factor=float(np.exp(rng.uniform(np.log(0.55), np.log(1.2)))),
        posterior_factor=float(rng.uniform(0.7, 1.15)),
        cortical_contrast=float(rng.uniform(0.0, 0.25)),
        pattern_seed=int(rng.integers(2**31)),
        white_matter=float(rng.uniform(0.35, 0.9)),
        extracerebral=float(rng.uniform(0.1, 0.5)),
        scalp=float(rng.uniform(0.1, 0.8)),
        salivary=float(rng.uniform(0.3, 2.5)),
        nasal=float(rng.uniform(0.2, 2.0)),
    )


def template_ventricles(atlas: Atlas) -> np.ndarray:
    """Ventricles of the template: the holes inside the brain mask, ``[z, y, x]`` bool."""
    return ndimage.binary_fill_holes(atlas.brain_zyx) & ~atlas.brain_zyx


def grown_ventricles(atlas: Atlas, factor: float, keep_out: np.ndarray) -> np.ndarray:
    """Ventricles grown (or shrunk) to ``factor`` times the template volume.

    Voxels are added in order of their distance from the template ventricles
    (removed from the outside in for ``factor < 1``), never in ``keep_out``
    (the striatum) and never outside the filled brain.
    """
    seed = template_ventricles(atlas)
    inside = ndimage.binary_fill_holes(atlas.brain_zyx) & ~keep_out
    signed = ndimage.distance_transform_edt(~seed) - ndimage.distance_transform_edt(seed)
    candidates = np.where(inside, signed, np.inf)
    target = int(round(factor * seed.sum()))
    order = np.argsort(candidates, axis=None, kind="stable")[:target]
    out = np.zeros(atlas.shape_zyx, bool)
    out.flat[order] = True
    return out & inside


def cortical_pattern(atlas: Atlas, contrast: float, seed: int, points: int = 7) -> np.ndarray:
    """Smooth multiplicative field (mean 1 over grey matter), ``[z, y, x]`` float32."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0.0, 1.0, (points,) * 3)
    coords = np.meshgrid(*[np.linspace(0, points - 1, n) for n in atlas.shape_zyx], indexing="ij")
    field = ndimage.map_coordinates(coarse, coords, order=3, mode="nearest")
    field = (field - field.mean()) / max(float(field.std()), 1e-6)
    out = np.exp(contrast * field)
    out /= float((out * atlas.gm_zyx).sum() / max(float(atlas.gm_zyx.sum()), 1e-6))
    return out.astype(np.float32)


def atlas_maps(appearance: Appearance) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Atlas-space unit maps (striatal 6, :data:`BROAD_BACKGROUND`, ``mu``) and the labels.

    Returns
    -------
    maps : dict of str to (91, 109, 91) float32 array
    labels : (91, 109, 91) uint8 array
        Striatal labels of the source plus the AAL occipital reference (5).
    """
    atlas = load_atlas()
    striatal = striatal_labels(appearance.striatal_source)
    striatum = striatal > 0
    vent = grown_ventricles(atlas, appearance.ventricle_factor, striatum)
    anterior = (atlas.mni_y_mm() >= PUTAMEN_SPLIT_MNI_Y_MM)[None, :, None]
    maps: dict[str, np.ndarray] = {}
    for comp in STRIATAL_COMPONENTS:
        parts = comp.split("_")
        mask = striatal == LABELS[f"{parts[0]}_{parts[-1]}"]
        if parts[0] == "putamen":
            mask &= anterior if parts[1] == "anterior" else ~anterior
        maps[comp] = mask.astype(np.float32)
    tissue = ~striatum & ~vent
    pattern = cortical_pattern(atlas, appearance.cortical_contrast, appearance.pattern_seed)
    maps["grey_matter"] = np.where(tissue, atlas.gm_zyx * pattern, 0.0).astype(np.float32)
    maps["white_matter"] = np.where(tissue, atlas.wm_zyx, 0.0).astype(np.float32)
    head = _head_mask(atlas)
    # CSF inside the skull (ventricles included) has no uptake, unlike the classic phantom's
    intracranial = np.stack([ndimage.binary_fill_holes(s) for s in atlas.brain_zyx | atlas.skull_zyx])
    glands = _ellipsoids(atlas, _GLANDS_BROAD_MNI) & head & ~intracranial
    nasal = _ellipsoids(atlas, _NASAL_MNI) & head & ~intracranial
    scalp = atlas.scalp_zyx & ~glands & ~nasal
    soft = head & ~intracranial & ~glands & ~nasal & ~scalp
    for name, mask in (("extracerebral", soft), ("scalp", scalp), ("salivary", glands),
                       ("nasal", nasal)):
        maps[name] = mask.astype(np.float32)
    mu = np.where(head, MU_SOFT_TISSUE_PER_MM, 0.0)
    maps["mu"] = np.where(atlas.skull_zyx, MU_BONE_PER_MM, mu).astype(np.float32)
    labels = np.where(atlas.labels_zyx == LABELS["occipital"], LABELS["occipital"], striatal)
    return maps, labels.astype(np.uint8)


#: Components sampled with the brain's (atrophy-scaled) coordinates.
_BRAIN = frozenset(STRIATAL_COMPONENTS) | {"grey_matter", "white_matter"}


def build_broad_phantom(
    transform: SubjectTransform, appearance: Appearance, grid: ScanGrid
) -> SubjectPhantom:
    """Sample the subject's components, mu-map and truth labels on ``grid``.

    ``components_czyx`` holds the 6 striatal maps then :data:`BROAD_BACKGROUND`.
    """
    atlas = load_atlas()
    maps, labels = atlas_maps(appearance)
    fwhm_mm = np.sqrt(max(grid.voxel_mm**2 - float(atlas.spacing_mm[0]) ** 2, 0.0))
    sigma_vox = fwhm_mm / 2.3548 / float(atlas.spacing_mm[0])
    idx = map_to_atlas_index(transform, grid, atlas)
    centre = np.argwhere(atlas.brain_zyx).mean(axis=0)[:, None, None, None]
    idx_brain = centre + (idx - centre) / appearance.brain_scale

    def sample(name: str) -> np.ndarray:
        m = maps[name]
        m = ndimage.gaussian_filter(m, sigma_vox) if sigma_vox > 0.1 else m
        at = idx_brain if name in _BRAIN else idx
        return ndimage.map_coordinates(m, at, order=1, mode="constant", cval=0.0)

    comps = np.stack([sample(c) for c in STRIATAL_COMPONENTS + BROAD_BACKGROUND])
    return SubjectPhantom(
        grid=grid,
        components_czyx=np.clip(comps, 0.0, None).astype(np.float32),
        mu_zyx=sample("mu").astype(np.float32),
        labels_zyx=ndimage.map_coordinates(
            labels, idx_brain, order=0, mode="constant", cval=0
        ).astype(np.uint8),
    )
