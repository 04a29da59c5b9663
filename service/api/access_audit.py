"""An audit record for every request to the token-protected ``/api`` routes.

A pure ASGI middleware (it sees the response status and, once routing ran,
the route template and path parameters). A 401 is an A.5 "User
Authentication" failure; any other answer a "Query" (110112) with its
outcome. The caller is named by a token label, never the token: ``api.token``
with a fingerprint of the configured token, ``unknown`` with a fingerprint
of a wrong one (the first 12 hex digits of its SHA-256), ``none`` without an
``Authorization`` header, ``loopback`` when no token is configured.
``/health``, ``/ready``, ``/metrics`` and the OpenAPI pages serve no patient
data and are not recorded (a Prometheus scrape every 15 s would drown the trail).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from service import audit
from service.audit import DESTINATION_ROLE, SOURCE_ROLE, Outcome

Scope = dict[str, Any]


def fingerprint(secret: str) -> str:
    """First 12 hex digits of the SHA-256 of ``secret`` (identifies, does not reveal)."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()[:12]


def token_label(authorization: str | None, token: str | None) -> str:
    """Who called, as the audit trail names it (see the module docstring)."""
    if not authorization:
        return "loopback" if token is None else "none"
    scheme, _, credential = authorization.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return "malformed"
    if token is not None and secrets.compare_digest(credential.encode(), token.encode()):
        return f"api.token sha256:{fingerprint(token)}"
    return f"unknown sha256:{fingerprint(credential)}"


class AccessAudit:
    """ASGI middleware writing one audit record per ``/api`` request."""

    def __init__(self, app: Any, token: str | None, prefix: str = "/api") -> None:
        self.app = app
        self.token = token
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = str(scope.get("path", ""))
        if scope.get("type") != "http" or not (path == self.prefix
                                               or path.startswith(self.prefix + "/")):
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before answering

        async def watch(message: dict[str, Any]) -> None:
            nonlocal status
            if message.get("type") == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.record(scope, status)

    def record(self, scope: Scope, status: int) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        client = scope.get("client") or (None, None)
        server = scope.get("server") or (None, None)
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        if route.startswith("/") and not route.startswith(self.prefix + "/"):
            route = self.prefix + route  # the template as the client called it
        params = dict(scope.get("path_params") or {})
        peers = [audit.participant(SOURCE_ROLE, requestor=True, host=client[0], port=client[1],
                                   user=token_label(headers.get("authorization"), self.token)),
                 audit.participant(DESTINATION_ROLE, requestor=False, host=server[0],
                                   port=server[1])]
        objects = ([{"kind": "study", "study_uid": str(params["study_uid"])}]
                   if "study_uid" in params else [])
        details = {"method": scope.get("method"), "route": route, "status": status,
                   **{k: v for k, v in params.items() if k != "study_uid"}}
        if status == 401:
            audit.emit("api_auth_failure", audit.USER_AUTHENTICATION, audit.LOGIN,
                       outcome=Outcome.MINOR_FAILURE, outcome_text="not authenticated",
                       participants=peers, details=details)
            return
        outcome = (Outcome.SUCCESS if status < 400 else
                   Outcome.MINOR_FAILURE if status < 500 else Outcome.SERIOUS_FAILURE)
        audit.emit("api_access", audit.QUERY, outcome=outcome, outcome_text=str(status),
                   participants=peers, objects=objects, details=details)
