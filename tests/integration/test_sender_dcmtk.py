"""The sender against real C-STORE SCPs: DCMTK storescp and a pynetdicom SCP.

storescp runs with ``+uf`` (unique file names), so an object delivered twice
would show up as two files: the counts below detect duplicates.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage  # type: ignore[attr-defined]

from service.dicom import codes
from service.net.scu import Sender
from service.store import outbox
from service.store.db import Database
from service.store.outbox import RetryPolicy
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port
from service.testing.samples import write_sr
from service.testing.storage import node_rows

FAST = RetryPolicy(base_s=0.2, cap_s=0.8, give_up_after_s=3600)


class Dest:
    def __init__(self, name: str, ae_title: str, port: int) -> None:
        self.name, self.ae_title, self.host, self.port = name, ae_title, "127.0.0.1", port


def received(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file())


def start_storescp(directory: Path, port: int, ae_title: str = "DEST") -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [require_tool("storescp"), "-aet", ae_title, "-od", str(directory), "+uf", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    echo = AE(ae_title="PROBE")
    echo.add_requested_context(codes.VERIFICATION)

    def answers() -> bool:
        assert proc.poll() is None, "storescp exited"
        assoc = echo.associate("127.0.0.1", port, ae_title=ae_title)
        if assoc.is_established:
            assoc.release()
            return True
        return False

    wait_until(answers, what="storescp to listen")
    return proc


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = node_rows(tmp_path / "node.sqlite3")
    database.migrate()
    return database


@pytest.fixture
def storescps() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        p.terminate()
        p.wait(10)


def enqueue(db: Database, path: Path, ds: Dataset, dests: list[str], job_id: int = 1) -> None:
    conn = db.connect()
    with conn:
        outbox.enqueue(conn, job_id, dests, path, ds.SOPClassUID, ds.SOPInstanceUID)
    conn.close()


def due_now(db: Database) -> bool:
    conn = db.connect()
    try:
        return bool(outbox.due(conn))
    finally:
        conn.close()


def states(db: Database) -> dict[str, tuple[str, int]]:
    conn = db.connect()
    try:
        rows = conn.execute("SELECT destination, state, attempts FROM outbox").fetchall()
    finally:
        conn.close()
    return {d: (s, a) for d, s, a in rows}


def test_storescp_receives_what_was_queued_before_start(db, tmp_path, storescps, caplog):
    """Outputs queued before the sender starts (e.g. before a restart) are sent."""
    caplog.set_level(logging.INFO)
    port = free_port()
    storescps.append(start_storescp(tmp_path / "in", port))
    files = [tmp_path / "out" / f"{i}.dcm" for i in range(3)]
    datasets = [write_sr(f) for f in files]
    for f, ds in zip(files, datasets, strict=True):
        enqueue(db, f, ds, ["pacs"])
    report = Sender(db, [Dest("pacs", "DEST", port)], "DOPANODE", FAST).send_due("pacs")
    assert (report.sent, report.retried, report.failed) == (3, 0, 0)
    got = received(tmp_path / "in")
    assert len(got) == 3
    assert all(s == ("sent", 1) for s in states(db).values())
    # Nothing is due any more: a second pass sends nothing.
    assert Sender(db, [Dest("pacs", "DEST", port)], "DOPANODE", FAST).send_due("pacs").sent == 0
    assert len(received(tmp_path / "in")) == 3
    assert "output_delivered" in caplog.text
    assert "SENTINEL" not in caplog.text and datasets[0].SOPInstanceUID not in caplog.text


def test_explicit_file_reaches_an_implicit_only_scp(db, tmp_path):
    """The sender offers both little-endian encodings; pynetdicom converts."""
    seen: list[str] = []

    def handle_store(event: evt.Event) -> int:
        seen.append(str(event.context.transfer_syntax))
        return 0x0000 if event.dataset.SOPInstanceUID == ds.SOPInstanceUID else 0xC000

    scp_ae = AE(ae_title="IMPLICIT")
    scp_ae.add_supported_context(ComprehensiveSRStorage, [ImplicitVRLittleEndian])
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        ds = write_sr(tmp_path / "out" / "sr.dcm")
        enqueue(db, tmp_path / "out" / "sr.dcm", ds, ["impl"])
        report = Sender(db, [Dest("impl", "IMPLICIT", port)], "DOPANODE", FAST).send_due("impl")
    finally:
        server.shutdown()
    assert report.sent == 1 and seen == [ImplicitVRLittleEndian]


def test_destination_down_then_up_delivers_exactly_once(db, tmp_path, storescps):
    port = free_port()  # nothing listens yet
    path = tmp_path / "out" / "sr.dcm"
    enqueue(db, path, write_sr(path), ["pacs"])
    sender = Sender(db, [Dest("pacs", "DEST", port)], "DOPANODE", FAST, poll_interval_s=0.1)
    sender.start()
    try:
        wait_until(lambda: states(db)["pacs"][1] >= 3, what="three failed attempts")
        conn = db.connect()
        item = outbox.due(conn, now=time.time() + 3600)[0]
        conn.close()
        assert item.state == "pending" and item.last_error.startswith("destination unreachable")
        assert item.next_attempt_at > time.time() - 0.05  # backed off, not hammering
        storescps.append(start_storescp(tmp_path / "in", port))
        wait_until(lambda: states(db)["pacs"][0] == "sent", what="delivery after the SCP came up")
    finally:
        sender.stop()
    # More passes (as after a restart): nothing is due, nothing is sent again.
    assert sender.send_due("pacs").sent == 0
    assert len(received(tmp_path / "in")) == 1
    assert states(db)["pacs"][0] == "sent"


def test_a_destination_down_does_not_block_another(db, tmp_path, storescps):
    up_port, down_port = free_port(), free_port()
    storescps.append(start_storescp(tmp_path / "in", up_port))
    path = tmp_path / "out" / "sr.dcm"
    enqueue(db, path, write_sr(path), ["down", "up"])
    sender = Sender(db, [Dest("down", "GONE", down_port), Dest("up", "DEST", up_port)],
                    "DOPANODE", FAST, poll_interval_s=0.1)
    sender.start()
    try:
        wait_until(lambda: states(db)["up"][0] == "sent", what="delivery to the live destination")
        assert states(db)["down"][0] == "pending"
    finally:
        sender.stop()
    assert len(received(tmp_path / "in")) == 1


def test_only_success_counts_as_delivered(db, tmp_path):
    """A destination answering 0xA700 keeps the item pending until it says Success."""
    answers = [0xA700, 0x0000]
    seen: list[str] = []

    def handle_store(event: evt.Event) -> int:
        seen.append(event.request.AffectedSOPInstanceUID)
        return answers[min(len(seen) - 1, len(answers) - 1)]

    scp_ae = AE(ae_title="PICKY")
    scp_ae.add_supported_context(ComprehensiveSRStorage)
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        path = tmp_path / "out" / "sr.dcm"
        enqueue(db, path, write_sr(path), ["picky"])
        sender = Sender(db, [Dest("picky", "PICKY", port)], "DOPANODE",
                        RetryPolicy(base_s=0.01, cap_s=0.01, give_up_after_s=3600))
        first = sender.send_due("picky")
        assert (first.sent, first.retried) == (0, 1)
        assert first.errors == ["C-STORE status 0xA700"]
        wait_until(lambda: due_now(db), what="back-off to pass")
        second = sender.send_due("picky")
        assert (second.sent, second.retried) == (1, 0)
    finally:
        server.shutdown()
    assert len(seen) == 2 and states(db)["picky"] == ("sent", 2)


def test_peer_error_comment_is_withheld(db, tmp_path, caplog):
    """A refusal's ErrorComment may quote the instance's header: status kept, text withheld."""
    def handle_store(event: evt.Event) -> Dataset:
        answer = Dataset()
        answer.Status = 0xA700
        answer.ErrorComment = "QXSENTINEL^PATIENT 17.08.1923"
        return answer

    scp_ae = AE(ae_title="PICKY")
    scp_ae.add_supported_context(ComprehensiveSRStorage)
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        path = tmp_path / "out" / "sr.dcm"
        enqueue(db, path, write_sr(path), ["picky"])
        sender = Sender(db, [Dest("picky", "PICKY", port)], "DOPANODE",
                        RetryPolicy(base_s=0.01, cap_s=0.01, give_up_after_s=3600))
        with caplog.at_level("INFO"):
            report = sender.send_due("picky")
    finally:
        server.shutdown()
    (error,) = report.errors
    assert error.startswith("C-STORE status 0xA700, comment <withheld len=29 #")
    logged = " ".join(r.getMessage() + repr(getattr(r, "fields", {})) for r in caplog.records)
    assert "output_not_delivered" in logged and "0xA700" in logged
    assert "QXSENTINEL" not in logged and "17.08.1923" not in logged


def test_missing_output_file_fails_without_retry(db, tmp_path):
    ds = write_sr(tmp_path / "out" / "sr.dcm")
    (tmp_path / "out" / "sr.dcm").unlink()
    enqueue(db, tmp_path / "out" / "sr.dcm", ds, ["pacs"])
    report = Sender(db, [Dest("pacs", "DEST", free_port())], "DOPANODE", FAST).send_due("pacs")
    assert (report.sent, report.retried, report.failed) == (0, 0, 1)
    assert states(db)["pacs"] == ("failed", 0)


def test_unconfigured_destination_is_given_up(db, tmp_path):
    path = tmp_path / "out" / "sr.dcm"
    enqueue(db, path, write_sr(path), ["removed"])
    assert Sender(db, [Dest("pacs", "DEST", free_port())], "DOPANODE").fail_unconfigured() == 1
    assert states(db)["removed"][0] == "failed"
