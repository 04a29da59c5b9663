"""The FDOPA pipeline's tracer codes, with where each was verified.

Radiopharmaceutical Code Sequence (0054,0304) values a real [18F]FDOPA PET
export carries (PS3.16 CID 4021 "PET Radiopharmaceutical"), and Radionuclide
Code Sequence (0054,0300) values for fluorine-18 (CID 4020):

=================  ======  =============================  ======================================
Code value         Scheme  Meaning                        Source
=================  ======  =============================  ======================================
5811000122108      SCT     Fluoro-L-dopa F^18^            pydicom 3.0.2 ``codes.SCT.FluoroLDopaF18``
                                                          (CID 4021, current PS3.16)
C-B1034            SRT     Fluoro-L-dopa F^18^            PS3.16-2019a CID 4021, as generated into
                                                          DCMTK ``dcmsr/libsrc/cid4021.cc``
                                                          (older senders; also seen as ``SNM3``)
77004003           SCT     ^18^Fluorine                   pydicom ``codes.SCT._18Fluorine`` (CID 4020)
C-111A1            SRT     ^18^Fluorine                   PS3.16 CID 4020 in DCMTK
                                                          ``dcmsr/libsrc/cid4020.cc`` (older senders)
=================  ======  =============================  ======================================

Not accepted: SCT 129505007, proposed as an "older FDOPA code"; its meaning
could not be verified in pydicom's dictionary, DCMTK's context groups or any
other source at hand, so a series coded with it is refused (a site that
knows better adds it to :data:`FDOPA_TRACER_CODES` with its source).
"""

from __future__ import annotations

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

FLUORODOPA_F18 = codes.SCT.FluoroLDopaF18
FLUORODOPA_F18_LEGACY = Code("C-B1034", "SRT", "Fluoro-L-dopa F^18^")
FLUORINE_18 = codes.SCT._18Fluorine
FLUORINE_18_LEGACY = Code("C-111A1", "SRT", "^18^Fluorine")

#: (code value, scheme designator) pairs accepted as [18F]FDOPA.
FDOPA_TRACER_CODES = frozenset(
    {(FLUORODOPA_F18.value, "SCT"), (FLUORODOPA_F18_LEGACY.value, "SRT")}
)
#: (code value, scheme designator) pairs accepted as fluorine-18.
FLUORINE_18_CODES = frozenset(
    {(FLUORINE_18.value, "SCT"), (FLUORINE_18_LEGACY.value, "SRT")}
)
#: Default description keywords, used only when no radiopharmaceutical is coded.
DEFAULT_KEYWORDS: tuple[str, ...] = ("FDOPA", "F-DOPA", "FLUORODOPA", "18F-DOPA")
