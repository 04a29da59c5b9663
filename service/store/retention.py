"""The retention purge: received series and their outputs older than the site keeps."""

from __future__ import annotations

import logging

from service.store import db
from service.store.blobs import Blobs, as_blobs, output_prefix
from service.store.dialect import dialect_of
from service.store.rows import Connection
from service.store.spool import Spool

log = logging.getLogger(__name__)


def purge_expired(conn: Connection, store: Blobs | Spool, cutoff: float) -> int:
    """Delete series last received before ``cutoff`` (blobs, then rows); returns how many.

    A series is kept while it waits for routing, while any of its jobs is
    pending or running, finished after ``cutoff``, or has an output still
    waiting in the outbox, and while a pending or running job of another
    series reads it as a companion input. Every attempt's outputs of a
    purged job go (``outputs/<job>/``). Blobs go
    first: a crash in between leaves rows whose files are gone, removed by
    the next purge, never files that start-up recovery would bring back.
    """
    dialect = dialect_of(conn)
    expired = [str(r[0]) for r in conn.execute(
        "SELECT s.series_uid FROM series s WHERE s.last_received_at < ?"
        " AND s.state != 'complete' AND NOT EXISTS ("
        " SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid AND (j.state IN"
        " ('pending', 'running') OR COALESCE(j.finished_at, j.created_at) >= ?"
        " OR EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = j.id AND o.state = 'pending')))"
        f" AND NOT EXISTS (SELECT 1 FROM jobs j, {dialect.json_items('j.inputs_json', 'e')}"
        " WHERE j.state IN ('pending', 'running')"
        f" AND {dialect.json_field('e', 'series_uid')} = s.series_uid)",
        (cutoff, cutoff),
    )]
    if conn.in_transaction:
        conn.commit()  # no snapshot held while files are deleted
    blobs = as_blobs(store)
    for series_uid in expired:
        job_ids = [int(r[0]) for r in conn.execute(
            "SELECT id FROM jobs WHERE series_uid = ?", (series_uid,))]
        for _, key in db.series_instances(conn, series_uid):
            blobs.delete(key)
        for job_id in job_ids:
            blobs.delete_prefix(output_prefix(job_id))
        with conn:
            conn.executemany("DELETE FROM outbox WHERE job_id = ?", [(j,) for j in job_ids])
            conn.execute("DELETE FROM jobs WHERE series_uid = ?", (series_uid,))
            conn.execute("DELETE FROM instances WHERE series_uid = ?", (series_uid,))
            conn.execute("DELETE FROM series WHERE series_uid = ?", (series_uid,))
    if expired:
        log.info("retention_purged", extra={"fields": {"series": len(expired)}})
    return len(expired)


