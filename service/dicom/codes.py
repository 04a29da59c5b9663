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
