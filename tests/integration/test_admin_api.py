"""The admin page's endpoints against a real migrated SQLite database and real spool files.

``/admin`` (the static page), ``/api/queue``, ``/api/outbox``, ``/api/studies``
(no patient names unless ``api.show_patient_names``) and
``/api/jobs/{id}/picture.png`` (a highdicom Secondary Capture read back as PNG).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import generate_uid

from service.api.app import create_app
from service.api.readiness import Probes
from service.config import ApiSettings, Destination, Settings
from service.store import outbox
from service.store.db import Database
from service.store.spool import output_path
from service.testing.storage import node_rows, storage_settings

TOKEN = "s3cret-token-for-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STUDY = "1.2.826.0.1.3680043.8.498.77"
NAME = "Sentinel^Admin"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def secondary_capture(pixels: np.ndarray) -> hd.sc.SCImage:
    return hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", study_instance_uid=STUDY,
        series_instance_uid=generate_uid(), sop_instance_uid=generate_uid(),
        series_number=1, instance_number=1, manufacturer="test", patient_name=NAME,
        patient_id="SENTINEL-ID", patient_orientation=("L", "P"))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Database, np.ndarray]:
    """Jobs 1 (done, with a picture report in the spool), 2 (failed), 3 (superseded)."""
    database = node_rows(tmp_path / "node.sqlite3")
    database.migrate()
    pixels = np.random.default_rng(5).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    sc = secondary_capture(pixels)
    path = output_path(tmp_path / "spool", 1, sc.SOPInstanceUID)
    path.parent.mkdir(parents=True)
    sc.save_as(path, enforce_file_format=True)
    outputs = json.dumps([{"sop_class_uid": SC_CLASS, "sop_instance_uid": sc.SOPInstanceUID,
                           "series_uid": sc.SeriesInstanceUID, "study_uid": STUDY}])
    result = {"global": {"reduced": True, "inconclusive": False}, "regions": {}}
    conn = database.connect()
    with conn:
        conn.execute(
            "INSERT INTO series (series_uid, study_uid, calling_ae, first_received_at,"
            " last_received_at, instance_count, quiet_s, state)"
            " VALUES ('1.2.3.9', ?, 'STORESCU', 0, 0, 1, 30, 'routed')", (STUDY,))
        for job_id, state, res, outs in [(3, "superseded", None, None),
                                          (2, "failed", None, None),
                                          (1, "done", json.dumps(result), outputs)]:
            conn.execute(
                "INSERT INTO jobs (id, pipeline, series_uid, study_uid, content_hash,"
                " instance_uids_json, inputs_json, state, attempts, max_attempts, created_at,"
                " result_json, outputs_json, reason)"
                " VALUES (?, ?, '1.2.3.9', ?, ?, '[]', '[]', ?, 1, 3, 0, ?, ?, ?)",
                (job_id, "dat_spect" if job_id != 2 else "fake_nm", STUDY, f"h{job_id}", state,
                 res, outs, "bad data" if state == "failed" else None))
        ids = outbox.enqueue(conn, 1, ["pacs", "archive"], path, SC_CLASS, sc.SOPInstanceUID,
                             now=1000.0)
        outbox.mark_sent(conn, ids[0], now=1001.0)
        outbox.mark_retry(conn, ids[1], "destination unreachable", outbox.RetryPolicy(),
                          now=1002.0)
    conn.close()
    return database, pixels


def client(tmp_path: Path, db: Database, names: bool = False, token: str | None = TOKEN,
           host: str = "testclient") -> TestClient:
    settings = Settings().model_copy(update={
        "storage": storage_settings(spool_dir=tmp_path / "spool", db_path=tmp_path / "n.db"),
        "api": ApiSettings(token=token, show_patient_names=names),
        "destinations": (Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104),
                         Destination(name="backup", ae_title="BKP", host="127.0.0.1", port=105)),
    })
    return TestClient(create_app(settings, db, Probes(scp_listening=lambda: True)),
                      client=(host, 50000))


def test_page_is_served_without_token_and_holds_no_data(tmp_path, setup):
    c = client(tmp_path, setup[0])
    page = c.get("/admin")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert STUDY not in page.text and "http" not in page.text.replace("http-equiv", "")
    assert c.get("/admin/admin.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/admin/admin.css").status_code == 200
    assert c.get("/admin/../app.py").status_code == 404
    assert c.get("/admin/app.py").status_code == 404


@pytest.mark.parametrize("path", ["/api/queue", "/api/outbox", "/api/studies",
                                  "/api/jobs/1/picture.png"])
def test_admin_endpoints_need_the_token(tmp_path, setup, path):
    c = client(tmp_path, setup[0])
    assert c.get(path).status_code == 401
    assert c.get(path, headers={"Authorization": "Bearer wrong-token-xyz"}).status_code == 401
    assert c.get(path, headers=AUTH).status_code == 200


def test_without_a_token_only_loopback_gets_the_page_data(tmp_path, setup):
    remote = client(tmp_path, setup[0], token=None, host="10.1.2.3")
    assert remote.get("/admin").status_code == 200  # the page itself holds no data
    assert remote.get("/api/queue").status_code == 401
    local = client(tmp_path, setup[0], token=None, host="127.0.0.1")
    assert local.get("/api/queue").status_code == 200


def test_queue_counts_every_state_per_pipeline(tmp_path, setup):
    body = client(tmp_path, setup[0]).get("/api/queue", headers=AUTH).json()
    assert body["jobs"]["dat_spect"] == {"pending": 0, "running": 0, "done": 1, "failed": 0,
                                         "superseded": 1}
    assert body["jobs"]["fake_nm"]["failed"] == 1
    assert body["series"]["routed"] == 1


def test_outbox_per_destination_configured_ones_first(tmp_path, setup):
    found = client(tmp_path, setup[0]).get("/api/outbox", headers=AUTH).json()["destinations"]
    assert [d["destination"] for d in found] == ["pacs", "backup", "archive"]
    pacs, backup, archive = found
    assert pacs["counts"] == {"pending": 0, "sent": 1, "failed": 0}
    assert pacs["last_sent_at"] == 1001.0 and pacs["last_error"] is None
    assert backup["counts"] == {"pending": 0, "sent": 0, "failed": 0}
    assert archive["counts"]["pending"] == 1 and archive["oldest_pending_age_s"] > 0
    assert archive["last_error"] == "destination unreachable"


def test_studies_show_latest_job_per_pipeline_without_names(tmp_path, setup):
    r = client(tmp_path, setup[0]).get("/api/studies", headers=AUTH)
    (study,) = r.json()["studies"]
    assert study["study_uid"] == STUDY and "patient_name" not in study
    assert [(j["id"], j["pipeline"], j["state"]) for j in study["jobs"]] == [
        (1, "dat_spect", "done"), (2, "fake_nm", "failed")]
    assert study["jobs"][0]["result"]["global"]["reduced"] is True
    assert study["jobs"][0]["picture"] == "/api/jobs/1/picture.png"
    assert study["jobs"][1]["picture"] is None and study["jobs"][1]["reason"] == "bad data"
    assert "Sentinel" not in r.text and "SENTINEL" not in r.text


def test_studies_show_names_when_the_site_enables_them(tmp_path, setup):
    (study,) = client(tmp_path, setup[0], names=True).get(
        "/api/studies", headers=AUTH).json()["studies"]
    assert study["patient_name"] == NAME


def test_picture_png_is_the_secondary_capture_pixel_for_pixel(tmp_path, setup):
    db, pixels = setup
    c = client(tmp_path, db)
    r = c.get("/api/jobs/1/picture.png", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r.content))), pixels)
    assert c.get("/api/jobs/2/picture.png", headers=AUTH).json()["detail"] == (
        "job 2 has no picture report")
    assert c.get("/api/jobs/99/picture.png", headers=AUTH).status_code == 404
    for path in (tmp_path / "spool" / "outputs" / "1").iterdir():
        path.unlink()
    gone = c.get("/api/jobs/1/picture.png", headers=AUTH)
    assert gone.status_code == 404 and "no longer in the spool" in gone.json()["detail"]
