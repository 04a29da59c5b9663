"""The audit trail of a real node, read back after a whole flow.

storescu sends a per-slice NM study (sentinel patient ID and accession
number) to a real ``dopanode serve`` (the test-only ``fake_nm`` pipeline),
whose result goes to a DCMTK storescp; a caller that is not allowed is
refused; the API is called with a wrong token and with the right one; the
node is stopped and started again. Then the audit file must hold each event
with its fields, be 0600 in a 0700 folder, have kept the first run's bytes,
and hold the identifiers that the node's log must not.
"""

from __future__ import annotations

import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from test_sender_dcmtk import start_storescp

from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess, fake_settings
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port

pytestmark = pytest.mark.slow  # real node processes or servers

PATIENT_ID = "QXAUDIT-PID-4711"
ACCESSION = "QXAUDITACC1"


@pytest.fixture
def study(tmp_path: Path) -> list[Path]:
    paths = write_marker_study(tmp_path / "nm", "per_slice",
                               image=marker_image(shape_xyz=(32, 32, 12)), uid_seed="audit")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.AccessionNumber = PATIENT_ID, ACCESSION
        ds.save_as(path)
    return paths


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = start_storescp(tmp_path / "received", port)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def storescu(node: NodeProcess, calling_ae: str, paths: list[Path]) -> int:
    return subprocess.run(
        [require_tool("storescu"), "-aet", calling_ae, "-aec", node.ae_title, "127.0.0.1",
         str(node.scp_port), *map(str, paths)], capture_output=True, timeout=120).returncode


def only(records: list[dict[str, Any]], event: str, **where: Any) -> dict[str, Any]:
    found = [r for r in records if r["event"] == event
             and all(r.get(k) == v for k, v in where.items())]
    assert len(found) == 1, (event, where, [r["event"] for r in records])
    return found[0]


def test_audit_trail_of_a_real_flow(tmp_path: Path, study: list[Path], destination: int) -> None:
    dest = {"name": "dest", "ae_title": "DEST", "host": "127.0.0.1", "port": destination}
    study_uid = str(pydicom.dcmread(study[0]).StudyInstanceUID)
    with NodeProcess(tmp_path / "node", settings={**fake_settings(), "destinations": [dest]},
                     log_level="DEBUG") as node:
        node.start()
        assert storescu(node, "STORESCU", study) == 0
        node.wait_for("SELECT state FROM jobs", [("done",)], 60)
        node.wait_for("SELECT state FROM outbox", [("sent",)], 60)
        assert storescu(node, "INTRUDER", study[:1]) != 0
        assert node.api_get("/api/jobs", token="wrong-token-0123456789")[0] == 401
        assert node.api_get("/api/jobs")[0] == 200
        assert node.api_get(f"/api/studies/{study_uid}")[0] == 200
        assert node.stop() == 0
        first_run = node.audit_path.read_bytes()
        node.start()
        assert node.stop() == 0
        records = node.audit_records()
        log = node.log_text()

    # append-only across the restart, file and folder private
    assert node.audit_path.read_bytes().startswith(first_run)
    assert stat.S_IMODE(node.audit_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(node.audit_path.parent.stat().st_mode) == 0o700
    assert [r["event"] for r in records].count("application_start") == 2
    assert [r["event"] for r in records][-2:] == ["application_stop", "audit_stopped"]

    start = records[1]
    assert start["event"] == "application_start"
    assert (start["event_id"]["code"], start["event_type"]["code"]) == ("110100", "110120")
    assert start["details"]["pipelines"]["fake_nm"] == {"enabled": True, "version": "0"}
    assert start["details"]["api"]["token"] == "set"
    assert "test-token-0123456789" not in node.audit_path.read_text()  # no secret

    accepted = only(records, "association", outcome_text="accepted")
    source = accepted["participants"][0]
    assert (source["ae_title"], source["host"], source["tls_subject"]) == (
        "STORESCU", "127.0.0.1", None)
    assert accepted["participants"][1]["ae_title"] == "DOPANODE"
    refused = only(records, "association", outcome_text="unknown_caller")
    assert refused["outcome"] == 4 and refused["participants"][0]["ae_title"] == "INTRUDER"

    received = only(records, "instances_received")
    assert received["event_id"]["code"] == "110104" and received["outcome"] == 0
    (obj,) = received["objects"]
    assert (obj["study_uid"], obj["patient_id"], obj["accession"], obj["instances"]) == (
        study_uid, PATIENT_ID, ACCESSION, len(study))

    analysis = only(records, "analysis")
    assert analysis["event_id"]["code"] == "110103" and analysis["outcome"] == 0
    assert analysis["details"]["pipeline"] == "fake_nm"
    assert analysis["details"]["pipeline_version"] == "0"
    assert (analysis["objects"][0]["patient_id"], analysis["objects"][0]["study_uid"]) == (
        PATIENT_ID, study_uid)

    sent = only(records, "output_sent")
    assert sent["action"] == "R" and sent["outcome_text"] == "sent"
    assert sent["details"]["status"] == "0x0000"
    assert sent["participants"][1]["port"] == destination
    assert sent["objects"][0]["patient_id"] == PATIENT_ID

    failure = only(records, "api_auth_failure")
    assert failure["event_id"]["code"] == "110114" and failure["outcome"] == 4
    assert failure["details"]["route"] == "/api/jobs"
    assert failure["participants"][0]["user"].startswith("unknown sha256:")
    lookups = [r for r in records if r["event"] == "api_access"]
    assert [r["details"]["route"] for r in lookups] == ["/api/jobs", "/api/studies/{study_uid}"]
    assert lookups[1]["objects"] == [{"kind": "study", "study_uid": study_uid}]
    assert all(r["participants"][0]["user"].startswith("api.token sha256:") for r in lookups)

    # identifiers live in the audit trail and nowhere else
    for identifier in (PATIENT_ID, ACCESSION, study_uid):
        assert identifier in node.audit_path.read_text()
        assert identifier not in log

    # the hash chain holds over both runs (each process one writer, linked to the other)
    assert records[0]["prev"] == "" and records[0]["hash"]
    second_run = [r for r in records if r["source"]["pid"] != records[0]["source"]["pid"]]
    assert second_run[0]["prev"] == records[len(records) - len(second_run) - 1]["hash"]
    verified = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify", "--path", str(node.audit_path)],
        capture_output=True, text=True, timeout=120, check=False,
        cwd=Path(__file__).resolve().parents[2])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{len(records)} chained record(s), 2 writer(s)" in verified.stdout
    assert "chain intact" in verified.stdout


def metric(node: NodeProcess, name: str) -> float | None:
    """One unlabelled sample of the node's /metrics (None when absent)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/metrics",
                                timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def test_the_running_node_checks_its_trail_and_alerts_on_an_edit(tmp_path: Path) -> None:
    settings = {**fake_settings(), "audit": {"verify_interval_h": 0.0005}}  # every 1.8 s
    with NodeProcess(tmp_path / "node", settings=settings) as node:
        node.start()
        wait_until(lambda: (metric(node, "dopanode_audit_chain_checked_timestamp_seconds")
                            or 0) > 0, 60, "the first check of the chain")
        assert metric(node, "dopanode_audit_chain_problems") == 0
        assert (metric(node, "dopanode_audit_chain_records") or 0) >= 2
        with node.audit_path.open("r+b") as f:  # one byte of the first record, in place
            first = f.readline()
            at = first.index(b'"audit_started"') + 1
            f.seek(at)
            f.write(b"A")
        wait_until(lambda: (metric(node, "dopanode_audit_chain_problems") or 0) >= 1, 60,
                   "the node to see the edit")
        assert node.stop() == 0
    log = node.log_text()
    assert "audit_chain_broken" in log
    assert "audit.jsonl line 1: altered" in log
