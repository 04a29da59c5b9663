"""The sender's re-send window after a crash (reliability audit D12), measured.

A crash of the node re-sends an output only if it falls between the moment
the destination stored the object and the moment the node's "sent" mark is
committed. The first part is the destination's (the time it takes to answer
after storing); this measures the node's part: from the C-STORE-RSP decoded
by pynetdicom (``EVT_DIMSE_RECV`` in the association's reader thread) to the
committed mark (the first statement after the commit), per object, over
``--n`` outputs sent in one association to a pynetdicom storage SCP on
loopback, with the sender's SQLite connection at ``synchronous=NORMAL`` (the
node's setting) and at ``FULL`` (before). Also the cost of the in-flight mark
(one more commit before each C-STORE): objects per second both ways.

    PYTHONPATH=$PWD .venv/bin/python bench/resend_window.py --n 200

Numbers and their run: bench/README.md "Re-send window".
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import evt

from service import metrics
from service.dicom import codes
from service.net import scu
from service.store import db, outbox
from service.store.dialect import SQLITE
from service.testing.destination import HoldingDestination


class _Dest:
    name, ae_title, host = "pacs", "PACS", "127.0.0.1"

    def __init__(self, port: int) -> None:
        self.port = port


def _output(i: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = codes.NM_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["resend-window", str(i)])
    ds.StudyInstanceUID = ds.SeriesInstanceUID = generate_uid(entropy_srcs=["resend-window"])
    ds.Modality, ds.Rows, ds.Columns = "NM", 64, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.full((64, 64), i, dtype=np.uint16).tobytes()
    return ds


class _Timing:
    """Response arrival (reader thread) and commit-done times of each sent object."""

    def __init__(self) -> None:
        self.rsp_at: list[float] = []
        self.committed_at: list[float] = []

    def on_dimse_recv(self, event: evt.Event) -> None:
        if type(event.message).__name__ == "C_STORE_RSP":
            self.rsp_at.append(time.perf_counter())


def run(n: int, synchronous: str, work: Path) -> dict[str, float]:
    """Send ``n`` outputs in one pass; the window's statistics, ms, and objects/s."""
    database = db.Database(work / f"{synchronous}.sqlite3")
    database.migrate()
    conn = database.connect()
    with conn:
        for i in range(n):
            ds = _output(i)
            path = work / f"{synchronous}-{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            outbox.enqueue(conn, 1, ["pacs"], path, ds.SOPClassUID, ds.SOPInstanceUID)
    pacs = HoldingDestination()
    timing = _Timing()
    deliveries = metrics.DELIVERIES

    class _After:  # the first thing _record does after its commit
        def labels(self, **kw: str) -> Any:
            timing.committed_at.append(time.perf_counter())
            return deliveries.labels(**kw)

    setup = () if synchronous == "FULL" else SQLITE.ingest_setup
    dialect = dataclasses.replace(SQLITE, ingest_setup=setup)
    associate = scu.Sender._associate

    def bound_associate(self: scu.Sender, *args: Any) -> Any:
        assoc = associate(self, *args)
        assoc.bind(evt.EVT_DIMSE_RECV, timing.on_dimse_recv)
        return assoc

    saved = (scu.dialect_of, metrics.DELIVERIES, scu.Sender._associate)
    scu.dialect_of = lambda _conn: dialect  # type: ignore[assignment]
    metrics.DELIVERIES = _After()  # type: ignore[assignment]
    scu.Sender._associate = bound_associate  # type: ignore[method-assign,assignment]
    try:
        sender = scu.Sender(database, [_Dest(pacs.port)], "DOPANODE", batch_size=n)
        started = time.perf_counter()
        report = sender.send_due("pacs")
        elapsed = time.perf_counter() - started
    finally:
        scu.dialect_of, metrics.DELIVERIES, scu.Sender._associate = saved  # type: ignore[method-assign]
        pacs.stop()
        conn.close()
    if report.sent != n or len(timing.rsp_at) != n or len(timing.committed_at) != n:
        raise RuntimeError(f"sent {report.sent} of {n}, timed {len(timing.rsp_at)}")
    window_ms = sorted(1e3 * (c - r) for r, c in zip(timing.rsp_at, timing.committed_at,
                                                      strict=True))
    return {"median_ms": statistics.median(window_ms),
            "p95_ms": window_ms[int(0.95 * (n - 1))], "max_ms": window_ms[-1],
            "objects_per_s": n / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="outputs per variant")
    parser.add_argument("--dir", type=Path, default=Path.cwd(),
                        help="where the database and outputs go (a node's disk, not a tmpfs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="resend-window-") as tmp:
        print(f"{'sender commit':<16}{'median ms':>10}{'p95 ms':>9}{'max ms':>9}{'obj/s':>8}")
        for synchronous in ("FULL", "NORMAL", "FULL", "NORMAL"):
            r = run(args.n, synchronous, Path(tmp))
            print(f"{synchronous:<16}{r['median_ms']:>10.2f}{r['p95_ms']:>9.2f}"
                  f"{r['max_ms']:>9.2f}{r['objects_per_s']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
