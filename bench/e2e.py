"""End-to-end and memory benchmark: DCMTK storescu -> dopanode -> DCMTK storescp.

One command, ``python bench/e2e.py``, in one run:

1. simulates ``--n`` (default 20) single multi-frame DaT studies with
   ``dopanode simulate`` into a temporary folder;
2. starts DCMTK ``storescp`` as the destination and ``dopanode serve`` (all
   parts, the real DaT pipeline, the default worker and sender settings) as a
   subprocess (service/testing/node.py);
3. sends the studies one at a time with ``storescu`` (``TCP_NODELAY=1``) and
   times each from storescu's start to the SR file appearing in storescp's
   folder (polled every 10 ms); the next study goes once the picture report
   has arrived too;
4. reads the node's per-stage breakdown from its SQLite file (job timestamps,
   ``stage_durations_json``, outbox ``sent_at``) and samples the RSS of the
   ``dopanode serve`` process tree (``/proc``: VmRSS of the tree every 50 ms,
   VmHWM of each process at the end);
5. sends the same studies to a fresh ``storescp`` alone (the transfer's
   upper reference) and prints median/p95 and the ratio node/storescp.

Goals (issue 4): end to end under 3 s, peak RSS under 500 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import (
    Study,
    load_studies,
    machine_note,
    median,
    percentile,
    print_table,
    simulate,
    verdict,
)

from service.config import SenderSettings, WorkerSettings
from service.testing.node import NodeProcess
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open

E2E_GOAL_S = 3.0
RSS_GOAL_MB = 500.0
POLL_S = 0.01
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


# --- memory ------------------------------------------------------------------------
def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/PID/task/*/children)."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
    return pids


def tree_rss_mb(pid: int) -> float:
    """Summed VmRSS of ``pid`` and its descendants now, MB (1e6 bytes)."""
    return sum(_status_kb(p, "VmRSS") for p in process_tree(pid)) * 1024 / 1e6


class RssSampler:
    """Samples the summed VmRSS of a process tree in a thread; keeps the maximum (kB)."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_tree_kb = 0
        self.first_tree_kb: int | None = None
        self.hwm_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        tree = process_tree(self.pid)
        tree_kb = sum(_status_kb(p, "VmRSS") for p in tree)
        if self.first_tree_kb is None:
            self.first_tree_kb = tree_kb
        self.peak_tree_kb = max(self.peak_tree_kb, tree_kb)
        for p in tree:  # high-water marks, kept while the process lives
            self.hwm_kb[p] = max(self.hwm_kb.get(p, 0), _status_kb(p, "VmHWM"))

    def __enter__(self) -> RssSampler:
        self.sample()  # the ready, idle node
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    @property
    def peak_mb(self) -> float:
        """max(sampled tree RSS, sum of every process's VmHWM), MB (1e6 bytes)."""
        return max(self.peak_tree_kb, sum(self.hwm_kb.values())) * 1024 / 1e6

    @property
    def ready_mb(self) -> float:
        """Tree RSS when sampling began (the node ready, before the first study), MB."""
        return (self.first_tree_kb or 0) * 1024 / 1e6


# --- DCMTK -------------------------------------------------------------------------
def start_storescp(directory: Path, port: int, ae_title: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("storescp")
    if exe is None:
        raise SystemExit("DCMTK storescp is not installed (scripts/install-peers.sh)")
    proc = subprocess.Popen([exe, "-aet", ae_title, "-od", str(directory), str(port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: proc.poll() is None and tcp_open(port), 10, "storescp to listen")
    return proc


def storescu(port: int, ae_title: str, files: list[Path],
             required: bool = False) -> subprocess.Popen[bytes]:
    """DCMTK ``storescu`` sending ``files``; ``required`` proposes only their SOP
    classes (``-R``: storescu's default list lacks e.g. Enhanced PET and Enhanced MR)."""
    exe = shutil.which("storescu")
    if exe is None:
        raise SystemExit("DCMTK storescu is not installed (scripts/install-peers.sh)")
    options = ["-R"] if required else []
    return subprocess.Popen([exe, *options, "-aec", ae_title, "127.0.0.1", str(port),
                             *map(str, files)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], what: str) -> None:
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"storescu to {what} failed ({proc.returncode}): {err.decode()[-500:]}")


def _new_files(directory: Path, seen: set[str], prefix: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(prefix) and n not in seen]


# --- one study through the node ------------------------------------------------------
@dataclass
class Sample:
    study_id: str
    transfer_s: float
    e2e_s: float
    all_outputs_s: float
    wall_t0: float
    stages_s: dict[str, float] = field(default_factory=dict)
    rss_after_mb: float = 0.0


def send_through_node(node: NodeProcess, study: Study, dest_dir: Path,
                      seen: set[str], timeout_s: float) -> Sample:
    """Send one study; wait for its SR, then its picture report, at the destination."""
    wall_t0, t0 = time.time(), time.perf_counter()
    proc = storescu(node.scp_port, node.ae_title, study.files)
    transfer_s = e2e_s = None
    deadline = t0 + timeout_s
    while e2e_s is None:
        if transfer_s is None and proc.poll() is not None:
            transfer_s = time.perf_counter() - t0
            _finish(proc, "dopanode")
        if _new_files(dest_dir, seen, "SR"):
            e2e_s = time.perf_counter() - t0
        elif time.perf_counter() > deadline:
            raise TimeoutError(f"no SR for {study.study_id} after {timeout_s} s; "
                               f"jobs: {node.query('SELECT state, reason FROM jobs')[-1:]}")
        else:
            time.sleep(POLL_S)
    if transfer_s is None:  # the SR came before storescu had exited
        proc.wait(60)
        transfer_s = time.perf_counter() - t0
        _finish(proc, "dopanode")
    wait_until(lambda: len(os.listdir(dest_dir)) >= len(seen) + 2, timeout_s,
               "the SR and the picture report")
    all_s = time.perf_counter() - t0
    _check_same_study(study, [dest_dir / n for n in _new_files(dest_dir, seen, "")])
    seen.update(os.listdir(dest_dir))
    return Sample(study.study_id, transfer_s, e2e_s, all_s, wall_t0)


def _check_same_study(study: Study, received: list[Path]) -> None:
    """The outputs that arrived belong to the study just sent (an SR among them)."""
    from pydicom import dcmread

    sent_uid = dcmread(study.files[0], stop_before_pixels=True).StudyInstanceUID
    headers = [dcmread(p, stop_before_pixels=True) for p in received]
    if any(h.StudyInstanceUID != sent_uid for h in headers) or not any(
            h.Modality == "SR" for h in headers):
        raise RuntimeError(f"{study.study_id}: unexpected outputs at the destination")


def node_breakdown(node: NodeProcess, study: Study, sample: Sample) -> dict[str, float]:
    """Stage durations (s) of the study's job from the node's database."""
    from pydicom import dcmread

    study_uid = str(dcmread(study.files[0], stop_before_pixels=True).StudyInstanceUID)
    rows = node.query("SELECT id, state, reason, created_at, started_at, finished_at,"
                      " stage_durations_json FROM jobs WHERE study_uid = ? ORDER BY id",
                      (study_uid,))
    if len(rows) != 1 or rows[0][1] != "done":
        raise RuntimeError(f"{study.study_id}: expected one done job, got {rows!r}")
    job_id, _, _, created, started, finished, stages_json = rows[0]
    received = node.query("SELECT MAX(received_at) FROM instances WHERE study_uid = ?",
                          (study_uid,))[0][0]
    sent = node.query("SELECT MIN(sent_at) FROM outbox WHERE job_id = ? AND sop_class_uid"
                      " LIKE '1.2.840.10008.5.1.4.1.1.88.%'", (job_id,))[0][0]
    stages = json.loads(stages_json or "{}")
    out = {"received (storescu start -> last instance stored)": received - sample.wall_t0,
           "job created (-> series complete, job queued)": created - received,
           "queue wait (-> worker picked the job)": started - created}
    out.update({f"pipeline: {k}": float(v) for k, v in stages.items()})
    in_pipeline = float(stages.get("total", sum(float(v) for v in stages.values())))
    out["job bookkeeping (outputs spooled, outbox, commit)"] = finished - started - in_pipeline
    out["SR sent (job done -> C-STORE Success)"] = sent - finished
    return out


# --- runs -----------------------------------------------------------------------------
def run_node(studies: list[Study], work: Path, timeout_s: float,
             node_env: dict[str, str]) -> tuple[list[Sample], tuple[float, float]]:
    dest_dir, dest_port = work / "dest", free_port()
    dest = start_storescp(dest_dir, dest_port, "DEST")
    settings = {
        "destinations": [{"name": "dest", "ae_title": "DEST", "host": "127.0.0.1",
                          "port": dest_port}],
        "worker": WorkerSettings().model_dump(),   # the shipped defaults, not the test ones
        "sender": SenderSettings().model_dump(),
    }
    samples: list[Sample] = []
    try:
        with NodeProcess(work / "node", settings=settings, env=node_env,
                         test_pipelines=False) as node:
            node.start(timeout_s=120)
            assert node.proc is not None
            seen: set[str] = set()
            with RssSampler(node.proc.pid) as rss:
                for i, study in enumerate(studies, 1):
                    sample = send_through_node(node, study, dest_dir, seen, timeout_s)
                    sample.stages_s = node_breakdown(node, study, sample)
                    sample.rss_after_mb = tree_rss_mb(node.proc.pid)
                    samples.append(sample)
                    print(f"  {i:2d}/{len(studies)} {study.study_id}: e2e {sample.e2e_s:.2f} s",
                          flush=True)
            rss_mb = (rss.ready_mb, rss.peak_mb)
    finally:
        dest.terminate()
        dest.wait(10)
    return samples, rss_mb


def run_storescp_only(studies: list[Study], work: Path) -> list[float]:
    port = free_port()
    directory = work / "storescp_only"
    proc = start_storescp(directory, port, "REF")
    times = []
    try:
        for study in studies:
            t0 = time.perf_counter()
            _finish(storescu(port, "REF", study.files), "storescp")
            times.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(10)
    n_files = sum(len(s.files) for s in studies)
    if len(os.listdir(directory)) != n_files:
        raise RuntimeError(f"storescp holds {len(os.listdir(directory))} of {n_files} files")
    return times


# --- report -----------------------------------------------------------------------------
def report(samples: list[Sample], rss_mb: tuple[float, float],
           ref_s: list[float]) -> dict[str, object]:
    ready_mb, peak_mb = rss_mb
    e2e = [s.e2e_s for s in samples]
    node_tx = [s.transfer_s for s in samples]
    print(f"\nEnd to end, {len(samples)} single multi-frame studies, one at a time "
          f"({machine_note()}):\n")
    rows: list[list[object]] = [
        ["storescu start -> SR at storescp", median(e2e), percentile(e2e, 95), max(e2e)],
        ["storescu start -> SR + picture report",
         median([s.all_outputs_s for s in samples]),
         percentile([s.all_outputs_s for s in samples], 95),
         max(s.all_outputs_s for s in samples)],
        ["first study (cold: first analysis in the process)", e2e[0], e2e[0], e2e[0]],
        ["transfer: storescu -> dopanode (process run)", median(node_tx),
         percentile(node_tx, 95), max(node_tx)],
        ["transfer: storescu -> storescp only (reference)", median(ref_s),
         percentile(ref_s, 95), max(ref_s)],
    ]
    names = list(dict.fromkeys(k for s in samples for k in s.stages_s))
    for name in names:
        vals = [s.stages_s[name] for s in samples if name in s.stages_s]
        rows.append([f"  node: {name}", median(vals), percentile(vals, 95), max(vals)])
    print_table(["stage (s)", "median", "p95", "max"], rows)
    ratio = median(node_tx) / median(ref_s)
    print(f"\ntransfer ratio dopanode / storescp (medians): {ratio:.2f}x")
    print(f"e2e goal < {E2E_GOAL_S:g} s: median {median(e2e):.2f} s "
          f"{verdict(median(e2e) < E2E_GOAL_S)}, p95 {percentile(e2e, 95):.2f} s "
          f"{verdict(percentile(e2e, 95) < E2E_GOAL_S)}")
    print(f"peak RSS of `dopanode serve` (process tree): {peak_mb:.0f} MB, goal < "
          f"{RSS_GOAL_MB:g} MB {verdict(peak_mb < RSS_GOAL_MB)}")
    after = [s.rss_after_mb for s in samples]
    print(f"RSS: at ready (idle) {ready_mb:.0f} MB; after study 1 {after[0]:.0f} MB, "
          f"after study {len(after) // 2} {after[len(after) // 2 - 1]:.0f} MB, "
          f"after the last {after[-1]:.0f} MB")
    return {"machine": machine_note(), "samples": [asdict(s) for s in samples],
            "storescp_only_s": ref_s, "ready_rss_mb": ready_mb, "peak_rss_mb": peak_mb, "transfer_ratio": ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="studies (default 20)")
    parser.add_argument("--profile", default="siemens_lehr_osem_ctac")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--data", type=Path, default=None,
                        help="an existing simulator folder (manifest.csv) instead of simulating")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temp folder")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per study")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers")
    parser.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for `dopanode serve` (e.g. MALLOC_ARENA_MAX=2)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")
    if any("=" not in kv for kv in args.node_env):
        parser.error("--node-env takes KEY=VALUE")
    node_env = dict(kv.split("=", 1) for kv in args.node_env)
    with tempfile.TemporaryDirectory(prefix="dopanode-e2e-", dir=args.work_dir) as tmp:
        work = Path(tmp)
        if args.data is None:
            print(f"simulating {args.n} multi-frame studies ({args.profile}, seed {args.seed})",
                  flush=True)
            studies = simulate(work / "data", args.profile, args.n, args.seed, "multiframe")
        else:
            studies = load_studies(args.data)
        studies = [s for s in studies if len(s.files) == 1][: args.n]
        if len(studies) < args.n:
            raise SystemExit(f"only {len(studies)} single-instance studies available")
        print("dopanode serve + storescp destination", flush=True)
        if node_env:
            print(f"node environment: {node_env}", flush=True)
        samples, rss_mb = run_node(studies, work, args.timeout_s, node_env)
        print("storescp only (reference)", flush=True)
        ref_s = run_storescp_only(studies, work)
        data = report(samples, rss_mb, ref_s)
    if args.json:
        args.json.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
