"""Bounds and refusals inside one association at the socket edge, for both acceptors.

pynetdicom leaves several ways for a peer to hold a thread, a socket or disk
space that the node cannot take back (reliability audit D4, D5, D7, D9). The
bounds at TCP accept (per-host slots, socket receive timeouts, the PROXY
header of a balancer) are :mod:`service.net.bounded_server`; this module
guards one association:

* :class:`AssociationGuard` wraps, per association, the two places where a
  peer's message enters pynetdicom:

  - ``dimse.receive_primitive`` (the DUL thread, both acceptors): a C-STORE
    data set that outgrows ``storage.max_instance_mb``, or the spool's free
    space, stops being written to disk at once; the rest of it is read and
    dropped and the request answered 0xA700 with an ErrorComment. A C-STORE
    command set pynetdicom cannot decode (empty or over-long UID) is answered
    0xC000 the same way; anything else undecodable ends in an A-ABORT sent
    from the DUL thread itself. The partial temporary file is closed and
    removed either way (pynetdicom would leave it open);
  - ``_serve_request``: a C-STORE naming a SOP class the node does not
    accept is answered 0x0122 before pynetdicom looks for a service class
    (for a class it does not know, pynetdicom aborts, which in the DUL
    thread waited for itself forever).

Nothing here decodes a data set: only the command set pynetdicom decoded.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, NamedTuple, cast

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA

from service import metrics
from service.net.status import Status
from service.store.spool import is_disk_full

log = logging.getLogger(__name__)

#: Free space is re-checked each time a data set grows by this much, bytes.
FREE_CHECK_BYTES = 16 * 1024 * 1024
#: C-STORE-RQ in Command Field (0000,0100).
C_STORE_RQ = 0x0001
#: Command Data Set Type (0000,0800) meaning "no data set follows".
NO_DATA_SET = 0x0101


class Refusal(NamedTuple):
    """A failure status to answer, its ErrorComment and a metrics reason slug."""

    status: Status
    comment: str
    reason: str


#: The answer to a C-STORE whose data set met a full disk (ENOSPC, EDQUOT) while it
#: was written to the spool: 0xA700, transient, so the sender retries later.
DISK_FULL = Refusal(Status.OUT_OF_RESOURCES, "insufficient disk space on the node's spool",
                    "out_of_space")


def count_refusal(refusal: Refusal) -> None:
    """The metric and the log line of one refused C-STORE (no header values)."""
    metrics.INSTANCES_REJECTED.labels(reason=refusal.reason).inc()
    log.warning("store_refused", extra={"fields": {
        "reason": refusal.reason, "status": f"0x{int(refusal.status):04X}"}})



# --- one association ---------------------------------------------------------------------
def abort_from_dul(assoc: Any) -> None:
    """Send an A-ABORT and stop the DUL, from inside the DUL thread.

    ``Association.abort()`` would wait for the DUL thread to end: called in
    that thread it waits forever (audit D4). This is what pynetdicom's own
    reactor does when it fails.
    """
    pdu = A_ABORT_RQ()
    pdu.source = 0x02  # service-provider
    pdu.reason_diagnostic = 0x00
    with contextlib.suppress(Exception):  # the peer may be gone already
        assoc.dul.socket.send(pdu.encode())
    assoc.is_aborted = True
    assoc.is_established = False
    assoc.dul._kill_thread = True


def _discard_file(owner: Any, file_attr: str, path_attr: str) -> None:
    """Close and remove a partial data set file pynetdicom opened."""
    handle = getattr(owner, file_attr, None)
    path = getattr(owner, path_attr, None)
    if handle is not None:
        with contextlib.suppress(OSError):
            handle.close()
    if path:
        with contextlib.suppress(OSError):
            os.unlink(Path(path))


def _data_bytes(primitive: P_DATA) -> int:
    return sum(len(data) - 1 for _, data in primitive.presentation_data_value_list
               if data and not data[0] & 1)


def _command_uids_fit(command: Dataset) -> bool:
    """False for a C-STORE-RQ whose command UIDs pynetdicom cannot take (over 64 chars)."""
    if "MessageID" not in command or command.get("CommandField") != C_STORE_RQ:
        return True
    return all(len(str(command.get(keyword) or "").rstrip("\x00 ")) <= 64
               for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"))


class AssociationGuard:
    """Per-association wrappers of ``dimse.receive_primitive`` and ``_serve_request``.

    Parameters
    ----------
    assoc : pynetdicom.association.Association
    accepted_classes : collection of str
        SOP Class UIDs the node stores; others are answered 0x0122.
    limit : callable
        ``limit(data_bytes, check_free)`` returns a :class:`Refusal` when a
        data set of ``data_bytes`` may not be received further; ``check_free``
        says whether to look at the spool's free space this time.
    """

    def __init__(self, assoc: Any, accepted_classes: Collection[str],
                 limit: Callable[[int, bool], Refusal | None]) -> None:
        self.assoc = assoc
        self.accepted_classes = frozenset(accepted_classes)
        self.limit = limit
        self._receive = assoc.dimse.receive_primitive
        self._serve = assoc._serve_request
        self._data_bytes = 0
        self._refusal: Refusal | None = None
        self._command: Dataset | None = None
        self._context_id = 0

    def install(self) -> None:
        self.assoc.dimse.receive_primitive = self.receive_primitive
        self.assoc._serve_request = self.serve_request

    # -- _serve_request -----------------------------------------------------------
    def serve_request(self, msg: Any, context_id: int) -> None:
        """Answer 0x0122 to a C-STORE of a class the node does not store."""
        if (isinstance(msg, C_STORE) and msg.is_valid_request and not self.assoc._sent_release
                and str(msg.AffectedSOPClassUID or "") not in self.accepted_classes):
            _discard_file(msg, "_dataset_file", "_dataset_path")
            refusal = Refusal(Status.SOP_CLASS_NOT_SUPPORTED, "SOP class not supported",
                              "sop_class")
            command = Dataset()
            command.MessageID = msg.MessageID
            command.AffectedSOPClassUID = msg.AffectedSOPClassUID
            command.AffectedSOPInstanceUID = msg.AffectedSOPInstanceUID
            self._answer(command, context_id, refusal)
            return
        self._serve(msg, context_id)

    # -- receive_primitive (DUL thread) ---------------------------------------------
    def receive_primitive(self, primitive: P_DATA) -> None:
        if self._refusal is not None:
            self._drop(primitive)
            return
        message = self.assoc.dimse.message
        added = _data_bytes(primitive)
        if added and message is not None and "MessageID" in message.command_set:
            before, self._data_bytes = self._data_bytes, self._data_bytes + added
            check_free = before == 0 or before // FREE_CHECK_BYTES != (
                self._data_bytes // FREE_CHECK_BYTES)
            refusal = self.limit(self._data_bytes, check_free)
            if refusal is not None:
                self._start_dropping(refusal)
                self._drop(primitive)
                return
        try:
            self._receive(primitive)
        except Exception as exc:  # undecodable command set: a status if we can, else abort
            if is_disk_full(exc):  # writing the data set to tmp/: the node's disk, no traceback
                log.warning("store_disk_full", extra={"fields": {"error": type(exc).__name__}})
                self._refuse_current(primitive, DISK_FULL)
                return
            log.warning("dimse_decode_failed", exc_info=True)
            self._refuse_current(primitive, Refusal(
                Status.CANNOT_UNDERSTAND, "C-STORE command set could not be decoded",
                "bad_command"))
            return
        message = self.assoc.dimse.message
        if message is None:  # a message completed
            self._data_bytes = 0
        elif self._data_bytes == 0 and not _command_uids_fit(message.command_set):
            # pynetdicom would abort when the data set is complete (no status)
            self._start_dropping(Refusal(
                Status.CANNOT_UNDERSTAND, "C-STORE command set could not be decoded",
                "bad_command"))

    def _start_dropping(self, refusal: Refusal) -> None:
        """Stop writing the current message; answer ``refusal`` after its last fragment."""
        message = self.assoc.dimse.message
        _discard_file(message, "_data_set_file", "_data_set_path")
        self._refusal = refusal
        self._command = message.command_set
        self._context_id = int(message.context_id or 0)
        self.assoc.dimse.message = None
        self._data_bytes = 0

    def _drop(self, primitive: P_DATA) -> None:
        pdvs = list(primitive.presentation_data_value_list)
        for i, (_, data) in enumerate(pdvs):
            if not data or data[0] & 1:  # a command while a data set is due: not DICOM
                log.warning("dimse_protocol_error", extra={"fields": {"reason": "command_in_data"}})
                self._refusal = None
                abort_from_dul(self.assoc)
                return
            if data[0] & 2:  # the data set's last fragment: answer now
                refusal, self._refusal = self._refusal, None
                if refusal is not None and self._command is not None:
                    self._answer(self._command, self._context_id, refusal)
                rest = pdvs[i + 1:]
                if rest:
                    tail = P_DATA()
                    tail.presentation_data_value_list = cast(Any, [list(pdv) for pdv in rest])
                    self.receive_primitive(tail)
                return

    def _refuse_current(self, primitive: P_DATA, refusal: Refusal) -> None:
        """The current message failed in pynetdicom: answer a C-STORE-RQ, abort otherwise."""
        message = self.assoc.dimse.message
        command = getattr(message, "command_set", None)
        if message is None or command is None or "MessageID" not in command:
            self._abort(message)
            return
        if command.get("CommandField") != C_STORE_RQ or (
                command.get("CommandDataSetType") == NO_DATA_SET):
            self._abort(message)
            return
        self._start_dropping(refusal)
        # the data fragments of this P-DATA (those after its command fragments)
        pdvs = list(primitive.presentation_data_value_list)
        data_from = next((i + 1 for i in range(len(pdvs) - 1, -1, -1)
                          if pdvs[i][1] and pdvs[i][1][0] & 1), 0)
        if data_from < len(pdvs):
            tail = P_DATA()
            tail.presentation_data_value_list = cast(
                Any, [list(pdv) for pdv in pdvs[data_from:]])
            self._drop(tail)

    def _abort(self, message: Any) -> None:
        if message is not None:
            _discard_file(message, "_data_set_file", "_data_set_path")
        self.assoc.dimse.message = None
        metrics.INSTANCES_REJECTED.labels(reason="undecodable").inc()
        abort_from_dul(self.assoc)

    def _answer(self, command: Dataset, context_id: int, refusal: Refusal) -> None:
        """Send a C-STORE-RSP with ``refusal`` for the request ``command``."""
        count_refusal(refusal)
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = int(command.MessageID)
        for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"):
            with contextlib.suppress(Exception):  # an invalid UID is left out
                setattr(rsp, keyword, command.get(keyword))
        rsp.Status = int(refusal.status)
        rsp.ErrorComment = refusal.comment[:64]  # type: ignore[assignment]
        self.assoc.dimse.send_msg(rsp, context_id)


__all__ = ["DISK_FULL", "AssociationGuard", "Refusal", "abort_from_dul", "count_refusal"]
