"""service.logs keeps header values out of the log: library text, warnings, tracebacks.

Each test routes records through the node's own handler (formatter and
filter) into a buffer and checks that a sentinel value never appears, while
the record itself (logger, level, VR, exception type) still does.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.misc import warn_and_log
from pydicom.uid import ExplicitVRLittleEndian

from service import logs

BIRTH_DATE = "17.08.1923"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The node's handler on the root logger, writing into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.KeyValueFormatter())
    handler.addFilter(logs.WithholdLibraryText())
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG)
    logging.captureWarnings(False)  # drop a hook an earlier in-process CLI run left behind
    logging.captureWarnings(True)
    try:
        yield buffer
    finally:
        logging.captureWarnings(False)
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_safe_text_keeps_length_and_a_keyed_digest() -> None:
    withheld = logs.safe_text(BIRTH_DATE)
    assert BIRTH_DATE not in withheld and "len=10" in withheld
    assert logs.safe_text(BIRTH_DATE) == withheld  # correlates within the process
    assert logs.safe_text("17.08.1924") != withheld
    assert logs.safe_text("") == "" and logs.safe_text(None) == ""
    assert logs.safe_exc(ValueError(f"bad {BIRTH_DATE}")).startswith("ValueError: <withheld")


def test_pydicom_log_and_warning_are_withheld(stream: io.StringIO) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warn_and_log(f"Invalid value for VR DA: '{BIRTH_DATE}'.")
    text = stream.getvalue()
    assert BIRTH_DATE not in text
    assert "WARNING pydicom library_message_withheld" in text and 'vr="DA"' in text
    assert "py.warnings library_message_withheld" in text and 'category="UserWarning"' in text


def test_traceback_messages_are_withheld(stream: io.StringIO) -> None:
    try:
        try:
            raise KeyError(BIRTH_DATE)
        except KeyError as exc:
            raise ValueError(f"Unable to convert '{BIRTH_DATE}' to 'DA' object") from exc
    except ValueError:
        logging.getLogger("service.worker").exception("job_error")
    text = stream.getvalue()
    assert BIRTH_DATE not in text
    assert "job_error" in text and "ValueError: <withheld" in text and "KeyError: <withheld" in text
    assert "test_traceback_messages_are_withheld" in text  # the frames stay


def test_safe_exception_types_keep_their_message(stream: io.StringIO) -> None:
    class Refusal(RuntimeError):
        log_safe = True

    for exc in (Refusal("pynetdicom 3.1 lacks DULServiceProvider._idle_timer"),
                FileNotFoundError(2, "No such file or directory", f"/spool/{BIRTH_DATE}")):
        try:
            raise exc
        except Exception:
            logging.getLogger("service.app").exception("start_failed")
    text = stream.getvalue()
    assert "Refusal: pynetdicom 3.1 lacks DULServiceProvider._idle_timer" in text
    assert "FileNotFoundError: [Errno 2] No such file or directory: <withheld" in text
    assert BIRTH_DATE not in text


def test_quiet_pydicom_reads_the_same_values_silently(tmp_path, recwarn) -> None:
    """IGNORE only stops the echo: the malformed value is read back unchanged."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    saved = config.settings.reading_validation_mode
    try:
        logs.quiet_pydicom()
        ds.PatientBirthDate = BIRTH_DATE
        ds.PatientAge = "64"
        ds.save_as(tmp_path / "bad.dcm", implicit_vr=False, little_endian=True)
        back = dcmread(tmp_path / "bad.dcm", force=True)
        assert (back.PatientBirthDate, back.PatientAge) == (BIRTH_DATE, "64")
        header = Dataset()
        header.PatientBirthDate = back["PatientBirthDate"].value  # what evidence copying did
    finally:
        config.settings.reading_validation_mode = saved
    assert not [w for w in recwarn if BIRTH_DATE in str(w.message)]
