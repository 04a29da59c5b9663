"""Camera profiles: acquisition physics, reconstruction and header values per system.

Each profile resembles a clinical DaTscan protocol on a real system type
(collimator resolution, counts, matrix, reconstruction and corrections); the
numbers are typical published values, not vendor specifications.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from service.sim.camera import Collimator

LEHR = Collimator("LEHR", hole_fwhm_mm=2.0, slope=0.045, intrinsic_fwhm_mm=3.8)
LEGP = Collimator("LEGP", hole_fwhm_mm=2.5, slope=0.060, intrinsic_fwhm_mm=4.0)
FANBEAM_HR = Collimator("LEHR fan-beam", hole_fwhm_mm=1.5, slope=0.040, intrinsic_fwhm_mm=3.5)


@dataclass(frozen=True)
class CameraProfile:
    """Everything that distinguishes one simulated camera site.

    Attributes
    ----------
    name : str
        Profile key (CLI ``--profile``).
    manufacturer, model_name : str
        Header values.
    collimator : Collimator
    matrix : int
        Reconstructed in-plane matrix (rows = columns).
    voxel_mm : float
        Isotropic voxel size, mm.
    n_views : int
        Projections over 360 degrees.
    radius_mm : float
        Radius of rotation (centre to collimator face), mm.
    counts_mcounts : tuple of float
        Range of total counts (all views), millions.
    scatter_fraction : float
        Scattered / primary counts in the photopeak window.
    penetration_fraction : float
        I-123 high-energy (529 keV) septal penetration and scatter / primary.
    recon : "fbp" or "osem"
    butterworth_cutoff_cycles_per_cm, butterworth_order : float, int
        FBP Butterworth window.
    osem_iterations, osem_subsets : int
    osem_resolution_recovery : bool
        Collimator response modelled in OSEM.
    post_filter_fwhm_mm : float
        Gaussian post-filter after OSEM (0: none).
    attenuation_correction : "none", "chang" or "ct"
    chang_mu_per_mm : float
        Uniform broad-beam mu for Chang (1/mm).
    scatter_correction : bool
        Triple-energy-window style scatter estimate (subtracted before FBP,
        additive term in OSEM).
    energy_window_kev : tuple of float
        Photopeak window limits, keV.
    axial_extent_mm, transaxial_extent_mm : float
        Reconstructed region (head support) before padding to ``matrix``.
    """

    name: str
    manufacturer: str
    model_name: str
    collimator: Collimator
    matrix: int
    voxel_mm: float
    n_views: int
    radius_mm: float
    counts_mcounts: tuple[float, float]
    scatter_fraction: float
    penetration_fraction: float
    recon: Literal["fbp", "osem"]
    butterworth_cutoff_cycles_per_cm: float = 0.5
    butterworth_order: int = 10
    osem_iterations: int = 4
    osem_subsets: int = 10
    osem_resolution_recovery: bool = False
    post_filter_fwhm_mm: float = 0.0
    attenuation_correction: Literal["none", "chang", "ct"] = "none"
    chang_mu_per_mm: float = 0.011
    scatter_correction: bool = False
    energy_window_kev: tuple[float, float] = (143.1, 174.9)
    axial_extent_mm: float = 176.0
    transaxial_extent_mm: float = 244.0

    @property
    def reconstruction_description(self) -> str:
        """Human-readable summary for the series header."""
        if self.recon == "fbp":
            text = (
                f"FBP Butterworth {self.butterworth_cutoff_cycles_per_cm:.2f} "
                f"cyc/cm order {self.butterworth_order}"
            )
        else:
            rr = " RR" if self.osem_resolution_recovery else ""
            text = f"OSEM{rr} {self.osem_iterations}i{self.osem_subsets}s"
            if self.post_filter_fwhm_mm > 0:
                text += f" G{self.post_filter_fwhm_mm:.0f}mm"
        ac = {"none": "NoAC", "chang": "AC Chang", "ct": "AC CT"}[self.attenuation_correction]
        return f"{text} {ac}{' SC' if self.scatter_correction else ''}"


PROFILES: dict[str, CameraProfile] = {
    p.name: p
    for p in (
        CameraProfile(
            name="siemens_lehr_osem_ctac",
            manufacturer="SIEMENS NM",
            model_name="Symbia Intevo",
            collimator=LEHR,
            matrix=128,
            voxel_mm=3.9,
            n_views=120,
            radius_mm=140.0,
            counts_mcounts=(1.5, 3.0),
            scatter_fraction=0.34,
            penetration_fraction=0.12,
            recon="osem",
            osem_iterations=4,
            osem_subsets=10,
            osem_resolution_recovery=True,
            post_filter_fwhm_mm=7.0,
            attenuation_correction="ct",
            scatter_correction=True,
        ),
        CameraProfile(
            name="ge_lehr_fbp_chang",
            manufacturer="GE MEDICAL SYSTEMS",
            model_name="Infinia Hawkeye 4",
            collimator=LEHR,
            matrix=128,
            voxel_mm=2.21,
            n_views=120,
            radius_mm=135.0,
            counts_mcounts=(1.5, 3.0),
            scatter_fraction=0.34,
            penetration_fraction=0.12,
            recon="fbp",
            butterworth_cutoff_cycles_per_cm=0.6,
            butterworth_order=10,
            attenuation_correction="chang",
            chang_mu_per_mm=0.011,
        ),
        CameraProfile(
            name="fanbeam_hr_osem",
            manufacturer="Philips Medical Systems",
            model_name="BrightView XCT",
            collimator=FANBEAM_HR,
            matrix=128,
            voxel_mm=3.0,
            n_views=120,
            radius_mm=150.0,
            counts_mcounts=(2.5, 4.0),
            scatter_fraction=0.30,
            penetration_fraction=0.04,
            recon="osem",
            osem_iterations=3,
            osem_subsets=12,
            post_filter_fwhm_mm=6.0,
            attenuation_correction="chang",
            chang_mu_per_mm=0.012,
        ),
        CameraProfile(
            name="legacy_legp_lowcount",
            manufacturer="ADAC",
            model_name="Vertex Plus",
            collimator=LEGP,
            matrix=64,
            voxel_mm=4.8,
            n_views=64,
            radius_mm=160.0,
            counts_mcounts=(0.8, 1.5),
            scatter_fraction=0.35,
            penetration_fraction=0.14,
            recon="fbp",
            butterworth_cutoff_cycles_per_cm=0.45,
            butterworth_order=8,
        ),
    )
}


def get_profile(name: str) -> CameraProfile:
    """The profile called ``name``; ValueError listing the known names otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown camera profile {name!r}; known: {', '.join(PROFILES)}") from None
