"""Codes only the simulator writes (NM acquisition context, CID 18/19/20/21/25/11)."""

from __future__ import annotations

from pydicom.sr.codedict import codes

IOFLUPANE_I123 = codes.SCT.IoflupaneI123
IODINE_123 = codes.SCT._123Iodine
TECHNETIUM_99M = codes.SCT._99mTechnetium
TC99M_EXAMETAZIME = codes.SCT.TechnetiumTc99mExametazime
INTRAVENOUS_ROUTE = codes.SCT.IntravenousRoute
RECUMBENT = codes.SCT.Recumbent
SUPINE = codes.SCT.Supine
HEADFIRST = codes.SCT.Headfirst
