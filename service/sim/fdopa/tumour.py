"""Glioma phantoms with known truth, drawn on the MNI 2 mm atlas grid.

Two lesion models (research note §4.1). Infiltrative gliomas grown by the
Fisher-Kolmogorov model on the grey/white matter maps (:mod:`.growth`, half
of the lesions), and parametric blobs: an ellipsoid of
random axes and orientation whose boundary is modulated by smooth noise
(irregular margin), an optional necrotic core (fraction of the radius), an
oedema shell (FLAIR-visible, PET near background) restricted to brain tissue,
and a smooth heterogeneous uptake map over the active part whose max/mean is
the subject's ``peak_factor`` (:mod:`.uptake`). Locations are chosen from the
head labels (:mod:`.head`): cerebral hemispheres, thalamus, pons/brain stem
(paediatric diffuse midline glioma), next to or into the striatum, cerebellum
(infratentorial), and multifocal hemispheric lesions.

Everything is in atlas space, so the subject transform maps the truth masks
onto the scan grid exactly as it maps the anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from service.imaging.atlas import load_atlas
from service.sim.fdopa.growth import GrowthParams, grow, sample_growth
from service.sim.fdopa.head import LABELS, head_labels, tissue_maps

#: Location mix per tumour class (probabilities).
LOCATIONS: dict[str, dict[str, float]] = {
    "hgg": {"hemisphere": 0.55, "striatum_adjacent": 0.15, "thalamus": 0.1, "cerebellum": 0.05,
            "multifocal": 0.15},
    "lgg": {"hemisphere": 0.7, "striatum_adjacent": 0.1, "thalamus": 0.1, "cerebellum": 0.1},
    "low_uptake": {"hemisphere": 0.7, "thalamus": 0.1, "cerebellum": 0.2},
    "dmg": {"brain_stem": 0.8, "thalamus": 0.2},
    "treatment_change": {"hemisphere": 0.8, "striatum_adjacent": 0.2},
}
#: Log-uniform lesion volume range per class, mL (note §1.4 sampling ranges).
VOLUME_ML: dict[str, tuple[float, float]] = {
    "hgg": (1.5, 80.0),
    "lgg": (1.0, 40.0),
    "low_uptake": (0.3, 20.0),
    "dmg": (3.0, 30.0),
    "treatment_change": (0.3, 20.0),
}
#: Probability that a lesion is grown by the reaction-diffusion model instead of a blob.
GROWTH_PROBABILITY = 0.5
#: Probability of a necrotic core per class.
NECROSIS_PROBABILITY: dict[str, float] = {"hgg": 0.6, "dmg": 0.3, "treatment_change": 0.3}


@dataclass(frozen=True)
class LesionSpec:
    """One lesion in atlas (MNI RAS) coordinates.

    Attributes
    ----------
    centre_ras_mm : (3,) float array
    radius_mm : float
        Equivalent-sphere radius before irregularity, mm.
    axes : (3,) float array
        Relative semi-axes (geometric mean 1).
    angles_rad : (3,) float array
        Orientation (rotations about x, y, z).
    necrosis_fraction : float
        Radius of the necrotic core relative to ``radius_mm`` (0: none).
    oedema_mm : float
        Thickness of the oedema shell, mm.
    irregularity : float
        Relative amplitude of the boundary modulation (blobs).
    noise_seed : int
    growth : GrowthParams or None
        Fisher-Kolmogorov parameters (:mod:`.growth`); None: parametric blob.
    lesion_threshold : float
        Cell density above which a grown lesion counts as tumour (0.45-0.6).
    """

    centre_ras_mm: np.ndarray
    radius_mm: float
    axes: np.ndarray
    angles_rad: np.ndarray
    necrosis_fraction: float
    oedema_mm: float
    irregularity: float
    noise_seed: int
    growth: GrowthParams | None = None
    lesion_threshold: float = 0.5


@dataclass(frozen=True, eq=False)
class TumourMaps:
    """Atlas-grid truth of one subject's tumour(s); arrays (91, 109, 91) float32 in 0..1.

    Attributes
    ----------
    tumour_class, location : str
    side : str
        ``"left"``, ``"right"`` or ``"midline"`` (patient side of the largest lesion).
    lesions : tuple of LesionSpec
    lesion_zyx : whole lesion (active part and necrosis), occupancy.
    necrosis_zyx : necrotic core, occupancy.
    oedema_zyx : oedema shell outside the lesion, occupancy.
    uptake_zyx : relative uptake of the active part (mean 1 over it, max ``peak_factor``; 0 elsewhere).
    """

    tumour_class: str
    location: str
    side: str
    lesions: tuple[LesionSpec, ...]
    lesion_zyx: np.ndarray
    necrosis_zyx: np.ndarray
    oedema_zyx: np.ndarray
    uptake_zyx: np.ndarray


@lru_cache(maxsize=1)
def _ras_grid() -> np.ndarray:
    """(3, z, y, x) MNI RAS coordinates of the atlas voxel centres, mm."""
    atlas = load_atlas()
    nz, ny, nx = atlas.shape_zyx
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    lps = [atlas.origin_lps_mm[a] + atlas.direction[4 * a] * atlas.spacing_mm[a] * v
           for a, v in enumerate((i, j, k))]
    return np.stack([-lps[0], -lps[1], lps[2]]).astype(np.float32)


def _candidates(location: str) -> np.ndarray:
    """Boolean atlas mask of allowed lesion centres for ``location``."""
    labels, _ = head_labels()
    if location in ("hemisphere", "multifocal"):
        return np.isin(labels, [LABELS["white_matter_left"], LABELS["white_matter_right"]])
    if location == "striatum_adjacent":
        striatum = np.isin(labels, [LABELS["striatum_left"], LABELS["striatum_right"]])
        ring = ndimage.binary_dilation(striatum, iterations=3) & ~striatum
        return ring & (labels > 0)
    names = {"thalamus": ["thalamus_left", "thalamus_right"], "brain_stem": ["brain_stem"],
             "cerebellum": ["cerebellum_left", "cerebellum_right"]}[location]
    mask = np.isin(labels, [LABELS[n] for n in names])
    return ndimage.binary_erosion(mask, iterations=1) if mask.sum() > 200 else mask


def sample_lesions(
    rng: np.random.Generator, tumour_class: str, paediatric: bool
) -> tuple[str, tuple[LesionSpec, ...]]:
    """Draw the location and lesion specs of one tumour of ``tumour_class``."""
    mix = LOCATIONS[tumour_class]
    location = str(rng.choice(list(mix), p=np.array(list(mix.values())) / sum(mix.values())))
    n = int(rng.integers(2, 4)) if location == "multifocal" else 1
    idx = np.argwhere(_candidates(location))
    lo, hi = VOLUME_ML[tumour_class]
    specs = []
    for _ in range(n):
        volume_ml = float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) / (n if n > 1 else 1)
        if location in ("brain_stem", "thalamus"):
            volume_ml = min(volume_ml, 12.0)
        k, j, i = idx[rng.integers(len(idx))]
        axes = np.exp(rng.normal(0.0, 0.15, 3))
        necrotic = rng.random() < NECROSIS_PROBABILITY.get(tumour_class, 0.0) and volume_ml > 3
        specs.append(LesionSpec(
            centre_ras_mm=_ras_grid()[:, k, j, i].astype(float),
            radius_mm=float((3.0 * volume_ml * 1000.0 / (4.0 * np.pi)) ** (1 / 3)),
            axes=axes / np.prod(axes) ** (1 / 3),
            angles_rad=rng.uniform(0, np.pi, 3),
            necrosis_fraction=float(rng.uniform(0.3, 0.6)) if necrotic else 0.0,
            oedema_mm=float(rng.uniform(3.0, 15.0 if not paediatric else 8.0)),
            irregularity=float(rng.uniform(0.1, 0.35)),
            noise_seed=int(rng.integers(2**31)),
            growth=sample_growth(rng) if rng.random() < GROWTH_PROBABILITY else None,
            lesion_threshold=float(rng.uniform(0.45, 0.6)),
        ))
    return location, tuple(specs)


def _rotation(angles: np.ndarray) -> np.ndarray:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _smooth_noise(seed: int, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Unit-SD smooth Gaussian noise field."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma_vox)
    return field / max(float(field.std()), 1e-9)


def _atlas_index(ras_mm: np.ndarray) -> tuple[int, int, int]:
    """Nearest atlas voxel (z, y, x) of an MNI RAS point."""
    atlas = load_atlas()
    lps = np.array([-ras_mm[0], -ras_mm[1], ras_mm[2]])
    idx = (lps - atlas.origin_lps_mm) / (atlas.direction[[0, 4, 8]] * atlas.spacing_mm)
    k, j, i = (int(np.clip(round(float(v)), 0, n - 1))
               for v, n in zip(idx[::-1], atlas.shape_zyx, strict=True))
    return k, j, i


def _grown_masks(spec: LesionSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion, necrosis and oedema envelope of a reaction-diffusion lesion."""
    assert spec.growth is not None
    maps = tissue_maps()
    target_ml = 4.0 / 3.0 * np.pi * spec.radius_mm**3 / 1000.0
    u = grow(maps["grey_matter"] + maps["striatum"], maps["white_matter"],
             _atlas_index(spec.centre_ras_mm), spec.growth, target_ml, spec.lesion_threshold)
    lesion = u > spec.lesion_threshold
    depth = ndimage.distance_transform_edt(lesion)
    necrosis = lesion & (depth > (1.0 - spec.necrosis_fraction) * float(depth.max())) \
        if spec.necrosis_fraction > 0 else np.zeros_like(lesion)
    shell = max(1, round(spec.oedema_mm / 2.0))
    envelope = ndimage.binary_dilation(u > 0.5 * spec.lesion_threshold, iterations=shell)
    return lesion, necrosis, envelope


def _lesion_masks(spec: LesionSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion, necrosis and oedema-envelope masks of one lesion (bool, atlas grid)."""
    if spec.growth is not None:
        return _grown_masks(spec)
    rel = _ras_grid() - spec.centre_ras_mm[:, None, None, None].astype(np.float32)
    local = np.einsum("ij,jzyx->izyx", _rotation(spec.angles_rad).T.astype(np.float32), rel)
    dist = np.sqrt(sum((local[a] / spec.axes[a]) ** 2 for a in range(3)))
    noise = np.clip(_smooth_noise(spec.noise_seed, dist.shape, 3.0), -2.0, 2.0)
    edge = spec.radius_mm * (1.0 + spec.irregularity * noise)
    lesion = dist <= edge
    necrosis = (dist <= spec.necrosis_fraction * edge) & (spec.necrosis_fraction > 0)
    envelope = dist <= edge + spec.oedema_mm
    return lesion, necrosis, envelope


def _side(specs: tuple[LesionSpec, ...], lesion: np.ndarray) -> str:
    """Patient side of the largest lesion: its centre's MNI x (midline within 5 mm).

    One lesion: the centre it was drawn around. A multifocal tumour: the
    centroid of the largest 26-connected component of the rasterised lesions
    (foci that touch count as one), whose side the reference regions must
    be opposite to, as the pipeline chooses its side from its main lesion.
    """
    x = specs[0].centre_ras_mm[0] if specs else 0.0
    if len(specs) > 1 and lesion.any():
        labels, n = ndimage.label(lesion, structure=np.ones((3, 3, 3), bool))
        counts = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        main = labels == 1 + int(np.argmax(counts))
        x = float(_ras_grid()[0][main].mean())
    return "midline" if abs(x) < 5.0 else ("left" if x < 0 else "right")


def build_tumour(
    tumour_class: str, location: str, specs: tuple[LesionSpec, ...], peak_factor: float,
    uptake_seed: int,
) -> TumourMaps:
    """Rasterise ``specs`` on the atlas grid, confined to brain tissue."""
    maps = tissue_maps()
    tissue = (maps["grey_matter"] + maps["white_matter"] + maps["striatum"]) > 0.3
    lesion = np.zeros(tissue.shape, bool)
    necrosis, envelope = lesion.copy(), lesion.copy()
    for spec in specs:
        les, nec, env = _lesion_masks(spec)
        lesion |= les
        necrosis |= nec
        envelope |= env
    lesion &= tissue
    necrosis &= lesion
    oedema = envelope & ~lesion & tissue & (maps["white_matter"] > 0.3)
    active = lesion & ~necrosis
    uptake = np.zeros(tissue.shape, np.float32)
    if active.any():
        amp = 1.0 + 0.3 * _smooth_noise(uptake_seed, tissue.shape, 2.0)
        if necrosis.any():  # enhancing rim around the core
            rim = ndimage.binary_dilation(necrosis, iterations=2) & active
            amp = amp + 0.4 * rim
        amp = np.clip(amp, 0.3, None)
        amp = amp / float(amp[active].mean())
        top = float(amp[active].max())
        if top > 1.0:
            amp = 1.0 + (amp - 1.0) * (peak_factor - 1.0) / (top - 1.0)
        uptake = np.where(active, amp, 0.0).astype(np.float32)
    side = _side(specs, lesion)
    return TumourMaps(
        tumour_class, location, side, specs,
        lesion.astype(np.float32), necrosis.astype(np.float32), oedema.astype(np.float32), uptake,
    )
