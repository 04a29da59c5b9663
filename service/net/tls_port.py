"""The SCP's TLS port: a bounded server class that wraps each accepted socket.

pynetdicom's ``AssociationServer.get_request`` wraps with the handshake done
in the accepting thread, so one silent or plain peer would stop the port
accepting. Here the socket is wrapped without a handshake
(``do_handshake_on_connect=False``) with the context current at that moment
(:class:`~service.net.tls.ReloadingContext`: renewed files are picked up by
the next connection), and the handshake runs in the connection's own thread
under the receive timeout. A failed handshake (a plain client, a certificate
from another CA, no certificate under mutual TLS) closes that socket,
is counted as a refused association, logged and audited (an authentication
failure); the port keeps serving.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from service import metrics
from service.net import audit_events, tls

log = logging.getLogger(__name__)


def tls_server_class(base: type[ThreadedAssociationServer], contexts: tls.ReloadingContext
                     ) -> type[ThreadedAssociationServer]:
    """``base`` (a :func:`~service.net.bounded_server.bounded_server_class`) serving TLS."""

    class TlsServer(base):  # type: ignore[valid-type,misc]
        proxy_from = ()  # the TLS port reads no PROXY header (a balancer passes TLS through)

        def get_request(self) -> tuple[Any, tuple[str, int]]:
            request, address = super().get_request()  # plain socket, timeout set
            wrapped = contexts.current().wrap_socket(
                request, server_side=True, do_handshake_on_connect=False)
            return wrapped, address

        def finish_request(self, request: Any, client_address: Any) -> None:
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                metrics.ASSOCIATIONS.labels(result="rejected", reason="tls_handshake").inc()
                log.warning("tls_handshake_failed", extra={"fields": {"error": str(reason)}})
                audit_events.tls_handshake_failed(str(client_address[0]),
                                                  int(client_address[1]), str(reason))
                self.shutdown_request(request)
                return
            super().finish_request(request, client_address)

    return TlsServer


def scp_contexts(settings: Any) -> tls.ReloadingContext:
    """The TLS port's reloading context for ``settings.node.tls`` (also sets the expiry metric)."""
    cfg = settings.node.tls

    def build() -> ssl.SSLContext:
        ctx = tls.server_context(cfg.cert_file, cfg.key_file, cfg.ca_file,
                                 cfg.require_client_cert, cfg.min_version)
        info = tls.read_certificate(cfg.cert_file, "node.tls.cert_file")
        metrics.TLS_CERTIFICATE_EXPIRY.labels(role="scp", name="node").set(info.not_after_s)
        return ctx

    return tls.ReloadingContext((cfg.cert_file, cfg.key_file, cfg.ca_file), build)


__all__ = ["scp_contexts", "tls_server_class"]
