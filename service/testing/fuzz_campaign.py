"""Drive :mod:`service.testing.fuzz` cases through a real node and measure it.

``run_campaign(node, fuzzer, n_datasets, n_pdus, n_http, batch)`` sends the
cases in batches; after each batch it checks that the node process lives, that
C-ECHO answers, and samples threads, descriptors and RSS. Then it waits (at
most ``drain_s``) for the node to settle, and reads the jobs back: every job
is attributed to the input whose series it came from, and a finished job
(``done``) from a garbage input is counted in ``garbage_results``.
Used by bench/fuzz.py (10,000 inputs) and tests/integration/test_fuzz.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from service.audit_verify import verify
from service.testing.fuzz import DatasetCase, Fuzzer
from service.testing.fuzz_node import Sender, files_outside_spool, proc_stats, traversal_files
from service.testing.fuzz_wire import send_http, send_raw
from service.testing.node import NodeProcess


def run_campaign(node: NodeProcess, fuzzer: Fuzzer, n_datasets: int, n_pdus: int,
                 n_http: int, batch: int = 50, drain_s: float = 30.0,
                 progress: Any = None) -> dict[str, Any]:
    assert node.proc is not None
    pid = node.proc.pid
    t0 = time.monotonic()
    baseline = proc_stats(pid)
    samples: list[dict[str, Any]] = [{"t": 0.0, "inputs": 0, **baseline}]
    outcomes: Counter[str] = Counter()
    by_mutation: dict[str, Counter[str]] = {}
    pdu_outcomes: Counter[str] = Counter()
    http_outcomes: Counter[str] = Counter()
    cases: dict[str, DatasetCase] = {}
    echo_failures, echo_retries, crashed, slowest = 0, 0, False, 0.0
    echo_log: list[dict[str, Any]] = []
    odd_stores: list[dict[str, Any]] = []  # no answer, abort, or slower than 5 s
    slowest_case = ""
    sender = Sender(node.scp_port, node.ae_title)
    done = 0

    def checkpoint() -> None:
        nonlocal echo_failures, echo_retries, crashed
        if node.proc is None or node.proc.poll() is not None:
            crashed = True
            return
        # C-ECHO must answer; a transient A-ASSOCIATE-RJ (per-host slots still
        # held by connections the raw cases just closed) or a slow answer is
        # retried: at least 3 attempts and for 15 s. Every attempt that failed
        # or took over 1 s is in the report's echo log (CI once saw a first
        # attempt fail after more than 5 s; cause not found).
        deadline, attempts = time.monotonic() + 15.0, 0
        while True:
            attempts += 1
            started = time.monotonic()
            answer = sender.echo()
            took = time.monotonic() - started
            if answer != "ok" or took > 1.0:  # what a failure report needs to tell why
                echo_log.append({"t": round(started - t0, 1), "inputs": done,
                                 "answer": answer, "s": round(took, 2)})
            if answer == "ok":
                break
            echo_retries += 1
            if attempts >= 3 and time.monotonic() > deadline:
                echo_failures += 1
                break
            time.sleep(0.5)
        samples.append({"t": round(time.monotonic() - t0, 1), "inputs": done, **proc_stats(pid)})
        if progress:
            progress(samples[-1], outcomes)

    last_end = time.monotonic()
    for case in fuzzer.datasets(n_datasets):
        start = time.monotonic()
        outcome = sender.store(case)
        if outcome in ("no_answer", "abort") or time.monotonic() - start > 5.0:
            odd_stores.append({"t": round(start - t0, 1), "index": case.index,
                               "mutation": case.mutation, "outcome": outcome,
                               "idle_before_s": round(start - last_end, 2),
                               "took_s": round(time.monotonic() - start, 2)})
        last_end = time.monotonic()
        if time.monotonic() - start > slowest:
            slowest = time.monotonic() - start
            slowest_case = f"dataset {case.index} {case.mutation}: {outcome}"
        outcomes[outcome] += 1
        by_mutation.setdefault(case.mutation, Counter())[outcome] += 1
        cases[case.series_uid] = case
        done += 1
        if done % batch == 0:
            checkpoint()
            if crashed:
                break
    sender.close()
    for pcase in fuzzer.pdu_cases(n_pdus, node.ae_title):
        if crashed:
            break
        start = time.monotonic()
        answer = send_raw(node.scp_port, pcase, node.ae_title)
        pdu_outcomes[f"{pcase.name}:{answer}"] += 1
        if time.monotonic() - start > slowest:
            slowest = time.monotonic() - start
            slowest_case = f"pdu {pcase.name}: {answer}"
        done += 1
        if done % batch == 0:
            checkpoint()
    for hcase in fuzzer.http_cases(n_http, node.api_token):
        if crashed:
            break
        http_outcomes[send_http(node.api_port, hcase)] += 1
        done += 1
    checkpoint()
    send_s = time.monotonic() - t0
    # settle: the jobs of the last series, then threads back near the baseline
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and not crashed:
        pending = node.query("SELECT count(*) FROM jobs WHERE state IN ('pending', 'running')")
        receiving = node.query("SELECT count(*) FROM series WHERE state = 'receiving'")
        if pending[0][0] == 0 and receiving[0][0] == 0:
            break
        time.sleep(0.5)
    time.sleep(1.0)
    final = proc_stats(pid) if not crashed else {}
    samples.append({"t": round(time.monotonic() - t0, 1), "inputs": done, **final})
    jobs = node.query("SELECT series_uid, pipeline, state, reason FROM jobs")
    job_states: Counter[str] = Counter(f"{p}:{s}" for _, p, s, _ in jobs)
    garbage_results: list[dict[str, Any]] = []
    harmless_results: list[dict[str, Any]] = []
    unattributed: list[tuple[str, str, str]] = []
    for series_uid, pipeline, state, _reason in jobs:
        source = cases.get(series_uid)
        if source is None:
            unattributed.append((series_uid[:40], pipeline, state))
            continue
        if state == "done":
            row = {"index": source.index, "seed": source.seed_kind,
                   "mutation": source.mutation, "pipeline": pipeline}
            (garbage_results if source.garbage else harmless_results).append(row)
    allowed = {node.db_path, node.log_path, node.config_path}
    outside = files_outside_spool(node.work_dir, node.spool_dir, allowed)
    chain = verify(node.audit_path)  # every thread's records of the run: one intact chain
    return {
        "inputs": done, "datasets": n_datasets, "pdus": n_pdus, "http": n_http,
        "send_s": round(send_s, 1), "total_s": round(time.monotonic() - t0, 1),
        "slowest_input_s": round(slowest, 2),
        "crashed": crashed, "echo_failures": echo_failures, "echo_retries": echo_retries,
        "echo_log": echo_log, "slowest_case": slowest_case, "odd_stores": odd_stores,
        "dataset_outcomes": dict(outcomes.most_common()),
        "by_mutation": {k: dict(v) for k, v in sorted(by_mutation.items())},
        "pdu_outcomes": dict(sorted(pdu_outcomes.items())),
        "http_outcomes": dict(http_outcomes.most_common()),
        "garbage_inputs": sum(c.garbage for c in cases.values()),
        "jobs": len(jobs), "job_states": dict(job_states),
        "garbage_results": garbage_results, "harmless_results": harmless_results,
        "unattributed_jobs": unattributed,
        "files_outside_spool": outside,
        "traversal_files": traversal_files(node.work_dir.parent, node.work_dir.parent.parent, node.cwd),
        "log_bytes": node.log_path.stat().st_size,
        "audit_chain": {"records": chain.records, "writers": chain.writers,
                        "problems": [str(x) for x in chain.problems[:5]]},
        "baseline": baseline, "final": final,
        "max": {k: max(s.get(k, -1) for s in samples) for k in ("threads", "fds", "rss_kb")},
        "samples": samples,
    }


def summary(report: dict[str, Any]) -> str:
    short = {k: v for k, v in report.items() if k not in ("samples", "by_mutation")}
    return json.dumps(short, indent=1, default=str)
