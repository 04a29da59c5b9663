"""dopanode: DICOM inference node for dopamine transporter SPECT.

Research use, not for diagnosis.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dopanode")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"

__all__ = ["__version__"]
