"""The sweep of blobs no row refers to (orphans), run by the scheduler singleton.

How orphans arise:

* S3 only: a listener PUT an instance and died before its row committed (the
  C-STORE was never acknowledged; a retry by the sender finds the object and
  records the row, a sender that gives up leaves the object behind);
* both adapters: outputs of an attempt whose finish lost (a stale worker whose
  lease was taken over, an attempt deferred or given back to the queue). The
  retention purge removes them with their job; without retention they stayed.

A blob is deleted when it is older than the grace age (``[storage]
orphan_grace_h``, default 24 h: far above any C-STORE or job) and

* ``instances/<study>/<series>/<sop>.dcm``: no instance row has this key as
  its path;
* ``outputs/<job>/<token>/<sop>.dcm``: the key is neither in its job's
  outputs, nor an outbox item's path, nor the running attempt's (the job is
  ``running`` under that lease token).

Never swept: instance files of the local spool (the files are the truth
there: :func:`service.store.series.recover_spool` records them at start),
and any key that is not of this node's grammar (outputs of the older
``outputs/<job>/<sop>.dcm`` layout, foreign objects under the prefix): what
the sweep does not understand it does not delete. One bucket prefix per
database: a sweep deletes objects that its own rows do not name.

The race with a listener: a C-STORE whose conditional PUT found an object
already there (412) records a row pointing at an object it did not write,
perhaps an old orphan being swept. Each batch's check and delete run in one
transaction under :func:`~service.store.dialect.lock_blob_keys` (exclusive);
that listener takes the same lock shared around its row and then checks the
object is still there, putting its copy back when the sweep got there first
(:class:`service.net.instance_store.InstanceStore`). So either the sweep sees
the row, or the listener sees the deletion.

Logs carry counts only, never keys: keys hold study and series UIDs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice

from service import metrics
from service.store.blobs import INSTANCES, OUTPUTS, Blobs, BlobStoreError, validated_key
from service.store.dialect import lock_blob_keys
from service.store.rows import Connection

log = logging.getLogger(__name__)

#: Default grace age, hours: far above any C-STORE or job.
DEFAULT_GRACE_H = 24.0
#: Keys checked (and at most deleted) per transaction and scheduler round.
BATCH = 500
#: Parameters per ``IN (...)`` list (far below SQLite's and PostgreSQL's limits).
_IN_CHUNK = 250


@dataclass(frozen=True)
class SweepCounts:
    """What one whole sweep did (counts only)."""

    listed: int = 0
    old: int = 0
    instances_deleted: int = 0
    outputs_deleted: int = 0

    def plus(self, listed: int, old: int, instances: int, outputs: int) -> SweepCounts:
        return SweepCounts(self.listed + listed, self.old + old,
                           self.instances_deleted + instances, self.outputs_deleted + outputs)


def sweep_prefixes(blobs: Blobs) -> tuple[str, ...]:
    """The prefixes a sweep lists: outputs everywhere, instances on S3 only."""
    return (f"{INSTANCES}/", f"{OUTPUTS}/") if blobs.kind == "s3" else (f"{OUTPUTS}/",)


def _kind(key: str) -> str | None:
    """``"instance"`` or ``"output"`` for a key of this node's grammar; else None."""
    try:
        validated_key(key)
    except ValueError:
        return None
    return "instance" if key.startswith(f"{INSTANCES}/") else "output"


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def unreferenced_instances(conn: Connection, keys: Sequence[str]) -> list[str]:
    """Those of the instance ``keys`` that no instance row has as its path."""
    by_sop: dict[str, set[str]] = {}
    for key in keys:
        by_sop.setdefault(key.rsplit("/", 1)[1][:-4], set()).add(key)
    known: set[str] = set()
    sops = sorted(by_sop)
    for part in _chunks(sops):
        known.update(str(r[0]) for r in conn.execute(
            f"SELECT path FROM instances WHERE sop_instance_uid IN ({_marks(len(part))})",
            tuple(part)))
    return [k for k in keys if k not in known]


def unreferenced_outputs(conn: Connection, keys: Sequence[str]) -> list[str]:
    """Those of the output ``keys`` that no job, outbox item or running attempt names."""
    job_ids = sorted({k.split("/")[1] for k in keys}, key=int)
    named: set[str] = set()
    running: set[tuple[str, str]] = set()
    for part in _chunks(job_ids):
        ids = tuple(int(j) for j in part)
        for job_id, state, token, outputs in conn.execute(
                f"SELECT id, state, lease_token, outputs_json FROM jobs"
                f" WHERE id IN ({_marks(len(ids))})", ids):
            if state == "running" and token:
                running.add((str(job_id), str(token)))
            for ref in json.loads(outputs) if outputs else ():
                if isinstance(ref, dict) and "key" in ref:
                    named.add(str(ref["key"]))
        named.update(str(r[0]) for r in conn.execute(
            f"SELECT path FROM outbox WHERE job_id IN ({_marks(len(ids))})", ids))
    return [k for k in keys
            if k not in named and tuple(k.split("/")[1:3]) not in running]


def sweep_batch(conn: Connection, blobs: Blobs, keys: Sequence[str]) -> tuple[int, int]:
    """Delete those of ``keys`` (old enough, of this grammar) no row refers to.

    One transaction under the exclusive blob-keys lock: the check and the
    deletes see no listener adopting one of these objects meanwhile.
    Returns (instances deleted, outputs deleted).
    """
    instances = [k for k in keys if _kind(k) == "instance"]
    outputs = [k for k in keys if _kind(k) == "output"]
    with conn:
        lock_blob_keys(conn, exclusive=True)
        dead_instances = unreferenced_instances(conn, instances) if instances else []
        dead_outputs = unreferenced_outputs(conn, outputs) if outputs else []
        blobs.delete_many([*dead_instances, *dead_outputs])
    metrics.ORPHAN_BLOBS_DELETED.labels(kind="instance").inc(len(dead_instances))
    metrics.ORPHAN_BLOBS_DELETED.labels(kind="output").inc(len(dead_outputs))
    return len(dead_instances), len(dead_outputs)


class OrphanSweep:
    """A sweep spread over scheduler rounds: one listing page's worth per :meth:`step`.

    Parameters
    ----------
    blobs : Blobs
    grace_s : float
        Blobs younger than this (last modified, against the caller's ``now``)
        are never deleted.
    interval_s : float or None
        Time from the end of one sweep to the start of the next (default: a
        quarter of the grace age, at least an hour).
    batch : int
        Keys checked per step.
    """

    def __init__(self, blobs: Blobs, grace_s: float, interval_s: float | None = None,
                 batch: int = BATCH) -> None:
        if grace_s <= 0:
            raise ValueError("grace_s must be positive")
        self.blobs = blobs
        self.grace_s = grace_s
        self.interval_s = interval_s if interval_s is not None else max(3600.0, grace_s / 4)
        self.batch = batch
        self._listing: Iterator[tuple[str, float]] | None = None
        self._counts = SweepCounts()
        self._next_at = 0.0

    @property
    def running(self) -> bool:
        """True while a sweep is under way (listing not exhausted)."""
        return self._listing is not None

    def step(self, conn: Connection, now: float) -> SweepCounts | None:
        """Check one batch (starting a sweep when due); the sweep's counts once it ends.

        An object store that fails ends the sweep early (logged); the next
        one starts after the interval.
        """
        if self._listing is None:
            if now < self._next_at:
                return None
            self._listing = chain.from_iterable(
                self.blobs.iter_modified(p) for p in sweep_prefixes(self.blobs))
            self._counts = SweepCounts()
        try:
            page = list(islice(self._listing, self.batch))
            old = [k for k, modified in page if now - modified >= self.grace_s]
            instances, outputs = sweep_batch(conn, self.blobs, old) if old else (0, 0)
        except BlobStoreError as exc:
            log.warning("orphan_sweep_interrupted", extra={"fields": {"error": str(exc)}})
            return self._end(now)
        self._counts = self._counts.plus(len(page), len(old), instances, outputs)
        return self._end(now) if len(page) < self.batch else None

    def _end(self, now: float) -> SweepCounts:
        counts, self._listing, self._next_at = self._counts, None, now + self.interval_s
        log.info("orphan_sweep_done", extra={"fields": {
            "listed": counts.listed, "old": counts.old,
            "instances_deleted": counts.instances_deleted,
            "outputs_deleted": counts.outputs_deleted}})
        return counts

    def run(self, conn: Connection, now: float) -> SweepCounts:
        """A whole sweep now, whatever the interval (tests, ``dopanode`` commands)."""
        self._next_at = 0.0
        while True:
            counts = self.step(conn, now)
            if counts is not None:
                return counts
