"""The DICOM edge's audit records: associations, instances received, outputs sent.

Each function takes what a pynetdicom handler (or the sender) has at hand and
writes through :func:`service.audit.emit`; the SCP and SCU call one function
per event, so their own code stays about the network.

Received instances are tallied per association (:class:`ReceivedLedger`)
and written as one "DICOM Instances Transferred" record when the connection
closes, listing each study with its patient ID, accession number, series and
per-SOP-class counts, as an A.5 participant object does (Number Of
Instances). One record per instance would be 200 lines for one per-slice
series and would say nothing more; the instances themselves are in the
spool and the database. A kill -9 during an association loses its tally
(the "association accepted" record is already written).
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

from pydicom import dcmread

from service import audit
from service.audit import DESTINATION_ROLE, SOURCE_ROLE, Outcome
from service.dicom.header import READ_ERRORS

_STUDY_TAGS = ["StudyInstanceUID", "PatientID", "AccessionNumber"]


def tls_subject(assoc: Any) -> str | None:
    """The peer certificate's subject (RFC 4514-like text), None without TLS."""
    assoc_socket = getattr(assoc.dul, "socket", None)
    sock = getattr(assoc_socket, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    subject: Any = cert.get("subject", ())
    return ",".join(f"{k}={v}" for rdn in subject for k, v in rdn) or None


def _peers(assoc: Any) -> list[dict[str, Any]]:
    """The calling peer (source, requestor) and this node (destination)."""
    requestor, acceptor = assoc.requestor, assoc.acceptor
    primitive = requestor.primitive
    calling = str(primitive.calling_ae_title if primitive is not None else "").strip()
    called = str(primitive.called_ae_title if primitive is not None else "").strip()
    return [
        audit.participant(SOURCE_ROLE, requestor=True, ae_title=calling,
                          host=requestor.address, port=requestor.port,
                          tls_subject=tls_subject(assoc)),
        audit.participant(DESTINATION_ROLE, requestor=False,
                          ae_title=called or str(acceptor.ae_title).strip(),
                          host=acceptor.address, port=acceptor.port),
    ]


def association_refused(assoc: Any, reason: str) -> None:
    """An association request refused, with the SCP's reason slug (the metric's)."""
    audit.emit("association", audit.USER_AUTHENTICATION, audit.LOGIN, action="E",
               outcome=Outcome.MINOR_FAILURE, outcome_text=reason,
               participants=_peers(assoc))


def tls_handshake_failed(host: str, port: int, reason: str) -> None:
    """A connection to the TLS port refused at the handshake (no association yet)."""
    audit.emit("association", audit.USER_AUTHENTICATION, audit.LOGIN, action="E",
               outcome=Outcome.MINOR_FAILURE, outcome_text=f"tls_handshake: {reason}",
               participants=[audit.participant(SOURCE_ROLE, requestor=True, host=host,
                                               port=port)])


def association_accepted(assoc: Any) -> None:
    audit.emit("association", audit.USER_AUTHENTICATION, audit.LOGIN, action="E",
               outcome_text="accepted", participants=_peers(assoc))
    LEDGER.open(id(assoc), _peers(assoc))


@dataclass
class _Tally:
    participants: list[dict[str, Any]]
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)


class ReceivedLedger:
    """Per-association counts of received instances (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, _Tally] = {}

    def open(self, key: int, participants: list[dict[str, Any]]) -> None:
        with self._lock:
            self._open[key] = _Tally(participants)

    def stored(self, key: int, header: Any) -> None:
        """Count one stored instance (``header``: :class:`ParsedHeader`)."""
        with self._lock:
            tally = self._open.get(key)
            if tally is None:
                return
            study = tally.studies.setdefault(header.study_uid, {
                "study_uid": header.study_uid, "patient_id": header.patient_id or None,
                "accession": header.accession or None, "instances": 0, "series": {}})
            study["instances"] += 1
            series = study["series"].setdefault(header.series_uid, {})
            sop_class = header.info.sop_class_uid
            series[sop_class] = series.get(sop_class, 0) + 1

    def refused(self, key: int, reason: str) -> None:
        with self._lock:
            tally = self._open.get(key)
            if tally is not None:
                tally.refused[reason] = tally.refused.get(reason, 0) + 1

    def close(self, key: int) -> None:
        """Write the association's record (none when nothing was sent in it)."""
        with self._lock:
            tally = self._open.pop(key, None)
        if tally is None or not (tally.studies or tally.refused):
            return
        objects = [{"kind": "study", **{k: v for k, v in s.items() if k != "series"},
                    "series": [{"series_uid": uid, "sop_classes": counts,
                                "instances": sum(counts.values())}
                               for uid, counts in s["series"].items()]}
                   for s in tally.studies.values()]
        audit.emit("instances_received", audit.INSTANCES_TRANSFERRED, action="C",
                   outcome=Outcome.MINOR_FAILURE if tally.refused else Outcome.SUCCESS,
                   outcome_text="some instances refused" if tally.refused else "stored",
                   participants=tally.participants, objects=objects,
                   details={"instances": sum(s["instances"] for s in objects),
                            "refused": tally.refused})


LEDGER = ReceivedLedger()


def instance_stored(assoc: Any, header: Any) -> None:
    LEDGER.stored(id(assoc), header)


def instance_refused(assoc: Any, reason: str) -> None:
    LEDGER.refused(id(assoc), reason)


def connection_closed(assoc: Any) -> None:
    """Write the association's tally (EVT_CONN_CLOSE).

    Whether it ended by release or abort is not recorded: the connection may
    close before the association thread has seen the A-RELEASE, and every
    instance counted was stored and answered Success anyway.
    """
    LEDGER.close(id(assoc))


def output_sent(calling_ae: str, destination: Any, item: Any, status: int | None,
                result: str, error: str | None) -> None:
    """One C-STORE attempt of an output (``result``: sent, retry or failed)."""
    try:
        ids = audit.patient_study(dcmread(item.path, stop_before_pixels=True,
                                          specific_tags=_STUDY_TAGS))
    except READ_ERRORS:  # an unreadable output: its failure is the record's outcome
        ids = {"study_uid": None, "patient_id": None, "accession": None}
    peers = [audit.participant(SOURCE_ROLE, requestor=True, ae_title=calling_ae)]
    if destination is not None:
        peers.append(audit.participant(DESTINATION_ROLE, requestor=False,
                                       ae_title=destination.ae_title, host=destination.host,
                                       port=destination.port))
    outcome = Outcome.SUCCESS if result == "sent" else (
        Outcome.SERIOUS_FAILURE if result == "failed" else Outcome.MINOR_FAILURE)
    audit.emit("output_sent", audit.INSTANCES_TRANSFERRED, action="R", outcome=outcome,
               outcome_text=result, participants=peers,
               objects=[{"kind": "study", **ids, "instances": 1,
                         "sop_instance_uid": item.sop_instance_uid,
                         "sop_class_uid": item.sop_class_uid}],
               details={"destination": item.destination, "job_id": item.job_id,
                        "attempt": item.attempts + 1, "error": error,
                        "status": None if status is None else f"0x{status:04X}"})
