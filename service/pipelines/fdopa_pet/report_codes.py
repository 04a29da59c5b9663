"""Codes and units of the FDOPA outputs (SEG segments, TID 1500 SR, failure SR).

Standard codes come from pydicom's dictionary (``SCT``, ``DCM``, ``LN``,
``UCUM``); the few UCUM units pydicom does not name are written here with
their UCUM expression. Concepts without a standard code use the private
scheme ``99DOPANODE`` (shared with the DaT pipeline, values ``DN-01xx`` for
FDOPA); every one is listed in docs/conformance_sr.md, section "FDOPA PET".

Kept apart from :mod:`.codes` (tracer codes of the gate) so that the report
builders have one namespace and the gate none of theirs.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from service.dicom.codes import COMMENT, LEFT, NO, RIGHT, UCUM_RATIO, YES

__all__ = ["COMMENT", "LEFT", "NO", "RIGHT", "UCUM_RATIO", "YES"]

PRIVATE_SCHEME = "99DOPANODE"

# --- Report, procedure, anatomy ------------------------------------------------
PROCEDURE_BRAIN_PET = codes.LN.BrainPET
DIAGNOSTIC_IMAGING_REPORT = codes.LN.DiagnosticImagingReport
BRAIN = codes.SCT.Brain
CORPUS_STRIATUM = codes.SCT.CorpusStriatum
CEREBRAL_WHITE_MATTER = codes.SCT.CerebralWhiteMatter
TUMOUR = codes.SCT.Tumor
#: The FLAIR lesion (hyperintensity: tumour, oedema, necrosis), MR SEG of the MR-guided route.
LESION = codes.SCT.Lesion
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure
#: Not in pydicom's dictionary (UMLS), used by TID 1500 for the evaluations container.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# --- Measurement concepts (CID 7466 PET measurements, CID 7464 modifiers) ------
SUVBW = codes.DCM.Suvbw
SUV_BW_METHOD = codes.DCM.SUVBodyWeightCalculationMethod
LESION_TO_BACKGROUND = codes.DCM.LesionToBackgroundSUVRatio
BACKGROUND_FOR_RATIO = codes.DCM.BackgroundForLesionToBackgroundSUVRatio
METABOLIC_VOLUME = codes.DCM.MetabolicVolume
SUM_OF_VOXELS_METHOD = codes.DCM.SumOfSegmentedVoxelMethodForVolume
TIME_TO_PEAK = codes.DCM.TimeToPeak
VOLUME = codes.SCT.Volume
MAXIMUM = codes.SCT.Maximum
MEAN = codes.SCT.Mean
PEAK = codes.DCM.PeakValueWithinROI

# --- UCUM units ------------------------------------------------------------------
UCUM_SUVBW = Code("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight")
UCUM_CM3 = Code("cm3", "UCUM", "cubic centimeter")
UCUM_ML = Code("ml", "UCUM", "milliliter")
UCUM_MINUTE = codes.UCUM.Minute
UCUM_SECOND = codes.UCUM.Second
UCUM_BQML_PER_S = Code("Bq/ml/s", "UCUM", "becquerel per milliliter per second")
UCUM_SUVBW_PER_MIN = Code("{SUVbw}g/ml/min", "UCUM", "SUVbw per minute")
UCUM_PERCENT_PER_MIN = Code("%/min", "UCUM", "percent per minute")
UCUM_NO_UNITS = codes.UCUM.NoUnits

# --- Private 99DOPANODE concepts (FDOPA: DN-01xx) ---------------------------------
TUMOUR_TO_STRIATUM = Code("DN-0101", PRIVATE_SCHEME,
                          "Tumour-to-striatum ratio T/S (max/max, Genoa)")
TUMOUR_TO_NORMAL = Code("DN-0102", PRIVATE_SCHEME,
                        "Tumour-to-normal white matter ratio T/N (max/max, Genoa)")
RATIO_REFERENCE_REGION = Code("DN-0103", PRIVATE_SCHEME, "Reference region of the ratio")
MEASURABLE_LESION = Code("DN-0104", PRIVATE_SCHEME, "Measurable lesion (PET RANO, > 0.5 mL)")
TOUCHES_STRIATUM = Code("DN-0105", PRIVATE_SCHEME, "Lesion touches the striatum")
INFRATENTORIAL = Code("DN-0106", PRIVATE_SCHEME, "Infratentorial lesion")
SUV_AVAILABLE = Code("DN-0107", PRIVATE_SCHEME, "SUV available")
SUV_UNAVAILABLE_REASON = Code("DN-0108", PRIVATE_SCHEME, "Why SUV is unavailable")
SEGMENTATION_METHOD = Code("DN-0109", PRIVATE_SCHEME, "Tumour segmentation method")
UNET_METHOD = Code("DN-0110", PRIVATE_SCHEME, "PET-only 3D U-Net")
THRESHOLD_METHOD = Code("DN-0111", PRIVATE_SCHEME, "Threshold-only baseline")
TAC_LATE_SLOPE = Code("DN-0112", PRIVATE_SCHEME, "Time-activity curve late slope")
SLOPE_RATIO = Code("DN-0113", PRIVATE_SCHEME, "Slope ratio tumour/striatum (DSR)")
FIT_WINDOW_START = Code("DN-0114", PRIVATE_SCHEME, "Slope fit window start from injection")
FRAME_START_TIMES = Code("DN-0115", PRIVATE_SCHEME, "Frame start times (Genoa convention)")
FRAME_MID_TIMES = Code("DN-0116", PRIVATE_SCHEME, "Frame mid times")
REFERENCE_SIDE_RULE = Code("DN-0117", PRIVATE_SCHEME, "Reference side rule")
QUALITY_FLAG = Code("DN-0118", PRIVATE_SCHEME, "Quality flag")
DYNAMIC_NOTE = Code("DN-0119", PRIVATE_SCHEME, "Dynamic analysis note")
LESION_THRESHOLD = Code("DN-0120", PRIVATE_SCHEME,
                        "Lesion threshold (1.6 x background mean, SUVbw)")
# --- The MR-guided route (issue 13): paediatric FLAIR-guided measures, named apart ---
ANALYSIS_ROUTE = Code("DN-0121", PRIVATE_SCHEME, "FDOPA analysis route")
MR_GUIDED_ROUTE = Code("DN-0122", PRIVATE_SCHEME, "MR-guided route (FLAIR lesion)")
PET_ONLY_ROUTE = Code("DN-0123", PRIVATE_SCHEME, "PET-only route")
ROUTE_REASON = Code("DN-0124", PRIVATE_SCHEME, "Why this route")
FLAIR_LESION_METHOD = Code("DN-0125", PRIVATE_SCHEME, "FLAIR lesion segmentation method")
FLAIR_REGISTRATION_QUALITY = Code("DN-0126", PRIVATE_SCHEME,
                                  "FLAIR to PET registration quality (edge alignment)")
FLAIR_GUIDED_TS = Code("DN-0127", PRIVATE_SCHEME, "T/S (paediatric FLAIR-guided, max/max)")
FLAIR_GUIDED_TN = Code("DN-0128", PRIVATE_SCHEME, "T/N (paediatric FLAIR-guided, max/max)")
FLAIR_GUIDED_VOI_VOLUME = Code("DN-0129", PRIVATE_SCHEME,
                               "PET tumour VOI volume (paediatric FLAIR-guided)")
FLAIR_LESION_VOLUME = Code("DN-0130", PRIVATE_SCHEME, "FLAIR lesion volume on the PET grid")
LOW_UPTAKE_FALLBACK = Code("DN-0131", PRIVATE_SCHEME,
                           "Low-uptake fallback: the whole FLAIR lesion is the VOI")
FLAIR_GUIDED_SLOPE_RATIO = Code("DN-0132", PRIVATE_SCHEME,
                                "Slope ratio tumour/striatum (paediatric FLAIR-guided VOI)")
FLAIR_GUIDED_VOI_REFINEMENTS = Code("DN-0133", PRIVATE_SCHEME,
                                    "Refinements of the paediatric FLAIR-guided VOI")

#: Shared with the DaT pipeline (same concept, same code).
REGISTRATION_QUALITY = Code("DN-0013", PRIVATE_SCHEME, "Spatial normalisation quality")
ANALYSIS_NOT_POSSIBLE = Code("DN-0020", PRIVATE_SCHEME, "Analysis not possible")

#: Time convention name (``CurveParameters.convention``) to its method code.
CONVENTION_CODES: dict[str, Code] = {"start": FRAME_START_TIMES, "mid": FRAME_MID_TIMES}
