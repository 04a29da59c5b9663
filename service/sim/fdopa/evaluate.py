"""``dopanode fdopa evaluate``: the FDOPA pipeline on a benchmark's held-out studies.

The held-out studies are those of :func:`.benchmark.study_indices` with
``split="test"`` (``index % 5 == 0`` of the training sites, every study of
``site_d_unseen``) that exist under the benchmark folder; studies not (yet)
generated are counted in the header. Rows are cached in ``<json>.jsonl``
(:func:`service.pipelines.fdopa_pet.evaluation_run.run_evaluation`), the report
goes to ``<json>``, the table to stdout (and ``--markdown``, ``--card``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The model card's markers around the table.
CARD_BEGIN = "<!-- paper evaluation: begin -->"
CARD_END = "<!-- paper evaluation: end -->"


def held_out_studies(bench: Path, site_names: Sequence[str], limit: int | None,
                     split: str = "test", paediatric_only: bool = False, skip: int = 0
                     ) -> tuple[list[Any], dict[str, int]]:
    """(StudyRef of every generated held-out study, count not generated per site).

    ``split``: "test" (the benchmark's held-out studies) or "fresh" (beyond the
    benchmark, :func:`service.sim.fdopa.benchmark.study_indices`; ``limit``
    required); ``paediatric_only`` and ``skip`` as there.
    """
    from service.pipelines.fdopa_pet.evaluation import StudyRef
    from service.sim.fdopa.benchmark import SITES, study_indices
    from service.sim.fdopa.study import TRUTH_FILE

    refs, missing = [], {}
    for name in site_names:
        site = SITES[name]
        if split not in ("test", "fresh"):
            raise ValueError(f"split {split!r}: only 'test' and 'fresh' are held out")
        indices = study_indices(site, split, limit, paediatric_only, skip)
        found = [StudyRef(name, f"{name}_{i:05d}", bench / name / f"{name}_{i:05d}")
                 for i in indices]
        present = [r for r in found if (r.folder / TRUTH_FILE).is_file()]
        refs += present
        missing[name] = len(found) - len(present)
    return refs, missing


def command_line(args: argparse.Namespace) -> list[str]:
    """The arguments that reproduce this evaluation (outputs named as given)."""
    argv = ["fdopa", "evaluate", str(args.bench)]
    for flag, value in (("--sites", args.sites), ("--limit", args.limit),
                        ("--segmentation", args.segmentation), ("--json", args.json),
                        ("--markdown", args.markdown), ("--card", args.card),
                        ("--model", args.model), ("--template", args.template),
                        ("--workers", args.workers)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def header_lines(args: argparse.Namespace, refs: Sequence[Any], missing: dict[str, int],
                 model: dict[str, Any]) -> list[str]:
    """What was run, on what, and the reminder that these are simulated studies."""
    per_site = ", ".join(f"{s}: {sum(r.site == s for r in refs)}"
                         + (f" (+{n} not generated)" if n else "") for s, n in missing.items())
    partial = any(missing.values())
    return [
        "## FDOPA evaluation in the papers' format (simulated data, not patients)", "",
        f"Command: `dopanode {' '.join(shlex.quote(a) for a in command_line(args))}` "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC).",
        f"Held-out studies: {len(refs)} ({per_site})"
        + ("; a PARTIAL run: not every held-out study was generated." if partial else "."),
        (f"U-Net: {model['model']} (SHA-256 {str(model['model_sha256'])[:12]}); "
         if "model" in model else "U-Net: not evaluated; ")
        + f"template SHA-256 {str(model.get('template_sha256', '-'))[:12]}.",
        "Every number below comes from simulated studies of the dopanode FDOPA simulator; "
        "the papers' figures come from patients. They are not comparable as evidence of "
        "clinical performance.",
        "Reference of the agreement tables: the indices measured on the same reconstructed "
        "image with the truth masks (the papers compare against reference VOIs on the same "
        "images); the ideal-activity truth is shown as well. Populations: Dice over studies "
        "whose truth tumour is measurable (ideal MTV > 0.5 mL; n in the Dice columns), "
        "agreement over studies with a PET-active truth tumour (a study with no pipeline "
        "lesion has Dice 0 and MTV 0; its ratios are missing and counted under 'no lesion "
        "found'); "
        "measurable found over studies with a measurable truth tumour (a failed analysis "
        "counts as not found); FP studies over no-tumour controls. ICC(A,1) = ICC(2,1), "
        "two-way, absolute agreement, single measures.",
        "The ceiling of the 1.6 x rule describes the images, not a method: a segmentation "
        "that keeps only voxels at >= 1.6 x the background (PET RANO's rule, which the "
        "pipeline applies) can at best reach the Dice of the truth's PET-active voxels that "
        "are >= 1.6 x the crescent mean on the reconstructed image, and cannot report a "
        "tumour whose image holds less than the method's minimum lesion volume at >= 1.6 x "
        "('measurable, reportable under the 1.6 x rule').",
    ]


def failures_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A row per study the analysis refused, with its code and reason."""
    failed = [r for r in rows if r["status"] != "done"]
    if not failed:
        return ["No study failed."]
    return ["### Failed studies", "", "| study | segmentation | class | code | reason |",
            "|---|---|---|---|---|",
            *(f"| {r['study_id']} | {r['method']} | {r.get('tumour_class')} | {r['code']} "
              f"| {r['reason']} |" for r in failed)]


def update_card(card: Path, section: str,
                markers: tuple[str, str] = (CARD_BEGIN, CARD_END)) -> None:
    """Replace (or append) the section between ``markers`` (default: the paper evaluation's)."""
    begin, end = markers
    text = card.read_text()
    block = f"{begin}\n\n{section}\n\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"  # the section brings its own heading
    card.write_text(text)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def evaluate_benchmark(args: argparse.Namespace) -> int:
    """The command (module docstring); exit status 0 when at least one study ran."""
    from service.pipelines.fdopa_pet.evaluation import METHODS
    from service.pipelines.fdopa_pet.evaluation_run import Evaluator, run_evaluation
    from service.pipelines.fdopa_pet.evaluation_table import build_report, markdown
    from service.sim.fdopa.benchmark import SITES

    names = list(SITES) if not args.sites else [n.strip() for n in args.sites.split(",")]
    methods = [m.strip() for m in args.segmentation.split(",") if m.strip()]
    if unknown := [n for n in names if n not in SITES]:
        raise SystemExit(f"unknown site(s) {', '.join(unknown)}; known: {', '.join(SITES)}")
    if not methods or any(m not in METHODS for m in methods):
        raise SystemExit(f"--segmentation: comma-separated among {', '.join(METHODS)}")
    refs, missing = held_out_studies(args.bench, names, args.limit)
    if not refs:
        raise SystemExit(f"no generated held-out study under {args.bench}")
    cache = args.json.with_suffix(".jsonl")

    def progress(rows: list[dict[str, Any]]) -> None:
        print(" ".join(f"{r['study_id']} {r['method']}: "
                       + (f"dice {r['dice']:.3f}" if r.get("dice") is not None else
                          r["status"] if r["status"] != "done" else
                          f"{r['pred_lesions']} lesion(s)") for r in rows),
              file=sys.stderr, flush=True)

    rows = run_evaluation(refs, methods, cache, model_path=args.model,
                          template_path=args.template, workers=args.workers, progress=progress)
    model = Evaluator(methods, args.model, args.template).model_info()
    report = build_report(rows, methods)
    text = "\n".join([markdown(report, methods, header_lines(args, refs, missing, model)),
                      *failures_lines(rows), ""])
    print(text)
    args.json.write_text(json.dumps(_json_safe({"model": model, "missing": missing,
                                                **report}), indent=1) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(text)
    if args.card is not None:
        update_card(args.card, text)
    return 0
