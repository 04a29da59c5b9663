"""The job row: :class:`Job`, its inputs, and how a ``jobs`` row is read into one.

The queue (:mod:`service.store.jobs`, every write) and its read-only views
(:mod:`service.store.job_views`) both select :data:`JOBJOB_COLUMNS` and decode
the row with :func:`job_from_row`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

JOB_STATES: tuple[str, ...] = ("pending", "running", "done", "failed", "superseded")

#: The columns of ``jobs`` a :class:`Job` is read from, in :func:`job_from_row`'s order.
JOB_COLUMNS = (
    "id, pipeline, series_uid, study_uid, content_hash, state, attempts, max_attempts,"
    " lease_owner, lease_expires_at, reason, reason_code, created_at, started_at, finished_at,"
    " result_json, stage_durations_json, note, lease_token, not_before, deferrals,"
    " instance_uids_json, inputs_json, outputs_json"
)
_SCALARS = tuple(c.strip() for c in JOB_COLUMNS.split(","))[:21]


@dataclass(frozen=True)
class JobInput:
    """One input series of a job with the instances it had when the job was made."""

    role: str
    series_uid: str
    instance_uids: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    """One row of ``jobs``; times are seconds since the epoch."""

    id: int
    pipeline: str
    series_uid: str
    study_uid: str
    content_hash: str
    state: str
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: float | None
    reason: str | None
    reason_code: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    result_json: str | None
    stage_durations_json: str | None
    note: str | None
    lease_token: str | None
    not_before: float | None
    deferrals: int
    instance_uids: tuple[str, ...]
    inputs: tuple[JobInput, ...]
    outputs: tuple[dict[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (result and durations parsed, no instance lists)."""
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "series_uid": self.series_uid,
            "study_uid": self.study_uid,
            "content_hash": self.content_hash,
            "state": self.state,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "reason": self.reason,
            "reason_code": self.reason_code,
            "note": self.note,
            "not_before": self.not_before,
            "deferrals": self.deferrals,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "instance_count": len(self.instance_uids),
            "inputs": [{"role": i.role, "series_uid": i.series_uid,
                        "instance_count": len(i.instance_uids)} for i in self.inputs],
            "result": None if self.result_json is None else json.loads(self.result_json),
            "stage_durations_s": None
            if self.stage_durations_json is None
            else json.loads(self.stage_durations_json),
            "outputs": list(self.outputs),
        }


def job_from_row(row: Sequence[Any]) -> Job:
    """A :class:`Job` from a row that selected :data:`JOB_COLUMNS`, in that order."""
    n = len(_SCALARS)
    values: dict[str, Any] = dict(zip(_SCALARS, row[:n], strict=True))
    inputs = tuple(JobInput(str(i["role"]), str(i["series_uid"]), tuple(i["instance_uids"]))
                   for i in json.loads(row[n + 1]))
    outputs = tuple(json.loads(row[n + 2])) if row[n + 2] else ()
    return Job(**values, instance_uids=tuple(json.loads(row[n])), inputs=inputs,
               outputs=outputs)
