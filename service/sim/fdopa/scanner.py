"""Acquire and reconstruct FDOPA frames of one subject with one PET profile.

Per frame: activity (Bq/mL, decay-corrected to injection) -> physical
activity (times the frame-mean decay factor) -> attenuated, blurred trues ->
scatter, randoms, Poisson noise (:func:`service.sim.fdopa.pet.acquire`) ->
OSEM with the profile's attenuation map (CT: the true mu-map slightly blurred;
PET/MR: bone replaced by soft tissue) or without it (the non-AC companion),
calibrated back to decay-corrected Bq/mL. Each dynamic frame is reconstructed
on its own with its own counts. :func:`to_output` resamples to the profile's
output matrix.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from service.sim.anatomy import ScanGrid
from service.sim.fdopa.head import MU511_SOFT_PER_MM
from service.sim.fdopa.kinetics import F18_HALF_LIFE_S
from service.sim.fdopa.pet import Acquisition, PetProjector, acquire, reconstruct
from service.sim.fdopa.profiles import PetProfile
from service.sim.fdopa.subject import SubjectMaps
from service.sim.recon import gaussian_post_filter

#: Transaxial and axial extent of the simulation grid, mm.
SIM_TRANSAXIAL_MM = 240.0
SIM_AXIAL_MM = 180.0


def sim_grid(profile: PetProfile) -> ScanGrid:
    """Isotropic simulation grid of ``profile`` centred on the scanner centre."""
    v = profile.sim_voxel_mm
    n_xy = 2 * round(SIM_TRANSAXIAL_MM / v / 2)
    n_z = 2 * round(SIM_AXIAL_MM / v / 2)
    return ScanGrid((n_z, n_xy, n_xy), v, np.zeros(3))


def mean_decay(start_s: float, duration_s: float) -> float:
    """Mean F-18 decay factor over a frame (from injection), unitless."""
    lam = np.log(2.0) / F18_HALF_LIFE_S
    return float((np.exp(-lam * start_s) - np.exp(-lam * (start_s + duration_s)))
                 / (lam * duration_s))


class PetScanner:
    """System models of one subject under one profile (true, AC recon, non-AC recon)."""

    def __init__(self, profile: PetProfile, sm: SubjectMaps) -> None:
        self.profile = profile
        g = sm.grid
        self._true = PetProjector(g.shape_zyx, g.voxel_mm, profile.n_views, profile.fwhm_mm,
                                  sm.mu_zyx)
        if profile.attenuation_map == "ct":
            mu = gaussian_post_filter(sm.mu_zyx, 4.0, g.voxel_mm)
        else:
            mu = np.where(sm.maps["bone"] > 0.5, MU511_SOFT_PER_MM, sm.mu_zyx).astype(np.float32)
        psf = profile.fwhm_mm if profile.psf_recon else 0.0
        self._ac = PetProjector(g.shape_zyx, g.voxel_mm, profile.n_views, psf, mu)
        self._nac = PetProjector(g.shape_zyx, g.voxel_mm, profile.n_views, psf, None)

    def frame(
        self, activity_zyx: np.ndarray, start_s: float, duration_s: float,
        rng: np.random.Generator, attenuation_corrected: bool = True,
    ) -> tuple[np.ndarray, int]:
        """Reconstructed frame (Bq/mL decay-corrected to injection) and its prompt counts."""
        vols, counts = self.frames(activity_zyx, start_s, duration_s, rng,
                                   (attenuation_corrected,))
        return vols[0], counts

    def frames(
        self, activity_zyx: np.ndarray, start_s: float, duration_s: float,
        rng: np.random.Generator, corrections: tuple[bool, ...] = (True, False),
    ) -> tuple[list[np.ndarray], int]:
        """One acquisition reconstructed with and/or without attenuation correction.

        Returns the volumes in the order of ``corrections`` (True: AC) and the
        prompt counts; the non-AC image comes from the same prompts, as on a
        scanner.
        """
        import torch

        p = self.profile
        counts_per_unit = p.sensitivity * duration_s * mean_decay(start_s, duration_s)
        trues = self._true.forward_all(torch.from_numpy(activity_zyx)).numpy()
        acq = Acquisition(counts_per_unit, p.scatter_fraction, p.randoms_fraction)
        sino = acquire(trues, acq, self._true.voxel_mm, rng)
        vols = [reconstruct(sino, self._ac if ac else self._nac, p.iterations, p.subsets,
                            counts_per_unit, p.post_filter_fwhm_mm) for ac in corrections]
        return vols, sino.counts_total


def output_reference(profile: PetProfile, grid: ScanGrid) -> sitk.Image:
    """The profile's output grid (LPS, identity direction) centred like ``grid``."""
    n_z = int(round(grid.shape_zyx[0] * grid.voxel_mm / profile.slice_mm))
    size = (profile.matrix, profile.matrix, n_z)
    spacing = (profile.pixel_mm, profile.pixel_mm, profile.slice_mm)
    half = (np.array(size, float) - 1.0) / 2.0
    origin = grid.centre_lps_mm - np.array(spacing) * half
    ref = sitk.Image(size, sitk.sitkFloat32)
    ref.SetSpacing(spacing)
    ref.SetOrigin(tuple(float(v) for v in origin))
    return ref


def sim_image(array_zyx: np.ndarray, grid: ScanGrid) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx, np.float32))
    img.SetSpacing((grid.voxel_mm,) * 3)
    img.SetOrigin(tuple(float(v) for v in grid.origin_lps_mm))
    return img


def to_output(array_zyx: np.ndarray, grid: ScanGrid, profile: PetProfile,
              nearest: bool = False) -> sitk.Image:
    """Resample a simulation-grid array to the profile's output grid (linear or nearest)."""
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    return sitk.Resample(sim_image(array_zyx, grid), output_reference(profile, grid),
                         sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
