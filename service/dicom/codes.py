"""The one place for DICOM codes, UIDs and status values used by dopanode.

Standard codes come from SNOMED CT (``SCT``), DICOM (``DCM``) or, for legacy
senders, SNOMED-RT (``SRT``). The five-level uptake scheme has no standard
code: it uses the private coding scheme designator ``99DOPANODE`` documented in
the README's conformance section.
"""

from __future__ import annotations

from enum import IntEnum

from pydicom.sr.coding import Code

# --- SOP classes (PS3.4 Annex B) -------------------------------------------
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
MF_GRAYSCALE_BYTE_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.2"
MF_GRAYSCALE_WORD_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.3"
MF_TRUE_COLOR_SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
ENHANCED_PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
VERIFICATION = "1.2.840.10008.1.1"

# --- Radiopharmaceuticals and radionuclides (CID 25, CID 4020) -------------
IOFLUPANE_I123 = Code("429296007", "SCT", "Ioflupane (123-I)")
IOFLUPANE_I123_LEGACY = Code("C-B07EC", "SRT", "Ioflupane (123-I)")
IODINE_123 = Code("21572004", "SCT", "^123^Iodine")
FLUORODOPA_F18 = Code("129505007", "SCT", "Fluorodopa F^18^")

#: (code value, scheme designator) pairs accepted as a DaT tracer.
DAT_TRACER_CODES = frozenset(
    {(IOFLUPANE_I123.value, "SCT"), (IOFLUPANE_I123_LEGACY.value, "SRT")}
)

# --- Anatomy and laterality -------------------------------------------------
CAUDATE = Code("11000004", "SCT", "Caudate nucleus")
PUTAMEN = Code("89278009", "SCT", "Putamen")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")

# --- Global findings --------------------------------------------------------
NORMAL = Code("17621005", "SCT", "Normal")
ABNORMAL = Code("263654008", "SCT", "Abnormal")

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


class Status(IntEnum):
    """DIMSE status values that dopanode answers or interprets (PS3.7 Annex C)."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    PROCESSING_FAILURE = 0x0110
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000

# --- NM acquisition context (added by the NM writer, CID 18/19/20/21/25/11) --
TECHNETIUM_99M = Code("72454006", "SCT", "^99m^Technetium")
TC99M_EXAMETAZIME = Code("77313009", "SCT", "Technetium Tc^99m^ exametazime")
INTRAVENOUS_ROUTE = Code("47625008", "SCT", "Intravenous route")
RECUMBENT = Code("102538003", "SCT", "recumbent")
SUPINE = Code("40199007", "SCT", "supine")
HEADFIRST = Code("102540008", "SCT", "headfirst")

# --- Report content (SR TID 1500 and picture report; see docs/conformance_sr.md)
#: Procedure reported (CID 100 "Quantitative Diagnostic Imaging Procedures");
#: there is no DaT-specific code there, the tracer is in the source series.
SPECT_BRAIN = Code("39632-5", "LN", "SPECT brain")
CORPUS_STRIATUM = Code("31428008", "SCT", "Corpus striatum")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")
Z_SCORE = Code("113071", "DCM", "Z-score")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
UCUM_RATIO = Code("{ratio}", "UCUM", "ratio")
UCUM_NO_UNITS = Code("1", "UCUM", "no units")
UCUM_PERCENT = Code("%", "UCUM", "Percent")
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

# --- Storage SOP classes the SCP accepts (README conformance section) --------
#: NM (the DaT study itself) and what may come with it or instead of it: CT
#: (attenuation maps), PET (later tracers), Secondary Capture, SR and PDF
#: (reports forwarded by the PACS). Non-NM series end as jobs with a reason.
ACCEPTED_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    NM_IMAGE_STORAGE,
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    ENHANCED_PET_IMAGE_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    MF_GRAYSCALE_BYTE_SC_STORAGE,
    MF_GRAYSCALE_WORD_SC_STORAGE,
    MF_TRUE_COLOR_SC_STORAGE,
    BASIC_TEXT_SR_STORAGE,
    ENHANCED_SR_STORAGE,
    COMPREHENSIVE_SR_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
)
