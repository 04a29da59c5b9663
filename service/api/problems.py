"""Problem responses (RFC 9457 ``application/problem+json``) for every API error.

The API edge translates each failure once: HTTP exceptions (FastAPI's and
Starlette's, e.g. an unknown route or method),
request validation errors and :class:`service.errors.AnalysisError` become a
problem object ``{type, title, status, detail, instance}``; anything else is
logged with its traceback and answered as a generic 500 problem (the detail
never echoes internals).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import AnalysisError

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://dopanode.invalid/problems/"


def problem(status: int, detail: str, instance: str | None = None, slug: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """A problem response.

    Parameters
    ----------
    status : int
        HTTP status code.
    detail : str
        Human-readable explanation of this occurrence (no patient data).
    instance : str, optional
        The request path.
    slug : str, optional
        Last part of the problem ``type`` URI (default: from the status phrase).
    extra
        Extension members (e.g. ``checks`` for /ready).
    """
    title = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (slug or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


#: OpenAPI description of the problem body, for ``responses=`` of routes.
PROBLEM_RESPONSE: dict[str, Any] = {
    "description": "Problem details (RFC 9457)",
    "content": {PROBLEM_MEDIA_TYPE: {"schema": {"type": "object", "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "instance": {"type": "string"}}}}},
}


def install_handlers(app: FastAPI) -> None:
    """Register the problem translations on ``app``."""

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), request.url.path,
                       headers=dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))}
                  for e in exc.errors()]
        return problem(422, "request parameters are not valid", request.url.path,
                       slug="invalid-request", errors=errors)

    @app.exception_handler(AnalysisError)
    async def _analysis(request: Request, exc: AnalysisError) -> JSONResponse:
        return problem(422, exc.reason, request.url.path, slug=exc.code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("api_unhandled_error", exc_info=exc,
                  extra={"fields": {"path": request.url.path, "method": request.method}})
        return problem(500, "internal error (see the node's log)", request.url.path)
