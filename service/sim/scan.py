"""One subject anatomy, several disease states: acquisition and reconstruction.

Projections are linear in the activity of each component, so the six
striatal components and the subject's combined non-specific background are
projected once per anatomy (attenuation and collimator response included) and
combined for each disease state. Per scan: scatter and I-123 penetration
(broad kernels on the primary projections), Poisson noise at the profile's
counts, a triple-energy-window style scatter estimate, and the profile's
reconstruction. Arrays are ``[z, y, x]`` on the profile's head-support grid,
which :func:`to_image` pads to the profile matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from service.sim.anatomy import ScanGrid, SubjectPhantom, SubjectTransform, build_phantom
from service.sim.camera import Projector, gaussian_blur_projections
from service.sim.disease import DiseaseState
from service.sim.profiles import CameraProfile
from service.sim.recon import chang_factors, fbp, gaussian_post_filter, osem

SCATTER_FWHM_MM = 50.0
PENETRATION_FWHM_MM = 110.0
#: Scatter-window counts per scatter count in the photopeak (sets the estimate's noise).
SCATTER_WINDOW_RATIO = 0.5
#: Smoothing of the scatter-window estimate (mm FWHM).
SCATTER_ESTIMATE_FWHM_MM = 15.0
#: Scan centre (centre of rotation), LPS mm.
SCAN_CENTRE_LPS_MM = np.array([0.0, 0.0, 0.0])


@dataclass(frozen=True, eq=False)
class SimulatedScan:
    """One reconstructed scan on the support grid.

    Attributes
    ----------
    volume_zyx : (z, y, x) float32 array
        Reconstructed counts (non-negative), support grid.
    labels_zyx : (z, y, x) uint8 array
        Truth ROI labels on the same grid (see :class:`SubjectPhantom`).
    grid : ScanGrid
    counts_total : int
        Photopeak counts over all views (after Poisson noise).
    """

    volume_zyx: np.ndarray
    labels_zyx: np.ndarray
    grid: ScanGrid
    counts_total: int


def support_grid(profile: CameraProfile) -> ScanGrid:
    """The head-support grid of ``profile`` (even size, at most the matrix)."""
    n_xy = min(profile.matrix, 2 * round(profile.transaxial_extent_mm / profile.voxel_mm / 2))
    n_z = 2 * round(profile.axial_extent_mm / profile.voxel_mm / 2)
    return ScanGrid((n_z, n_xy, n_xy), profile.voxel_mm, SCAN_CENTRE_LPS_MM)


class BackgroundLevels(Protocol):
    """Amplitudes of a phantom's non-specific components (after the 6 striatal ones)."""

    def amplitudes(self) -> np.ndarray: ...


class AnatomyScanner:
    """Cached projections of one anatomy under one camera profile.

    ``phantom`` (on :func:`support_grid` of ``profile``) replaces the classic
    phantom of ``transform`` (the broad simulator's, :mod:`service.sim.appearance`);
    ``background`` gives the amplitudes of its non-specific components.
    """

    def __init__(
        self,
        profile: CameraProfile,
        transform: SubjectTransform,
        background: BackgroundLevels,
        phantom: SubjectPhantom | None = None,
    ):
        self.profile = profile
        self.grid = support_grid(profile)
        self.phantom: SubjectPhantom = phantom or build_phantom(transform, self.grid)
        comps = self.phantom.components_czyx
        bg = np.tensordot(background.amplitudes(), comps[6:], axes=1)[None]
        basis = torch.from_numpy(np.concatenate([comps[:6], bg]).astype(np.float32))
        camera = Projector(
            self.grid.shape_zyx,
            profile.voxel_mm,
            profile.n_views,
            profile.radius_mm,
            profile.collimator,
            self.phantom.mu_zyx,
        )
        self.basis_proj = camera.forward_all(basis).numpy()  # [view, 7, z, x]
        self.body_zyx = ndimage.binary_opening(self.phantom.mu_zyx > 0.005, iterations=1)
        self._recon_projector: Projector | None = None
        self._chang: np.ndarray | None = None

    def _projections(self, state: DiseaseState) -> tuple[np.ndarray, np.ndarray]:
        """Primary and scatter (+ penetration) projections of ``state``, arbitrary scale."""
        p = self.profile
        amp = np.concatenate([state.striatal_amplitudes(), [1.0]]).astype(np.float32)
        primary = np.tensordot(self.basis_proj, amp, axes=([1], [0]))
        scatter = p.scatter_fraction * _blur_conserving(primary, SCATTER_FWHM_MM, p.voxel_mm)
        scatter += p.penetration_fraction * _blur_conserving(
            primary, PENETRATION_FWHM_MM, p.voxel_mm
        )
        return primary, scatter

    def scan(self, state: DiseaseState, rng: np.random.Generator) -> SimulatedScan:
        """Acquire and reconstruct ``state`` on this anatomy (Poisson draw from ``rng``)."""
        p = self.profile
        primary, scatter = self._projections(state)
        counts = rng.uniform(*p.counts_mcounts) * 1e6
        scale = counts / float((primary + scatter).sum())
        measured = rng.poisson((primary + scatter) * scale).astype(np.float32)
        scatter_est = None
        if p.scatter_correction:
            window = rng.poisson(scatter * scale * SCATTER_WINDOW_RATIO).astype(np.float32)
            scatter_est = gaussian_blur_projections(
                window, SCATTER_ESTIMATE_FWHM_MM, p.voxel_mm) / SCATTER_WINDOW_RATIO
        vol = self._reconstruct(measured, scatter_est)
        return SimulatedScan(
            volume_zyx=np.clip(vol, 0.0, None).astype(np.float32),
            labels_zyx=self.phantom.labels_zyx,
            grid=self.grid,
            counts_total=int(measured.sum()),
        )

    def expected(self, state: DiseaseState) -> np.ndarray:
        """The noise-free image of ``state``: the profile's reconstruction of the expected
        projections (mean counts, no Poisson draw; the scatter estimate its expectation).

        What the camera shows of ``state`` apart from noise (blur, partial volume,
        spill between structures, reconstruction): the robustness set defines a
        one-sided loss on it (:mod:`service.sim.robustness`). Non-negative, support grid.
        """
        p = self.profile
        primary, scatter = self._projections(state)
        scale = 0.5 * sum(p.counts_mcounts) * 1e6 / float((primary + scatter).sum())
        measured = ((primary + scatter) * scale).astype(np.float32)
        scatter_est = None
        if p.scatter_correction:
            scatter_est = gaussian_blur_projections(
                (scatter * scale).astype(np.float32), SCATTER_ESTIMATE_FWHM_MM, p.voxel_mm)
        return np.clip(self._reconstruct(measured, scatter_est), 0.0, None).astype(np.float32)

    def _reconstruct(self, measured: np.ndarray, scatter_est: np.ndarray | None) -> np.ndarray:
        p = self.profile
        if p.recon == "fbp":
            proj = measured if scatter_est is None else np.clip(measured - scatter_est, 0, None)
            rotator = self._projector().rotator
            vol = fbp(
                proj, rotator, p.voxel_mm, p.butterworth_cutoff_cycles_per_cm, p.butterworth_order
            )
            if p.attenuation_correction == "chang":
                vol = vol * self._chang_factors()
            return vol
        vol = osem(measured, self._projector(), p.osem_iterations, p.osem_subsets, scatter_est)
        return gaussian_post_filter(vol, p.post_filter_fwhm_mm, p.voxel_mm)

    def _projector(self) -> Projector:
        """The reconstruction's system model (what the vendor software assumes)."""
        if self._recon_projector is None:
            p = self.profile
            mu = None
            if p.attenuation_correction == "ct":
                mu = gaussian_post_filter(self.phantom.mu_zyx, 6.0, p.voxel_mm)
            elif p.attenuation_correction == "chang":
                mu = np.where(self.body_zyx, p.chang_mu_per_mm, 0.0).astype(np.float32)
            collimator = p.collimator if p.osem_resolution_recovery else None
            self._recon_projector = Projector(
                self.grid.shape_zyx,
                p.voxel_mm,
                p.n_views,
                p.radius_mm,
                collimator,
                mu,
                cache_attenuation=p.recon == "osem",
            )
        return self._recon_projector

    def _chang_factors(self) -> np.ndarray:
        if self._chang is None:
            self._chang = chang_factors(
                self.body_zyx,
                self.profile.chang_mu_per_mm,
                self._projector().rotator,
                self.profile.voxel_mm,
            )
        return self._chang


def _blur_conserving(proj_vzx: np.ndarray, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """Broad blur of each view that keeps its total counts (mass lost at edges restored)."""
    blurred = gaussian_blur_projections(proj_vzx, fwhm_mm, voxel_mm)
    ratio = proj_vzx.sum(axis=(1, 2)) / np.clip(blurred.sum(axis=(1, 2)), 1e-12, None)
    return blurred * ratio[:, None, None]


def to_image(array_zyx: np.ndarray, grid: ScanGrid, matrix: int) -> sitk.Image:
    """Pad a support-grid array to ``matrix`` columns/rows; SimpleITK image in LPS."""
    nz, ny, nx = array_zyx.shape
    before_y, before_x = (matrix - ny) // 2, (matrix - nx) // 2
    padded = np.zeros((nz, matrix, matrix), array_zyx.dtype)
    padded[:, before_y : before_y + ny, before_x : before_x + nx] = array_zyx
    origin = grid.origin_lps_mm - grid.voxel_mm * np.array([before_x, before_y, 0.0])
    img = sitk.GetImageFromArray(padded)
    img.SetSpacing((grid.voxel_mm,) * 3)
    img.SetOrigin(tuple(float(v) for v in origin))
    return img


def measure_sbr(volume_zyx: np.ndarray, labels_zyx: np.ndarray) -> dict[str, float]:
    """SBR per striatal ROI with occipital reference: ``mean(ROI) / mean(occipital) - 1``."""
    from service.imaging.atlas import LABELS

    ref = float(volume_zyx[labels_zyx == LABELS["occipital"]].mean())
    return {
        name: float(volume_zyx[labels_zyx == value].mean()) / ref - 1.0
        for name, value in LABELS.items()
        if name != "occipital"
    }
