"""Sensitivity and specificity per data set (variant) for CNN models and the SBR path.

Used on the robustness set (:mod:`service.sim.robustness`) and on any
benchmark folder (e.g. the held-out benchmark version 1 groups of
:func:`v1_heldout_groups`). Per scan and method a *call*:

* ``reduced`` and ``inconclusive`` of the method's own global rule: the CNN's
  (:func:`service.pipelines.dat_spect.cnn.rate_scan`), or the SBR-threshold
  path's (:func:`service.pipelines.dat_spect.levels.global_score` with the
  shipped calibration's set for the scan's correction family and the
  asymmetry rule, as the node scores without a CNN);
* ``verdict``: what the node reports with that CNN: the CNN call made
  inconclusive where the CNN and the SBR path call the scan differently (one
  has a region at level 2 or worse, the other none;
  :func:`service.pipelines.dat_spect.verdict.consistent_score`), except that a
  normal CNN call where both putamen measures (the VOI SBRs and the learnt
  estimator) see one putamen clearly low (:func:`estimated_asymmetry`) is
  *reduced* and a
  strong one-sided CNN call the scan's putamen asymmetry points to stays
  *reduced* (both the node's default ``asymmetry_decides``); ``verdict-noasym``
  without them (the node with ``asymmetry_decides = false``).

Against the binding reference (``binary_reference`` of the manifest;
excluded scans left out): **sensitivity** is the fraction of *reduced* scans
called reduced and not inconclusive; **specificity** the fraction of *normal*
scans called normal and not inconclusive (an inconclusive call counts as a
miss both ways: the reader is left without an answer). ``sens 1-sided``
restricts sensitivity to the robustness set's one-sided cases.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from service.pipelines.dat_spect.levels import NORMAL_CV_MAX
from service.pipelines.dat_spect.protocol import series_family
from service.pipelines.dat_spect.putamen_estimator import lower_ratio
from service.pipelines.dat_spect.result import REGIONS
from service.pipelines.dat_spect.verdict import calls_differ

#: Seed and split of the shipped version-1 model (its held-out test groups).
V1_SEED = 20261121
V1_SITES = ("site_a", "site_b", "site_c")


@dataclass(frozen=True)
class Calls:
    """One method's calls on N scans: ``(N,)`` bool arrays and ``(N, 4)`` levels."""

    reduced: np.ndarray
    inconclusive: np.ndarray
    levels: np.ndarray


def sbr_calls(sbr: np.ndarray, calibration: Any, families: Sequence[Any] | None = None
              ) -> Calls:
    """The SBR-threshold path's calls on ``(N, 4)`` SBRs (order of REGIONS).

    ``calibration``: a :class:`~service.pipelines.dat_spect.levels.Calibration`
    for every scan, or a :class:`~service.pipelines.dat_spect.protocol.ByProtocol`
    with ``families`` (one :class:`~service.pipelines.dat_spect.protocol.Family` per scan).
    """
    from service.pipelines.dat_spect.levels import global_score, sbr_levels
    from service.pipelines.dat_spect.protocol import ByProtocol

    reduced, unsure, levels = [], [], []
    for k, row in enumerate(sbr):
        cal = calibration
        if isinstance(calibration, ByProtocol):
            if families is None:
                raise ValueError("a per-protocol calibration needs each scan's family")
            cal = calibration.select(families[k])
        values = {r: float(v) for r, v in zip(REGIONS, row, strict=True)}
        lv = sbr_levels(values, cal)
        score = global_score(lv, values, cal)
        reduced.append(score.reduced)
        unsure.append(score.inconclusive)
        levels.append([int(lv[r]) for r in REGIONS])
    return Calls(np.array(reduced, bool), np.array(unsure, bool), np.array(levels, np.int64))


def _per_site_calls(sbr: np.ndarray, sites: np.ndarray, calibrations: Mapping[str, Any]
                    ) -> Calls:
    """The SBR path's calls with each scan's own site calibration."""
    n = len(sbr)
    out = Calls(np.zeros(n, bool), np.zeros(n, bool), np.zeros((n, len(REGIONS)), np.int64))
    for site, calibration in calibrations.items():
        mask = sites == site
        if mask.any():
            calls = sbr_calls(sbr[mask], calibration)
            out.reduced[mask], out.inconclusive[mask] = calls.reduced, calls.inconclusive
            out.levels[mask] = calls.levels
    return out


def cnn_calls(model: Path, x: np.ndarray) -> Calls:
    """A CNN model's own calls on ``(N, 1, D, H, W)`` inputs."""
    from models.training.workflow import cnn_predictions
    from service.pipelines.dat_spect.cnn import CnnSession

    levels, reduced, unsure, _, _ = cnn_predictions(CnnSession(model), x)
    return Calls(np.asarray(reduced, bool), np.asarray(unsure, bool), levels)


def side_agrees(cnn: Calls, sbr_values: np.ndarray, sbr: Calls) -> np.ndarray:
    """``(N,)`` bool: a strong one-sided CNN call (conclusive, reduced) whose putamen the
    scan's own asymmetry points to while the SBR path has no level 2
    (:func:`~service.pipelines.dat_spect.verdict.cnn_side`)."""
    from service.pipelines.dat_spect.verdict import cnn_side

    return np.array([bool(reduced and not unsure and cnn_side(
        [int(v) for v in lc], [float(v) for v in values], [int(v) for v in ls]) is not None)
        for reduced, unsure, lc, values, ls in zip(
            cnn.reduced, cnn.inconclusive, cnn.levels, sbr_values, sbr.levels, strict=True)],
        bool)


def verdict_calls(cnn: Calls, sbr: Calls, one_sided_clear: np.ndarray | None = None,
                  cnn_side_clear: np.ndarray | None = None) -> Calls:
    """The node's verdict with a CNN: inconclusive where the CNN and the SBR path
    call the scan differently (:func:`~service.pipelines.dat_spect.verdict.calls_differ`).

    ``one_sided_clear``: ``(N,)`` bool, a clearly one-sided putamen SBR
    (:func:`estimated_asymmetry`); given, a normal CNN call there becomes reduced
    and conclusive (the node's ``asymmetry_decides``,
    :func:`~service.pipelines.dat_spect.verdict.one_sided_override`);
    ``cnn_side_clear`` (:func:`side_agrees`): there the CNN's reduced call stands,
    conclusive (the same option, :func:`~service.pipelines.dat_spect.verdict.cnn_side_override`).
    """
    disagree = np.array([calls_differ(c, s) for c, s in zip(cnn.levels, sbr.levels, strict=True)],
                        bool)
    reduced, inconclusive = cnn.reduced.copy(), cnn.inconclusive | disagree
    if one_sided_clear is not None:
        override = one_sided_clear & ~cnn.reduced
        reduced |= override
        inconclusive &= ~override
    if cnn_side_clear is not None:
        inconclusive &= ~cnn_side_clear
    return Calls(reduced, inconclusive, cnn.levels)


def putamen_estimates(x: np.ndarray) -> np.ndarray:
    """``(N, 2)`` the shipped learnt putamen estimator's left and right putamen SBRs on
    ``(N, 1, D, H, W)`` CNN inputs of the shipped contract (what the node computes)."""
    from service.imaging.atlas import load_atlas
    from service.paths import default_models_dir
    from service.pipelines.dat_spect.preprocess import contract_for_atlas
    from service.pipelines.dat_spect.putamen_estimator import (
        ESTIMATOR_FILE,
        load_putamen_estimator,
    )

    atlas = load_atlas()
    estimator = load_putamen_estimator(default_models_dir() / ESTIMATOR_FILE, atlas,
                                       contract_for_atlas(atlas))
    return np.array([estimator.estimate(crop) for crop in x], np.float64).reshape(-1, 2)


def estimated_asymmetry(estimates: np.ndarray, sbr: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: both putamen measures see one putamen clearly low
    (:func:`~service.pipelines.dat_spect.verdict.one_sided_side`) in ``(N, 2)``
    putamen estimates (:func:`putamen_estimates`) and ``(N, 4)`` SBRs."""
    from service.pipelines.dat_spect.verdict import one_sided_side

    return np.array([one_sided_side(float(e[0]), float(e[1]), float(s[2]), float(s[3]))
                     is not None for e, s in zip(estimates, sbr, strict=True)], bool)


def rates(calls: Calls, reference: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Sensitivity, specificity (conclusive calls only) and counts on ``mask``."""
    pos = mask & (reference == "reduced")
    neg = mask & (reference == "normal")
    hit = calls.reduced & ~calls.inconclusive
    ok_neg = ~calls.reduced & ~calls.inconclusive
    return {"n_reduced": int(pos.sum()), "n_normal": int(neg.sum()),
            "tp": int((hit & pos).sum()), "tn": int((ok_neg & neg).sum()),
            "inconclusive": int((calls.inconclusive & (pos | neg)).sum())}


def level_accuracy(calls: Calls, truth: np.ndarray, mask: np.ndarray) -> float:
    """Pooled 5-level accuracy against the truth levels on ``mask``."""
    if not mask.any():
        return float("nan")
    return float((calls.levels[mask] == truth[mask]).mean())


def method_table(groups: np.ndarray, reference: np.ndarray, one_sided: np.ndarray,
                 truth: np.ndarray | None, methods: Mapping[str, Calls]
                 ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{group: {method: rates}}`` for each value of ``groups`` and ``"all"``."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group in [*sorted(set(groups.tolist())), "all"]:
        mask = np.ones(len(groups), bool) if group == "all" else groups == group
        out[group] = {}
        for name, calls in methods.items():
            r = rates(calls, reference, mask)
            side = rates(calls, reference, mask & one_sided)
            r["n_one_sided"], r["tp_one_sided"] = side["n_reduced"], side["tp"]
            if truth is not None:
                r["level_accuracy"] = level_accuracy(calls, truth, mask)
            out[group][name] = r
    return out


def _call_text(calls: Calls, k: int) -> str:
    call = "reduced" if calls.reduced[k] else "normal"
    return f"inconclusive ({call})" if calls.inconclusive[k] else call


def case_rows(study_ids: Sequence[str], groups: Sequence[str], reference: np.ndarray,
              one_sided: np.ndarray, truth: np.ndarray, sbr: np.ndarray,
              methods: Mapping[str, Calls], estimates: np.ndarray | None = None
              ) -> list[dict[str, str]]:
    """One row per rated scan: what each method called and the levels it rests on.

    Columns: ``study_id``, ``group`` (variant or split), ``reference``
    (reduced/normal/excluded), ``one_sided``, ``truth_levels`` and, per region,
    ``sbr_<region>``, ``putamen_ratio`` (lower over higher putamen SBR),
    ``x_putamen_ratio`` (the same of the learnt estimator's ``estimates``,
    ``(N, 2)``; empty without them), then per
    method ``<method>`` (``reduced``, ``normal``, ``inconclusive (reduced)``, ...),
    ``<method> levels`` (CL CR PL PR) and ``<method> right`` (conclusive and equal
    to the reference; empty without a reference). The robustness set's study ids
    are the simulator's own, no patient's.
    """
    rows = []
    for k, sid in enumerate(study_ids):
        pl, pr = float(sbr[k][2]), float(sbr[k][3])
        ratio = min(pl, pr) / max(pl, pr) if max(pl, pr) > 0 else float("nan")
        row = {"study_id": sid, "group": groups[k], "reference": str(reference[k] or ""),
               "one_sided": "yes" if one_sided[k] else "no",
               "truth_levels": " ".join(str(int(v)) for v in truth[k]) if truth[k][0] >= 0
               else ""}
        row.update({f"sbr_{r.value}": f"{float(v):.4f}"
                    for r, v in zip(REGIONS, sbr[k], strict=True)})
        row["putamen_ratio"] = f"{ratio:.4f}"
        row["x_putamen_ratio"] = ("" if estimates is None else
                                  f"{lower_ratio(*(float(v) for v in estimates[k])):.4f}")
        for name, calls in methods.items():
            row[name] = _call_text(calls, k)
            row[f"{name} levels"] = " ".join(str(int(v)) for v in calls.levels[k])
            right = ""
            if reference[k] in ("reduced", "normal"):
                ok = (not calls.inconclusive[k]
                      and bool(calls.reduced[k]) == (reference[k] == "reduced"))
                right = "yes" if ok else "no"
            row[f"{name} right"] = right
        rows.append(row)
    return rows


def write_case_rows(rows: Sequence[Mapping[str, str]], path: Path) -> None:
    """:func:`case_rows` as CSV (header from the first row)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["study_id"])
        writer.writeheader()
        writer.writerows(rows)


def _frac(k: int, n: int) -> str:
    return "-" if n == 0 else f"{k}/{n}"


def format_methods(table: Mapping[str, Mapping[str, Mapping[str, Any]]],
                   not_measured: Mapping[str, int] | None = None) -> str:
    """Markdown: one row per group, per method ``sens 1-sided | sens | spec | inconcl.``.

    ``not_measured``: studies per group the pipeline refused (registration),
    left out of every count; shown in a second column.
    """
    methods = list(next(iter(table.values())))
    missing = dict(not_measured or {})
    missing.setdefault("all", sum(missing.values()))
    head = "| data set | not measured | " + " | ".join(
        f"{m} sens 1-sided | {m} sens | {m} spec | {m} inconcl." for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + 4 * len(methods))]
    for group, by_method in table.items():
        cells = []
        for m in methods:
            r = by_method[m]
            cells += [_frac(r["tp_one_sided"], r["n_one_sided"]), _frac(r["tp"], r["n_reduced"]),
                      _frac(r["tn"], r["n_normal"]),
                      f"{r['inconclusive']}/{r['n_reduced'] + r['n_normal']}"]
        lines.append(f"| {group} | {missing.get(group, 0)} | " + " | ".join(cells) + " |")
    for group in sorted(set(missing) - set(table)):  # every study of it refused
        lines.insert(-1, f"| {group} | {missing[group]} | " + " | ".join(
            ["-"] * 4 * len(methods)) + " |")
    return "\n".join(lines)


def _manifest_rows(bench_dir: Path) -> dict[str, dict[str, str]]:
    with (bench_dir / "manifest.csv").open(newline="") as f:
        return {row["study_id"]: row for row in csv.DictReader(f)}


#: How :func:`site_calibrations` builds a variant's thresholds from its normals.
SITE_RULES = ("mixture", "scaled")


def site_calibrations(normals_dir: Path, work_dir: Path, workers: int = 1,
                      cv_max: float = NORMAL_CV_MAX, rule: str = "mixture") -> dict[str, Any]:
    """Per variant, the SBR thresholds a site with that camera builds from its normals.

    ``normals_dir``: ``dopanode benchmark robustness OUT --normals`` (one folder per
    variant, :func:`service.sim.robustness.normals_variant`), measured into
    ``work_dir/normals`` by the pipeline. ``rule`` ``"mixture"``: the shipped labelling
    rule (:func:`service.pipelines.dat_spect.labelling.label_dataset`) with one mixture
    component, as for a dataset of normals: ``t01 = mu - 1.5 s``, ``t12 = mu - 2 s``
    with ``s`` the normals' SD capped at ``cv_max`` x ``mu`` (by default
    :data:`~service.pipelines.dat_spect.levels.NORMAL_CV_MAX`, 15 %; README,
    "Calibrate your camera", for what the cap trades). ``"scaled"``: the shipped
    thresholds of the normals' correction family times their recovery factors
    (:mod:`models.training.cross_calibration`, candidate V, not adopted; ``cv_max`` unused).
    Returns variant name -> :class:`~service.pipelines.dat_spect.levels.Calibration`.
    """
    from models.training.data import cache_studies, read_manifest
    from service.pipelines.dat_spect.labelling import label_dataset
    from service.sim.robustness import NORMALS_SUFFIX

    if rule not in SITE_RULES:
        raise ValueError(f"site rule {rule!r}: one of {', '.join(SITE_RULES)}")
    cached = cache_studies(read_manifest(normals_dir), work_dir / "normals", workers)
    by_variant: dict[str, list[_Normal]] = {}
    for s in cached:
        with np.load(work_dir / "normals" / "cache" / f"{s.study_id}.npz") as npz:
            row = dict(zip(REGIONS, (float(v) for v in npz["sbr"]), strict=True))
            age = float(npz["age"])
        family = series_family(s.series_dir) if rule == "scaled" else None
        by_variant.setdefault(s.site.removesuffix(NORMALS_SUFFIX), []).append(
            _Normal(row, None if np.isnan(age) else age, family))
    if rule == "scaled":
        return {name: _scaled_site(name, measured) for name, measured in by_variant.items()}
    return {name: label_dataset(f"{name} normals", [m.sbr for m in measured],
                                np.random.default_rng(0), max_components=1, min_components=1,
                                cv_max=cv_max).calibration()
            for name, measured in by_variant.items()}


class _Normal(NamedTuple):
    """One measured site-calibration normal: its SBRs, age (None: unknown), family."""

    sbr: dict[Any, float]
    age: float | None
    family: Any


def _scaled_site(name: str, measured: Sequence[_Normal]) -> Any:
    """The cross-calibration of one variant from its measured normals (one family)."""
    from models.training.cross_calibration import recovery_factors, scaled_calibration
    from service.pipelines.dat_spect.assets import load_dat_models

    families = {m.family for m in measured}
    if len(families) != 1:
        raise ValueError(f"{name} normals span correction families "
                         f"{sorted(f.name for f in families)}")
    family = families.pop()
    models = load_dat_models()
    assert models.calibration is not None and models.normals is not None
    factors = recovery_factors([m.sbr for m in measured], [m.age for m in measured],
                               models.normals.select(family))
    return scaled_calibration(models.calibration.select(family), factors,
                              f"{name}: {len(measured)} normal scans")


#: The splits of a training's index that ``splits`` tabulates (the training split is left out).
HELD_OUT_SPLITS = ("val", "test", "test_unseen")


def one_sided_truth(truth: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: a putamen at truth level 2 or worse while the other is at 0-1
    (``(N, 4)`` truth levels in the order of REGIONS; -1 rows: no truth, False)."""
    left, right = truth[:, 2], truth[:, 3]
    known = (left >= 0) & (right >= 0)
    return known & (((left >= 2) & (right <= 1)) | ((right >= 2) & (left <= 1)))


def evaluate_folder(bench_dir: Path, work_dir: Path, models: Mapping[str, Path],
                    workers: int = 1, normals_dir: Path | None = None,
                    splits: Mapping[str, str] | None = None,
                    site_cv_max: float = NORMAL_CV_MAX, site_rule: str = "mixture"
                    ) -> dict[str, Any]:
    """Measure ``bench_dir`` into ``work_dir/cache`` (pipeline) and tabulate every method.

    ``models``: display name -> ONNX file. With ``normals_dir`` (the variants'
    site-calibration normals, :func:`site_calibrations`) the SBR path and each
    verdict are scored a second time with each variant's own thresholds
    (methods ``sbr@site`` and ``<model>+verdict@site``; ``site_cv_max``: their
    SD cap; ``site_rule``: how they are built, :func:`site_calibrations`). With ``splits`` (study
    id -> split of a training's ``index.csv``, :func:`models.training.data.read_splits`)
    only that training's held-out studies (:data:`HELD_OUT_SPLITS`) are rated and
    the table's rows are the splits instead of the sites: how a model choice on
    the validation split is made and checked on the test splits by the node's
    rules. One-sided cases: the robustness set's ``case`` column where the
    manifest has one, else the truth levels (:func:`one_sided_truth`). Returns
    ``{"table": {...}, "markdown": str, "n_failed": int, "not_measured": {...},
    "cases": [...]}`` (``cases``: :func:`case_rows`).
    """
    from models.training.data import cache_studies, read_manifest
    from service.pipelines.dat_spect.assets import load_dat_models
    from service.sim.robustness import NORMALS_SUFFIX

    studies = read_manifest(bench_dir)
    if splits is not None:
        studies = [s for s in studies if splits.get(s.study_id) in HELD_OUT_SPLITS]
    cached = cache_studies(studies, work_dir, workers)
    rows = _manifest_rows(bench_dir)
    xs, sbrs = [], []
    for s in cached:
        with np.load(work_dir / "cache" / f"{s.study_id}.npz") as npz:
            xs.append(npz["x"])
            sbrs.append(npz["sbr"])
    x, sbr = np.stack(xs).astype(np.float32), np.stack(sbrs)
    row_of = [rows[s.study_id] for s in cached]
    reference = np.array([s.binary_reference for s in cached], dtype=object)
    truth = np.array([s.truth_levels or (-1,) * 4 for s in cached], np.int64)
    by_truth = one_sided_truth(truth)
    one_sided = np.array([r["case"].startswith("loss_") if r.get("case") else bool(t)
                          for r, t in zip(row_of, by_truth, strict=True)])
    calibration = load_dat_models().calibration
    families = [series_family(s.series_dir) for s in cached]
    sbr_path = sbr_calls(sbr, calibration, families)
    estimates = putamen_estimates(x)
    clear = estimated_asymmetry(estimates, sbr)  # the node's default asymmetry_decides
    # a set of site-calibration normals rated as test scans uses its variant's thresholds
    sites = np.array([s.site.removesuffix(NORMALS_SUFFIX) for s in cached])
    sbr_site = None
    if normals_dir is not None:
        own = site_calibrations(normals_dir, work_dir, workers, site_cv_max, site_rule)
        missing_normals = sorted(set(sites) - set(own))
        if missing_normals:
            raise ValueError(f"no site-calibration normals for {', '.join(missing_normals)}")
        sbr_site = _per_site_calls(sbr, sites, own)
    methods: dict[str, Calls] = {}
    for name, path in models.items():
        cnn = cnn_calls(path, x)
        methods[name] = cnn
        methods[f"{name}+verdict"] = verdict_calls(cnn, sbr_path, clear,
                                                   side_agrees(cnn, sbr, sbr_path))
        methods[f"{name}+verdict-noasym"] = verdict_calls(cnn, sbr_path)
        if sbr_site is not None:
            methods[f"{name}+verdict@site"] = verdict_calls(cnn, sbr_site, clear,
                                                            side_agrees(cnn, sbr, sbr_site))
    methods["sbr"] = sbr_path
    if sbr_site is not None:
        methods["sbr@site"] = sbr_site
    def group(s: Any) -> str:
        return s.site if splits is None else splits[s.study_id]

    groups = np.array([group(s) for s in cached])
    table = method_table(groups, reference, one_sided, truth, methods)
    cases = case_rows([s.study_id for s in cached], groups.tolist(), reference, one_sided,
                      truth, sbr, methods, estimates)
    measured = {s.study_id for s in cached}
    not_measured: dict[str, int] = {}
    for s in studies:
        if s.study_id not in measured:
            not_measured[group(s)] = not_measured.get(group(s), 0) + 1
    return {"table": table, "markdown": format_methods(table, not_measured),
            "n_failed": len(studies) - len(cached), "not_measured": not_measured,
            "cases": cases}


def v1_heldout_groups(per_site: int, seed: int = V1_SEED) -> dict[str, list[int]]:
    """The first ``per_site`` anatomy groups per in-distribution site of benchmark
    version 1 that the shipped version-1 model held out as its test split.

    Rebuilds :func:`models.training.data.assign_splits` over the whole version-1
    benchmark (every study of it was measured then: no failures).
    """
    from models.training.data import Study, assign_splits
    from service.sim.benchmark import SCANS_PER_ANATOMY, study_id
    from service.sim.sites import SITES

    studies = [Study(study_id(site, i), site.name, site.role,
                     f"{site.name}_a{i // SCANS_PER_ANATOMY:04d}", "", Path())
               for site in SITES.values() for i in range(site.n_studies)]
    splits = assign_splits(studies, seed)
    out: dict[str, list[int]] = {}
    for name in V1_SITES:
        groups = sorted({int(s.anatomy_id.rsplit("_a", 1)[1]) for s in studies
                         if s.site == name and splits[s.study_id] == "test"})
        out[name] = groups[:per_site]
    return out


def generate_v1_heldout(out_dir: Path, per_site: int, workers: int = 1) -> Path:
    """Generate those groups (benchmark version 1 bytes) under ``out_dir``; the manifest."""
    from concurrent.futures import ProcessPoolExecutor

    from service.sim.benchmark import _run_group, claim_version, write_manifest
    from service.sim.sites import SITES

    claim_version(out_dir, 1)
    tasks = [(SITES[name], g, out_dir)
             for name, groups in v1_heldout_groups(per_site).items() for g in groups]
    if workers > 1:
        from service.sim.benchmark import _init_worker

        with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
            list(pool.map(_run_group, tasks, chunksize=1))
    else:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the benchmark's workers: the same bytes
        try:
            for task in tasks:
                _run_group(task)
        finally:
            torch.set_num_threads(threads)
    return write_manifest([SITES[name] for name in V1_SITES], out_dir)


def summary_lines(result: Mapping[str, Any], methods: Sequence[str]) -> list[str]:
    """One line per method of the ``all`` row (for the command's output)."""
    rows = result["table"]["all"]
    return [f"{m}: sens {_frac(rows[m]['tp'], rows[m]['n_reduced'])}, "
            f"spec {_frac(rows[m]['tn'], rows[m]['n_normal'])}" for m in methods if m in rows]
