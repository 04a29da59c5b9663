"""The ``broad`` camera-profile family: a random protocol per anatomy group.

The four site profiles (:data:`service.sim.profiles.PROFILES`) stay; this
family spans what a training set should cover: every reconstruction family
(:data:`RECON_FAMILIES`: FBP without AC, FBP with Chang AC, OSEM without AC,
OSEM with Chang AC, OSEM with CT-AC and scatter correction, with or without
resolution recovery), a reconstruction filter of 6-16 mm FWHM, 0.5-5 Mcounts
(log-uniform), matrices 64, 96 and 128, LEHR and LEGP collimators with
perturbed resolution. The fan-beam HR collimator of the unseen site is not in
the family, so that site stays an unseen camera.

Filter FWHM: OSEM uses a Gaussian post-filter of that FWHM; FBP a Butterworth
window whose cut-off gives an ideal low-pass of that FWHM
(``fc = 0.603 / FWHM``), e.g. 0.6 cyc/cm for 10 mm.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from service.sim.camera import Collimator
from service.sim.profiles import LEGP, LEHR, CameraProfile

BROAD_PROFILE = "broad"
RECON_FAMILIES: tuple[str, ...] = (
    "fbp_noac", "fbp_chang", "osem_noac", "osem_chang", "osem_ctac_sc",
)
MATRICES: tuple[int, ...] = (64, 96, 128)
#: Voxel size range (mm) per matrix.
VOXEL_MM: dict[int, tuple[float, float]] = {64: (4.0, 5.2), 96: (3.0, 3.6), 128: (2.2, 3.9)}
FILTER_FWHM_MM = (6.0, 16.0)
COUNTS_MCOUNTS = (0.5, 5.0)
#: Ideal low-pass: FWHM of the point response = this / cut-off frequency.
LOWPASS_FWHM_CYCLES = 0.603
_VENDORS = (
    ("SIEMENS NM", "Symbia T2"), ("GE MEDICAL SYSTEMS", "Discovery NM/CT 670"),
    ("Philips Medical Systems", "Forte"), ("MEDISO", "AnyScan SC"), ("ADAC", "Vertex Plus"),
)


def butterworth_cutoff_for_fwhm(fwhm_mm: float) -> float:
    """Butterworth cut-off (cycles/cm) whose ideal low-pass has ``fwhm_mm`` FWHM."""
    return 10.0 * LOWPASS_FWHM_CYCLES / fwhm_mm


def filter_fwhm_mm(profile: CameraProfile) -> float:
    """The reconstruction filter's FWHM (mm) of ``profile`` (inverse of the above for FBP)."""
    if profile.recon == "fbp":
        return 10.0 * LOWPASS_FWHM_CYCLES / profile.butterworth_cutoff_cycles_per_cm
    return profile.post_filter_fwhm_mm


def recon_family(profile: CameraProfile) -> str:
    """Which of :data:`RECON_FAMILIES` ``profile`` belongs to."""
    if profile.attenuation_correction == "ct":
        return "osem_ctac_sc"
    ac = "chang" if profile.attenuation_correction == "chang" else "noac"
    return f"{profile.recon}_{ac}"


def _collimator(rng: np.random.Generator) -> Collimator:
    base = LEHR if rng.random() < 0.7 else LEGP
    return replace(
        base,
        hole_fwhm_mm=base.hole_fwhm_mm * float(rng.uniform(0.85, 1.15)),
        slope=base.slope * float(rng.uniform(0.9, 1.1)),
        intrinsic_fwhm_mm=float(rng.uniform(3.4, 4.4)),
    )


def sample_broad_profile(rng: np.random.Generator) -> CameraProfile:
    """Draw one protocol of the broad family."""
    family = str(rng.choice(RECON_FAMILIES))
    matrix = int(rng.choice(MATRICES))
    voxel = round(float(rng.uniform(*VOXEL_MM[matrix])), 2)
    manufacturer, model = _VENDORS[int(rng.integers(len(_VENDORS)))]
    counts = float(np.exp(rng.uniform(*np.log(COUNTS_MCOUNTS))))
    fwhm = float(rng.uniform(*FILTER_FWHM_MM))
    osem = family.startswith("osem")
    return CameraProfile(
        name=BROAD_PROFILE,
        manufacturer=manufacturer,
        model_name=model,
        collimator=_collimator(rng),
        matrix=matrix,
        voxel_mm=voxel,
        n_views=int(rng.choice([60, 64, 90, 120, 128])),
        radius_mm=float(rng.uniform(125.0, 180.0)),
        counts_mcounts=(counts, counts),
        scatter_fraction=float(rng.uniform(0.28, 0.40)),
        penetration_fraction=float(rng.uniform(0.04, 0.15)),
        recon="osem" if osem else "fbp",
        butterworth_cutoff_cycles_per_cm=round(butterworth_cutoff_for_fwhm(fwhm), 3),
        butterworth_order=int(rng.integers(5, 11)),
        osem_iterations=int(rng.integers(2, 6)),
        osem_subsets=int(rng.choice([6, 8, 10, 12, 15])),
        osem_resolution_recovery=osem and bool(rng.random() < 0.5),
        post_filter_fwhm_mm=round(fwhm, 2) if osem else 0.0,
        attenuation_correction=(
            "ct" if family == "osem_ctac_sc" else "chang" if family.endswith("chang") else "none"
        ),
        chang_mu_per_mm=float(rng.uniform(0.010, 0.013)),
        scatter_correction=family == "osem_ctac_sc",
    )


def profile_fields(profile: CameraProfile) -> dict[str, object]:
    """Manifest columns (``cam_*``) of a drawn profile."""
    return {
        "cam_recon_family": recon_family(profile),
        "cam_matrix": profile.matrix,
        "cam_voxel_mm": profile.voxel_mm,
        "cam_filter_fwhm_mm": round(filter_fwhm_mm(profile), 2),
        "cam_collimator": profile.collimator.name,
        "cam_system_fwhm_10cm_mm": round(profile.collimator.fwhm_mm(100.0), 2),
        "cam_n_views": profile.n_views,
        "cam_radius_mm": round(profile.radius_mm, 1),
        "cam_counts_mcounts": round(profile.counts_mcounts[0], 3),
        "cam_description": profile.reconstruction_description,
    }
