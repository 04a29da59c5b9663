"""The DaT pipeline's codes: tracer, anatomy, and the private ``99DOPANODE`` scheme.

Standard codes come from pydicom's dictionary (SNOMED CT ``SCT``, DICOM
``DCM``, LOINC ``LN``); legacy senders may still use the SNOMED-RT code for
the tracer. The five-level uptake scheme has no standard code: it uses the
private coding scheme designator ``99DOPANODE`` documented in the README's
conformance section. The shared codes the SR also uses are re-exported from
:mod:`service.dicom.codes` so the SR builder reads one namespace.
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from service.dicom.codes import (
    ABNORMAL,
    COMMENT,
    FINDING,
    LEFT,
    NO,
    NORMAL,
    RIGHT,
    UCUM_NO_UNITS,
    UCUM_PERCENT,
    UCUM_RATIO,
    YES,
    Z_SCORE,
)

__all__ = [
    "ABNORMAL", "COMMENT", "FINDING", "LEFT", "NO", "NORMAL", "RIGHT", "UCUM_NO_UNITS",
    "UCUM_PERCENT", "UCUM_RATIO", "YES", "Z_SCORE",
]

# --- Radiopharmaceuticals and radionuclides (CID 25, CID 4020) -------------
IOFLUPANE_I123 = codes.SCT.IoflupaneI123
IOFLUPANE_I123_LEGACY = Code("C-B07EC", "SRT", "Ioflupane (123-I)")
IODINE_123 = codes.SCT._123Iodine

#: (code value, scheme designator) pairs accepted as a DaT tracer.
DAT_TRACER_CODES = frozenset(
    {(IOFLUPANE_I123.value, "SCT"), (IOFLUPANE_I123_LEGACY.value, "SRT")}
)

# --- Anatomy ----------------------------------------------------------------
CAUDATE = codes.SCT.CaudateNucleus
PUTAMEN = codes.SCT.Putamen
CORPUS_STRIATUM = codes.SCT.CorpusStriatum

#: Procedure reported (CID 100 "Quantitative Diagnostic Imaging Procedures");
#: there is no DaT-specific code there, the tracer is in the source series.
SPECT_BRAIN = codes.LN.SPECTBrain
#: Not in pydicom's dictionary (UMLS), used by TID 1500 for the evaluations container.
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

# --- Private scheme for the five-level striatal uptake scale ----------------
PRIVATE_SCHEME = "99DOPANODE"
UPTAKE_LEVEL_CONCEPT = Code("DN-0001", PRIVATE_SCHEME, "Striatal DaT uptake level")
LEVEL_CODES: tuple[Code, ...] = (
    Code("DN-L0", PRIVATE_SCHEME, "Normal"),
    Code("DN-L1", PRIVATE_SCHEME, "Borderline"),
    Code("DN-L2", PRIVATE_SCHEME, "Moderate reduction"),
    Code("DN-L3", PRIVATE_SCHEME, "Strong reduction"),
    Code("DN-L4", PRIVATE_SCHEME, "Almost missing"),
)
#: The reported level is UPTAKE_LEVEL_CONCEPT (the CNN's when a model is
#: installed, else the SBR-threshold one); both methods are also named explicitly.
UPTAKE_LEVEL_SBR_CONCEPT = Code(
    "DN-0002", PRIVATE_SCHEME, "Striatal DaT uptake level, SBR thresholds"
)
UPTAKE_LEVEL_CNN_CONCEPT = Code("DN-0003", PRIVATE_SCHEME, "Striatal DaT uptake level, CNN")
RESULT_INCONCLUSIVE = Code("DN-0004", PRIVATE_SCHEME, "Result inconclusive")
GLOBAL_SCORE_RULE = Code("DN-0005", PRIVATE_SCHEME, "Global score rule")
GLOBAL_SCORE_METHOD = Code("DN-0006", PRIVATE_SCHEME, "Global score method")
REFERENCE_REGION = Code("DN-0007", PRIVATE_SCHEME, "SBR reference region")
SPECIFIC_BINDING_RATIO = Code("DN-0010", PRIVATE_SCHEME, "Specific binding ratio")
PUTAMEN_CAUDATE_RATIO = Code("DN-0011", PRIVATE_SCHEME, "Putamen/caudate SBR ratio")
ASYMMETRY_INDEX = Code("DN-0012", PRIVATE_SCHEME, "Asymmetry index")
REGISTRATION_QUALITY = Code("DN-0013", PRIVATE_SCHEME, "Spatial normalisation quality")
#: A putamen's SBR as the learnt putamen estimator reads it from the CNN's input
#: (:mod:`service.pipelines.dat_spect.putamen_estimator`): what the one-sided override compares.
ESTIMATED_SBR = Code("DN-0016", PRIVATE_SCHEME, "Specific binding ratio, learnt estimator")
#: Where the SBR thresholds and the normal database came from (see
#: :mod:`service.pipelines.dat_spect.provenance`); the note says what it means
#: for the reader (levels and z-scores indicative when simulated).
CALIBRATION_PROVENANCE = Code("DN-0014", PRIVATE_SCHEME, "Calibration provenance")
CALIBRATION_NOTE = Code("DN-0015", PRIVATE_SCHEME, "Calibration note")
SIMULATED_CALIBRATION = Code("DN-C1", PRIVATE_SCHEME, "Shipped simulated calibration")
SITE_CALIBRATION = Code("DN-C2", PRIVATE_SCHEME, "Site calibration")
#: The "analysis not possible" report of a series that was taken but not analysed.
ANALYSIS_NOT_POSSIBLE = Code("DN-0020", PRIVATE_SCHEME, "Analysis not possible")
