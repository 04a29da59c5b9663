"""The audit trail: the one place where patient and study identifiers are written.

In the spirit of IHE ATNA and the DICOM audit messages of PS3.15 Annex A.5:
one JSON object per line (not the A.5 XML), each carrying the A.5 Event ID,
Event Type Code, Event Action Code and Event Outcome Indicator as fields, the
active participants (AE titles, hosts, TLS subject, API token label) and the
participant objects (study UID, patient ID, accession number, instance
counts). ``docs/operations.md`` ("Audit trail") lists every record.

The node's ordinary log never carries identifiers (:mod:`service.logs`);
this module writes them to a separate file and nowhere else.

The file itself (permissions, append-only writes, rotation, retention,
fsync) is :mod:`service.audit_file`.

Writing never raises into the caller (an SCP thread, a worker, the API): a
failed write is logged (``audit_write_failed``, errno only) and counted
(``dopanode_audit_write_errors_total``). Opening the trail at start-up does
raise, and the node then refuses to start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

from pydicom.sr.codedict import codes

from service.audit_file import AuditTrail, count_write_failure

_DCM = codes.DCM
#: PS3.15 A.5 Event IDs (CID 400) and Event Type Codes (CID 401) the node writes.
APPLICATION_ACTIVITY = _DCM.ApplicationActivity          # 110100
APPLICATION_START = _DCM.ApplicationStart                # 110120
APPLICATION_STOP = _DCM.ApplicationStop                  # 110121
INSTANCES_ACCESSED = _DCM.DICOMInstancesAccessed         # 110103
INSTANCES_TRANSFERRED = _DCM.DICOMInstancesTransferred   # 110104
QUERY = _DCM.Query                                       # 110112
SECURITY_ALERT = _DCM.SecurityAlert                      # 110113
USER_AUTHENTICATION = _DCM.UserAuthentication            # 110114
LOGIN = _DCM.Login                                       # 110122
AUDIT_STARTED = _DCM.AuditRecordingStarted               # 110134
AUDIT_STOPPED = _DCM.AuditRecordingStopped               # 110133
#: A.5 Role ID Codes of active participants (CID 402).
SOURCE_ROLE = _DCM.SourceRoleID                          # 110153
DESTINATION_ROLE = _DCM.DestinationRoleID                # 110152
APPLICATION_ROLE = _DCM.Application                      # 110150


class Outcome(IntEnum):
    """A.5 Event Outcome Indicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4
    SERIOUS_FAILURE = 8
    MAJOR_FAILURE = 12


def code(value: Any) -> dict[str, str] | None:
    """A pydicom ``Code`` as ``{"code", "scheme", "meaning"}`` (None stays None)."""
    if value is None:
        return None
    return {"code": str(value.value), "scheme": str(value.scheme_designator),
            "meaning": str(value.meaning)}


def participant(role: Any, *, requestor: bool, ae_title: str | None = None,
                host: str | None = None, port: int | None = None,
                tls_subject: str | None = None, user: str | None = None) -> dict[str, Any]:
    """One A.5 Active Participant (``role``: a Role ID Code, e.g. :data:`SOURCE_ROLE`)."""
    return {"role": code(role), "requestor": requestor, "ae_title": ae_title, "host": host,
            "port": port, "tls_subject": tls_subject, "user": user}


def patient_study(ds: Any) -> dict[str, Any]:
    """``patient_id``, ``study_uid``, ``accession`` of a dataset (empty as None)."""
    def value(keyword: str) -> str | None:
        found = str(ds.get(keyword, "") or "").strip()
        return found or None
    return {"study_uid": value("StudyInstanceUID"), "patient_id": value("PatientID"),
            "accession": value("AccessionNumber")}



# --- the process's trail ---------------------------------------------------------
_current: AuditTrail | None = None


def open_trail(settings: Any, source: Mapping[str, Any] | None = None) -> AuditTrail | None:
    """Open and install the trail ``settings`` (``Settings.audit``) describe; None if disabled.

    Writes the A.5 "Audit Recording Started" record.
    """
    if not settings.enabled:
        return None
    trail = AuditTrail(Path(settings.path), settings.retention_days, settings.rotate_mb,
                       settings.rotate_hours, settings.fsync_interval_s, source).open()
    install(trail)
    emit("audit_started", SECURITY_ALERT, AUDIT_STARTED, action="E",
         details={"path": str(trail.path), "retention_days": trail.retention_days})
    return trail


def close_trail() -> None:
    """Write "Audit Recording Stopped", uninstall and close the process's trail."""
    emit("audit_stopped", SECURITY_ALERT, AUDIT_STOPPED, action="E")
    trail = install(None)
    if trail is not None:
        trail.close()


def install(trail: AuditTrail | None) -> AuditTrail | None:
    """Make ``trail`` the one :func:`emit` writes to; returns the previous one."""
    global _current
    previous, _current = _current, trail
    return previous


def current() -> AuditTrail | None:
    return _current


def emit(event: str, event_id: Any, event_type: Any = None, *, action: str = "E",
         outcome: Outcome = Outcome.SUCCESS, outcome_text: str = "",
         participants: Sequence[Mapping[str, Any]] = (),
         objects: Sequence[Mapping[str, Any]] = (),
         details: Mapping[str, Any] | None = None) -> None:
    """Write one audit record (a no-op when no trail is installed; never raises).

    Parameters
    ----------
    event : str
        Our short name (``association``, ``instances_received``, ...).
    event_id, event_type : pydicom Code
        A.5 Event ID (CID 400) and Event Type Code (CID 401, may be None).
    action : str
        A.5 Event Action Code: C, R, U, D or E.
    outcome : Outcome
    outcome_text : str
        Why, as a short slug or patient-free phrase.
    participants : sequence of mapping
        Active participants (:func:`participant`).
    objects : sequence of mapping
        Participant objects: studies with ``patient_id``, ``accession``, counts.
    details : mapping
        Anything else (pipeline, algorithm version, route, status).
    """
    trail = _current
    if trail is None:
        return
    record = {"event": event, "event_id": code(event_id), "event_type": code(event_type),
              "action": action, "outcome": int(outcome), "outcome_text": outcome_text,
              "participants": list(participants), "objects": list(objects),
              "details": dict(details or {})}
    try:
        trail.write(record)
    except OSError as exc:  # the trail's edge: the caller's work goes on, the loss is counted
        count_write_failure(exc)
