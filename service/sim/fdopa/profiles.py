"""PET scanner profiles: physics, reconstruction and header conventions per site type.

Each profile resembles a clinical brain protocol on a real system type (research
note §3.2 item 6, §3.4); numbers are typical published values, not vendor
specifications. Simulation runs on a coarser isotropic grid (``sim_voxel_mm``)
and the reconstruction is resampled to the profile's output matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class PetProfile:
    """Physics, reconstruction and header conventions of one simulated PET system.

    Units of the written series and whether the recorded start time is the
    dose-assay time are site choices (:class:`service.sim.fdopa.benchmark.FdopaSite`).

    Attributes
    ----------
    name, manufacturer, model_name : str
    fwhm_mm : float
        System resolution in the projections (4-6 mm).
    psf_recon : bool
        Resolution modelled in OSEM (Gibbs overshoot, higher SUVmax).
    iterations, subsets : int
    post_filter_fwhm_mm : float
    sim_voxel_mm : float
        Isotropic simulation/reconstruction voxel, mm.
    n_views : int
        Projection angles over 180 degrees.
    sensitivity : float
        Expected true counts per unit projected activity (Bq/mL x voxel) per
        second; calibrated on background noise (``docs/fdopa_simulator.md``).
    scatter_fraction, randoms_fraction : float
    attenuation_map : "ct" or "mr_dixon"
        CT-based mu-map, or MR-based with bone set to soft tissue (PET/MR).
    matrix : int
        Output rows = columns.
    pixel_mm, slice_mm : float
        Output pixel spacing and slice spacing, mm.
    decay_correction : "START" or "ADMIN"
    frame_reference : "mid" or "start"
        Frame Reference Time convention of dynamic series.
    reversed_dynamic_order : bool
        Instance numbers of the dynamic series run backwards in time.
    """

    name: str
    manufacturer: str
    model_name: str
    fwhm_mm: float
    psf_recon: bool
    iterations: int
    subsets: int
    post_filter_fwhm_mm: float
    sensitivity: float
    scatter_fraction: float
    randoms_fraction: float
    attenuation_map: Literal["ct", "mr_dixon"]
    matrix: int
    pixel_mm: float
    slice_mm: float
    decay_correction: Literal["START", "ADMIN"] = "START"
    frame_reference: Literal["mid", "start"] = "mid"
    reversed_dynamic_order: bool = False
    sim_voxel_mm: float = 3.0
    n_views: int = 60

    @property
    def reconstruction_description(self) -> str:
        psf = "+PSF" if self.psf_recon else ""
        return (
            f"OSEM{psf} {self.iterations}i{self.subsets}s G{self.post_filter_fwhm_mm:g}mm "
            f"{'CTAC' if self.attenuation_map == 'ct' else 'MRAC'}"
        )


PET_PROFILES: dict[str, PetProfile] = {
    p.name: p
    for p in (
        PetProfile(
            name="siemens_biograph_like", manufacturer="SIEMENS", model_name="Biograph mCT Flow",
            fwhm_mm=4.5, psf_recon=True, iterations=4, subsets=10, post_filter_fwhm_mm=3.0,
            sensitivity=1.0e-5, scatter_fraction=0.35, randoms_fraction=0.25,
            attenuation_map="ct", matrix=128, pixel_mm=2.04, slice_mm=2.03,
            decay_correction="START", frame_reference="mid",
        ),
        PetProfile(
            name="ge_discovery_like", manufacturer="GE MEDICAL SYSTEMS", model_name="Discovery MI",
            fwhm_mm=5.0, psf_recon=False, iterations=3, subsets=12, post_filter_fwhm_mm=5.0,
            sensitivity=6.0e-6, scatter_fraction=0.35, randoms_fraction=0.2,
            attenuation_map="ct", matrix=256, pixel_mm=1.17, slice_mm=2.79,
            decay_correction="START", frame_reference="start",
        ),
        PetProfile(
            name="philips_vereos_like", manufacturer="Philips Medical Systems",
            model_name="Vereos PET/CT", fwhm_mm=4.0, psf_recon=False, iterations=3, subsets=15,
            post_filter_fwhm_mm=4.0, sensitivity=1.5e-5, scatter_fraction=0.3,
            randoms_fraction=0.15, attenuation_map="ct", matrix=128, pixel_mm=2.0, slice_mm=2.0,
            decay_correction="START", frame_reference="start",
            reversed_dynamic_order=True,
        ),
        PetProfile(
            name="petmr_unseen", manufacturer="SIEMENS", model_name="Biograph mMR",
            fwhm_mm=5.5, psf_recon=False, iterations=3, subsets=21, post_filter_fwhm_mm=4.0,
            sensitivity=2.2e-5, scatter_fraction=0.4, randoms_fraction=0.3,
            attenuation_map="mr_dixon", matrix=172, pixel_mm=2.09, slice_mm=2.03,
            decay_correction="ADMIN", frame_reference="mid",
        ),
    )
}


def get_pet_profile(name: str) -> PetProfile:
    """The profile called ``name``; ValueError listing the known names otherwise."""
    try:
        return PET_PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown PET profile {name!r}; known: {', '.join(PET_PROFILES)}") from None
