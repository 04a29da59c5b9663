"""Specific binding ratios and derived numbers from a normalised volume.

SBR = mean(ROI) / mean(reference) - 1, with the four striatal ROIs and the
occipital cortex reference of the atlas (:data:`service.imaging.atlas.LABELS`),
on the MNI 2 mm grid. Pure: arrays in, :mod:`service.pipelines.dat_spect.result` types out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from service.errors import AnalysisError
from service.imaging.atlas import Atlas
from service.pipelines.dat_spect.result import REGIONS, Ratios, Region

#: Name of the reference region, as reported in :class:`service.result.StudyResult`.
REFERENCE_REGION = "occipital cortex"


@dataclass(frozen=True)
class Quantification:
    """SBR per region and the derived ratios.

    Attributes
    ----------
    sbr : mapping of Region to float
        Specific binding ratio per region (unitless).
    ratios : Ratios
    reference_mean : float
        Mean of the reference region in the volume's units.
    """

    sbr: Mapping[Region, float]
    ratios: Ratios
    reference_mean: float


def quantify(volume_zyx: np.ndarray, atlas: Atlas) -> Quantification:
    """SBRs, putamen/caudate ratios and asymmetry indices.

    Parameters
    ----------
    volume_zyx : (91, 109, 91) array
        Scan normalised to the atlas grid (any count units).
    atlas : Atlas

    Raises
    ------
    AnalysisError
        ``no_reference`` when the reference mean is not positive (no counts
        in the occipital cortex: nothing can be quantified).
    """
    if volume_zyx.shape != atlas.shape_zyx:
        raise ValueError(f"volume shape {volume_zyx.shape} is not the atlas grid")
    reference = float(volume_zyx[atlas.mask("occipital")].mean(dtype=np.float64))
    if not reference > 0:
        raise AnalysisError("no counts in the occipital reference region", "no_reference")
    sbr = {
        region: float(volume_zyx[atlas.mask(region.value)].mean(dtype=np.float64)) / reference
        - 1.0
        for region in REGIONS
    }
    return Quantification(sbr=sbr, ratios=ratios(sbr), reference_mean=reference)


def ratios(sbr: Mapping[Region, float]) -> Ratios:
    """Putamen/caudate ratio per side and asymmetry index per structure.

    Asymmetry index is ``100 * |L - R| / mean(L, R)`` percent; a ratio or
    index whose denominator is not positive is NaN (no striatal binding).
    """
    return Ratios(
        putamen_caudate_left=_divide(sbr[Region.PUTAMEN_LEFT], sbr[Region.CAUDATE_LEFT]),
        putamen_caudate_right=_divide(sbr[Region.PUTAMEN_RIGHT], sbr[Region.CAUDATE_RIGHT]),
        asymmetry_caudate_pct=asymmetry_pct(sbr[Region.CAUDATE_LEFT], sbr[Region.CAUDATE_RIGHT]),
        asymmetry_putamen_pct=asymmetry_pct(sbr[Region.PUTAMEN_LEFT], sbr[Region.PUTAMEN_RIGHT]),
    )


def asymmetry_pct(left: float, right: float) -> float:
    """``100 * |left - right| / mean(left, right)``; NaN when the mean is not positive."""
    return _divide(100.0 * abs(left - right), 0.5 * (left + right))


def _divide(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")
