"""The sender's transport: one outgoing association to a destination, plain or TLS.

What the send policy (:mod:`service.net.scu`) needs of the network: the
presentation contexts for the objects of a pass, the association with the
destination under its time limits (:class:`Timeouts`), and each TLS
destination's client context, built for every association so renewed
certificate files are used at once.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from service import metrics
from service.net import tls

log = logging.getLogger(__name__)

#: Presentation contexts offered on one association at most (their IDs are the odd 1..255).
MAX_CONTEXTS = 128
#: Encodings pynetdicom converts between when sending a dataset.
_LITTLE_ENDIAN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class DestinationLike(Protocol):
    """What the sender needs of a destination (``service.config.Destination``)."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Timeouts:
    """Network time limits of one association, seconds."""

    connect_s: float = 5.0
    acse_s: float = 15.0
    dimse_s: float = 120.0
    network_s: float = 120.0


def tls_args(destination: DestinationLike) -> tuple[ssl.SSLContext, str] | None:
    """``(context, server hostname)`` for a destination with ``tls = true``, else None.

    The context is built for each association, so renewed files are used
    at once; the peer's chain is checked against ``ca_file``, its host name
    only when ``server_hostname`` is set.
    """
    if not getattr(destination, "tls", False):
        return None
    hostname = getattr(destination, "server_hostname", None)
    cert_file = getattr(destination, "cert_file", None)
    ctx = tls.client_context(getattr(destination, "ca_file", None), cert_file,
                             getattr(destination, "key_file", None), hostname is not None)
    if cert_file is not None:  # checked at start-up; may have changed since
        info = tls.read_certificate(cert_file, "destinations.cert_file")
        metrics.TLS_CERTIFICATE_EXPIRY.labels(role="scu", name=destination.name).set(
            info.not_after_s)
    return ctx, hostname or destination.host


def presentation_contexts(transfer_syntaxes: Mapping[str, set[str]]
                          ) -> list[PresentationContext]:
    """One presentation context per (SOP class, transfer syntax) the items need.

    An uncompressed file also offers the other uncompressed syntaxes, so an
    SCP that accepts only Implicit VR Little Endian still gets it.
    """
    contexts: list[PresentationContext] = []
    for sop_class, syntaxes in sorted(transfer_syntaxes.items()):
        for ts in sorted(syntaxes):
            offered = [ts]
            if ts in _LITTLE_ENDIAN:
                offered += [t for t in _LITTLE_ENDIAN if t != ts]
            contexts.append(build_context(sop_class, offered))
    return contexts[:MAX_CONTEXTS]


def associate(calling_ae: str, destination: DestinationLike,
              transfer_syntaxes: Mapping[str, set[str]], timeouts: Timeouts) -> Association:
    """Request an association with ``destination`` for these SOP classes and syntaxes.

    Parameters
    ----------
    calling_ae : str
        Our AE title.
    destination : Destination-like
        Host, port, called AE title; TLS when its ``tls`` is true.
    transfer_syntaxes : mapping of str to set of str
        SOP Class UID -> the transfer syntaxes of the files to send.
    timeouts : Timeouts

    Returns
    -------
    Association
        Established or not (refused, rejected, aborted: ``is_established`` False).

    Raises
    ------
    service.net.tls.CertificateError
        A TLS destination's files no longer load.
    """
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = timeouts.connect_s
    ae.acse_timeout = timeouts.acse_s
    ae.dimse_timeout = timeouts.dimse_s
    ae.network_timeout = timeouts.network_s
    return ae.associate(
        destination.host, destination.port, contexts=presentation_contexts(transfer_syntaxes),
        ae_title=destination.ae_title, tls_args=tls_args(destination),
    )


def tls_destinations_checked(settings: Any) -> list[str]:
    """Read every TLS destination's files again (expiry metric); the names that fail."""
    failing = []
    for destination in settings.destinations:
        if destination.tls:
            try:
                tls_args(destination)
            except tls.CertificateError as exc:
                failing.append(destination.name)
                log.error("destination_tls_invalid", extra={"fields": {
                    "destination": destination.name, "key": exc.key}})
    return failing
