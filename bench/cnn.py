"""CNN benchmark: inference time per scan and the paper-format evaluation table.

One command, after ``dopanode train`` (it needs the work folder's cache and
checkpoint)::

    python bench/cnn.py --work work/ --model models/dopanode_dat_cnn.onnx

In one run it

1. times the shipped ONNX model with the node's own onnxruntime session
   (:class:`service.inference.session.CnnSession`, one intra-op thread, as
   the node serves it) on ``--n`` held-out test scans at batch 1, and the same
   network in torch (the training checkpoint, one thread, ``no_grad``) on the
   same scans as the peer; prints median and p95 milliseconds per scan and
   the ratio torch / onnxruntime (goal, issue 5: under 50 ms per scan);
2. prints the evaluation table of :func:`models.training.workflow.evaluate_model`
   (5-level accuracy per region, all four correct, within one level, binary,
   inconclusive flags; in-distribution test scans and the unseen camera; the
   carried-over SBR-threshold baseline beside the CNN);
3. with ``--data BENCH`` (the benchmark's manifest), the ceiling of the
   binary score: the accuracy of the best single threshold on the *true*
   (simulated, noise-free) binding ratio of the lower putamen, per group. The
   simulator draws PD severities from 0.1, so some PD scans have normal
   binding and no method can call them reduced.

Needs the ``sim`` extra (torch) for the peer; ``--no-torch`` skips it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import REPO_ROOT, machine_note, median, percentile, print_table

GOAL_MS = 50.0


def _time_per_scan(run: object, x: np.ndarray, warmup: int = 3) -> list[float]:
    for i in range(min(warmup, len(x))):
        run(x[i:i + 1])  # type: ignore[operator]
    times = []
    for i in range(len(x)):
        t0 = time.perf_counter()
        run(x[i:i + 1])  # type: ignore[operator]
        times.append(1000.0 * (time.perf_counter() - t0))
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "work")
    parser.add_argument("--model", type=Path,
                        default=REPO_ROOT / "models" / "dopanode_dat_cnn.onnx")
    parser.add_argument("--n", type=int, default=100, help="scans timed (default 100)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch peer")
    parser.add_argument("--data", type=Path, default=None,
                        help="benchmark folder (manifest.csv) for the binary ceiling")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers")
    args = parser.parse_args(argv)

    # models/training is not in the distribution: it is loaded from this checkout the
    # way `dopanode train` loads it (a clear exit without torch or a source tree)
    from service.pipelines.dat_spect.cnn import CnnSession
    from service.pipelines.dat_spect.train_commands import _training

    workflow = _training("workflow")
    ts = _training("data").load_training_set(args.work)
    held_out = ts.subset(np.isin(ts.column("split"), list(workflow.GROUPS.values())))
    x = np.ascontiguousarray(held_out.x[: args.n])
    session = CnnSession(args.model, intra_op_threads=1)
    rows: list[list[object]] = []
    ort_ms = _time_per_scan(session.probabilities, x)
    rows.append(["onnxruntime (node session)", len(x), median(ort_ms), percentile(ort_ms, 95),
                 "yes" if median(ort_ms) < GOAL_MS else "NO", 1.0])
    numbers: dict[str, object] = {"onnxruntime_ms": ort_ms}
    if not args.no_torch:
        import torch

        net, _ = _training("train").load_checkpoint(args.work / "checkpoint.pt")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                torch_ms = _time_per_scan(lambda b: net(torch.from_numpy(b)), x)
        finally:
            torch.set_num_threads(threads)
        rows.append(["torch (checkpoint, peer)", len(x), median(torch_ms),
                     percentile(torch_ms, 95), "yes" if median(torch_ms) < GOAL_MS else "NO",
                     median(torch_ms) / median(ort_ms)])
        numbers["torch_ms"] = torch_ms
    print(f"\nCNN inference per scan, batch 1, one thread ({machine_note()}; "
          f"model {args.model.name}, sha256 {session.sha256[:12]}...):\n")
    print_table(["runtime", "scans", "median ms", "p95 ms", f"< {GOAL_MS:g} ms",
                 "time / onnxruntime"], rows)
    report = workflow.evaluate_model(args.work, args.model)
    print("\nEvaluation on held-out scans (labels: the work folder's, per-site GMM or the "
          "simulated truth of `dopanode train --labels truth`; binary truth: simulated "
          "PD or atypical):\n")
    print(report["table"])
    if args.data is not None:
        ceiling = workflow.ceilings(args.data, ts)
        print("\nCeiling of the binary score (an oracle's best threshold on the true, "
              "noise-free binding of the lower putamen):\n")
        print_table(["group", "best possible binary accuracy"],
                    [[g, f"{v:.1%}"] for g, v in ceiling.items()])
        numbers["binary_ceiling"] = ceiling
    if args.json:
        numbers["evaluation"] = {k: v for k, v in report.items() if k != "table"}
        args.json.write_text(json.dumps(numbers, indent=1), "utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
