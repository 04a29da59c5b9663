"""Scale-out: jobs/min with 1-8 worker processes, ingest behind HAProxy, the queue's claim rate.

One command (``python bench/scaling.py``, 6-8 minutes here; ``--quick`` 4-5):

1. **Workers.** 1, 2, 4 and 8 real ``dopanode serve --only worker`` processes
   (``[worker] count = 1`` each) on one PostgreSQL drain the same K jobs:
   (i) ``fake_nm`` with ``delay_s`` (a sleep: fixed cost, no CPU; the test
   pipeline of service/testing/pipelines.py) and (ii) the real DaT pipeline
   on simulated DaT SPECT studies (``dopanode simulate``, re-UIDed copies).
   The K jobs are made once through the node (C-STORE, series completion,
   one fill worker), then re-queued in one transaction (``jobs.retry``'s
   statement) once all N workers are up: the clock runs from that commit to
   the last ``finished_at``. efficiency = rate(N) / (N x rate(1)).
2. **Ingest behind the balancer.** 4 concurrent storescu associations (one
   per-slice series each) through a real HAProxy (TCP, ``send-proxy-v2``) to 1,
   then 2 ``serve --only scp`` listeners on the same PostgreSQL.
3. **Claim rate.** claim + finish pairs per second of ``service.store.jobs``
   (the worker's own functions) from 1 and 4 processes, on SQLite (WAL,
   ``synchronous=FULL``) and on PostgreSQL, same run.

PostgreSQL runs here with ``fsync`` and ``synchronous_commit`` **on** (the test
server has them off): each commit waits for the disk, as in production.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from pgserver import PgServer, server_bindir  # noqa: E402

from bench.common import print_table, simulate  # noqa: E402
from service.store import jobs  # noqa: E402
from service.store.db import Database  # noqa: E402
from service.store.postgres import PostgresRows  # noqa: E402
from service.testing.haproxy import Balancer  # noqa: E402
from service.testing.nmdata import marker_image, write_marker_study  # noqa: E402
from service.testing.node import NodeProcess, fake_settings  # noqa: E402
from service.testing.peers import require_tool  # noqa: E402
from service.testing.ports import free_port  # noqa: E402

WORKER_COUNTS = (1, 2, 4, 8)
#: jobs.retry's statement for every finished job at once (one transaction)
REQUEUE_SQL = ("UPDATE jobs SET state = 'pending', attempts = 0, deferrals = 0, not_before = NULL,"
               " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, reason = NULL,"
               " reason_code = NULL, started_at = NULL, finished_at = NULL"
               " WHERE state IN ('done', 'failed')")


class DurablePg(PgServer):
    """The tests' PostgreSQL launcher with fsync and synchronous_commit on."""

    def start(self) -> DurablePg:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                  "-U", "postgres", "-E", "UTF8")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                   " -c max_connections=120 -c shared_buffers=64MB")
        self._running = True
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "-o", options, "start")
        return self


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


# --- 1. workers ------------------------------------------------------------------------
def fixed_cost_series(root: Path, k: int) -> list[list[Path]]:
    """K small multi-frame NM series (16x16x8): reading them costs next to nothing."""
    return [write_marker_study(root / f"s{i}", "multiframe",
                               image=marker_image((16, 16, 8), (4.0, 4.0, 4.0)),
                               uid_seed=f"scaling-fixed-{i}") for i in range(k)]


def dat_series(root: Path, k: int, simulated: int) -> list[list[Path]]:
    """K DaT SPECT series: ``simulated`` studies from the simulator, copied with new UIDs."""
    studies = simulate(root / "sim", "siemens_lehr_osem_ctac", simulated, seed=20261201,
                       variant=None, workers=1)
    out = []
    for i in range(k):
        source = studies[i % len(studies)]
        folder = root / "dat" / f"s{i}"
        folder.mkdir(parents=True)
        files = []
        for j, path in enumerate(source.files):
            ds = pydicom.dcmread(path)
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress()  # storescu would not send JPEG 2000 to a node preferring LEE
            ds.StudyInstanceUID = generate_uid(entropy_srcs=["scaling-study", str(i)])
            ds.SeriesInstanceUID = generate_uid(entropy_srcs=["scaling-series", str(i)])
            ds.SOPInstanceUID = generate_uid(entropy_srcs=["scaling-sop", str(i), str(j)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(folder / f"{j}.dcm", enforce_file_format=True)
            files.append(folder / f"{j}.dcm")
        out.append(files)
    return out


def storescu(port: int, files: list[Path]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([require_tool("storescu"), "-aet", "STORESCU", "-aec", "DOPANODE",
                             "127.0.0.1", str(port), *map(str, files)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TCP_NODELAY": "1"})


def _finished(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-1500:]}")


def _settings(pipeline: str, delay_s: float) -> dict[str, Any]:
    base: dict[str, Any] = (fake_settings(delay_s) if pipeline == "fake_nm" else {
        "pipelines": {"fdopa_pet": {"enabled": False}}})
    return {**base, "worker": {"count": 1, "poll_interval_s": 0.2, "lease_s": 120.0,
                               "shutdown_grace_s": 5.0}}


def fill(work: Path, dsn: str, series: list[list[Path]], settings: dict[str, Any],
         pipeline: str) -> None:
    """Make the K jobs through the node: C-STORE, completion, one worker finishes them."""
    with NodeProcess(work / "fill", settings=settings, components="scp,worker",
                     postgres_dsn=dsn, spool_dir=work / "spool") as node:
        node.start(timeout_s=120)
        for files in series:  # one association per series, as a PACS sends them
            _finished(storescu(node.scp_port, files))
        node.wait_for("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')",
                      [(len(series),)], timeout_s=60 + 30 * len(series))
        failed = node.query("SELECT COUNT(*) FROM jobs WHERE state = 'failed'")[0][0]
        if failed:  # a real analysis may refuse a study: still work done, but say so
            print(f"  note: {failed} of {len(series)} {pipeline} jobs failed", flush=True)
        if node.query("SELECT DISTINCT pipeline FROM jobs") != [(pipeline,)]:
            raise RuntimeError("the jobs were not made by the expected pipeline")
        node.stop()


def drain(work: Path, dsn: str, settings: dict[str, Any], n: int, k: int) -> tuple[float, float]:
    """N workers drain the K re-queued jobs: (s from re-queue to last finish, CPU s per job)."""
    import psycopg

    with ExitStack() as stack:
        nodes = [stack.enter_context(NodeProcess(
            work / f"w{n}_{i}", settings=settings, components="worker", postgres_dsn=dsn,
            spool_dir=work / "spool")) for i in range(n)]
        for node in nodes:
            node.start(timeout_s=180)
        cpu_before = sum(cpu_s(node) for node in nodes)
        with psycopg.connect(dsn) as conn:
            conn.execute(REQUEUE_SQL)
            conn.commit()
            started = time.time()
        nodes[0].wait_for("SELECT COUNT(*) FROM jobs WHERE state IN ('done', 'failed')", [(k,)],
                          timeout_s=120 + 30 * k)
        cpu = sum(cpu_s(node) for node in nodes) - cpu_before  # idle polling included
        [(last,)] = nodes[0].query("SELECT MAX(finished_at) FROM jobs")
        for node in nodes:
            node.stop(60)
    return float(last) - started, cpu / k


def cpu_s(node: NodeProcess) -> float:
    """User + system CPU seconds the node's process has used so far (Linux /proc)."""
    assert node.proc is not None
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_scaling(work: Path, pg: PgServer, pipeline: str, series: list[list[Path]],
                   delay_s: float) -> list[dict[str, Any]]:
    dsn = pg.dsn(pg.create_database())
    settings = _settings(pipeline, delay_s)
    fill(work, dsn, series, settings, pipeline)
    rows: list[dict[str, Any]] = []
    for n in WORKER_COUNTS:
        seconds, cpu_per_job = drain(work, dsn, settings, n, len(series))
        rate = 60.0 * len(series) / seconds
        base = rows[0]["jobs_per_min"] if rows else rate
        rows.append({"pipeline": pipeline, "workers": n, "jobs": len(series),
                     "seconds": round(seconds, 2), "jobs_per_min": round(rate, 1),
                     "efficiency": round(rate / (n * base), 2),
                     "cpu_s_per_job": round(cpu_per_job, 3), "load": _load()})
        print(f"  {pipeline} x{n}: {rows[-1]}", flush=True)
    return rows


# --- 2. ingest behind HAProxy ----------------------------------------------------------
def ingest_balanced(work: Path, pg: PgServer, per_series: int) -> list[dict[str, Any]]:
    """4 concurrent associations through HAProxy to 1, then 2 listeners."""
    series = [write_marker_study(work / "ingest" / f"s{i}", "per_slice",
                                 image=marker_image((128, 128, per_series), (3.0, 3.0, 3.0)),
                                 uid_seed=f"scaling-ingest-{i}") for i in range(4)]
    settings = {"node": {"proxy_protocol_from": ["127.0.0.1"]},
                "allowed_callers": [{"ae_title": "STORESCU", "host": "127.0.0.1"}]}
    rows: list[dict[str, Any]] = []
    for listeners in (1, 2):
        dsn = pg.dsn(pg.create_database())
        with ExitStack() as stack:
            nodes = [stack.enter_context(NodeProcess(
                work / f"l{listeners}_{i}", settings=settings, components="scp",
                postgres_dsn=dsn, spool_dir=work / f"spool_l{listeners}"))
                for i in range(listeners)]
            for node in nodes:
                node.start(timeout_s=120)
            lb = stack.enter_context(Balancer(work / f"lb{listeners}",
                                              [("127.0.0.1", n.scp_port) for n in nodes]))
            started = time.perf_counter()
            procs = [storescu(lb.port, files) for files in series]
            for proc in procs:
                _finished(proc)
            seconds = time.perf_counter() - started
            total = sum(len(s) for s in series)
            assert nodes[0].query("SELECT COUNT(*) FROM instances") == [(total,)]
        rate = total / seconds
        rows.append({"listeners": listeners, "instances": total, "seconds": round(seconds, 2),
                     "instances_per_s": round(rate, 1),
                     "ratio": round(rate / rows[0]["instances_per_s"], 2) if rows else 1.0,
                     "load": _load()})
        print(f"  ingest x{listeners}: {rows[-1]}", flush=True)
    return rows


# --- 3. claim rate ---------------------------------------------------------------------
def _seed_jobs(conn: Any, k: int) -> None:
    now = time.time()
    for i in range(k):
        conn.execute("INSERT INTO series (series_uid, study_uid, calling_ae, first_received_at,"
                     " last_received_at, quiet_s, state) VALUES (?, ?, 'B', ?, ?, 1, 'routed')",
                     (f"1.2.{i}", f"1.3.{i}", now, now))
        conn.execute("INSERT INTO jobs (pipeline, series_uid, study_uid, content_hash,"
                     " instance_uids_json, inputs_json, state, attempts, max_attempts,"
                     " created_at) VALUES ('bench', ?, ?, 'h', '[]', '[]', 'pending', 0, 3, ?)",
                     (f"1.2.{i}", f"1.3.{i}", now))
    conn.commit()


def _claimer(open_rows: Callable[[], Any], owner: str, start: Any, done: Any) -> None:
    conn = open_rows().connect()
    start.wait()
    count = 0
    while (job := jobs.claim(conn, owner, 60.0)) is not None:
        with conn:
            jobs.finish(conn, job.id, job.lease_token or "", {}, {}, [], time.time())
        count += 1
    done.put(count)


def _sqlite_rows(path: str) -> Any:
    return Database(Path(path))


def _pg_rows(dsn: str) -> Any:
    return PostgresRows(dsn)


def claim_rate(work: Path, pg: PgServer, k: int) -> list[dict[str, Any]]:
    import functools

    rows = []
    ctx = multiprocessing.get_context("spawn")
    for adapter in ("sqlite", "postgres"):
        for processes in (1, 4):
            if adapter == "sqlite":
                factory = functools.partial(_sqlite_rows, str(work / f"claims{processes}.sqlite3"))
            else:
                factory = functools.partial(_pg_rows, pg.dsn(pg.create_database()))
            store = factory()
            store.migrate()
            seed = store.connect()
            _seed_jobs(seed, k)
            seed.close()
            start, done = ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_claimer, args=(factory, f"bench{i}", start, done))
                     for i in range(processes)]
            for proc in procs:
                proc.start()
            time.sleep(2.0)  # let every process open its connection (not timed)
            began = time.perf_counter()
            start.set()
            claimed = sum(done.get(timeout=600) for _ in procs)
            seconds = time.perf_counter() - began
            for proc in procs:
                proc.join(30)
            if claimed != k:
                raise RuntimeError(f"{adapter}: {claimed} claims for {k} jobs")
            rows.append({"adapter": adapter, "processes": processes, "jobs": k,
                         "seconds": round(seconds, 2), "pairs_per_s": round(k / seconds, 1),
                         "load": _load()})
            print(f"  claims {adapter} x{processes}: {rows[-1]}", flush=True)
    return rows


# --- main ------------------------------------------------------------------------------
@contextmanager
def _postgres() -> Iterator[PgServer]:
    bindir = server_bindir()
    if bindir is None:
        raise SystemExit("PostgreSQL server binaries are missing: scripts/install-peers.sh")
    server = DurablePg(bindir, free_port())
    try:
        yield server.start()
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs and instances")
    parser.add_argument("--parts", default="claims,ingest,fixed,dat",
                        help="comma list of claims, ingest, fixed, dat")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temp folder")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    sizes = ({"fixed": 16, "dat": 6, "sim": 2, "ingest": 20, "claims": 200} if args.quick
             else {"fixed": 48, "dat": 16, "sim": 3, "ingest": 150, "claims": 500})
    delay_s = 0.5  # the fixed-cost job: a 0.5 s sleep
    print(f"load average at start: {_load()} on {os.cpu_count()} CPUs", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp, _postgres() as pg:
        work = Path(tmp)
        if "claims" in parts:
            results["claims"] = claim_rate(work / "claims", pg, sizes["claims"])
        if "ingest" in parts:
            results["ingest"] = ingest_balanced(work / "ingest", pg, sizes["ingest"])
        if "fixed" in parts:
            series = fixed_cost_series(work / "fixed_data", sizes["fixed"])
            results["fixed"] = worker_scaling(work / "fixed", pg, "fake_nm", series,
                                              delay_s)
        if "dat" in parts:
            series = dat_series(work / "dat_data", sizes["dat"], sizes["sim"])
            results["dat"] = worker_scaling(work / "dat", pg, "dat_spect", series, 0.0)
    for name, rows in results.items():
        print(f"\n{name}")
        print_table(list(rows[0]), [list(r.values()) for r in rows])
    print(f"\nload average at end: {_load()}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
