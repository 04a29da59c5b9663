"""Read-only views over ``jobs`` for the API, the admin page and /metrics.

The queue's writes stay in :mod:`service.store.jobs`, the one ``Job`` row
type in :mod:`service.store.job_row`; these summaries only read. Functions
take a connection and do not commit.
"""

from __future__ import annotations

from service.store.job_row import JOB_COLUMNS, JOB_STATES, Job, job_from_row
from service.store.rows import Connection


def latest_done_per_pipeline(conn: Connection, study_uid: str) -> dict[str, Job]:
    """For each pipeline, the newest done job of a study (what the API serves)."""
    latest: dict[str, Job] = {}
    for row in conn.execute(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE study_uid = ? AND state = 'done'"
            " ORDER BY finished_at DESC, id DESC", (study_uid,)):
        job = job_from_row(row)
        latest.setdefault(job.pipeline, job)
    return latest


def recent_studies(conn: Connection, limit: int = 20) -> list[tuple[str, list[Job]]]:
    """The studies with the newest jobs, newest first, each with its pipelines' latest job.

    Superseded jobs are left out; per study, one job per pipeline (the newest,
    whatever its state), ordered by pipeline name.
    """
    studies = [str(r[0]) for r in conn.execute(
        "SELECT study_uid FROM jobs WHERE state != 'superseded' GROUP BY study_uid"
        " ORDER BY MAX(id) DESC LIMIT ?", (int(limit),))]
    out: list[tuple[str, list[Job]]] = []
    for study_uid in studies:
        latest: dict[str, Job] = {}
        for row in conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE study_uid = ? AND state != 'superseded'"
                " ORDER BY id DESC", (study_uid,)):
            job = job_from_row(row)
            latest.setdefault(job.pipeline, job)
        out.append((study_uid, [latest[name] for name in sorted(latest)]))
    return out


def counts(conn: Connection) -> dict[tuple[str, str], int]:
    """Number of jobs per (pipeline, state)."""
    return {(str(p), str(s)): int(n) for p, s, n in conn.execute(
        "SELECT pipeline, state, COUNT(*) FROM jobs GROUP BY pipeline, state")}


def state_counts(conn: Connection) -> dict[str, int]:
    """Number of jobs per state over all pipelines (every state present)."""
    totals = dict.fromkeys(JOB_STATES, 0)
    for (_, state), n in counts(conn).items():
        totals[state] += n
    return totals

