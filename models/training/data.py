"""The training set: benchmark studies -> cached CNN inputs, SBRs and labels.

Layout of the work directory (never in git):

* ``cache/<study_id>.npz``: ``x`` ``(1, D, H, W)`` float32 (the output of
  :func:`service.pipelines.dat_spect.preprocess.cnn_input` on the pipeline's own
  normalised volume), ``sbr`` ``(4,)`` float64 (order of
  :data:`service.pipelines.dat_spect.result.REGIONS`), ``age`` (NaN when unknown), and from the
  pipeline also ``quality`` and ``scales`` of the registration and
  ``seconds`` (wall time of ``measure``), read by ``bench/analysis.py --cache``;
* ``failures.csv``: studies the last pass could not measure, with the
  pipeline's error code and reason (they are retried by the next pass);
* ``labels/<dataset>/labels.csv`` and ``calibration.json``: the GMM labels of
  each dataset (site), made by :func:`service.pipelines.dat_spect.labelling.label_dataset`,
  the function behind ``dopanode label``, on the SBRs measured here;
* ``index.csv``: one row per study: id, site, role, anatomy group, disease
  class, split, SBRs and levels.

Two label sources (``label_source``): ``"gmm"`` (the per-site GMM labels
above, as the reference paper; suits sites with one camera each) and
``"truth"``: the simulator's own truth levels
(:func:`service.sim.reference.truth_levels`: the remaining fraction of each
region's binding against the same subject without disease, cut at 80 / 65 /
45 / 25 %), for benchmarks whose sites mix appearances and protocols, where a
per-site mixture of measured SBRs has no meaning. Truth labels come from the
simulation, not from a reader. The GMM calibration is computed either way
(the carried-over SBR baseline of :mod:`.evaluate` uses it).

Splits keep anatomy groups together: ``unseen`` sites are all ``test_unseen``;
in the other sites a seeded permutation of the anatomy groups gives
``train`` / ``val`` / ``test`` (70/10/20 %).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.pipelines.dat_spect.result import REGIONS

if TYPE_CHECKING:
    from service.pipelines.dat_spect.assets import DatModels

log = logging.getLogger(__name__)

INDEX_FILE = "index.csv"
FAILURES_FILE = "failures.csv"
#: What a measure function returns: arrays to cache, at least ``x``, ``sbr``, ``age``.
Measured = dict[str, np.ndarray | float]
MeasureFn = Callable[[Path], Measured]
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True, eq=False)
class Study:
    """One row of the benchmark manifest that matters for training."""

    study_id: str
    site: str
    role: str
    anatomy_id: str
    disease_class: str
    series_dir: Path
    #: :func:`service.sim.reference.binary_reference` of the manifest row
    #: ("" when the manifest has no true binding).
    binary_reference: str = ""
    #: :func:`service.sim.reference.truth_levels` in the order of REGIONS
    #: (None when the manifest has no true binding).
    truth_levels: tuple[int, ...] | None = None
    #: The manifest's ``age_years`` (None when empty or absent).
    age_years: float | None = None


@dataclass(frozen=True, eq=False)
class TrainingSet:
    """Arrays of the cached studies, aligned.

    Attributes
    ----------
    x : (N, 1, D, H, W) float32 array
    sbr : (N, 4) float64 array
    levels : (N, 4) int64 array
        GMM labels 0..4 per region (order of REGIONS).
    rows : list of dict
        The index rows (``study_id``, ``site``, ``role``, ``split``,
        ``disease_class``, ...).
    """

    x: np.ndarray
    sbr: np.ndarray
    levels: np.ndarray
    rows: list[dict[str, str]]

    def subset(self, mask: np.ndarray) -> TrainingSet:
        idx = np.nonzero(mask)[0]
        return TrainingSet(self.x[idx], self.sbr[idx], self.levels[idx],
                           [self.rows[i] for i in idx])

    def column(self, name: str) -> np.ndarray:
        return np.array([row[name] for row in self.rows])


def read_manifest(bench_dir: Path) -> list[Study]:
    """Studies of ``bench_dir/manifest.csv`` (``dopanode benchmark generate`` or ``simulate``)."""
    path = bench_dir / "manifest.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: generate the benchmark first")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    studies = []
    for row in rows:
        sid, site = row["study_id"], row["site"]
        if not (_ID_RE.match(sid) and _ID_RE.match(site)):
            raise SystemExit(f"manifest holds an unusable study id or site: {sid!r}")
        studies.append(Study(sid, site, row.get("role", "train_test"), row["anatomy_id"],
                             row.get("disease_class", ""), bench_dir / site / sid / "series",
                             _reference(row), _truth_levels(row),
                             float(row["age_years"]) if row.get("age_years") else None))
    return studies


def _truth_levels(row: dict[str, str]) -> tuple[int, ...] | None:
    """Truth level per region (order of REGIONS), None without true binding columns."""
    from service.sim.reference import truth_levels

    if not row.get("true_br_putamen_left") or not row.get("age_years"):
        return None
    levels = truth_levels(row)
    return tuple(levels[r.value] for r in REGIONS)


def _reference(row: dict[str, str]) -> str:
    """The binary reference of a manifest row, "" without true binding columns."""
    from service.sim.reference import binary_reference

    if not row.get("true_br_putamen_left") or not row.get("age_years"):
        return ""
    return binary_reference(row)


@lru_cache(maxsize=1)
def _dat_models() -> DatModels:
    from service.pipelines.dat_spect.assets import load_dat_models

    return load_dat_models()


def measure_study(series_dir: Path) -> Measured:
    """Run the pipeline's ``measure`` on one study (see the cache layout above)."""
    import time

    from service.dicom.header import read_series as read_datasets
    from service.pipelines.dat_spect.pipeline import measure
    from service.pipelines.dat_spect.preprocess import cnn_input

    models = _dat_models()
    start = time.perf_counter()
    files = sorted(p for p in series_dir.rglob("*") if p.is_file())
    m = measure(read_datasets(files), models, (), {})
    x = cnn_input(m.normalisation.volume_zyx, models.atlas)
    return {
        "x": x,
        "sbr": np.array([m.quantification.sbr[r] for r in REGIONS], float),
        "age": float("nan") if m.age_years is None else float(m.age_years),
        "quality": float(m.normalisation.quality),
        "scales": np.asarray(m.normalisation.scales, float),
        "seconds": time.perf_counter() - start,
    }


def _cache_one(args: tuple[Path, Path, MeasureFn]) -> tuple[str, str] | None:
    series_dir, target, measure_fn = args
    from service.errors import AnalysisError

    try:
        arrays = measure_fn(series_dir)
    except AnalysisError as exc:
        return exc.code, exc.reason
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    tmp.replace(target)
    return None


def cache_studies(
    studies: Sequence[Study], work_dir: Path, workers: int = 1,
    measure_fn: MeasureFn = measure_study,
) -> list[Study]:
    """Measure every study not yet cached; returns those that are cached.

    Failures (``AnalysisError``) are logged with their code, listed in
    ``failures.csv`` and left out.
    """
    cache = work_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    todo = [s for s in studies if not (cache / f"{s.study_id}.npz").exists()]
    jobs = [(s.series_dir, cache / f"{s.study_id}.npz", measure_fn) for s in todo]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            errors = list(pool.map(_cache_one, jobs, chunksize=4))
    else:
        errors = [_cache_one(job) for job in jobs]
    with (work_dir / FAILURES_FILE).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["study_id", "site", "code", "reason"])
        for study, error in zip(todo, errors, strict=True):
            if error:
                writer.writerow([study.study_id, study.site, *error])
                log.warning("study_not_measured", extra={"fields": {
                    "study_id": study.study_id, "code": error[0], "reason": error[1]}})
    return [s for s in studies if (cache / f"{s.study_id}.npz").exists()]


def assign_splits(studies: Sequence[Study], seed: int,
                  keep: Mapping[str, str] | None = None) -> dict[str, str]:
    """Split name per study id (anatomy groups kept together, see module docstring).

    ``keep``: study id -> split of an earlier training (its ``index.csv``,
    :func:`read_splits`); those studies keep their split, and only the anatomy
    groups without such a study are split anew (same fractions and seed), so a
    benchmark grown by new groups is compared with the earlier model on the same
    validation and test scans.
    """
    if keep:
        group_split: dict[str, str] = {}
        for s in studies:
            if s.study_id in keep:
                group_split.setdefault(s.anatomy_id, keep[s.study_id])
        out = assign_splits([s for s in studies if s.anatomy_id not in group_split], seed)
        for s in studies:
            if s.anatomy_id in group_split:
                out[s.study_id] = keep.get(s.study_id, group_split[s.anatomy_id])
        return out
    rng = np.random.default_rng(seed)
    groups = sorted({s.anatomy_id for s in studies if s.role != "unseen"})
    order = rng.permutation(len(groups))
    n_train = int(round(SPLIT_FRACTIONS["train"] * len(groups)))
    n_val = int(round(SPLIT_FRACTIONS["val"] * len(groups)))
    split_of_group = {}
    for rank, g in enumerate(order):
        split_of_group[groups[g]] = ("train" if rank < n_train else
                                     "val" if rank < n_train + n_val else "test")
    return {s.study_id: "test_unseen" if s.role == "unseen" else split_of_group[s.anatomy_id]
            for s in studies}


def extend_splits(studies: Sequence[Study], keep: Mapping[str, str], new_split: str
                  ) -> dict[str, str]:
    """``keep`` plus ``new_split`` for every study of an anatomy group ``keep`` has no
    study of (role ``unseen``: ``test_unseen``), as :func:`assign_splits` ``keep``.

    How a grown benchmark's new groups all become, e.g., validation scans: the
    earlier model's splits stay, and a model choice gets a larger validation split.
    """
    if new_split not in SPLIT_FRACTIONS:
        raise ValueError(f"unknown split {new_split!r} (one of {', '.join(SPLIT_FRACTIONS)})")
    kept_groups = {s.anatomy_id for s in studies if s.study_id in keep}
    out = dict(keep)
    for s in studies:
        if s.study_id not in out and s.anatomy_id not in kept_groups:
            out[s.study_id] = "test_unseen" if s.role == "unseen" else new_split
    return out


def _load_cached(work_dir: Path, study_id: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(work_dir / "cache" / f"{study_id}.npz") as npz:
        return npz["x"], npz["sbr"]


LABEL_SOURCES = ("gmm", "truth")


def read_splits(index_csv: Path) -> dict[str, str]:
    """Study id -> split of a training's ``index.csv``."""
    with index_csv.open(newline="") as f:
        return {row["study_id"]: row["split"] for row in csv.DictReader(f)}


def label_sites(studies: Sequence[Study], work_dir: Path, seed: int,
                label_source: str = "gmm", keep_splits: Mapping[str, str] | None = None
                ) -> Path:
    """GMM labels per site (as ``dopanode label``) and the index CSV; returns its path.

    The index's ``level_*`` columns hold the GMM levels, or with
    ``label_source="truth"`` the studies' truth levels (module docstring).
    """
    from service.pipelines.dat_spect.labelling import label_dataset

    if label_source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {label_source!r}; known: {LABEL_SOURCES}")
    if label_source == "truth" and any(s.truth_levels is None for s in studies):
        raise SystemExit("truth labels need a manifest with true binding (benchmark >= 2)")
    splits = assign_splits(studies, seed, keep_splits)
    rows: list[dict[str, object]] = []
    for site in sorted({s.site for s in studies}):
        members = [s for s in studies if s.site == site]
        sbrs = [_load_cached(work_dir, s.study_id)[1] for s in members]
        labels = label_dataset(site, [dict(zip(REGIONS, v, strict=True)) for v in sbrs],
                               np.random.default_rng(seed))
        out = work_dir / "labels" / site
        out.mkdir(parents=True, exist_ok=True)
        calibration = {**labels.calibration().to_dict(), "provenance": "simulated"}
        (out / "calibration.json").write_text(json.dumps(calibration, indent=2))
        for s, sbr, gmm in zip(members, sbrs, labels.levels, strict=True):
            levels = gmm if s.truth_levels is None or label_source == "gmm" else dict(
                zip(REGIONS, s.truth_levels, strict=True))
            rows.append({
                "study_id": s.study_id, "site": s.site, "role": s.role,
                "anatomy_id": s.anatomy_id, "disease_class": s.disease_class,
                "binary_reference": s.binary_reference, "split": splits[s.study_id],
                **{f"sbr_{r.value}": f"{v:.5f}" for r, v in zip(REGIONS, sbr, strict=True)},
                **{f"level_{r.value}": int(levels[r]) for r in REGIONS},
            })
        with (out / "labels.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "dataset", *(r.value for r in REGIONS),
                             *(f"level_{r.value}" for r in REGIONS)])
            for row in rows:
                if row["site"] == site:
                    writer.writerow([row["study_id"], site,
                                     *(row[f"sbr_{r.value}"] for r in REGIONS),
                                     *(row[f"level_{r.value}"] for r in REGIONS)])
    index = work_dir / INDEX_FILE
    with index.open("w", newline="") as f:
        index_writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        index_writer.writeheader()
        index_writer.writerows(rows)
    return index


def load_training_set(work_dir: Path) -> TrainingSet:
    """All studies of ``work_dir/index.csv`` with their cached arrays."""
    with (work_dir / INDEX_FILE).open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{work_dir / INDEX_FILE} lists no studies")
    xs, sbrs = zip(*(_load_cached(work_dir, row["study_id"]) for row in rows), strict=True)
    levels = np.array([[int(row[f"level_{r.value}"]) for r in REGIONS] for row in rows], np.int64)
    return TrainingSet(np.stack(xs).astype(np.float32), np.stack(sbrs), levels, rows)


def build(bench_dir: Path, work_dir: Path, seed: int, workers: int = 1,
          limit_per_site: int | None = None,
          measure_fn: MeasureFn = measure_study, label_source: str = "gmm",
          keep_splits: Mapping[str, str] | None = None) -> TrainingSet:
    """Measure (cached), label per site and load the benchmark under ``bench_dir``
    (``keep_splits``: :func:`assign_splits`)."""
    studies = read_manifest(bench_dir)
    if limit_per_site is not None:
        studies = first_per_site(studies, limit_per_site)
    cached = cache_studies(studies, work_dir, workers, measure_fn)
    if not cached:
        raise SystemExit("no study could be measured")
    label_sites(cached, work_dir, seed, label_source, keep_splits)
    return load_training_set(work_dir)


def first_per_site(studies: Sequence[Study], limit: int) -> list[Study]:
    """The first ``limit`` studies of each site, in manifest order."""
    counts: dict[str, int] = {}
    out = []
    for s in studies:
        if counts.get(s.site, 0) < limit:
            counts[s.site] = counts.get(s.site, 0) + 1
            out.append(s)
    return out
