"""Analysis benchmark: time per study by stage, and SBR against the simulated truth.

One command, ``python bench/analysis.py``, in one run:

1. simulates ``--n`` studies per camera profile with ``dopanode simulate``
   (seeded; encoding variants mixed unless ``--variant``) into a temporary
   folder, or reads an existing simulator folder (``--data``);
2. runs the DaT pipeline in-process (``DatSpectPipeline().run(paths, key)``,
   the shipped template and calibration) on every study after one untimed
   warm-up run (as in a serving node, which loads and warms the pipeline once);
3. prints per profile the wall time per study (median, p95, max, studies
   under the 2 s goal) and the median of every pipeline stage;
4. prints per profile and region (caudate, putamen; left and right pooled) the
   Pearson r and the mean bias (in % of the mean truth, and in SBR units) of
   the measured SBR against two truths of the manifest: ``roi_sbr_*`` (SBR of
   the simulated image in the true ROIs, known transform: what a perfect
   registration would give) and ``true_br_*`` (the simulated binding ratio,
   before the camera's resolution and noise).

With ``--cache WORK --data BENCH`` it reads instead the measurements that
``dopanode train`` cached for every study of a generated benchmark (the
pipeline's own ``measure``: gate, volume, normalisation, quantification) and
prints, over the whole benchmark, the registration success rate per site and
disease class, the registration quality and scales, and the SBR table.

Goal (issue 3): under 2 s per study, registration included.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from common import Study, load_studies, machine_note, median, percentile, print_table, simulate

GOAL_S = 2.0
#: Order of the cached ``sbr`` arrays (service.result.REGIONS).
REGION_KEYS = ("caudate_left", "caudate_right", "putamen_left", "putamen_right")
DEFAULT_PROFILES = ("siemens_lehr_osem_ctac", "ge_lehr_fbp_chang", "fanbeam_hr_osem",
                    "legacy_legp_lowcount")


@dataclass
class Outcome:
    """One study through the pipeline: times (s), measured SBR, or the failure reason."""

    study_id: str
    profile: str
    variant: str
    total_s: float
    stages_s: dict[str, float] = field(default_factory=dict)
    sbr: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


def analyse(pipeline: object, study: Study) -> Outcome:
    from service.dicom.header import read_series
    from service.errors import AnalysisError
    from service.pipelines.base import PRIMARY, JobContext, LoadedInputs

    variant = study.truth.get("encoding_variant", "")
    t0 = time.perf_counter()
    try:
        inputs = LoadedInputs({PRIMARY: read_series(study.files)})
        out = pipeline.run(  # type: ignore[attr-defined]
            inputs, JobContext(f"bench-{study.study_id}", time.time()))
    except AnalysisError as exc:
        return Outcome(study.study_id, study.profile, variant, time.perf_counter() - t0,
                       failure=f"{exc.code}: {exc}")
    total = time.perf_counter() - t0
    stages = {k: float(v) for k, v in out.stage_durations_s.items()}
    sbr = {name: float(r["sbr"]) for name, r in out.summary["regions"].items()}
    return Outcome(study.study_id, study.profile, variant, total, stages, sbr)


def timing_table(outcomes: list[Outcome]) -> None:
    stages = list(dict.fromkeys(k for o in outcomes for k in o.stages_s))
    rows = []
    for profile, group in _by_profile(outcomes).items():
        ok = [o for o in group if o.failure is None]
        t = [o.total_s for o in ok]
        row: list[object] = [profile, f"{len(ok)}/{len(group)}", median(t), percentile(t, 95),
                             max(t, default=math.nan), f"{sum(x < GOAL_S for x in t)}/{len(t)}"]
        row += [median([o.stages_s[s] for o in ok if s in o.stages_s]) for s in stages]
        rows.append(row)
    print_table(["profile", "ok", "median s", "p95 s", "max s", f"< {GOAL_S:g} s"]
                + [f"{s} (med)" for s in stages], rows)


def sbr_table(outcomes: list[Outcome], manifest: dict[str, dict[str, str]]) -> None:
    rows = []
    groups = _by_profile(outcomes)
    groups["all profiles"] = outcomes
    for profile, group in groups.items():
        ok = [o for o in group if o.failure is None]
        for region in ("caudate", "putamen"):
            pairs = [(o.sbr[f"{region}_{side}"], manifest[o.study_id], f"{region}_{side}")
                     for o in ok for side in ("left", "right")]
            est = np.array([p[0] for p in pairs])
            roi = np.array([float(p[1][f"roi_sbr_{p[2]}"]) for p in pairs])
            true = np.array([float(p[1][f"true_br_{p[2]}"]) for p in pairs])
            rows.append([profile, region, len(pairs), _r(est, roi), _bias_pct(est, roi),
                         float(np.mean(est - roi)) if len(est) else math.nan,
                         _r(est, true), _bias_pct(est, true)])
    print_table(["profile", "region", "n ROIs", "r vs roi_sbr", "bias % vs roi_sbr",
                 "mean diff vs roi_sbr", "r vs true_br", "bias % vs true_br"], rows)


def _r(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def _bias_pct(est: np.ndarray, truth: np.ndarray) -> float:
    """Mean bias relative to the mean truth, %: ``100 * mean(est - truth) / mean(truth)``.

    (Relative to the mean, not a mean of per-ROI ratios: those explode for the
    near-zero putamen SBR of advanced disease.)
    """
    if len(truth) == 0 or np.mean(truth) <= 0:
        return math.nan
    return float(np.mean(est - truth) / np.mean(truth) * 100.0)


def _by_profile(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.profile].append(o)
    return dict(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5, help="studies per profile (default 5)")
    parser.add_argument("--profiles", default=",".join(DEFAULT_PROFILES))
    parser.add_argument("--variant", default=None, help="encoding variant (default: mixed)")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--data", type=Path, default=None,
                        help="an existing simulator folder (manifest.csv) instead of simulating")
    parser.add_argument("--work-dir", type=Path, default=None, help="parent of the temp folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers")
    parser.add_argument("--cache", type=Path, default=None,
                        help="work folder of 'dopanode train': report its cached measurements "
                             "of the whole --data benchmark instead of running the pipeline")
    args = parser.parse_args(argv)
    if args.cache is not None:
        if args.data is None:
            parser.error("--cache needs --data (the benchmark folder)")
        return cache_report(args.cache, args.data)
    if args.n < 1:
        parser.error("--n must be at least 1")
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    with tempfile.TemporaryDirectory(prefix="dopanode-analysis-", dir=args.work_dir) as tmp:
        studies = _studies(args, profiles, Path(tmp))
        outcomes = _run_all(studies)
    manifest = {s.study_id: s.truth for s in studies}
    print(f"\nAnalysis time per study ({machine_note()}; in-process, after one warm-up run):\n")
    timing_table(outcomes)
    for o in outcomes:
        if o.failure:
            print(f"  FAILED {o.study_id} ({o.variant}): {o.failure}")
    print("\nSBR against the simulated truth (left and right pooled):\n")
    sbr_table(outcomes, manifest)
    if args.json:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1), "utf-8")
    return 0


def cache_report(work: Path, bench: Path) -> int:
    """Registration and SBR over every study of ``bench`` measured into ``work``."""
    import csv

    with (bench / "manifest.csv").open(newline="") as f:
        manifest = {row["study_id"]: row for row in csv.DictReader(f)}
    failures: dict[str, str] = {}
    if (work / "failures.csv").is_file():
        with (work / "failures.csv").open(newline="") as f:
            failures = {row["study_id"]: f"{row['code']}: {row['reason']}"
                        for row in csv.DictReader(f)}
    outcomes, quality, scales = [], {}, {}
    for sid, row in manifest.items():
        path = work / "cache" / f"{sid}.npz"
        if path.is_file():
            with np.load(path) as npz:
                sbr = dict(zip(REGION_KEYS, npz["sbr"].tolist(), strict=True))
                seconds = float(npz["seconds"]) if "seconds" in npz else math.nan
                if "quality" in npz:
                    quality[sid], scales[sid] = float(npz["quality"]), npz["scales"]
            outcomes.append(Outcome(sid, row["profile"], row["encoding_variant"], seconds,
                                    sbr=sbr))
        else:
            outcomes.append(Outcome(sid, row["profile"], row["encoding_variant"], math.nan,
                                    failure=failures.get(sid, "not measured")))
    print(f"\nWhole benchmark {bench} from the cache {work} ({len(outcomes)} studies; "
          "measure = gate + volume + normalisation + quantification):\n")
    rows = []
    for (site, cls), group in sorted(_by(outcomes, manifest, ("site", "disease_class")).items()):
        ok = [o for o in group if o.failure is None]
        q = [quality[o.study_id] for o in ok if o.study_id in quality]
        sv = np.array([scales[o.study_id] for o in ok if o.study_id in scales]).reshape(-1, 3)
        rows.append([site, cls, f"{len(ok)}/{len(group)}", min(q, default=math.nan),
                     median(q), float(sv.min()) if sv.size else math.nan,
                     float(sv.max()) if sv.size else math.nan,
                     median([o.total_s for o in ok])])
    print_table(["site", "class", "registered", "quality min", "quality med", "scale min",
                 "scale max", "measure s (med)"], rows)
    ok_all = [o for o in outcomes if o.failure is None]
    print(f"\nregistered {len(ok_all)}/{len(outcomes)} "
          f"({100.0 * len(ok_all) / max(len(outcomes), 1):.2f} %)")
    for o in outcomes:
        if o.failure:
            print(f"  FAILED {o.study_id} ({o.profile}, {manifest[o.study_id]['disease_class']}): "
                  f"{o.failure}")
    print("\nSBR against the simulated truth (left and right pooled):\n")
    sbr_table(outcomes, manifest)
    return 0


def _by(outcomes: list[Outcome], manifest: dict[str, dict[str, str]],
        keys: tuple[str, ...]) -> dict[tuple[str, ...], list[Outcome]]:
    groups: dict[tuple[str, ...], list[Outcome]] = defaultdict(list)
    for o in outcomes:
        groups[tuple(manifest[o.study_id][k] for k in keys)].append(o)
    return dict(groups)


def _studies(args: argparse.Namespace, profiles: list[str], tmp: Path) -> list[Study]:
    if args.data is not None:
        found = [s for s in load_studies(args.data) if s.profile in profiles]
        per: dict[str, list[Study]] = defaultdict(list)
        for s in found:
            if len(per[s.profile]) < args.n:
                per[s.profile].append(s)
        return [s for p in profiles for s in per[p]]
    studies = []
    for i, profile in enumerate(profiles):
        print(f"simulating {args.n} studies of {profile}", flush=True)
        studies += simulate(tmp / profile, profile, args.n, args.seed + i, args.variant)
    return studies


def _run_all(studies: list[Study]) -> list[Outcome]:
    from service.pipelines.dat_spect.pipeline import DatSpectPipeline

    pipeline = DatSpectPipeline()
    if not studies:
        raise SystemExit("no studies")
    warm = analyse(pipeline, studies[0])
    print(f"warm-up run (not counted): {warm.total_s:.2f} s", flush=True)
    outcomes = []
    for i, study in enumerate(studies, 1):
        outcomes.append(analyse(pipeline, study))
        print(f"  {i:2d}/{len(studies)} {study.study_id}: {outcomes[-1].total_s:.2f} s", flush=True)
    return outcomes


if __name__ == "__main__":
    raise SystemExit(main())
