"""Shared DICOM knowledge: SOP Class UIDs and the standard codes more than one part uses.

Everything here is re-exported from pydicom (``pydicom.uid`` and
``pydicom.sr.codedict.codes``) rather than typed by hand. A pipeline's own
codes (e.g. the private ``99DOPANODE`` DaT scheme) live with that pipeline;
the simulator's acquisition codes live in :mod:`service.sim.codes`; DIMSE
status values live at the socket edge (:mod:`service.net.status`).
"""

from __future__ import annotations

from pydicom import uid
from pydicom.sr.codedict import codes

# --- SOP classes (PS3.4 Annex B) -------------------------------------------
NM_IMAGE_STORAGE = str(uid.NuclearMedicineImageStorage)
SECONDARY_CAPTURE_STORAGE = str(uid.SecondaryCaptureImageStorage)
MF_GRAYSCALE_BYTE_SC_STORAGE = str(uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage)
MF_GRAYSCALE_WORD_SC_STORAGE = str(uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
MF_TRUE_COLOR_SC_STORAGE = str(uid.MultiFrameTrueColorSecondaryCaptureImageStorage)
CT_IMAGE_STORAGE = str(uid.CTImageStorage)
ENHANCED_CT_IMAGE_STORAGE = str(uid.EnhancedCTImageStorage)
PET_IMAGE_STORAGE = str(uid.PositronEmissionTomographyImageStorage)
ENHANCED_PET_IMAGE_STORAGE = str(uid.EnhancedPETImageStorage)
LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE = str(uid.LegacyConvertedEnhancedPETImageStorage)
MR_IMAGE_STORAGE = str(uid.MRImageStorage)
ENHANCED_MR_IMAGE_STORAGE = str(uid.EnhancedMRImageStorage)
SEGMENTATION_STORAGE = str(uid.SegmentationStorage)
BASIC_TEXT_SR_STORAGE = str(uid.BasicTextSRStorage)
ENHANCED_SR_STORAGE = str(uid.EnhancedSRStorage)
COMPREHENSIVE_SR_STORAGE = str(uid.ComprehensiveSRStorage)
COMPREHENSIVE_3D_SR_STORAGE = str(uid.Comprehensive3DSRStorage)
ENCAPSULATED_PDF_STORAGE = str(uid.EncapsulatedPDFStorage)
#: Verification SOP Class (PS3.4 Annex A); pydicom.uid has no name for it.
VERIFICATION = "1.2.840.10008.1.1"

#: Enhanced (multi-frame) image classes: one instance is the whole series
#: unless its header says otherwise (completion by count 1).
ENHANCED_IMAGE_SOP_CLASSES: frozenset[str] = frozenset({
    ENHANCED_CT_IMAGE_STORAGE, ENHANCED_PET_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE,
})

# --- Standard codes shared by the report builders ---------------------------
LEFT = codes.SCT.Left
RIGHT = codes.SCT.Right
NORMAL = codes.SCT.Normal
ABNORMAL = codes.SCT.Abnormal
YES = codes.SCT.Yes
NO = codes.SCT.No
FINDING = codes.DCM.Finding
COMMENT = codes.DCM.Comment
Z_SCORE = codes.DCM.ZScore
UCUM_RATIO = codes.UCUM.Ratio
UCUM_NO_UNITS = codes.UCUM.NoUnits
UCUM_PERCENT = codes.UCUM.Percent

# --- Storage SOP classes the SCP accepts (README conformance section) --------
#: NM (DaT SPECT), PET in all three encodings and MR (the FDOPA study and its
#: FLAIR), CT (attenuation maps), and what a PACS forwards with a study:
#: Secondary Capture, SR, SEG and PDF. What no pipeline takes is recorded as
#: an ignored series, never a failed job.
ACCEPTED_STORAGE_SOP_CLASSES: tuple[str, ...] = (
    NM_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    ENHANCED_PET_IMAGE_STORAGE,
    LEGACY_CONVERTED_ENHANCED_PET_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    ENHANCED_MR_IMAGE_STORAGE,
    CT_IMAGE_STORAGE,
    ENHANCED_CT_IMAGE_STORAGE,
    SECONDARY_CAPTURE_STORAGE,
    MF_GRAYSCALE_BYTE_SC_STORAGE,
    MF_GRAYSCALE_WORD_SC_STORAGE,
    MF_TRUE_COLOR_SC_STORAGE,
    SEGMENTATION_STORAGE,
    BASIC_TEXT_SR_STORAGE,
    ENHANCED_SR_STORAGE,
    COMPREHENSIVE_SR_STORAGE,
    COMPREHENSIVE_3D_SR_STORAGE,
    ENCAPSULATED_PDF_STORAGE,
)
