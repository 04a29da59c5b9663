"""What each stage of the FDOPA analysis hands the next (issue 12).

The stages, in order (``pipeline.py`` wires them):

1. gate and series selection (:mod:`.gate`) and PET volumes
   (:mod:`service.imaging.pet_volume`), SUV (:mod:`service.imaging.suv`);
2. spatial normalisation to the FDOPA template, atlas labels brought back onto
   the static PET grid: :class:`AtlasOnPet` (:mod:`.reference`);
3. tumour candidates: the U-Net's probability on the static grid
   (:mod:`.segment`) or the threshold-only baseline (:mod:`.measures`);
4. reference regions contralateral to the candidates: :class:`ReferenceRegions`
   (:mod:`.reference`);
5. lesions (PET RANO post-processing: candidates at >= 1.6 x the healthy
   background mean, small components removed, one lesion per component) and
   their measures: :class:`Lesion`, :class:`StaticMeasures` (:mod:`.measures`);
6. dynamic curves (:mod:`.kinetics`), then SEG, SR and picture report from
   :class:`FdopaResult` (:mod:`.seg`, :mod:`.sr`, :mod:`.picture`).

Every mask is a boolean ``(z, y, x)`` array on the grid of the static PET
frame that was analysed (:attr:`FdopaResult.static`), whose ``affine`` maps a
voxel index to LPS mm of the voxel centre. Values called ``*_units`` are in
the series' Units (after Rescale Slope/Intercept); ``*_suv`` values are SUVbw
(g/mL) and are None when SUV cannot be computed (:attr:`FdopaResult.suv`
says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.imaging.pet_volume import PetVolume
from service.imaging.suv import SuvScale
from service.pipelines.fdopa_pet.gate import StudySelection
from service.pipelines.fdopa_pet.kinetics import DynamicResult
from service.report.identity import AlgorithmInfo, SourceReference

Side = Literal["left", "right"]

#: The measurable-lesion volume of PET RANO 1.0 (mL; a lesion is measurable above it).
MEASURABLE_ML = 0.5
#: The PET RANO tumour threshold: voxels >= this x the healthy-background mean.
TUMOUR_THRESHOLD_X_BACKGROUND = 1.6


@dataclass(frozen=True, eq=False)
class AtlasOnPet:
    """The template's atlas brought onto the static PET grid.

    Attributes
    ----------
    labels_zyx : (z, y, x) int16 array
        Atlas label per static PET voxel (nearest neighbour); 0 outside the brain.
    names : mapping of str to int
        Label name (e.g. ``"caudate_left"``, ``"white_matter_right"``,
        ``"brain_stem"``, ``"cerebellum_left"``) to its value in ``labels_zyx``.
    lateral_mm_zyx : (z, y, x) float32 array
        Signed distance of each voxel from the template's mid-sagittal plane,
        mm, positive on the patient's left (LPS +x in template space).
    quality : float
        Registration quality in [0, 1] (normalised cross-correlation with the
        template inside the brain); the gate for refusing is in the pipeline.
    warnings : tuple of str
    """

    labels_zyx: np.ndarray
    names: Mapping[str, int]
    lateral_mm_zyx: np.ndarray
    quality: float
    warnings: tuple[str, ...] = ()

    def mask(self, *names: str) -> np.ndarray:
        """Boolean mask of the union of the named labels (unknown names raise KeyError)."""
        values = [self.names[n] for n in names]
        return np.isin(self.labels_zyx, values)


@dataclass(frozen=True, eq=False)
class ReferenceRegions:
    """Reference VOIs contralateral to the lesion.

    Attributes
    ----------
    side : {"left", "right"}
        The patient side the reference regions are on.
    rule : str
        Why that side (patient-free), e.g. ``"lesion centroid 31 mm right of
        the midline: contralateral left"`` or ``"midline lesion: left (Genoa
        default)"``.
    striatum_zyx : bool array
        Contralateral caudate + putamen + pallidum (Genoa T/S denominator).
    white_matter_zyx : bool array
        Contralateral cerebral white matter, eroded (Genoa T/N denominator).
    background_zyx : bool array
        Healthy-brain crescent, contralateral grey + white matter (PET RANO
        TBR denominator; Unterrainer 2017), away from the lesion.
    midline, infratentorial : bool
        Lesion position classes that changed the rule.
    """

    side: Side
    rule: str
    striatum_zyx: np.ndarray
    white_matter_zyx: np.ndarray
    background_zyx: np.ndarray
    midline: bool = False
    infratentorial: bool = False


@dataclass(frozen=True, eq=False)
class Lesion:
    """One connected PET-active lesion (of a possibly multifocal tumour).

    Attributes
    ----------
    index : int
        1-based, by decreasing volume.
    mask_zyx : bool array
    """

    index: int
    mask_zyx: np.ndarray


@dataclass(frozen=True)
class LesionMeasures:
    """Static measures of one lesion, or of all lesions together (``index`` 0).

    Definitions (PET RANO, Zaragori 2026; Genoa, Bianconi 2025): TBRmax =
    max / background mean; TBRmean = mean / background mean; T/S = max /
    contralateral striatum max; T/N = max / contralateral white-matter max;
    SUVpeak = the highest mean over a 1 mL sphere centred in the lesion;
    volume = voxel count x voxel volume; measurable = volume > 0.5 mL.
    """

    index: int
    voxels: int
    volume_ml: float
    measurable: bool
    max_units: float
    mean_units: float
    peak_units: float
    suv_max: float | None
    suv_mean: float | None
    suv_peak: float | None
    tbr_max: float
    tbr_mean: float
    ts_ratio: float
    tn_ratio: float
    centroid_lps_mm: tuple[float, float, float]
    touches_striatum: bool
    infratentorial: bool


@dataclass(frozen=True)
class ReferenceMeasures:
    """Values of the reference regions.

    Attributes
    ----------
    background_mean_units, striatum_max_units, white_matter_max_units : float
    background_suv_mean, striatum_suv_max, white_matter_suv_max : float or None
    background_ml, striatum_ml, white_matter_ml : float
        Region volumes, mL.
    """

    background_mean_units: float
    striatum_max_units: float
    white_matter_max_units: float
    background_suv_mean: float | None
    striatum_suv_max: float | None
    white_matter_suv_max: float | None
    background_ml: float
    striatum_ml: float
    white_matter_ml: float


@dataclass(frozen=True)
class StaticMeasures:
    """Everything measured on the static image.

    Attributes
    ----------
    lesions : tuple of LesionMeasures
        One per lesion, by decreasing volume.
    tumour : LesionMeasures or None
        All lesions together (``index`` 0); None when no lesion was found.
    reference : ReferenceMeasures
    threshold_units : float
        The lesion threshold used, 1.6 x the background mean, series units.
    """

    lesions: tuple[LesionMeasures, ...]
    tumour: LesionMeasures | None
    reference: ReferenceMeasures
    threshold_units: float


@dataclass(frozen=True)
class SegmentationInfo:
    """How the tumour candidates were found.

    Attributes
    ----------
    method : {"unet", "threshold"}
        ``"unet"``: the PET-only U-Net; ``"threshold"``: the classical
        threshold-only baseline (named so in every output).
    model_name, model_sha256 : str or None
        The ONNX model, for ``"unet"``.
    """

    method: Literal["unet", "threshold"]
    model_name: str | None = None
    model_sha256: str | None = None


Route = Literal["mr_guided", "pet_only"]


@dataclass(frozen=True)
class RouteInfo:
    """Which route analysed the study, and why (issue 13; :mod:`.mr_route`).

    Attributes
    ----------
    route : {"mr_guided", "pet_only"}
    reason : str
        Patient-free, e.g. ``"MR-guided route: FLAIR series 10 registered
        (quality 0.95)"`` or ``"PET-only route: no FLAIR in the study"``.
    flair_series_uid : str or None
        The FLAIR series the route was given.
    registration_quality : float or None
        FLAIR-to-PET edge alignment, when a registration ran.
    flair_method : str
        How the FLAIR lesion was segmented (MR-guided route), e.g.
        ``"classical threshold (no FLAIR U-Net shipped)"``.
    """

    route: Route
    reason: str
    flair_series_uid: str | None = None
    registration_quality: float | None = None
    flair_method: str = ""


NO_FLAIR = RouteInfo("pet_only", "PET-only route: no FLAIR in the study")


@dataclass(frozen=True, eq=False)
class FlairImage:
    """The FLAIR of the MR-guided route, for the outputs (MR SEG, picture).

    Attributes
    ----------
    volume_zyx : (z, y, x) float32 array
        The FLAIR on its own grid (stored values through the modality LUT).
    affine : (4, 4) float array
        FLAIR voxel index ``(z, y, x)`` to LPS mm (voxel centre).
    lesion_zyx : (z, y, x) bool array
        The FLAIR lesion on the FLAIR's grid (what the segmenter found).
    on_pet_zyx : (z, y, x) float32 array
        The FLAIR resampled onto the static PET grid through the registration
        (linear; 0 outside the FLAIR's field of view): the fused picture.
    series_uid : str
    method : {"unet", "threshold"}
        The FLAIR segmenter.
    """

    volume_zyx: np.ndarray
    affine: np.ndarray
    lesion_zyx: np.ndarray
    on_pet_zyx: np.ndarray
    series_uid: str
    method: Literal["unet", "threshold"]

    @property
    def spacing_zyx_mm(self) -> np.ndarray:
        """FLAIR voxel size along (z, y, x), mm."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def lesion_ml(self) -> float:
        """The FLAIR lesion's volume on the FLAIR grid, mL."""
        return float(self.lesion_zyx.sum()) * float(np.prod(self.spacing_zyx_mm)) / 1000.0


@dataclass(frozen=True, eq=False)
class FlairGuidedMeasures:
    """The paediatric FLAIR-guided (Genoa) measures of the MR-guided route.

    Definitions (``research/fdopa.md`` section 1a): the FLAIR lesion carried
    onto the PET grid; reference regions contralateral to it
    (:func:`.reference.reference_regions`); the PET tumour VOI = lesion
    voxels above the contralateral eroded white-matter maximum, or the whole
    lesion when its uptake is low (:func:`.measures.genoa_tumour_voi`); T/S
    and T/N = VOI max / reference max. Named apart from the PET RANO numbers
    in every output.

    Attributes
    ----------
    flair_lesion_zyx, voi_zyx : (z, y, x) bool arrays
        On the static PET grid.
    pet_voi : bool
        False: the low-uptake fallback (the VOI is the whole FLAIR lesion).
    voi_rule : str
    reference : ReferenceRegions
    reference_measures : ReferenceMeasures
    flair_lesion_ml, voi_ml : float
    voi_max_units : float
    voi_suv_max : float or None
    ts_ratio, tn_ratio : float
    dynamic : DynamicResult or None
        Curves of ``"tumour"`` (the VOI), ``"striatum"``, ``"background"``.
    dynamic_note : str
        Why there are no curves, when ``dynamic`` is None.
    flair : FlairImage or None
        The FLAIR and its lesion on the FLAIR grid (the MR SEG, the picture).
    voi_refinements : tuple of str
        What each refinement step of the reference code did to the VOI
        (:mod:`.voi_refine`), patient-free.
    """

    flair_lesion_zyx: np.ndarray
    voi_zyx: np.ndarray
    pet_voi: bool
    voi_rule: str
    reference: ReferenceRegions
    reference_measures: ReferenceMeasures
    flair_lesion_ml: float
    voi_ml: float
    voi_max_units: float
    voi_suv_max: float | None
    ts_ratio: float
    tn_ratio: float
    dynamic: DynamicResult | None = None
    dynamic_note: str = ""
    flair: FlairImage | None = None
    voi_refinements: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class FdopaResult:
    """One analysed FDOPA study.

    Attributes
    ----------
    source : SourceReference
        The static series (or the dynamic series when the static image was
        summed from it); the SEG references these instances.
    dynamic_source : SourceReference or None
    selection : StudySelection
    static : PetVolume
        One frame: the analysed static image and its grid.
    suv : SuvScale
    atlas : AtlasOnPet
    reference : ReferenceRegions
    lesions : tuple of Lesion
    measures : StaticMeasures
    segmentation : SegmentationInfo
    dynamic : DynamicResult or None
        Curves of the regions ``"tumour"``, ``"striatum"``, ``"background"``.
    dynamic_note : str
        Why there are no curves, when ``dynamic`` is None.
    flags : tuple of str
        Quality flags for the reader (e.g. ``"lesion touches the striatum"``,
        ``"infratentorial lesion"``, ``"SUV unavailable: ..."``,
        ``"registration quality 0.62"``).
    algorithm : AlgorithmInfo
    warnings : tuple of str
    route : RouteInfo
        Which route ran and why (the PET-only measures are always there).
    flair_guided : FlairGuidedMeasures or None
        The MR-guided route's measures (None on the PET-only route).
    """

    source: SourceReference
    dynamic_source: SourceReference | None
    selection: StudySelection
    static: PetVolume
    suv: SuvScale
    atlas: AtlasOnPet
    reference: ReferenceRegions
    lesions: tuple[Lesion, ...]
    measures: StaticMeasures
    segmentation: SegmentationInfo
    dynamic: DynamicResult | None
    dynamic_note: str
    flags: tuple[str, ...]
    algorithm: AlgorithmInfo
    warnings: tuple[str, ...] = ()
    route: RouteInfo = NO_FLAIR
    flair_guided: FlairGuidedMeasures | None = None
