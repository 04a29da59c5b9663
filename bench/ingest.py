"""Ingest benchmark: DCMTK storescu into dopanode, Orthanc and DCMTK storescp.

One command, ``python bench/ingest.py``, does everything in one run:

1. generates (seeded, in a temporary folder on the same disk as the
   receivers' storage) a 200-instance per-slice NM series of 512x512 uint16
   slices (0.5 MiB per instance) and a batch of 20 multi-frame NM studies
   (128 frames of 128x128 uint16, 4 MiB each);
2. for each repetition and each workload, starts a *fresh* receiver of each
   kind (targets interleaved, so slow phases of a loaded machine hit all of
   them alike), sends the workload with one ``storescu`` association
   (``TCP_NODELAY=1`` in its environment) and times the storescu process;
3. checks that every receiver really holds every instance, then prints a
   table of medians: seconds, instances/s, MB/s, and speed ratios
   (``t_other / t_dopanode``: above 1 means dopanode is faster).

Receivers (all write to folders under the same temporary directory):

* ``dopanode``: ``dopanode serve --only scp`` as a real subprocess
  (service/testing/node.py); every instance fsynced, renamed, its
  directory fsynced and its row committed before Success;
* ``orthanc``: Orthanc with the integration tests' configuration
  (service/testing/orthanc.py): ``SyncStorageArea`` true (its default since
  1.7.4: fsync of every stored file), SQLite index with Orthanc's own
  defaults, no ``--verbose``, storage compression off;
* ``storescp``: DCMTK storescp writing files without fsync (upper reference).

See bench/README.md for options and how to read the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from service.testing.node import NodeProcess
from service.testing.orthanc import OrthancPeer
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open

REPO_ROOT = Path(__file__).resolve().parents[1]

NM_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.20")
MB = 1e6
TARGETS = ("dopanode", "orthanc", "storescp")


# --- data --------------------------------------------------------------------------
def _nm_dataset(rng: np.random.Generator, seed: str, study: int, index: int,
                frames: int, size_px: int, slices_in_series: int) -> Dataset:
    """One NM Image Storage instance with seeded noise pixels (uint16)."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = NM_IMAGE_STORAGE
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[seed, "sop", str(study), str(index)])
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study", str(study)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series", str(study)])
    ds.PatientName = f"BENCH^INGEST{study:02d}"
    ds.PatientID = f"BENCH{study:02d}"
    ds.Modality = "NM"
    ds.InstanceNumber = index + 1
    ds.NumberOfFrames = frames
    ds.NumberOfSlices = slices_in_series
    ds.ImagesInAcquisition = slices_in_series
    ds.Rows = ds.Columns = size_px
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [4.0, 4.0]
    ds.SliceThickness = 4.0
    pixels = rng.integers(0, 1000, size=(frames, size_px, size_px), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    return ds


def generate(root: Path, seed: int) -> dict[str, list[Path]]:
    """Write both workloads under ``root``; returns workload name -> files."""
    rng = np.random.default_rng(seed)
    per_slice = root / "per_slice"
    multi = root / "multiframe"
    per_slice.mkdir(parents=True)
    multi.mkdir(parents=True)
    made: dict[str, list[Path]] = {"per_slice_200": [], "multiframe_20": []}
    for i in range(200):
        path = per_slice / f"{i:03d}.dcm"
        _nm_dataset(rng, str(seed), 0, i, 1, 512, 200).save_as(path, enforce_file_format=True)
        made["per_slice_200"].append(path)
    for s in range(20):
        path = multi / f"{s:02d}.dcm"
        _nm_dataset(rng, str(seed), 1 + s, 0, 128, 128, 1).save_as(
            path, enforce_file_format=True)
        made["multiframe_20"].append(path)
    return made


# --- receivers ---------------------------------------------------------------------
class Receiver(Protocol):
    ae_title: str
    port: int
    pid: int

    def stored_count(self) -> int: ...
    def stop(self) -> None: ...


class DopanodeReceiver:
    """``dopanode serve --only scp`` (a real subprocess), from this checkout or another.

    ``receive`` is ``(node.acceptor, storage.spool_sync)``; None keeps the defaults.
    """

    def __init__(self, work: Path, repo_root: Path = REPO_ROOT,
                 receive: tuple[str, str] | None = None) -> None:
        settings: dict[str, dict[str, object]] = {"storage": {"max_instance_mb": 64}}
        if receive is not None:
            settings["node"] = {"acceptor": receive[0]}
            settings["storage"]["spool_sync"] = receive[1]
        self.node = NodeProcess(work, components="scp", log_level="INFO", settings=settings,
                                cwd=repo_root, test_pipelines=False)
        try:
            self.node.start(timeout_s=60)
        except BaseException:
            self.node.kill()  # never leave a half-started node behind
            raise
        self.ae_title, self.port = self.node.ae_title, self.node.scp_port
        assert self.node.proc is not None
        self.pid = self.node.proc.pid

    def stored_count(self) -> int:
        return int(self.node.query("SELECT COUNT(*) FROM instances")[0][0])

    def stop(self) -> None:
        self.node.stop()


class OrthancReceiver:
    """Orthanc with the integration fixture's (durable) configuration."""

    def __init__(self, work: Path) -> None:
        self.peer = OrthancPeer(work).start(timeout_s=60)
        self.ae_title, self.port = self.peer.ae_title, self.peer.dicom_port
        assert self.peer._proc is not None
        self.pid = self.peer._proc.pid

    def stored_count(self) -> int:
        return int(self.peer.get("/statistics")["CountInstances"])

    def stop(self) -> None:
        self.peer.stop()


class StorescpReceiver:
    """DCMTK storescp writing plain files (no fsync)."""

    def __init__(self, work: Path) -> None:
        self.out = work / "files"
        self.out.mkdir(parents=True)
        self.ae_title, self.port = "STORESCP", free_port()
        log = (work / "storescp.log").open("ab")
        self.proc = subprocess.Popen(
            [_tool("storescp"), "--aetitle", self.ae_title, "--output-directory",
             str(self.out), str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.pid = self.proc.pid
        try:
            wait_until(lambda: tcp_open(self.port), 30, "storescp to listen")
        except BaseException:
            self.stop()
            raise

    def stored_count(self) -> int:
        return sum(1 for _ in self.out.iterdir())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


FACTORIES: dict[str, Callable[[Path], Receiver]] = {
    "dopanode": DopanodeReceiver, "orthanc": OrthancReceiver, "storescp": StorescpReceiver,
}


def add_baseline(rev: str, work: Path) -> str:
    """Unpack ``git archive rev`` and register it as target ``base:<rev>``."""
    tree = work / "baseline"
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", "--format=tar", rev],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    name = f"base:{rev}"[:9]
    FACTORIES[name] = lambda folder: DopanodeReceiver(folder, repo_root=tree)
    return name


def add_variant(spec: str) -> str:
    """Register ``ACCEPTOR/SPOOL_SYNC`` (e.g. ``event/auto``) as target ``dn:<spec>``."""
    acceptor, _, spool_sync = spec.partition("/")
    name = f"dn:{acceptor}/{spool_sync}"
    FACTORIES[name] = lambda folder: DopanodeReceiver(folder, receive=(acceptor, spool_sync))
    return name


def _tool(name: str) -> str:
    try:
        return require_tool(name)
    except FileNotFoundError as exc:
        raise SystemExit(str(exc)) from None


def cpu_s(pid: int) -> float:
    """User + system CPU time a process has used so far, s (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(paths: list[Path], receiver: Receiver) -> tuple[float, float]:
    """One storescu association with every file; returns (wall s, receiver CPU s)."""
    cmd = [_tool("storescu"), "-aet", "STORESCU", "-aec", receiver.ae_title,
           "127.0.0.1", str(receiver.port), *map(str, paths)]
    cpu_before = cpu_s(receiver.pid)
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TCP_NODELAY": "1"})
    elapsed = time.perf_counter() - started
    cpu = cpu_s(receiver.pid) - cpu_before
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, cpu


# --- run and report ----------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    workload: str
    target: str
    runs_s: tuple[float, ...]
    cpu_s: tuple[float, ...]
    instances: int
    megabytes: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s)


def run(data: dict[str, list[Path]], work: Path, targets: tuple[str, ...],
        reps: int) -> list[Row]:
    """Every (workload, target) ``reps`` times, fresh receiver each time."""
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for workload, paths in data.items():
        for rep in range(reps):
            for target in targets:
                folder = work / f"{target}-{workload}-{rep}"
                receiver = FACTORIES[target](folder)
                try:
                    elapsed, cpu = send(paths, receiver)
                    want = len(paths)
                    stored = wait_until(lambda r=receiver, n=want: r.stored_count() >= n
                                        and r.stored_count(), 30, f"{target} to hold all")
                finally:
                    receiver.stop()
                if stored != len(paths):
                    raise RuntimeError(f"{target} holds {stored} of {len(paths)} instances")
                times.setdefault((workload, target), []).append((elapsed, cpu))
                print(f"  {workload:14s} {target:18s} rep {rep + 1}: {elapsed:6.2f} s"
                      f" (receiver CPU {cpu:5.2f} s, load {os.getloadavg()[0]:.1f})", flush=True)
                shutil.rmtree(folder, ignore_errors=True)
    rows = []
    for (workload, target), runs in times.items():
        size = sum(p.stat().st_size for p in data[workload]) / MB
        rows.append(Row(workload, target, tuple(t for t, _ in runs), tuple(c for _, c in runs),
                        len(data[workload]), size))
    return rows


def table(rows: list[Row]) -> str:
    """The report: medians, throughput, and speed ratios against dopanode."""
    out = [f"{'workload':14s} {'target':18s} {'median s':>9s} {'min s':>7s} {'max s':>7s}"
           f" {'inst/s':>8s} {'MB/s':>7s} {'CPU s':>6s}"]
    for r in rows:
        out.append(f"{r.workload:14s} {r.target:18s} {r.median_s:9.2f} {min(r.runs_s):7.2f}"
                   f" {max(r.runs_s):7.2f} {r.instances / r.median_s:8.1f}"
                   f" {r.megabytes / r.median_s:7.1f} {statistics.median(r.cpu_s):6.2f}")
    by = {(r.workload, r.target): r for r in rows}
    out.append("speed ratio = median time of the other / median time of dopanode"
               " (> 1: dopanode faster)")
    targets = list(dict.fromkeys(r.target for r in rows))
    nodes = [t for t in targets if t == "dopanode" or t.startswith("dn:")]
    for workload in dict.fromkeys(r.workload for r in rows):
        for mine in nodes:
            node = by.get((workload, mine))
            others = ("orthanc", "storescp", *(t for t in targets if t.startswith("base:")),
                      *(t for t in nodes if t != mine))
            for other in others:
                peer = by.get((workload, other))
                if node and peer:
                    out.append(f"  {workload:14s} {mine:18s} vs {other:18s}"
                               f" {peer.median_s / node.median_s:5.2f}x")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median)")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help="comma-separated subset of " + ",".join(TARGETS))
    parser.add_argument("--workloads", default="per_slice_200,multiframe_20")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="parent of the temporary folder (default: system temp,"
                             " must be on the disk you want to measure)")
    parser.add_argument("--json", type=Path, default=None, help="also write rows as JSON")
    parser.add_argument("--baseline", metavar="GIT_REV", default=None,
                        help="also measure dopanode as of this git revision (before/after"
                             " in the same run)")
    parser.add_argument("--variants", default="",
                        help="also measure dopanode with these ACCEPTOR/SPOOL_SYNC choices,"
                             " e.g. event/auto,pynetdicom/posix (targets dn:...)")
    args = parser.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    # DCMTK (storescu, storescp and the DCMTK inside Orthanc) leaves Nagle's
    # algorithm on unless TCP_NODELAY=1 is in its environment: without it every
    # small C-STORE response waits for a delayed ACK (~40 ms per instance).
    # Every subprocess inherits this; dopanode sets TCP_NODELAY itself.
    os.environ["TCP_NODELAY"] = "1"
    if unknown := set(targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    with tempfile.TemporaryDirectory(prefix="dopanode-bench-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        fs = subprocess.run(["df", "-T", str(work)], capture_output=True, text=True).stdout
        print(f"work dir {work} on: {fs.splitlines()[-1] if fs else '?'}")
        print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}")
        if args.baseline:
            targets = (add_baseline(args.baseline, work), *targets)
        targets = (*targets, *(add_variant(v) for v in args.variants.split(",") if v))
        data = generate(work / "data", args.seed)
        data = {k: v for k, v in data.items() if k in args.workloads.split(",")}
        rows = run(data, work, targets, args.reps)
    print(f"load average after: {os.getloadavg()}")
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([{**asdict(r), "median_s": r.median_s} for r in rows],
                                        indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
