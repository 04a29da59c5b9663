"""One C-STORE from a test to a listener on loopback (pynetdicom as the caller)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from service.dicom import codes


def store_nm_file(port: int, path: Path, called_ae: str = "DOPANODE") -> Dataset:
    """Send the NM file ``path`` in one association; return the C-STORE response.

    Raises
    ------
    AssertionError
        When the association is not established.
    """
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(codes.NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established
    try:
        return assoc.send_c_store(pydicom.dcmread(path))
    finally:
        assoc.release()
