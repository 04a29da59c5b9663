"""No header value reaches a log or an unauthenticated response (the privacy sentinel).

Two simulated DaT studies whose patient and study attributes are unique
sentinel strings, several of them malformed for their VR (birth dates
``1959-01-01`` and ``17.08.1923``, ages ``64`` and ``Q9ZY``, an over-long
LO patient ID and SH accession number, a PN with too many components), go
through a real ``dopanode serve`` (node at DEBUG, the real DaT pipeline) to a
DCMTK storescp destination. Each job must end done with its SR delivered
(a malformed birth date must not cost the reader the result), and then no
sentinel may appear in any line the node wrote (stdout and stderr), nor in
any response of /health, /ready, /metrics, /openapi.json or /api/... without
a token or with a wrong one. The audit trail is the one place they may be:
the patient IDs and accession numbers must be there, with the model checksum
of each analysis.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config
from test_sender_dcmtk import start_storescp

from service.imaging.atlas import load_atlas
from service.testing.dat_phantom import make_phantom, normal_sbr, random_pose
from service.testing.nmdata import write_marker_study
from service.testing.node import NodeProcess
from service.testing.peers import require_tool
from service.testing.ports import free_port

pytestmark = pytest.mark.slow  # real node processes or servers

#: Per study: header keyword -> sentinel value (malformed where the VR allows).
STUDIES: dict[str, dict[str, str]] = {
    "iso-date": {
        "PatientBirthDate": "1959-01-01",        # DA with separators
        "PatientAge": "64",                      # AS without its unit
        "PatientName": "QXSENTINEL^PNONE^A^B^C^D",  # PN with six components
        "PatientID": "QXSENTINEL-PID-" + "7" * 60,  # LO over 64 characters
        "AccessionNumber": "QXSENTINELACC4711",  # SH over 16 characters
        "StudyDate": "2026-01-02",               # DA with separators
    },
    "dotted-date": {
        "PatientBirthDate": "17.08.1923",
        "PatientAge": "Q9ZY",
        "PatientName": "QXSENTINEL^PNTWO",
        "PatientID": "QXSENTINEL-PID-2",
        "AccessionNumber": "QXSENTINELAC2",
        "ReferringPhysicianName": "QXSENTINEL^REFERRER",
    },
}
FINAL = {"done", "failed"}
#: How pydicom echoes the age ``64`` (the bare digits are everywhere in a log).
QUOTED = ("'64'", "AS: 64")


def sentinels() -> list[str]:
    values = {v for study in STUDIES.values() for v in study.values() if v != "64"}
    return sorted(values | {"QXSENTINEL", *QUOTED})


def write_study(root: Path, name: str, image: object) -> list[Path]:
    paths = write_marker_study(root / name, "multiframe", image=image,
                               uid_seed=f"privacy-{name}")
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in STUDIES[name].items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return paths


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    rng = np.random.default_rng(20261130)
    phantom = make_phantom(load_atlas(), normal_sbr(), random_pose(rng), rng)
    root = tmp_path_factory.mktemp("privacy-data")
    saved = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.WARN  # whatever an earlier CLI run set
    try:
        with pytest.warns(UserWarning):  # pydicom, in this test process only: the values are bad
            return {name: write_study(root, name, phantom.image) for name in STUDIES}
    finally:
        config.settings.reading_validation_mode = saved


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    proc = start_storescp(tmp_path / "received", port)
    try:
        yield tmp_path / "received", port
    finally:
        proc.terminate()
        proc.wait(10)


def http_get(port: int, path: str, token: str | None) -> str:
    """Status line, headers and body of one GET, as text."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"{response.status} {response.headers}\n{response.read().decode()}"
    except urllib.error.HTTPError as err:
        return f"{err.code} {err.headers}\n{err.read().decode()}"


def received_srs(folder: Path) -> list[pydicom.Dataset]:
    found = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()]
    return [ds for ds in found if ds.Modality == "SR"]


def test_malformed_headers_never_reach_logs_or_open_responses(
        tmp_path: Path, studies: dict[str, list[Path]],
        destination: tuple[Path, int]) -> None:
    folder, port = destination
    dest = {"name": "dest", "ae_title": "DEST", "host": "127.0.0.1", "port": port}
    with NodeProcess(tmp_path / "node", settings={"destinations": [dest]},
                     log_level="DEBUG") as node:
        node.start()
        for paths in studies.values():
            sent = subprocess.run(
                [require_tool("storescu"), "-aet", "STORESCU", "-aec", node.ae_title,
                 "127.0.0.1", str(node.scp_port), *map(str, paths)],
                capture_output=True, text=True, timeout=120)
            assert sent.returncode == 0, sent.stderr
        states = node.wait_for("SELECT state FROM jobs ORDER BY id",
                               lambda r: len(r) == 2 and {s for s, in r} <= FINAL, 180)
        srs = []
        if states == [("done",), ("done",)]:  # storescp answers after writing the file
            node.wait_for("SELECT state, COUNT(*) FROM outbox GROUP BY state", [("sent", 4)], 60)
            srs = received_srs(folder)
        responses = []
        study_uid = pydicom.dcmread(studies["iso-date"][0]).StudyInstanceUID
        for path in ("/health", "/ready", "/metrics", "/openapi.json", "/api/jobs",
                     "/api/jobs/1", "/api/jobs?state=done",
                     f"/api/studies/{study_uid}"):
            for token in (None, "wrong-token-0123456789"):
                responses.append(http_get(node.api_port, path, token))
        assert node.stop() == 0
        log = node.log_text()
        audit_text = node.audit_path.read_text(encoding="ascii")
        records = node.audit_records()

    leaks = {s: where for s in sentinels()
             for where, text in [("log", log), *((f"response {i}", r)
                                                 for i, r in enumerate(responses))]
             if s.upper() in text.upper()}
    assert leaks == {}, json.dumps(leaks)
    assert states == [("done",), ("done",)]  # a malformed birth date costs no result
    # the SR keeps patient and study, with the malformed dates and ages empty
    by_patient = {pydicom.dcmread(p).get("PatientID"): pydicom.dcmread(p) for p in
                (paths[0] for paths in studies.values())}
    assert len(srs) == 2
    for sr in srs:
        source = by_patient[sr.PatientID]
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.PatientName == source.PatientName
        assert sr.PatientBirthDate == "" and sr.get("PatientAge", "") == ""
    assert "job_done" in log and "api_bad_token" in log  # the log is real
    assert 'route="/studies/{study_uid}"' in log  # the route template, not the UID
    assert str(study_uid) not in log
    # ... and they are in the audit trail, which names the model that read them
    for study in STUDIES.values():
        for keyword in ("PatientID", "AccessionNumber"):
            assert study[keyword] in audit_text, keyword
    analyses = [r for r in records if r["event"] == "analysis"]
    assert {r["objects"][0]["patient_id"] for r in analyses} == {
        s["PatientID"] for s in STUDIES.values()}
    checksums = {r["details"]["algorithm"]["model_sha256"] for r in analyses}
    (start,) = [r for r in records if r["event"] == "application_start"]
    models = {m["name"]: m for m in start["details"]["models"]["dat_spect"]}
    assert set(models) == {"dat_cnn", "dat_putamen_estimator"}  # each model file audited
    assert checksums == {models["dat_cnn"]["sha256"]} and len(models["dat_cnn"]["sha256"]) == 64
    assert models["dat_putamen_estimator"]["ok"] and len(
        models["dat_putamen_estimator"]["sha256"]) == 64
