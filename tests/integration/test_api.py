"""The REST API against a real migrated SQLite database and real files.

Most tests use Starlette's in-process client; one runs the real uvicorn
server (:class:`service.api.server.ApiServer`) on a free loopback port.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.readiness import Probes, ReadyLimits
from service.api.server import ApiServer
from service.config import ApiSettings, Settings
from service.inference import manifest
from service.pipelines.dat_spect.plugin import DatSpectSettings
from service.store import outbox
from service.store.db import Database
from service.testing.ports import free_port
from service.testing.storage import node_rows, storage_settings

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STUDY = "1.2.826.0.1.3680043.8.498.1"
RESULT = {"regions": [{"region": "putamen_left", "sbr": 1.7, "level": 0}], "global": "normal"}
UP = Probes(scp_listening=lambda: True)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = node_rows(tmp_path / "node.sqlite3")
    database.migrate()
    conn = database.connect()
    with conn:
        conn.execute(
            "INSERT INTO series (series_uid, study_uid, calling_ae, first_received_at,"
            " last_received_at, instance_count, quiet_s, state)"
            " VALUES ('1.2.3.9', ?, 'STORESCU', 0, 0, 1, 30, 'routed')", (STUDY,))
        for job_id, state, result, finished in [
            (1, "done", {"old": True}, 100.0), (2, "failed", None, 200.0),
            (3, "done", RESULT, 300.0), (4, "running", None, None),
        ]:
            conn.execute(
                "INSERT INTO jobs (id, pipeline, series_uid, study_uid, content_hash,"
                " instance_uids_json, inputs_json, state, attempts, max_attempts, reason,"
                " reason_code, created_at, finished_at, result_json)"
                " VALUES (?, 'dat_spect', '1.2.3.9', ?, ?, '[\"1.2.3.9.1\"]', '[]', ?, 1, 3, ?,"
                " ?, 0, ?, ?)",
                (job_id, STUDY, f"hash{job_id}", state,
                 "no analysis pipeline installed" if state == "failed" else None,
                 "no_pipeline" if state == "failed" else None, finished,
                 None if result is None else json.dumps(result)))
    conn.close()
    return database


def make_settings(tmp_path: Path, token: str | None = TOKEN, **storage: object) -> Settings:
    return Settings().model_copy(update={
        "storage": storage_settings(spool_dir=tmp_path / "spool",
                                   db_path=tmp_path / "node.sqlite3", **storage),
        "api": ApiSettings(token=token),
    })


def with_dat_model(settings: Settings, path: Path, sha256: str | None = None) -> Settings:
    """The settings with ``[pipelines.dat_spect]`` serving this model file."""
    dat = DatSpectSettings(model_path=path, model_sha256=sha256)
    return settings.model_copy(update={"pipelines": {**settings.pipelines, "dat_spect": dat}})


def client(settings: Settings, db: Database, probes: Probes = UP) -> TestClient:
    return TestClient(create_app(settings, db, probes))


def test_health_needs_no_auth(tmp_path, db):
    r = client(make_settings(tmp_path), db).get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-123"},
                                     {"Authorization": f"Basic {TOKEN}"}])
@pytest.mark.parametrize("path", ["/api/jobs", "/api/jobs/1", f"/api/studies/{STUDY}"])
def test_api_routes_refuse_missing_or_wrong_token(tmp_path, db, headers, path):
    r = client(make_settings(tmp_path), db).get(path, headers=headers)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["status"] == 401 and r.json()["instance"] == path


def test_bad_token_log_names_the_route_not_the_study(tmp_path, db, caplog):
    with caplog.at_level("WARNING", logger="service.api.app"):
        r = client(make_settings(tmp_path), db).get(
            f"/api/studies/{STUDY}", headers={"Authorization": "Bearer wrong-token-123"})
    assert r.status_code == 401
    (record,) = [r for r in caplog.records if r.getMessage() == "api_bad_token"]
    assert record.fields == {"route": "/studies/{study_uid}"}
    assert STUDY not in caplog.text


def test_retry_needs_the_token_too(tmp_path, db):
    c = client(make_settings(tmp_path), db)
    assert c.post("/api/jobs/2/retry").status_code == 401
    assert c.get("/api/jobs/2", headers=AUTH).json()["state"] == "failed"


def test_without_a_configured_token_only_loopback_clients_get_in(tmp_path, db):
    app = create_app(make_settings(tmp_path, token=None), db, UP)
    remote = TestClient(app, client=("10.1.2.3", 50000)).get("/api/jobs")
    assert remote.status_code == 401 and "loopback" in remote.json()["detail"]
    assert TestClient(app, client=("127.0.0.1", 50000)).get("/api/jobs").status_code == 200


def test_jobs_list_filter_and_detail(tmp_path, db):
    c = client(make_settings(tmp_path), db)
    jobs = c.get("/api/jobs", headers=AUTH).json()["jobs"]
    assert [j["id"] for j in jobs] == [4, 3, 2, 1] and all("result" not in j for j in jobs)
    failed = c.get("/api/jobs", params={"state": "failed"}, headers=AUTH).json()["jobs"]
    assert [(j["id"], j["reason"], j["reason_code"]) for j in failed] == [
        (2, "no analysis pipeline installed", "no_pipeline")]
    bad = c.get("/api/jobs", params={"state": "bogus"}, headers=AUTH)
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
    job = c.get("/api/jobs/3", headers=AUTH).json()
    assert job["result"] == RESULT and job["deliveries"] == []
    missing = c.get("/api/jobs/99", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["detail"] == "job 99 does not exist"


def test_job_detail_shows_deliveries(tmp_path, db):
    conn = db.connect()
    with conn:
        outbox.enqueue(conn, 3, ["pacs"], tmp_path / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.33",
                       "1.2.3.4.5")
    conn.close()
    job = client(make_settings(tmp_path), db).get("/api/jobs/3", headers=AUTH).json()
    assert [(d["destination"], d["state"], d["attempts"]) for d in job["deliveries"]] == [
        ("pacs", "pending", 0)]


def test_retry_requeues_failed_and_refuses_running(tmp_path, db):
    c = client(make_settings(tmp_path), db)
    r = c.post("/api/jobs/2/retry", headers=AUTH)
    assert r.status_code == 202 and r.json() == {"id": 2, "state": "pending"}
    job = c.get("/api/jobs/2", headers=AUTH).json()
    assert (job["state"], job["attempts"], job["reason"]) == ("pending", 0, None)
    assert c.post("/api/jobs/4/retry", headers=AUTH).status_code == 409
    assert c.post("/api/jobs/77/retry", headers=AUTH).status_code == 404


def test_study_result_is_the_latest_done_job(tmp_path, db):
    c = client(make_settings(tmp_path), db)
    body = c.get(f"/api/studies/{STUDY}", headers=AUTH).json()
    dat = body["results"]["dat_spect"]
    assert set(body["results"]) == {"dat_spect"} and dat["job_id"] == 3
    assert dat["result"] == RESULT
    assert c.get("/api/studies/1.2.3.404", headers=AUTH).status_code == 404
    assert c.get("/api/studies/not-a-uid", headers=AUTH).status_code == 422


def test_ready_passes_then_fails_when_the_model_file_is_altered(tmp_path, db):
    model = tmp_path / "models" / "dat.onnx"
    model.parent.mkdir()
    model.write_bytes(b"\x08\x07onnx-model-bytes" * 100)
    manifest.sidecar_path(model).write_text(
        hashlib.sha256(model.read_bytes()).hexdigest() + "  dat.onnx\n")
    settings = with_dat_model(make_settings(tmp_path), model)
    c = client(settings, db)
    ok = c.get("/ready")
    assert ok.status_code == 200, ok.json()
    assert ok.json()["checks"]["models_dat_spect"]["ok"]
    with model.open("r+b") as f:  # corrupt one byte, same size
        f.seek(10)
        f.write(b"X")
    bad = c.get("/ready")
    assert bad.status_code == 503
    assert bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["failing"] == ["models_dat_spect"]
    assert "differs from the expected checksum" in bad.json()["checks"]["models_dat_spect"]["detail"]
    model.unlink()
    assert "not found" in c.get("/ready").json()["checks"]["models_dat_spect"]["detail"]


def test_ready_model_checks_against_configured_checksum(tmp_path, db):
    model = tmp_path / "dat.onnx"
    model.write_bytes(b"model")
    right = hashlib.sha256(b"model").hexdigest()
    for sha, code in [(right, 200), ("0" * 64, 503), (None, 503)]:  # None: no sidecar either
        settings = with_dat_model(make_settings(tmp_path), model, sha)
        assert client(settings, db).get("/ready").status_code == code


def test_ready_fails_when_spool_disk_is_below_threshold(tmp_path, db):
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    settings = make_settings(tmp_path, min_free_mb=free_mb + 10_000)
    r = client(settings, db).get("/ready")
    assert r.status_code == 503 and r.json()["failing"] == ["spool_disk"]
    assert "min_free_mb" in r.json()["checks"]["spool_disk"]["detail"]


def _undelivered_for_two_hours(db, tmp_path):
    """One outbox item waiting 2 h (over ReadyLimits(3600, ...)): the outbox check fails."""
    conn = db.connect()
    with conn:
        outbox.enqueue(conn, 3, ["pacs"], tmp_path / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.33",
                       "1.2.3.4.5", now=time.time() - 7200)
    conn.close()


def test_ready_names_scp_and_outbox_failures(tmp_path, db):
    _undelivered_for_two_hours(db, tmp_path)
    down = Probes(scp_listening=lambda: False)
    r = TestClient(create_app(make_settings(tmp_path), db, down, ReadyLimits(3600, 100))).get(
        "/ready")
    assert r.status_code == 503 and r.json()["failing"] == ["scp", "outbox"]
    assert r.json()["checks"]["outbox"]["pending"] == 1
    assert "not ready: scp, outbox" == r.json()["detail"]


def test_a_listener_stays_ready_while_the_return_path_is_down(tmp_path, db):
    """?part=scp: an outbox backlog (a PACS down for hours) does not stop receiving."""
    _undelivered_for_two_hours(db, tmp_path)
    up = Probes(scp_listening=lambda: True)
    api = TestClient(create_app(make_settings(tmp_path), db, up, ReadyLimits(3600, 100)))
    assert api.get("/ready").json()["failing"] == ["outbox"]
    r = api.get("/ready?part=scp")
    assert r.status_code == 200, r.text
    blob_check = {"blob_store"} if make_settings(tmp_path).storage.blobs == "s3" else set()
    assert set(r.json()["checks"]) == {"database", "spool_disk", "scp"} | blob_check
    down = Probes(scp_listening=lambda: False)
    r = TestClient(create_app(make_settings(tmp_path), db, down, ReadyLimits(3600, 100))).get(
        "/ready?part=scp")
    assert r.status_code == 503 and r.json()["failing"] == ["scp"]
    assert api.get("/ready?part=worker").status_code == 400


def test_ready_probes_the_scp_port_by_tcp_when_no_probe_is_given(tmp_path, db):
    port = free_port()
    settings = make_settings(tmp_path).model_copy(
        update={"node": Settings().node.model_copy(update={"port": port})})
    r = TestClient(create_app(settings, db)).get("/ready")
    assert r.status_code == 503 and r.json()["failing"] == ["scp"]


def test_metrics_expose_jobs_and_outbox(tmp_path, db):
    text = client(make_settings(tmp_path), db).get("/metrics").text
    assert 'dopanode_jobs{pipeline="dat_spect",state="done"} 2.0' in text
    assert 'dopanode_jobs{pipeline="dat_spect",state="failed"} 1.0' in text
    assert 'dopanode_jobs{pipeline="dat_spect",state="pending"} 0.0' in text
    assert 'dopanode_series{state="routed"} 1.0' in text
    for name in ("dopanode_instances_received_total", "dopanode_instances_rejected_total",
                 "dopanode_job_stage_duration_seconds", "dopanode_outbox_oldest_age_seconds",
                 "dopanode_associations_total", "dopanode_outbox_backlog"):
        assert f"# TYPE {name.removesuffix('_total')}" in text


def _sample(text: str, name: str) -> float:
    """The value of an unlabelled sample ``name`` in a Prometheus text exposition."""
    values = [line.split()[1] for line in text.splitlines() if line.split(" ")[0] == name]
    assert len(values) == 1, f"{name}: {values}"
    return float(values[0])


def test_metrics_follow_the_model_and_spool_disk_checks(tmp_path, db):
    model = tmp_path / "dat.onnx"
    model.write_bytes(b"\x08\x07onnx-model-bytes" * 100)
    manifest.sidecar_path(model).write_text(hashlib.sha256(model.read_bytes()).hexdigest())
    settings = with_dat_model(make_settings(tmp_path, min_free_mb=7), model)
    c = client(settings, db)
    text = c.get("/metrics").text
    assert _sample(text, "dopanode_model_check_ok") == 1
    assert _sample(text, "dopanode_spool_min_free_bytes") == 7 * 1024 * 1024
    free = shutil.disk_usage(tmp_path).free
    assert abs(_sample(text, "dopanode_spool_free_bytes") - free) < 64 * 1024 * 1024
    with model.open("r+b") as f:  # corrupt one byte, same size: /ready and /metrics agree
        f.seek(10)
        f.write(b"X")
    assert _sample(c.get("/metrics").text, "dopanode_model_check_ok") == 0
    assert c.get("/ready").json()["failing"] == ["models_dat_spect"]


def test_unknown_routes_and_methods_are_problems(tmp_path, db):
    c = client(make_settings(tmp_path), db)
    for r, code in [(c.get("/nope"), 404), (c.delete("/health"), 405)]:
        assert r.status_code == code
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == code


def test_openapi_schema_is_served_with_bearer_security(tmp_path, db):
    schema = client(make_settings(tmp_path), db).get("/openapi.json").json()
    assert {"/health", "/ready", "/metrics", "/api/jobs", "/api/jobs/{job_id}",
            "/api/jobs/{job_id}/retry", "/api/studies/{study_uid}"} <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_real_uvicorn_server_serves_and_stops(tmp_path, db):
    server = ApiServer(create_app(make_settings(tmp_path), db, UP), "127.0.0.1", free_port())
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/health", timeout=5).status_code == 200
        assert httpx.get(f"{base}/api/jobs", timeout=5).status_code == 401
        assert httpx.get(f"{base}/api/jobs", headers=AUTH, timeout=5).status_code == 200
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=2)


@pytest.mark.parametrize("method,path", [
    ("get", "/api/jobs/99999999999999999999999"),
    ("post", "/api/jobs/99999999999999999999999/retry"),
    ("get", "/api/jobs?offset=99999999999999999999999"),
])
def test_out_of_range_integers_are_invalid_input_not_a_crash(tmp_path, db, method, path):
    """Reliability audit D14: these gave HTTP 500 (OverflowError in SQLite)."""
    r = getattr(client(make_settings(tmp_path), db), method)(path, headers=AUTH)
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
