"""The transfer syntaxes the simulators write, and the one encoder for them.

Only lossless syntaxes (PS3.5 A.4 and A.5): quantitative images (PET in
Bq/mL, SPECT counts) must read back to the stored values exactly; a lossy
syntax (JPEG baseline, JPEG-LS near-lossless, JPEG 2000 irreversible) would
change the activity concentration a maximum or a ratio is measured on, and
Lossy Image Compression (0028,2110) ``01`` would make the image unfit for
quantification.

Encoders: RLE Lossless by pydicom itself, JPEG-LS Lossless by pyjpegls (the
``sim`` extra), JPEG 2000 Lossless by pylibjpeg-openjpeg; Deflated Explicit VR
Little Endian deflates the whole data set when pydicom writes the file. The
node decodes all of them with its own dependencies (pylibjpeg with libjpeg
for JPEG-LS, openjpeg, rle).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

#: Name of each written transfer syntax and its UID.
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "rle": RLELossless,
    "jpegls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
_PLUGINS = {"rle": "pydicom", "jpegls": "pyjpegls", "jpeg2000": "pylibjpeg"}


def check_transfer_syntax(name: str) -> str:
    """``name`` if it is one of :data:`TRANSFER_SYNTAXES`, else ValueError naming it."""
    if name not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {', '.join(TRANSFER_SYNTAXES)} "
                         f"(lossless only), got {name!r}")
    return name


def encode_pixels(ds: Dataset, name: str, stored: np.ndarray | None = None) -> None:
    """Give ``ds`` the transfer syntax ``name``, compressing its Pixel Data.

    Parameters
    ----------
    ds : pydicom.Dataset
        With ``file_meta`` and native (uncompressed) Pixel Data.
    name : str
        A key of :data:`TRANSFER_SYNTAXES`.
    stored : (frames, rows, columns) or (rows, columns) array, optional
        The stored values of the Pixel Data (saves decoding them again); a
        single frame may keep its leading axis of 1.
    """
    check_transfer_syntax(name)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if name in _PLUGINS:
        arr = stored if stored is None or stored.ndim == 2 or stored.shape[0] > 1 else stored[0]
        ds.compress(TRANSFER_SYNTAXES[name], arr, encoding_plugin=_PLUGINS[name],
                    generate_instance_uid=False)
    elif name == "deflate":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
