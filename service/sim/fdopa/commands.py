"""``dopanode fdopa generate|retruth|describe|validate|evaluate|evaluate-mr|compare``: the FDOPA benchmark.

``generate``, ``simulate`` and ``validate`` need dopanode[sim]; ``evaluate``
reads a generated benchmark (DICOM, JSON, NIfTI) and needs only the node.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from service.sim.transfer_syntax import TRANSFER_SYNTAXES

if TYPE_CHECKING:
    from service.sim.fdopa.head import AnatomyChoice as HeadAnatomy


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fdopa`` with its actions."""
    top = subparsers.add_parser("fdopa", help="the simulated [18F]FDOPA PET benchmark")
    sub = top.add_subparsers(dest="fdopa_command", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="generate (or resume) the FDOPA benchmark")
    gen.add_argument("out", type=Path)
    gen.add_argument("--sites", default=None, help="comma-separated site names (default: all)")
    gen.add_argument("--limit", type=int, default=None, help="at most this many studies per site")
    gen.add_argument("--split", choices=("all", "test", "fresh"), default="all",
                     help="test: only the held-out studies (index %% 5 == 0 of the training "
                          "sites, every study of the unseen site); fresh: --limit studies per "
                          "site beyond the benchmark (a second held-out set)")
    gen.add_argument("--paediatric-only", action="store_true",
                     help="only the studies whose plan draws a child: among the first --limit "
                          "of the split (fresh: --limit of them)")
    gen.add_argument("--skip", type=int, default=0,
                     help="fresh split: leave out its first SKIP studies per site (those "
                          "already looked at), then --limit more")
    gen.add_argument("--workers", type=int, default=2)
    gen.set_defaults(func=run_generate)
    rt = sub.add_parser("retruth", help="copy a generated benchmark's images, rewrite its "
                                       "truth under the current definitions")
    rt.add_argument("src", type=Path)
    rt.add_argument("dst", type=Path)
    rt.add_argument("--sites", default=None, help="comma-separated site names (default: all)")
    rt.add_argument("--limit", type=int, default=None, help="at most this many studies per site")
    rt.add_argument("--split", choices=("all", "test"), default="all")
    rt.set_defaults(func=run_retruth)
    sim = sub.add_parser("simulate", help="ad-hoc FDOPA studies of one scanner profile")
    sim.add_argument("out", type=Path)
    sim.add_argument("--profile", required=True, help="PET profile name")
    sim.add_argument("--n", type=int, required=True, help="number of studies")
    sim.add_argument("--seed", type=int, required=True)
    sim.add_argument("--transfer-syntax", default="explicit", choices=sorted(TRANSFER_SYNTAXES),
                     help="lossless transfer syntax of every series (default: explicit)")
    sim.add_argument("--native-enhanced", type=float, default=0.0, metavar="FRACTION",
                     help="share of studies written as native Enhanced PET / Enhanced MR")
    sim.add_argument("--workers", type=int, default=2)
    sim.set_defaults(func=run_simulate)
    desc = sub.add_parser("describe", help="print the benchmark definition and progress")
    desc.add_argument("out", type=Path, nargs="?", default=None)
    desc.set_defaults(func=run_describe)
    val = sub.add_parser("validate", help="literature table and validation pictures")
    val.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    val.add_argument("--subjects", type=int, default=200, help="subjects per tumour class")
    val.add_argument("--seed", type=int, default=2026)
    val.add_argument("--manifest", type=Path, default=None,
                     help="a generated benchmark's manifest.csv: add its truth table")
    val.set_defaults(func=run_validate)
    add_evaluate(sub)
    from service.sim.fdopa.evaluate_mr import add_evaluate_mr

    add_evaluate_mr(sub)
    cmp = sub.add_parser("compare", help="paired comparison of two 'fdopa evaluate' runs on the "
                                         "same studies (Dice with bootstrap 95 %% intervals)")
    cmp.add_argument("old", type=Path, help="per-study rows (.jsonl) of 'fdopa evaluate'")
    cmp.add_argument("new", type=Path, help="the other run's rows (.jsonl)")
    cmp.add_argument("--method", default="unet", help="segmentation method (default unet)")
    cmp.add_argument("--sites", default=None, help="comma-separated site names (default: all)")
    cmp.add_argument("--draws", type=int, default=2000, help="bootstrap draws (default 2000)")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.set_defaults(func=run_compare)


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """``fdopa evaluate``: the whole pipeline on the held-out studies, the papers' table."""
    ev = sub.add_parser("evaluate", help="run the FDOPA pipeline on the held-out studies of a "
                                         "generated benchmark; print the papers' table")
    ev.add_argument("bench", type=Path, help="a benchmark made by 'fdopa generate'")
    ev.add_argument("--sites", default=None, help="comma-separated site names (default: all)")
    ev.add_argument("--limit", type=int, default=None,
                    help="at most this many held-out studies per site")
    ev.add_argument("--segmentation", default="unet,threshold",
                    help="comma-separated: unet, threshold (default both)")
    ev.add_argument("--json", type=Path, default=Path("fdopa_evaluation.json"),
                    help="report JSON; per-study rows are cached beside it in .jsonl "
                         "(a rerun skips finished studies)")
    ev.add_argument("--markdown", type=Path, default=None, help="write the table here too")
    ev.add_argument("--card", type=Path, default=None,
                    help="model card to put the table in (between its paper-evaluation markers)")
    ev.add_argument("--model", type=Path, default=None, help="U-Net ONNX (default: shipped)")
    ev.add_argument("--template", type=Path, default=None, help="template (default: shipped)")
    ev.add_argument("--workers", type=int, default=1)
    ev.set_defaults(func=run_evaluate)


def run_generate(args: argparse.Namespace) -> int:
    from service.sim.fdopa.benchmark import SITES, FolderAnatomyError, generate

    names = list(SITES) if not args.sites else [n.strip() for n in args.sites.split(",")]
    unknown = [n for n in names if n not in SITES]
    if unknown:
        raise SystemExit(f"unknown site(s) {', '.join(unknown)}; known: {', '.join(SITES)}")
    if args.limit is not None and args.limit < 1:
        raise SystemExit("--limit must be at least 1")
    if args.split == "fresh" and args.limit is None:
        raise SystemExit("--split fresh needs --limit (studies per site)")
    if args.skip and args.split != "fresh":
        raise SystemExit("--skip applies to --split fresh only")
    if args.skip < 0:
        raise SystemExit("--skip must not be negative")
    sites = [SITES[n] for n in names]
    print(f"head labels: {head_anatomy().describe()}")
    try:
        manifest = generate(sites, args.out, workers=args.workers, split=args.split,
                            limit=args.limit, paediatric_only=args.paediatric_only,
                            skip=args.skip)
    except FolderAnatomyError as exc:
        raise SystemExit(str(exc)) from None
    print(f"manifest {manifest}")
    return 0


def run_retruth(args: argparse.Namespace) -> int:
    from service.sim.fdopa.benchmark import SITES
    from service.sim.fdopa.retruth import rewrite_benchmark

    names = list(SITES) if not args.sites else [n.strip() for n in args.sites.split(",")]
    if unknown := [n for n in names if n not in SITES]:
        raise SystemExit(f"unknown site(s) {', '.join(unknown)}; known: {', '.join(SITES)}")
    head_anatomy()
    done, current, manifest = rewrite_benchmark([SITES[n] for n in names], args.src, args.dst,
                                                args.split, args.limit)
    print(f"{done} rewritten, {current} already current; manifest {manifest}")
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from service.sim.fdopa.benchmark import FdopaSite, generate
    from service.sim.fdopa.profiles import get_pet_profile

    if args.n < 1:
        raise SystemExit("--n must be at least 1")
    try:
        get_pet_profile(args.profile)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if not 0.0 <= args.native_enhanced <= 1.0:
        raise SystemExit("--native-enhanced must be a fraction in [0, 1]")
    print(f"head labels: {head_anatomy().describe()}")
    site = FdopaSite(args.profile, args.profile, "custom", args.n, args.seed, "nancy30",
                     {"BQML": 1.0}, transfer_syntax_mix={args.transfer_syntax: 1.0},
                     native_enhanced_fraction=args.native_enhanced)
    print(f"manifest {generate([site], args.out, workers=args.workers)}")
    return 0


def head_anatomy() -> HeadAnatomy:
    """The simulator's head anatomy (``DOPANODE_FDOPA_ANATOMY``), or a plain exit when the
    setting is unknown or its atlas file is missing (before any worker starts)."""
    from service.sim.fdopa.head import AnatomyError, choose_anatomy

    try:
        return choose_anatomy()
    except AnatomyError as exc:
        raise SystemExit(str(exc)) from None


def run_describe(args: argparse.Namespace) -> int:
    from service.sim.fdopa.benchmark import SITES, is_done
    from service.sim.fdopa.profiles import get_pet_profile

    print(f"head labels: {head_anatomy().describe()}; part of the output: same seed and "
          "same label source give the same bytes")

    for site in SITES.values():
        p = get_pet_profile(site.profile)
        line = (f"{site.name:14s} {site.role:10s} n={site.n_studies:4d} seed={site.seed} "
                f"{p.manufacturer} {p.model_name} {p.matrix}x{p.matrix} {p.pixel_mm} mm "
                f"{p.reconstruction_description} units={site.units_mix}")
        if args.out is not None:
            line += f" done={sum(is_done(args.out, site, i) for i in range(site.n_studies))}"
        print(line)
    if args.out is not None:
        _print_census(args.out)
    return 0


def _print_census(out: Path) -> None:
    """Per-site and total composition of the studies finished under ``out``."""
    import json

    from service.sim.fdopa.benchmark import SITES, census, census_shortfalls
    from service.sim.fdopa.study import TRUTH_FILE

    every: list[dict[str, object]] = []
    for site in SITES.values():
        rows = [json.loads(p.read_text()) for p in sorted((out / site.name).glob(f"*/{TRUTH_FILE}"))]
        every += rows
        print(f"census {site.name}: {census(rows)}")
    total = census(every)
    print(f"census total: {total}")
    missing = census_shortfalls(total)
    print("design minimums met" if not missing else "design minimums not met: " + "; ".join(missing))


def run_validate(args: argparse.Namespace) -> int:
    from service.sim.fdopa import literature, validation

    args.img_dir.mkdir(parents=True, exist_ok=True)
    population = literature.simulate_population(args.seed, args.subjects)
    print(literature.table_markdown(literature.check(literature.population_statistics(population))))
    validation.tac_figure(args.img_dir / "fdopa_tacs.png", args.seed)
    validation.profile_figure(args.img_dir / "fdopa_profiles.png", args.seed)
    if args.manifest is not None:
        import csv

        with args.manifest.open() as f:
            rows = list(csv.DictReader(f))
        stats = literature.population_statistics(validation.manifest_population(rows))
        print(literature.table_markdown(literature.check(stats)))
        print(validation.manifest_table(rows))
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from service.sim.fdopa.evaluate import evaluate_benchmark

    return evaluate_benchmark(args)


def run_compare(args: argparse.Namespace) -> int:
    """``fdopa compare``: new minus old on the studies with a measurable truth tumour in both."""
    from service.pipelines.fdopa_pet.evaluation_run import read_cache
    from service.pipelines.fdopa_pet.evaluation_stats import paired_difference

    sites = None if not args.sites else {n.strip() for n in args.sites.split(",")}
    old, new = ({sid: row for (sid, method), row in read_cache(path).items()
                 if method == args.method and (sites is None or row["site"] in sites)}
                for path in (args.old, args.new))
    studies = sorted(sid for sid in old.keys() & new.keys()
                     if old[sid].get("truth_measurable") and new[sid].get("truth_measurable"))
    if not studies:
        raise SystemExit(f"no study with a measurable truth tumour in both files ({args.method})")
    print(f"{args.new} - {args.old}, {args.method}: {len(studies)} studies with a measurable "
          f"truth tumour (bootstrap {args.draws} draws, seed {args.seed})")
    for key, label in (("dice", "Dice vs truth"), ("dice_img", "Dice vs image reference")):
        d = paired_difference([new[s][key] or 0.0 for s in studies],
                              [old[s][key] or 0.0 for s in studies], args.draws, args.seed)
        print(f"  {label}: mean {d.mean:+.3f} [{d.mean_low:+.3f}; {d.mean_high:+.3f}], "
              f"median {d.median:+.3f} [{d.median_low:+.3f}; {d.median_high:+.3f}]")
    found = [sum(bool(rows[s]["measurable_found"]) for s in studies) for rows in (old, new)]
    print(f"  measurable found: old {found[0]}/{len(studies)}, new {found[1]}/{len(studies)}")
    return 0
