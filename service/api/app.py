"""The REST API: health, readiness, metrics and the token-protected job views.

Built by :func:`create_app` from the settings, the database and the node's
probes; it holds no state of its own (every request opens and closes its own
SQLite connection), so it may run in the node's process or alone.

Routes: ``GET /health`` (liveness, no auth, touches nothing), ``GET /ready``
(see :mod:`service.api.readiness`; 503 problem naming the failing checks),
``GET /metrics`` (Prometheus text), and under ``/api`` with a Bearer token:
``GET /jobs?state=``, ``GET /jobs/{id}``, ``POST /jobs/{id}/retry``,
``GET /studies/{study_uid}``, and the admin page's summaries (``/queue``,
``/outbox``, ``/studies``, ``/jobs/{id}/picture.png``; :mod:`service.api.admin`).
``GET /admin`` serves the admin page itself. OpenAPI at ``/openapi.json`` and ``/docs``.

Auth: ``Authorization: Bearer <api.token>``, compared in constant time.
Without a configured token the ``/api`` routes answer only loopback clients.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service import __version__, metrics
from service.api.access_audit import AccessAudit
from service.api.admin import admin_api_routes, page_routes
from service.api.common import SQL_INT_MAX, connection
from service.api.problems import PROBLEM_RESPONSE, install_handlers, problem
from service.api.readiness import PARTS, Probes, ReadyLimits, refresh_metrics, run_checks
from service.dicom.uids import is_valid_uid
from service.store import job_views, jobs, outbox
from service.store import series as series_store
from service.store.db import SERIES_STATES

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="api.token from the node's configuration")
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: PROBLEM_RESPONSE, 404: PROBLEM_RESPONSE, 409: PROBLEM_RESPONSE, 422: PROBLEM_RESPONSE,
}


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth_dependency(token: str | None) -> Any:
    def require_token(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        challenge = {"WWW-Authenticate": "Bearer"}
        if token is None:
            if _is_loopback(request.client.host if request.client else None):
                return
            raise HTTPException(401, "no api.token configured: /api answers loopback only",
                                headers=challenge)
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(401, "missing Bearer token", headers=challenge)
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            # the route's template, never the path: /api/studies/{uid} holds a Study UID
            route = getattr(request.scope.get("route"), "path", None)
            log.warning("api_bad_token", extra={"fields": {"route": route or "unmatched"}})
            raise HTTPException(401, "invalid token", headers=challenge)

    return require_token


def _job_view(job: Any, with_result: bool) -> dict[str, Any]:
    view: dict[str, Any] = job.to_dict()
    if not with_result:
        view.pop("result", None)
    return view


def _delivery_view(item: outbox.OutboxItem) -> dict[str, Any]:
    return {"destination": item.destination, "sop_class_uid": item.sop_class_uid,
            "sop_instance_uid": item.sop_instance_uid, "state": item.state,
            "attempts": item.attempts, "next_attempt_at": item.next_attempt_at,
            "last_error": item.last_error, "sent_at": item.sent_at}


def create_app(settings: Any, db: Any, probes: Probes | None = None,
               limits: ReadyLimits | None = None) -> FastAPI:
    """Build the API application.

    Parameters
    ----------
    settings : service.config.Settings
        Uses ``api.token``, ``storage``, ``pipelines`` and ``node`` (for /ready).
    db : service.store.rows.Rows
        Has ``connect()``; tables already migrated.
    probes : Probes, optional
        The node's liveness probes (SCP); default probes by TCP connect.
    limits : ReadyLimits, optional
        Outbox thresholds of /ready.
    """
    app = FastAPI(title="dopanode", version=__version__,
                  description="DICOM inference node for nuclear medicine (research use only).")
    install_handlers(app)
    app.add_middleware(AccessAudit, token=settings.api.token)  # audit trail: /api requests
    if settings.api.token is None:
        log.warning("api_token_not_set", extra={"fields": {"effect": "/api loopback only"}})
    app.include_router(_probe_routes(settings, db, probes or Probes(), limits or ReadyLimits()))
    auth = [Depends(_auth_dependency(settings.api.token))]
    app.include_router(_job_routes(db), prefix="/api", dependencies=auth, responses=_ERRORS)
    app.include_router(admin_api_routes(settings, db), prefix="/api", dependencies=auth,
                       responses=_ERRORS)
    app.include_router(page_routes())
    return app


def _probe_routes(settings: Any, db: Any, probes: Probes, limits: ReadyLimits) -> APIRouter:
    """/health, /ready and /metrics (no auth)."""
    router = APIRouter(tags=["probes"])

    @router.get("/health")
    def health() -> dict[str, str]:
        """Liveness: the process answers HTTP. Checks nothing else, on purpose."""
        return {"status": "ok", "version": __version__}

    @router.get("/ready", responses={400: PROBLEM_RESPONSE, 503: PROBLEM_RESPONSE})
    def ready(request: Request, part: str | None = None) -> Response:
        """Readiness: database, spool disk, model, SCP and outbox checks.

        ``?part=scp``: only what a listener needs (``readiness.PARTS``).
        """
        if part is not None and part not in PARTS:
            return problem(400, f"unknown part; known: {', '.join(sorted(PARTS))}",
                           request.url.path, slug="bad-request")
        checks = run_checks(settings, db, probes, limits, part)
        body = {c.name: c.as_dict() for c in checks}
        failing = [c.name for c in checks if not c.ok]
        if failing:
            log.warning("not_ready", extra={"fields": {"failing": failing}})
            return problem(503, "not ready: " + ", ".join(failing), request.url.path,
                           slug="not-ready", failing=failing, checks=body)
        return JSONResponse({"status": "ready", "checks": body})

    @router.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text exposition (database, disk and model gauges refreshed now)."""
        with connection(db) as conn:
            metrics.refresh_from_db(conn, pipelines=[
                name for name, p in settings.pipelines.items() if p.enabled])
        refresh_metrics(settings)
        payload, content_type = metrics.render()
        return Response(payload, media_type=content_type)

    return router


_STATE_PATTERN = "^(" + "|".join(jobs.JOB_STATES) + ")$"
_SERIES_STATE_PATTERN = "^(" + "|".join(SERIES_STATES) + ")$"
_NAME_PATTERN = "^[a-z][a-z0-9_]{0,63}$"


def _job_routes(db: Any) -> APIRouter:
    """The token-protected job and study views (mounted under /api)."""
    router = APIRouter()

    @router.get("/jobs", tags=["jobs"])
    def list_jobs(
        state: Annotated[str | None, Query(pattern=_STATE_PATTERN)] = None,
        pipeline: Annotated[str | None, Query(pattern=_NAME_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX)] = 0,
    ) -> dict[str, Any]:
        """Jobs, newest first, optionally of one state and pipeline (without results)."""
        with connection(db) as conn:
            found = jobs.list_jobs(conn, state=state, limit=limit, offset=offset,
                                   pipeline=pipeline)
        return {"jobs": [_job_view(j, with_result=False) for j in found],
                "limit": limit, "offset": offset}

    @router.get("/series", tags=["series"])
    def list_series(
        state: Annotated[str | None, Query(pattern=_SERIES_STATE_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Received series, newest first, with each pipeline's routing decision.

        ``state=ignored`` lists the series no pipeline took, with the reasons.
        """
        with connection(db) as conn:
            rows = series_store.list_series(conn, state=state, limit=limit)
        return {"series": [{"series_uid": r.series_uid, "study_uid": r.study_uid,
                            "state": r.state, "instance_count": r.instance_count,
                            "completed_at": r.completed_at, "routing": dict(r.routing)}
                           for r in rows], "limit": limit}

    @router.get("/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: Annotated[int, Path(ge=1, le=SQL_INT_MAX)]) -> dict[str, Any]:
        """One job with its result (when done) and the delivery state of its outputs."""
        with connection(db) as conn:
            job = jobs.get(conn, job_id)
            if job is None:
                raise HTTPException(404, f"job {job_id} does not exist")
            deliveries = outbox.items_for_job(conn, job_id)
        return {**_job_view(job, with_result=True),
                "deliveries": [_delivery_view(i) for i in deliveries]}

    @router.post("/jobs/{job_id}/retry", tags=["jobs"], status_code=202)
    def retry_job(job_id: Annotated[int, Path(ge=1, le=SQL_INT_MAX)]) -> dict[str, Any]:
        """Queue a failed or done job again (its outputs replace the earlier ones)."""
        with connection(db) as conn:
            if jobs.get(conn, job_id) is None:
                raise HTTPException(404, f"job {job_id} does not exist")
            if not jobs.retry(conn, job_id):
                raise HTTPException(409, f"job {job_id} is pending, running or superseded")
        log.info("api_job_retry", extra={"fields": {"job_id": job_id}})
        return {"id": job_id, "state": "pending"}

    @router.get("/studies/{study_uid}", tags=["studies"])
    def get_study(study_uid: str) -> dict[str, Any]:
        """Each pipeline's latest finished (done) result for a study."""
        if not is_valid_uid(study_uid):
            raise HTTPException(422, "study_uid is not a valid DICOM UID")
        with connection(db) as conn:
            latest = job_views.latest_done_per_pipeline(conn, study_uid)
        if not latest:
            raise HTTPException(404, "no finished result for this study")
        return {"study_uid": study_uid, "results": {
            name: {"job_id": job.id, "finished_at": job.finished_at,
                   "result": _job_view(job, with_result=True).get("result")}
            for name, job in latest.items()}}

    return router
