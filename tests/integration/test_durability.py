"""Crash and shutdown behaviour of a real ``dopanode serve`` process.

* kill -9 in the middle of a per-slice series: a pynetdicom SCU in the test
  sends slice by slice and the node is killed after the third Success, with
  the association still open (so the kill lands mid-series by construction,
  not by timing); every acknowledged instance is on disk and recorded after
  the restart; the resent series makes exactly one job, which completes once.
* kill -9 in the middle of a job: after the restart the lease expires, the
  job runs again and completes exactly once, with one outbox entry per output
  and destination.
* SIGTERM while a job runs: the node stops accepting, gives the job back
  (grace too short), exits 0; the next start finishes it.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE

from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess, fake_settings
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port

pytestmark = pytest.mark.slow  # real nodes killed and restarted

N_SLICES = 64


def fake(tmp_path: Path, delay_s: float, **settings: Any) -> dict[str, Any]:
    """Settings with the test-only fake_nm pipeline instead of the DaT one."""
    return {**fake_settings(delay_s, tmp_path / "runs.log"), **settings}


def runs(tmp_path: Path, what: str) -> int:
    log = tmp_path / "runs.log"
    return log.read_text().split().count(what) if log.exists() else 0


def storescu_cmd(node: NodeProcess, paths: list[Path]) -> list[str]:
    return [require_tool("storescu"), "-v", "-aet", "STORESCU", "-aec", node.ae_title,
            "127.0.0.1", str(node.scp_port), *map(str, paths)]


def send_then_kill(node: NodeProcess, paths: list[Path], kill_after: int) -> list[Path]:
    """Send ``paths`` one C-STORE at a time; kill -9 the node after ``kill_after`` Successes.

    The SCU then tries the next instance on the same association, which must
    not succeed. Returns the files the node acknowledged (status 0x0000).
    """
    first = pydicom.dcmread(paths[0])
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(first.SOPClassUID, first.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.scp_port, ae_title=node.ae_title)
    assert assoc.is_established
    acked: list[Path] = []
    try:
        for path in paths[:kill_after]:
            status = assoc.send_c_store(pydicom.dcmread(path))
            assert status and status.Status == 0x0000, f"C-STORE of {path.name}: {status}"
            acked.append(path)
        node.kill()  # the SCU holds the open association: mid-series by construction
        try:
            status = assoc.send_c_store(pydicom.dcmread(paths[kill_after]))
        except (RuntimeError, OSError):
            status = None  # the association is already gone
        assert not (status and status.get("Status") == 0x0000), "a killed node acknowledged"
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    return acked


@pytest.fixture(scope="module")
def per_slice(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A per-slice series whose instances state the series' slice count."""
    root = tmp_path_factory.mktemp("durable-data")
    paths = write_marker_study(root / "raw", "per_slice", image=marker_image((32, 32, N_SLICES)),
                               uid_seed="durable-ps")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.NumberOfSlices = N_SLICES
        ds.save_as(path)
    return paths


@pytest.fixture(scope="module")
def multiframe(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("durable-mf")
    return write_marker_study(root, "multiframe", image=marker_image((32, 32, 16)),
                              uid_seed="durable-mf")


def test_kill_during_series(tmp_path: Path, per_slice: list[Path]) -> None:
    quiet = [{"ae_title": "STORESCU", "host": "127.0.0.1", "series_quiet_s": 600.0}]
    node = NodeProcess(tmp_path / "node",
                       settings=fake(tmp_path, 0.0, **{"allowed_callers": quiet}), components="scp,worker")
    with node:
        node.start()
        acked = send_then_kill(node, per_slice, kill_after=3)
        node.start()
        stored = dict(node.query("SELECT sop_instance_uid, path FROM instances"))
        assert len(stored) == len(acked) == 3  # nothing after the kill was taken
        for path in acked:  # every acknowledged instance survived, byte-for-byte dataset
            source = pydicom.dcmread(path)
            copy = pydicom.dcmread(io.BytesIO(node.stored_bytes(stored[source.SOPInstanceUID])))
            assert copy == source
        assert node.query("SELECT COUNT(*) FROM jobs") == [(0,)]
        assert list((node.spool_dir / "tmp").iterdir()) == []
        resend = subprocess.run(storescu_cmd(node, per_slice), capture_output=True, text=True,
                                timeout=120)
        assert resend.returncode == 0, resend.stderr
        node.wait_for("SELECT state, attempts FROM jobs", [("done", 1)])
        assert node.query("SELECT COUNT(*) FROM instances") == [(N_SLICES,)]
        assert runs(tmp_path, "end") == 1
        assert node.stop() == 0


def test_kill_during_job(tmp_path: Path, multiframe: list[Path]) -> None:
    """kill -9 mid-job: the restarted node takes the job back at once (its run is dead),
    not after the shipped 300 s lease (reliability audit D10)."""
    dest = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}]
    node = NodeProcess(tmp_path / "node",
                       settings=fake(tmp_path, 2.0, **{"destinations": dest,
                                                       "worker": {"lease_s": 300.0}}))
    with node:
        node.start()
        sent = subprocess.run(storescu_cmd(node, multiframe), capture_output=True, text=True,
                              timeout=60)
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: runs(tmp_path, "start") == 1, 30, "the job to start")
        node.kill()
        assert node.query("SELECT state FROM jobs") == [("running",)]
        node.start()
        node.wait_for("SELECT state, attempts FROM jobs", [("done", 2)], 30)
        assert (runs(tmp_path, "start"), runs(tmp_path, "end")) == (2, 1)
        assert "crashed_run_jobs_taken_back" in node.log_text()
        rows = node.query("SELECT destination, path FROM outbox")
        # the outbox holds the blob key of the attempt that finished (in the node's store)
        assert len(rows) == 1 and rows[0][0] == "pacs" and node.blobs().exists(rows[0][1])
        assert node.stop() == 0


def test_sigterm_gives_running_job_back(tmp_path: Path, multiframe: list[Path]) -> None:
    node = NodeProcess(tmp_path / "node",
                       settings=fake(tmp_path, 3.0, **{"worker": {"shutdown_grace_s": 0.2, "lease_s": 60.0}}))
    with node:
        node.start()
        assert subprocess.run(storescu_cmd(node, multiframe), capture_output=True,
                              timeout=60).returncode == 0
        wait_until(lambda: runs(tmp_path, "start") == 1, 30, "the job to start")
        assert node.stop(timeout_s=20) == 0
        assert node.query("SELECT state, attempts FROM jobs") == [("pending", 0)]
        text = node.log_text()
        assert "jobs_given_back" in text and "node_stopped" in text
        node.start()  # lease was released: no wait for its expiry
        node.wait_for("SELECT state, attempts FROM jobs", [("done", 1)], 30)
        assert node.stop() == 0


def test_result_delivered_once_across_a_kill(tmp_path: Path, multiframe: list[Path]) -> None:
    """Worker -> outbox -> sender in one real process; storescp as the PACS.

    storescp writes unique file names (+uf), so a twin delivery would show.
    """
    received = tmp_path / "pacs"
    received.mkdir()
    pacs_port = free_port()
    pacs = subprocess.Popen([require_tool("storescp"), "+uf", "-od", str(received), "-aet",
                             "PACS", str(pacs_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    dest = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]
    node = NodeProcess(tmp_path / "node",
                       settings=fake(tmp_path, 1.5, **{"destinations": dest, "worker": {"lease_s": 1.5}}))
    try:
        with node:
            node.start()
            assert subprocess.run(storescu_cmd(node, multiframe), capture_output=True,
                                  timeout=60).returncode == 0
            wait_until(lambda: runs(tmp_path, "start") == 1, 30, "the job to start")
            node.kill()
            node.start()
            node.wait_for("SELECT state FROM outbox", [("sent",)], 60)
            files = wait_until(lambda: list(received.iterdir()), 10, "the SR at storescp")
            sr = pydicom.dcmread(files[0])
            assert sr.StudyInstanceUID == pydicom.dcmread(multiframe[0]).StudyInstanceUID
            assert node.stop() == 0
            assert len(list(received.iterdir())) == 1
    finally:
        pacs.terminate()
        pacs.wait(10)


def test_output_on_the_wire_at_a_kill_is_sent_again_once_at_restart(
        tmp_path: Path, multiframe: list[Path]) -> None:
    """kill -9 while the destination has stored the output and holds its answer (audit D12).

    The remaining re-send window, measured: the object is sent once more after
    the restart, at once (the dead run's claim is taken back, not left for the
    sender's ~100 min lease), with the same SOP Instance UID, and counted.
    """
    from service.testing.destination import HoldingDestination

    pacs = HoldingDestination()
    pacs.hold()
    dest = [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
    node = NodeProcess(tmp_path / "node", settings=fake(tmp_path, 0.0, **{"destinations": dest}))
    try:
        with node:
            node.start()
            assert subprocess.run(storescu_cmd(node, multiframe), capture_output=True,
                                  timeout=60).returncode == 0
            assert pacs.stored.wait(60), "the output never reached the destination"
            node.kill()  # stored there, answer not yet read
            [(state, in_flight, owner)] = node.query(
                "SELECT state, in_flight_at, lease_owner FROM outbox")
            assert state == "pending" and in_flight is not None and owner
            pacs.release()
            node.start()
            node.wait_for("SELECT state, in_flight_at FROM outbox", [("sent", None)], 30)
            assert len(pacs.received) == 2 and len(set(pacs.received)) == 1  # a replacement
            text = node.log_text()
            assert "crashed_run_outputs_taken_back" in text
            assert text.count("output_resent_after_interruption") == 1
            assert node.stop() == 0
    finally:
        pacs.stop()
