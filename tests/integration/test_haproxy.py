"""Two listeners behind a real HAProxy (TCP, PROXY protocol v2) on one PostgreSQL.

HAProxy spreads the associations of one per-slice NM series over two
``serve --only scp`` processes; a third process runs the worker. The series
completes once from the shared rows: exactly one job and one result. The
listeners read the balancer's PROXY v2 header (``node.proxy_protocol_from``),
so the allow-list's host check sees the PACS's own address: the client
connects from 127.0.0.2 (allowed), the balancer from 127.0.0.1 (not in the
allow-list), and a client from 127.0.0.3 is refused through the balancer.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE

from service.testing.haproxy import Balancer
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess, fake_settings
from service.testing.polling import wait_until
from service.testing.ports import free_port

pytestmark = pytest.mark.slow  # real node processes and servers

CLIENT_HOST = "127.0.0.2"  # the "PACS"; HAProxy itself connects from 127.0.0.1


def _settings() -> dict[str, Any]:
    return {**fake_settings(),
            "node": {"proxy_protocol_from": ["127.0.0.1"]},
            # the four associations of one study must arrive within the quiet time even
            # on a loaded machine (1 s once let a job start early, superseded later)
            "allowed_callers": [{"ae_title": "STORESCU", "host": CLIENT_HOST,
                                 "series_quiet_s": 5.0}],
            # no sender runs: the one result stays queued for this destination
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                              "port": free_port()}]}


def _send(port: int, files: list[Path], source_host: str) -> list[int] | None:
    """One association from ``source_host``; statuses, or None when refused."""
    ae = AE(ae_title="STORESCU")
    datasets = [pydicom.dcmread(f) for f in files]
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class, str(datasets[0].file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="DOPANODE", bind_address=(source_host, 0))
    if not assoc.is_established:
        return None
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def _stored_from(node: NodeProcess) -> dict[str, int]:
    """Instances each requestor host stored on ``node``, from its audit trail."""
    counts: dict[str, int] = {}
    for record in node.audit_records():
        text = str(record)
        if "127.0.0." not in text or "instances" not in text:
            continue
        hosts = {p.get("host") for p in record.get("participants", []) if p.get("requestor")}
        for obj in record.get("objects", []):
            for host in hosts:
                counts[str(host)] = counts.get(str(host), 0) + int(obj.get("instances", 0))
    return counts


def test_balanced_listeners_one_job_client_address_via_proxy_v2(
        tmp_path: Path, postgres_dsn: str) -> None:
    files = write_marker_study(tmp_path / "ps", "per_slice",
                               image=marker_image((16, 16, 8), (4.0, 4.0, 4.0)),
                               uid_seed="haproxy-two-listeners")
    spool = tmp_path / "spool"
    common: dict[str, Any] = {"settings": _settings(), "postgres_dsn": postgres_dsn,
                              "spool_dir": spool}
    with NodeProcess(tmp_path / "a", components="scp", **common) as a, \
            NodeProcess(tmp_path / "b", components="scp", **common) as b, \
            NodeProcess(tmp_path / "w", components="worker,api", **common) as w:
        for node in (a, b, w):
            node.start()
        backends = [("127.0.0.1", a.scp_port), ("127.0.0.1", b.scp_port)]
        # health checks as deploy/README.md configures them (PROXY v2 LOCAL, every 0.5 s)
        with Balancer(tmp_path / "lb", backends, checks=True) as lb:
            wait_until(lambda: all(v["check_status"] == "L4OK"
                                   for v in lb.servers().values()), 15.0, "passed health checks")
            for chunk in (files[0:2], files[2:4], files[4:6], files[6:8]):
                assert _send(lb.port, chunk, CLIENT_HOST) == [0, 0]
            # a caller the allow-list does not name is refused by its own address
            assert _send(lb.port, files[:1], "127.0.0.3") is None
            servers = lb.servers()
            assert [v["status"] for v in servers.values()] == ["UP", "UP"]
            assert [v["chkfail"] for v in servers.values()] == ["0", "0"]
        # a connection from the balancer's address without a PROXY header is closed
        with socket.create_connection(("127.0.0.1", a.scp_port), timeout=10) as raw:
            raw.sendall(b"\x01\x00" + bytes(10))  # an A-ASSOCIATE-RQ's start, 12 bytes
            assert raw.recv(64) == b""  # all of it read, then closed (no reply, no RST)
        w.wait_for("SELECT pipeline, state FROM jobs WHERE state != 'superseded'",
                   [("fake_nm", "done")], timeout_s=60)
        [(count, state)] = w.query("SELECT instance_count, state FROM series")
        assert (count, state) == (len(files), "routed")
        assert w.query("SELECT COUNT(*) FROM outbox") == [(1,)]  # the one SR, once
        for node in (a, b, w):
            assert node.stop() == 0
    a_hosts, b_hosts = _stored_from(a), _stored_from(b)
    assert set(a_hosts) == {CLIENT_HOST} and set(b_hosts) == {CLIENT_HOST}
    assert a_hosts[CLIENT_HOST] == 4 and b_hosts[CLIENT_HOST] == 4  # round robin, 2 + 2 each
    # refused: the raw connection, and NodeProcess.start's TCP port probe (connect, close);
    # never a health check (each sent a valid PROXY v2 LOCAL header)
    reasons = [line.split("reason=", 1)[1] for node in (a, b)
               for line in node.log_text().splitlines() if "proxy_header_refused" in line]
    assert sorted(set(reasons)) == ['"connection closed before a complete PROXY header"',
                                    '"no PROXY header from a configured balancer"']
    assert reasons.count('"no PROXY header from a configured balancer"') == 1
    assert reasons.count('"connection closed before a complete PROXY header"') == 2
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert study not in a.log_text() + b.log_text() + w.log_text()
