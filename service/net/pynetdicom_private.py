"""The pynetdicom internals the event acceptor uses, in one table, checked at start-up.

:mod:`service.net.acceptor` and :mod:`service.net.event_dul` copy pynetdicom
3.0's reactor loops and reach into private attributes. A renamed private
would otherwise raise inside the DUL thread and abort every association at
run time; checking the table when the server is made turns that into a
refusal to start that names what is missing.
"""

from __future__ import annotations

from typing import Any

import pynetdicom
from pynetdicom import _globals
from pynetdicom.association import Association
from pynetdicom.transport import AssociationServer, RequestHandler

#: The pynetdicom minor version whose loops service.net.acceptor copies.
SUPPORTED_PYNETDICOM = "3.0"
#: Every private or internal name of pynetdicom the event acceptor uses, as
#: (object, attribute); :func:`missing_private_names` checks them at start-up.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("pynetdicom._globals", "MODE_ACCEPTOR"),
    *(("Association", name) for name in (
        "_accepted_cx", "_sent_release", "_serve_request", "_dul_ready", "_kill",
        "_reactor_checkpoint", "_is_paused", "_server", "_run_reactor")),
    *(("DULServiceProvider", name) for name in (
        "_idle_timer", "_kill_thread", "_process_recv_primitive", "_is_transport_event",
        "event_queue", "to_provider_queue", "to_user_queue", "artim_timer", "state_machine",
        "run_reactor")),
    *(("DIMSEServiceProvider", name) for name in ("msg_queue", "send_msg", "maximum_pdu_size")),
    ("RequestHandler", "_create_association"),
    ("AssociationServer", "_handlers"),
    ("AE", "_servers"),
)


class UnsupportedPynetdicom(RuntimeError):
    """The installed pynetdicom is not the one the event acceptor was written for."""

    #: the message names versions and attributes only (kept in logged tracebacks)
    log_safe = True


def missing_private_names(ae: pynetdicom.AE, server: AssociationServer) -> list[str]:
    """``object.attribute`` of every :data:`PRIVATE_NAMES` entry that is missing.

    Instance attributes are looked up on a probe association built (never
    started) for ``ae``, and on ``server`` (made, not yet serving).
    """
    mode = getattr(_globals, "MODE_ACCEPTOR", "acceptor")
    probe = Association(ae, mode)
    owners: dict[str, Any] = {
        "pynetdicom._globals": _globals, "Association": probe, "DULServiceProvider": probe.dul,
        "DIMSEServiceProvider": probe.dimse, "RequestHandler": RequestHandler,
        "AssociationServer": server, "AE": ae,
    }
    return [f"{owner}.{name}" for owner, name in PRIVATE_NAMES
            if not hasattr(owners[owner], name)]
