"""One simulated FDOPA subject: demographics, anatomy, tumour and kinetics, on a scan grid.

:func:`sample_subject` draws everything from one generator; :func:`build_maps`
samples the atlas-space tissue and tumour maps through the subject transform
onto an isotropic :class:`service.sim.anatomy.ScanGrid`; :func:`activity_bqml`
combines the maps with tissue SUVs (a static-window mean or one frame's mean)
into an activity-concentration volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from service.sim.anatomy import ScanGrid, SubjectTransform, map_to_atlas_index
from service.sim.fdopa.head import head_labels, sample_head_transform, tissue_maps
from service.sim.fdopa.tumour import LesionSpec, TumourMaps, build_tumour, sample_lesions
from service.sim.fdopa.uptake import SubjectKinetics, sample_subject_kinetics

#: Brain tissue SUV heterogeneity (smooth multiplicative, note §3.3).
HETEROGENEITY = 0.06
#: Bone (skull marrow) uptake relative to extracerebral soft tissue.
BONE_RELATIVE_UPTAKE = 0.5


@dataclass(frozen=True)
class SubjectSpec:
    """Everything drawn for one subject (the random part of a study).

    Attributes
    ----------
    tumour_class : str
    paediatric : bool
    age_years : int
    sex : str
    weight_kg : float
    injected_mbq : float
        Injected activity at injection time, MBq.
    transform : SubjectTransform
    kinetics : SubjectKinetics
    location : str
        Tumour location (``"none"`` for controls).
    lesions : tuple of LesionSpec
    uptake_seed, heterogeneity_seed : int
    """

    tumour_class: str
    paediatric: bool
    age_years: int
    sex: str
    weight_kg: float
    injected_mbq: float
    transform: SubjectTransform
    kinetics: SubjectKinetics
    location: str
    lesions: tuple[LesionSpec, ...]
    uptake_seed: int
    heterogeneity_seed: int


def sample_subject(rng: np.random.Generator, tumour_class: str, paediatric: bool) -> SubjectSpec:
    """Draw one subject. Adults 20-80 y, 185 MBq +-10 %; children 2-18 y, 4 MBq/kg."""
    age = int(rng.integers(2, 19) if paediatric else rng.integers(20, 81))
    sex = str(rng.choice(["M", "F"]))
    if paediatric:
        weight = float(np.clip(8.0 + 3.0 * age + rng.normal(0, 4), 10.0, 90.0))
        dose = 4.0 * weight * float(rng.uniform(0.9, 1.1))
    else:
        weight = float(np.clip(rng.normal(80.0 if sex == "M" else 67.0, 12.0), 45.0, 130.0))
        dose = 185.0 * float(rng.uniform(0.9, 1.1))
    transform = sample_head_transform(rng, age)
    kinetics = sample_subject_kinetics(rng, tumour_class)
    location, lesions = ("none", ()) if tumour_class == "none" else sample_lesions(
        rng, tumour_class, paediatric
    )
    return SubjectSpec(
        tumour_class, paediatric, age, sex, round(weight, 1), round(dose, 1), transform,
        kinetics, location, lesions, int(rng.integers(2**31)), int(rng.integers(2**31)),
    )


@dataclass(frozen=True, eq=False)
class SubjectMaps:
    """Unit maps of one subject on ``grid`` (float32 ``[z, y, x]``).

    Attributes
    ----------
    grid : ScanGrid
    maps : dict of str to array
        Fractions 0..1: ``grey_matter``, ``white_matter``, ``striatum``, ``csf``,
        ``extracerebral``, ``bone``, ``lesion``, ``necrosis``, ``oedema``; and
        ``uptake`` (relative uptake of the active tumour) and ``heterogeneity``
        (multiplier of brain uptake, about 1).
    mu_zyx : array
        True 511 keV attenuation, 1/mm.
    labels_zyx : uint8 array
        :data:`service.sim.fdopa.head.LABELS` (nearest neighbour).
    tumour : TumourMaps or None
    """

    grid: ScanGrid
    maps: dict[str, np.ndarray]
    mu_zyx: np.ndarray
    labels_zyx: np.ndarray
    tumour: TumourMaps | None


def build_maps(spec: SubjectSpec, grid: ScanGrid) -> SubjectMaps:
    """Sample tissue, tumour and label maps of ``spec`` on ``grid``."""
    from service.imaging.atlas import load_atlas

    idx = map_to_atlas_index(spec.transform, grid, load_atlas())
    atlas_maps: dict[str, np.ndarray] = dict(tissue_maps())
    tumour = None
    if spec.lesions:
        tumour = build_tumour(spec.tumour_class, spec.location, spec.lesions,
                              spec.kinetics.peak_factor, spec.uptake_seed)
        atlas_maps |= {"lesion": tumour.lesion_zyx, "necrosis": tumour.necrosis_zyx,
                       "oedema": tumour.oedema_zyx, "uptake": tumour.uptake_zyx}

    def sample(m: np.ndarray, order: int = 1) -> np.ndarray:
        return ndimage.map_coordinates(m, idx, order=order, mode="constant", cval=0.0)

    maps = {k: sample(v).astype(np.float32) for k, v in atlas_maps.items() if k != "mu511"}
    for k in ("lesion", "necrosis", "oedema", "uptake"):
        maps.setdefault(k, np.zeros(grid.shape_zyx, np.float32))
    maps["uptake"] = _renormalise_uptake(maps, spec.kinetics.peak_factor)
    noise = ndimage.gaussian_filter(
        np.random.default_rng(spec.heterogeneity_seed).normal(size=grid.shape_zyx), 3.0
    )
    maps["heterogeneity"] = (1.0 + HETEROGENEITY * noise / max(float(noise.std()), 1e-9)).astype(
        np.float32
    )
    labels, _ = head_labels()
    return SubjectMaps(
        grid=grid,
        maps=maps,
        mu_zyx=sample(tissue_maps()["mu511"]).astype(np.float32),
        labels_zyx=sample(labels, order=0).astype(np.uint8),
        tumour=tumour,
    )


def _renormalise_uptake(maps: dict[str, np.ndarray], peak_factor: float) -> np.ndarray:
    """Restore mean 1 and max ``peak_factor`` of the active tumour after resampling.

    Interpolating the 2 mm atlas-grid uptake onto the scan grid lowers its
    peak; the subject's kinetics define max/mean on the grid the images are
    made on, so the map is stretched back (boundary voxels keep their partial
    values, clipped at 0).
    """
    amp = maps["uptake"]
    core = (maps["lesion"] - maps["necrosis"] > 0.5) & (amp > 0)
    if not core.any():
        return amp
    mean, top = float(amp[core].mean()), float(amp[core].max())
    if top <= mean:
        return (amp / mean).astype(np.float32)
    stretched = 1.0 + (amp / mean - 1.0) * (peak_factor - 1.0) / (top / mean - 1.0)
    return np.where(amp > 0, np.clip(stretched, 0.0, None), 0.0).astype(np.float32)


def bqml_per_suv(spec: SubjectSpec) -> float:
    """Activity concentration (Bq/mL, decay-corrected to injection) of SUV 1."""
    return spec.injected_mbq * 1e6 / (spec.weight_kg * 1000.0)


def activity_bqml(sm: SubjectMaps, spec: SubjectSpec, suv: dict[str, float]) -> np.ndarray:
    """Activity concentration (Bq/mL, decay-corrected to injection), float32 ``[z, y, x]``.

    ``suv`` gives one SUV per tissue of :attr:`SubjectKinetics.tissues`
    (e.g. :meth:`SubjectKinetics.static_suv` or one frame of ``frame_tacs``).
    """
    m = sm.maps
    normal = np.clip(1.0 - m["lesion"] - m["oedema"], 0.0, 1.0)
    brain = (m["grey_matter"] * suv["grey_matter"] + m["white_matter"] * suv["white_matter"]
             + m["striatum"] * suv["striatum"]) * m["heterogeneity"]
    out = normal * brain + m["extracerebral"] * suv["extracerebral"]
    out = out + m["bone"] * BONE_RELATIVE_UPTAKE * suv["extracerebral"]
    out = out + m["oedema"] * suv["oedema"] + m["necrosis"] * suv["necrosis"]
    if "tumour" in suv:
        out = out + m["uptake"] * suv["tumour"]
    return (out * bqml_per_suv(spec)).astype(np.float32)
