"""service.logs keeps header values out of the log: library text, warnings, tracebacks.

Each test routes records through the node's own handler (formatter and
filter) into a buffer and checks that a sentinel value never appears, while
the record itself (logger, level, VR, exception type) still does.
"""

from __future__ import annotations

import io
import logging
import sys
import warnings
from collections.abc import Iterator

import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.misc import warn_and_log
from pydicom.uid import ExplicitVRLittleEndian

from service import logs

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

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


def test_s3_client_records_are_withheld(stream: io.StringIO) -> None:
    """botocore's DEBUG narration quotes the blob key, whose folders are study UIDs."""
    key = "instances/1.2.826.0.1.3680043.8.498.1/1.2.3/1.2.3.4.dcm"
    names = ("botocore.endpoint", "boto3.resources", "s3transfer.upload",
             "urllib3.connectionpool", "psycopg.pool")
    # an earlier test's logs.configure() keeps these libraries at WARNING: open them up
    # here (levels restored), since this test is about the withholding, not the levels
    parents = {name.split(".")[0] for name in names}
    saved = {name: logging.getLogger(name).level for name in (*names, *parents)}
    try:
        for name in saved:
            logging.getLogger(name).setLevel(logging.DEBUG)
        for name in names:
            logging.getLogger(name).debug("Making request with params: %s", {"Key": key})
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    text = stream.getvalue()
    assert key not in text and "1.2.826.0.1.3680043.8.498.1" not in text
    assert text.count("library_message_withheld") == 5
    assert 'logger="botocore.endpoint"' in text


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


# --- rate limit (audit D17) ---------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_beyond_the_burst_are_dropped_and_summarised() -> None:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.KeyValueFormatter())
    clock = FakeClock()
    limit = logs.RateLimit(burst=5, interval_s=10.0, clock=clock)
    limit.sink = handler.handle
    handler.addFilter(limit)
    log = logging.getLogger("service.net.scp.ratelimit_test")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        for i in range(1000):
            log.warning("store_refused", extra={"fields": {"n": i}})
        log.info("other_event")  # another event is not held back
        assert buffer.getvalue().count("store_refused") == 5
        assert "other_event" in buffer.getvalue()
        assert "log_suppressed" not in buffer.getvalue()
        clock.now += 10.0  # the window has passed: one summary with the next line
        log.warning("store_refused", extra={"fields": {"n": "again"}})
        lines = buffer.getvalue().splitlines()
        summaries = [line for line in lines if "log_suppressed" in line]
        assert len(summaries) == 1
        assert '"dropped"' not in summaries[0] and "dropped=995" in summaries[0]
        assert 'event="store_refused"' in summaries[0]
        assert lines[-1].endswith('n="again"')  # a new window lets the event through
        assert len(lines) == 8
    finally:
        log.handlers[:] = []
        log.propagate = True


def test_configure_installs_the_rate_limit() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._configured
    levels = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    validation = config.settings.reading_validation_mode
    logs._configured = False
    try:
        logs.configure("INFO")
        (handler,) = root.handlers
        assert any(isinstance(f, logs.RateLimit) for f in handler.filters)
        # a DEBUG node still leaves the S3 client's request narration out
        logs.configure("DEBUG")
        assert not logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("pynetdicom.assoc").isEnabledFor(logging.INFO)
        assert not logging.getLogger("openjpeg.encode").isEnabledFor(logging.INFO)
    finally:  # configure() changes process-wide state: put it all back
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logs._configured = saved[2]
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        config.settings.reading_validation_mode = validation
        logging.captureWarnings(False)


def test_stderr_handler_writes_to_the_stderr_of_the_moment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A record emitted after stderr was replaced (and the old one closed, as a test's
    capture is) goes to the new stderr, not to a closed file ("--- Logging error ---")."""
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = logs.StderrHandler()
    monkeypatch.setattr(sys, "stderr", second)
    first.close()
    handler.handle(logging.LogRecord("t", logging.ERROR, __file__, 1, "hello", None, None))
    assert "hello" in second.getvalue() and "Logging error" not in second.getvalue()
