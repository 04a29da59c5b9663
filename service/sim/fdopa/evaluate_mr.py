"""``dopanode fdopa evaluate-mr``: the MR-guided route on a benchmark's held-out studies.

The held-out studies of ``dopanode fdopa evaluate`` (:func:`.evaluate.held_out_studies`:
``index % 5 == 0`` of the training sites, every study of ``site_d_unseen``)
that have a FLAIR (every paediatric study; adults with one are reported
apart) run through the node's analysis with the FLAIR
(:class:`service.pipelines.fdopa_pet.evaluation_mr_run.MrEvaluator`), with the
PET evaluation's cache (``<json>.jsonl``, resumable, rows of another model
recomputed), statistics and card mechanics. The table goes to stdout,
``--markdown``, the FLAIR model card and the route's doc (between their
markers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

#: Markers of the section this command writes into the card and the doc.
MR_BEGIN = "<!-- mr route evaluation: begin -->"
MR_END = "<!-- mr route evaluation: end -->"


def add_evaluate_mr(sub: argparse._SubParsersAction) -> None:
    """``fdopa evaluate-mr`` (module docstring)."""
    ev = sub.add_parser("evaluate-mr", help="run the MR-guided FDOPA route on the held-out "
                                            "studies with a FLAIR; print the paper's table")
    ev.add_argument("bench", type=Path, help="a benchmark made by 'fdopa generate'")
    ev.add_argument("--sites", default=None, help="comma-separated site names (default: all)")
    ev.add_argument("--limit", type=int, default=None,
                    help="at most this many held-out studies per site (before the FLAIR filter)")
    ev.add_argument("--split", choices=("test", "fresh"), default="test",
                    help="test: the benchmark's held-out studies; fresh: the studies made by "
                         "'fdopa generate --split fresh' (--limit and --paediatric-only as given "
                         "there)")
    ev.add_argument("--skip", type=int, default=0,
                    help="fresh split: as given to 'fdopa generate --skip'")
    ev.add_argument("--json", type=Path, default=Path("fdopa_mr_evaluation.json"),
                    help="report JSON; per-study rows cached beside it in .jsonl")
    ev.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    ev.add_argument("--card", type=Path, action="append", default=[],
                    help="file(s) to put the table in, between the markers "
                         f"'{MR_BEGIN}' and '{MR_END}' (appended when absent)")
    ev.add_argument("--ablation", type=Path,
                    default=Path("models/dopanode_flair_seg.ablation.json"),
                    help="the FLAIR U-Net's transfer-learning ablation JSON, printed with it")
    ev.add_argument("--paediatric-only", action="store_true",
                    help="only the paediatric studies (the paper's population); adults with "
                         "a FLAIR are left out")
    ev.add_argument("--workers", type=int, default=1)
    ev.set_defaults(func=run_evaluate_mr)


def flair_studies(refs: list[Any], paediatric_only: bool = False) -> list[Any]:
    """The studies whose truth says they have a FLAIR (only the paediatric ones if asked)."""
    kept = []
    for r in refs:
        truth = json.loads((r.folder / "truth.json").read_text())
        if truth.get("flair") and (truth.get("paediatric") or not paediatric_only):
            kept.append(r)
    return kept


def header_lines(args: argparse.Namespace, refs: list[Any], info: dict[str, Any]) -> list[str]:
    """What ran, on what, and what the truth is."""
    argv = ["fdopa", "evaluate-mr", str(args.bench), "--json", str(args.json)]
    for flag, value in (("--sites", args.sites), ("--limit", args.limit),
                        ("--split", args.split if args.split != "test" else None),
                        ("--skip", args.skip or None), ("--workers", args.workers)):
        if value is not None:
            argv += [flag, str(value)]
    if args.paediatric_only:
        argv.append("--paediatric-only")
    argv += [x for c in args.card for x in ("--card", str(c))]
    child = sum(bool(json.loads((r.folder / "truth.json").read_text()).get("paediatric"))
                for r in refs)
    return [
        "## MR-guided FDOPA route: evaluation beside the paediatric paper (simulated data)", "",
        f"Command: `dopanode {' '.join(shlex.quote(a) for a in argv)}` "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC).",
        f"Held-out studies with a FLAIR: {len(refs)} ({child} paediatric, {len(refs) - child} "
        f"adult); PET U-Net {info.get('model', '-')} "
        f"({str(info.get('model_sha256', '-'))[:12]}), FLAIR lesion: "
        f"{info.get('flair_model', '-')}.",
        "Truth (docs/fdopa_flair_route.md, `evaluation_mr.flair_truth`): the paper's VOI rule "
        "applied on the same reconstructed images to the true FLAIR lesion (tumour + oedema, "
        "carried onto the PET by the simulator's known MR-to-PET pose) and the true "
        "contralateral striatum and white-matter VOI, without the VOI refinements. "
        "Simulated studies, not patients: the paper's figures are not comparable evidence.",
    ]


def run_evaluate_mr(args: argparse.Namespace) -> int:
    """The command (module docstring); exit status 0 when at least one study ran."""
    from service.pipelines.fdopa_pet.evaluation_mr_run import MrEvaluator
    from service.pipelines.fdopa_pet.evaluation_mr_table import build_report, markdown
    from service.pipelines.fdopa_pet.evaluation_run import run_evaluation
    from service.sim.fdopa.benchmark import SITES
    from service.sim.fdopa.evaluate import _json_safe, held_out_studies, update_card

    names = list(SITES) if not args.sites else [n.strip() for n in args.sites.split(",")]
    if unknown := [n for n in names if n not in SITES]:
        raise SystemExit(f"unknown site(s) {', '.join(unknown)}; known: {', '.join(SITES)}")
    if args.split == "fresh" and args.limit is None:
        raise SystemExit("--split fresh needs --limit (as given to 'fdopa generate')")
    if args.skip and args.split != "fresh":
        raise SystemExit("--skip applies to --split fresh only")
    # the fresh split's --limit counts children when it was generated --paediatric-only; in
    # the test split the truth decides (flair_studies), as before
    refs = flair_studies(held_out_studies(args.bench, names, args.limit, args.split,
                                          args.paediatric_only and args.split == "fresh",
                                          args.skip)[0],
                         args.paediatric_only)
    if not refs:
        raise SystemExit(f"no generated held-out study with a FLAIR under {args.bench}")

    def progress(rows: list[dict[str, Any]]) -> None:
        for r in rows:
            print(f"{r['study_id']}: {r.get('route_reason', r.get('reason'))}; "
                  f"Dice {r.get('flair_dice')}; T/S {r.get('pred_ts')} "
                  f"(truth {r.get('truth_ts')})", file=sys.stderr, flush=True)

    rows = run_evaluation(refs, ["unet"], args.json.with_suffix(".jsonl"),
                          workers=args.workers, progress=progress, kind=MrEvaluator)
    evaluator = MrEvaluator(["unet"])
    info = evaluator.model_info()
    flair = evaluator.pipelines["unet"].flair
    info["flair_model"] = flair.description if flair is not None else "-"
    ablation = json.loads(args.ablation.read_text()) if args.ablation.is_file() else None
    report = build_report(rows)
    text = markdown(report, header_lines(args, refs, info), ablation)
    print(text)
    args.json.write_text(json.dumps(_json_safe({"model": info, **report}), indent=1) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(text)
    for card in args.card:
        update_card(card, text, (MR_BEGIN, MR_END))
    return 0
