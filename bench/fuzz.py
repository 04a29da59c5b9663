"""Fuzz a real ``dopanode serve`` with N seeded inputs and print what happened.

    .venv/bin/python bench/fuzz.py --n 10000 --seed 4 [--json out.json]

The node runs the real DaT pipeline (service/testing/node.py), a DCMTK
``storescp`` is its destination. N inputs: 97 % mutated data sets (NM DaT
multi-frame, small NM, PET, SR seeds; element mutations and byte mutations),
2 % raw PDU cases, 1 % malformed HTTP requests (service/testing/fuzz.py). After
every batch: the node process lives, C-ECHO answers, threads/fds/RSS sampled.
Prints outcomes per status, jobs and their states, results from garbage (must
be none), files outside the spool, the log's size, the audit trail's hash
chain (must hold) and the time taken.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.testing.fuzz import Fuzzer  # noqa: E402
from service.testing.fuzz_campaign import run_campaign, summary  # noqa: E402
from service.testing.fuzz_node import NODE_SETTINGS  # noqa: E402
from service.testing.node import NodeProcess  # noqa: E402
from service.testing.peers import require_tool  # noqa: E402
from service.testing.ports import free_port  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--drain-s", type=float, default=120.0)
    ap.add_argument("--dat-share", type=float, default=0.02,
                    help="share of data sets from the full DaT seed (each may cost a pipeline run)")
    ap.add_argument("--pdu-share", type=float, default=0.02,
                    help="share of raw PDU cases (each waits for the node to close: ~1 s)")
    ap.add_argument("--http-share", type=float, default=0.01)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work-dir", type=Path)
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom's warnings about the fuzzer's own values
    n_pdu, n_http = max(1, round(args.n * args.pdu_share)), max(1, round(args.n * args.http_share))
    n_ds = args.n - n_pdu - n_http
    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        root = Path(tmp)
        fuzzer = Fuzzer(args.seed, root / "seeds", dat_share=args.dat_share)
        port = free_port()
        scp = subprocess.Popen([require_tool("storescp"), "-aet", "DEST", "-od",
                                str(root / "storescp"), "+uf", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (root / "storescp").mkdir()
        settings = {**NODE_SETTINGS, "destinations": [{"name": "pacs", "ae_title": "DEST", "host": "127.0.0.1",
                                      "port": port}]}
        try:
            with NodeProcess(root / "node", settings=settings) as node:
                node.start(timeout_s=120)

                def progress(sample: dict[str, object], outcomes: object) -> None:
                    print(f"  {sample} {dict(outcomes)}", file=sys.stderr, flush=True)  # type: ignore[call-overload]

                start = time.monotonic()
                report = run_campaign(node, fuzzer, n_ds, n_pdu, n_http, batch=args.batch,
                                      drain_s=args.drain_s, progress=progress)
                report["stop_exit_code"] = node.stop(60)
                report["wall_s"] = round(time.monotonic() - start, 1)
                report["delivered_to_storescp"] = len(list((root / "storescp").iterdir()))
        finally:
            scp.terminate()
            scp.wait(10)
    report.update(seed=args.seed, n=args.n)
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    bad = (report["crashed"] or report["echo_failures"] or report["garbage_results"]
           or report["files_outside_spool"] or report["traversal_files"]
           or report["audit_chain"]["problems"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
