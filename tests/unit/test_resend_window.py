"""The re-send window of the sender (reliability audit D12), against a real pynetdicom SCP.

* Each item is marked in flight (committed) before its C-STORE and marked sent
  (committed) right after the Success; the in-flight mark is on the row while
  the destination holds the object and has not answered.
* A sender that died with an item on the wire: the next sender (after the
  restart took the dead run's claims back) sends it again, once, counts it in
  ``dopanode_outputs_resent_total`` and logs ``output_resent_after_interruption``;
  the destination receives the same SOP Instance UID twice (a replacement).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from test_acceptor import nm_instance

from service import metrics
from service.net.scu import Sender
from service.store import outbox
from service.testing.destination import HoldingDestination
from service.testing.polling import wait_until
from service.testing.storage import node_rows


class Dest:
    name, ae_title, host = "pacs", "PACS", "127.0.0.1"

    def __init__(self, port: int) -> None:
        self.port = port


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    database = node_rows(tmp_path / "node.sqlite3")
    database.migrate()
    ds = nm_instance("resend", 0, slices=1)
    path = tmp_path / "out.dcm"
    ds.save_as(path, enforce_file_format=True)
    conn = database.connect()
    with conn:
        [item_id] = outbox.enqueue(conn, 1, ["pacs"], path, ds.SOPClassUID, ds.SOPInstanceUID)
    destination = HoldingDestination()
    yield database, conn, item_id, destination, str(ds.SOPInstanceUID)
    destination.stop()
    conn.close()


def resent() -> float:
    return float(metrics.OUTPUTS_RESENT.labels(destination="pacs")._value.get())


def test_in_flight_mark_covers_the_wait_for_the_answer_then_sent(setup: Any) -> None:
    database, conn, item_id, destination, _ = setup
    seen: list[Any] = []
    def look() -> None:  # from another connection, while the destination holds the answer
        other = database.connect()
        seen.append(outbox.get(other, item_id))
        other.close()

    destination.on_store = look
    sender = Sender(database, [Dest(destination.port)], "DOPANODE", owner_prefix="n:r1:")
    before = resent()
    report = sender.send_due("pacs")
    assert (report.sent, report.retried, report.failed) == (1, 0, 0)
    [while_stored] = seen
    assert while_stored.state == "pending" and while_stored.in_flight_at is not None
    item = outbox.get(conn, item_id)
    assert item.state == "sent" and item.in_flight_at is None and resent() == before


def test_an_item_on_the_wire_at_a_crash_is_sent_again_once_and_counted(
        setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    database, conn, item_id, destination, sop_uid = setup
    # the first process: claimed, marked in flight, C-STORE stored at the destination, then
    # it died before the answer (what the claim and the mark leave in the database)
    [claimed] = outbox.claim_due(conn, "pacs", 6000.0, owner="n:dead:sender-pacs")
    with conn:
        assert outbox.mark_in_flight(conn, item_id, claimed.lease_token)
    destination.received.append(sop_uid)
    # the restart: the dead run's claims come back at once (not after 6000 s)
    assert outbox.expire_leases(conn, "n:dead:") == 1
    before = resent()
    report = Sender(database, [Dest(destination.port)], "DOPANODE",
                    owner_prefix="n:new:").send_due("pacs")
    assert report.sent == 1 and resent() == before + 1
    assert destination.received == [sop_uid, sop_uid]  # the same UID: a replacement
    assert "output_resent_after_interruption" in caplog.text
    assert outbox.get(conn, item_id).state == "sent"
    assert dcmread(outbox.get(conn, item_id).path).SOPInstanceUID == sop_uid


def test_stop_finishes_the_object_on_the_wire_and_hands_back_the_rest(
        tmp_path: Path, setup: Any) -> None:
    """SIGTERM's path: the C-STORE on the wire completes, the rest of the claim is released."""
    import threading

    database, conn, first_id, destination, _ = setup
    with conn:
        for i in (1, 2):
            ds = nm_instance("resend", i, slices=1)
            path = tmp_path / f"out{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            outbox.enqueue(conn, 1, ["pacs"], path, ds.SOPClassUID, ds.SOPInstanceUID)
    destination.hold()
    sender = Sender(database, [Dest(destination.port)], "DOPANODE", owner_prefix="n:r2:")
    sender.start()
    assert destination.stored.wait(20)
    stopping = threading.Thread(target=sender.stop, args=(20.0,))
    stopping.start()
    wait_until(lambda: sender._stop.is_set(), 10, "stop requested", 0.005)  # then the answer
    destination.release()
    stopping.join(30)
    assert sender.running_threads == 0
    assert len(destination.received) == 1
    states = {i.id: i.state for i in outbox.due(conn, now=2e9)}
    assert first_id not in states and len(states) == 2  # sent; two still pending
    assert outbox.claim_due(conn, "pacs", 60.0) == []  # ... but claimed by the stopped pass
    assert outbox.expire_leases(conn, "n:r2:") == 2  # what Node.stop does
    assert len(outbox.claim_due(conn, "pacs", 60.0)) == 2
