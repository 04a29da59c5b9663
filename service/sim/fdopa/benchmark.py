"""The FDOPA benchmark: four simulated sites, resumable parallel generation, truth manifest.

Design: three sites with different PET/CT scanners (training and
in-distribution testing) and one held-out PET/MR site ("unseen": other
vendor conventions, MR-based attenuation, coarser resolution). About a third
of the subjects are children (2-18 years; different class mix: diffuse
midline gliomas, low-uptake lesions), about a third have a dynamic series.
Study ``i`` of a site draws everything from ``numpy.random.default_rng([seed,
i])``, so output does not depend on worker order and a rerun skips finished
studies (``truth.json`` present). Suggested splits: hold out ``site_d_unseen``
entirely; inside the three others, split by study index (``index % 5 == 0``
is test), and report adults and children separately.
"""

from __future__ import annotations

import csv
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from service.sim.fdopa.pet_writer import PetEncoding
from service.sim.fdopa.study import TRUTH_FILE, StudyPlan

MANIFEST_FILE = "manifest.csv"
ADULT_MIX = {"hgg": 0.3, "lgg": 0.2, "low_uptake": 0.1, "treatment_change": 0.2, "none": 0.2}
CHILD_MIX = {"dmg": 0.3, "hgg": 0.15, "lgg": 0.25, "low_uptake": 0.2, "none": 0.1}
PAEDIATRIC_FRACTION = 1 / 3
DYNAMIC_FRACTION = 0.36
#: FLAIR for every child and for this share of adults (about half the studies).
ADULT_FLAIR_FRACTION = 0.25


@dataclass(frozen=True)
class FdopaSite:
    """One simulated site.

    Attributes
    ----------
    name, profile, role : str
        Role ``"train_test"`` or ``"unseen"``.
    n_studies, seed : int
    adult_schedule : str
        Dynamic framing for adults (children use ``genoa25``).
    units_mix : dict of str to float
        Units of the static AC series.
    assay_time_fraction : float
        Share of studies whose recorded start time is the dose-assay time.
    enhanced_fraction : float
        Share of static AC series written as one Legacy Converted Enhanced PET instance.
    ge_quirk_fraction : float
        Share of static AC series with GE-style signed pixels and a post-processed
        (later) Series Time.
    transfer_syntax_mix : dict of str to float, optional
        Transfer syntax of the whole study (lossless only); None: Explicit VR LE.
    native_enhanced_fraction : float
        Share of studies whose static AC PET (BQML or GML), dynamic PET and
        FLAIR are native Enhanced PET / Enhanced MR instances.
    """

    name: str
    profile: str
    role: str
    n_studies: int
    seed: int
    adult_schedule: str
    units_mix: dict[str, float]
    assay_time_fraction: float = 0.0
    enhanced_fraction: float = 0.0
    ge_quirk_fraction: float = 0.0
    transfer_syntax_mix: dict[str, float] | None = None
    native_enhanced_fraction: float = 0.0


SITES: dict[str, FdopaSite] = {
    s.name: s
    for s in (
        FdopaSite("site_a", "siemens_biograph_like", "train_test", 180, 2101, "nancy30",
                  {"BQML": 1.0}, assay_time_fraction=0.5, native_enhanced_fraction=0.15,
                  transfer_syntax_mix={"explicit": 0.8, "jpeg2000": 0.2}),
        FdopaSite("site_b", "ge_discovery_like", "train_test", 180, 2102, "rennes20",
                  {"BQML": 0.8, "GML": 0.2}, enhanced_fraction=0.1, ge_quirk_fraction=0.3,
                  transfer_syntax_mix={"explicit": 0.75, "jpegls": 0.25}),
        FdopaSite("site_c", "philips_vereos_like", "train_test", 180, 2103, "nancy30",
                  {"CNTS": 0.7, "BQML": 0.3},
                  transfer_syntax_mix={"explicit": 0.75, "rle": 0.2, "deflate": 0.05}),
        FdopaSite("site_d_unseen", "petmr_unseen", "unseen", 120, 2104, "nancy30",
                  {"BQML": 1.0}, enhanced_fraction=0.5, native_enhanced_fraction=0.25,
                  transfer_syntax_mix={"explicit": 0.6, "jpeg2000": 0.2, "jpegls": 0.2}),
    )
}


def _choice(rng: np.random.Generator, mix: dict[str, float]) -> str:
    p = np.array(list(mix.values()), float)
    return str(rng.choice(list(mix), p=p / p.sum()))


def plan_study(site: FdopaSite, index: int) -> StudyPlan:
    """The plan of study ``index`` of ``site`` (deterministic)."""
    from service.sim.fdopa.profiles import get_pet_profile

    rng = np.random.default_rng([site.seed, index])
    paediatric = bool(rng.random() < PAEDIATRIC_FRACTION)
    cls = _choice(rng, CHILD_MIX if paediatric else ADULT_MIX)
    dynamic = bool(rng.random() < DYNAMIC_FRACTION)
    window = "20-40" if rng.random() < 0.2 else "10-30"
    assay = float(rng.uniform(5, 15)) if rng.random() < site.assay_time_fraction else 0.0
    flair = None
    if paediatric or rng.random() < ADULT_FLAIR_FRACTION:
        flair = str(rng.choice(["ax2d_3t", "ax2d_15t", "iso3d_3t"], p=[0.5, 0.3, 0.2]))
    enhanced = bool(rng.random() < site.enhanced_fraction)
    profile = get_pet_profile(site.profile)
    encoding = PetEncoding(
        units=_choice(rng, site.units_mix),  # type: ignore[arg-type]
        decay_correction=profile.decay_correction,
        frame_reference=profile.frame_reference,
        reversed_order=profile.reversed_dynamic_order,
        assay_minutes_before_injection=round(assay, 1),
    )
    seed = int(rng.integers(2**62))
    # drawn last, so that adding them left every earlier study's subject unchanged
    flair_enhanced = flair == "iso3d_3t" and bool(rng.random() < 0.5)
    if rng.random() < site.ge_quirk_fraction:
        encoding = replace(encoding, signed_pixels=True,
                           series_time_after_scan_min=round(float(rng.uniform(20, 90)), 1))
    plan = StudyPlan(
        study_id=f"{site.name}_{index:05d}", profile=site.profile, tumour_class=cls,
        paediatric=paediatric, seed=seed, static_window=window,
        schedule=("genoa25" if paediatric else site.adult_schedule) if dynamic else None,
        encoding=encoding, flair=flair, enhanced=enhanced, flair_enhanced=flair_enhanced,
    )
    return _with_variants(site, index, plan)


def _with_variants(site: FdopaSite, index: int, plan: StudyPlan) -> StudyPlan:
    """Transfer syntax and native Enhanced objects, from their own random stream.

    ``default_rng([seed, index, 11])`` leaves the draws of :func:`plan_study`
    untouched: a study not drawn for a variant keeps its bytes.
    """
    rng = np.random.default_rng([site.seed, index, 11])
    syntax = _choice(rng, site.transfer_syntax_mix or {"explicit": 1.0})
    if rng.random() < site.native_enhanced_fraction and plan.encoding.units != "CNTS":
        plan = replace(plan, enhanced=True, enhanced_kind="native",
                       dynamic_enhanced=plan.schedule is not None,
                       flair_enhanced=plan.flair is not None)
    return replace(plan, encoding=replace(plan.encoding, transfer_syntax=syntax))


def _site_dir(out_dir: Path, site: FdopaSite) -> Path:
    return out_dir / site.name


def is_done(out_dir: Path, site: FdopaSite, index: int) -> bool:
    """Whether study ``index`` of ``site`` is complete under ``out_dir``."""
    return (_site_dir(out_dir, site) / f"{site.name}_{index:05d}" / TRUTH_FILE).exists()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run(args: tuple[FdopaSite, int, Path]) -> float:
    from service.sim.fdopa.study import simulate_study

    site, index, out_dir = args
    t0 = time.monotonic()
    simulate_study(plan_study(site, index), _site_dir(out_dir, site),
                   {"site": site.name, "role": site.role})
    return time.monotonic() - t0


SPLITS = ("all", "test", "fresh")
#: The fresh split starts this far beyond a site's last benchmark study: no benchmark, training
#: or validation study (``models/fdopa_seg/data.py`` ``fresh_ids`` stays below it) is fresh.
FRESH_OFFSET = 1000


def fresh_start(site: FdopaSite) -> int:
    """The first study index of ``site``'s fresh split."""
    return site.n_studies + FRESH_OFFSET


def is_held_out(site: FdopaSite, index: int) -> bool:
    """Whether study ``index`` of ``site`` may be evaluated: never trained or validated on.

    Every study of the unseen site; of a training site, ``index % 5 == 0`` among the
    benchmark's studies (the indices just beyond them are the PET U-Net's extra
    validation studies) and the fresh split.
    """
    if site.role != "train_test":
        return True
    return index % 5 == 0 if index < site.n_studies else index >= fresh_start(site)


def study_indices(site: FdopaSite, split: str = "all", limit: int | None = None,
                  paediatric_only: bool = False, skip: int = 0) -> list[int]:
    """The study indices of ``site`` in ``split``, at most ``limit`` of them.

    ``test`` is the held-out evaluation split: ``index % 5 == 0`` of a training
    site, every study of the unseen site. Training code never draws from it
    (``models/fdopa_seg/data.py`` uses the same rule). ``fresh`` is a second
    held-out set for a check once the test split has been looked at: the
    first ``limit`` (required) studies from :func:`fresh_start` on, drawn by
    the same rules as the benchmark's. ``paediatric_only``: only the studies
    whose plan draws a child: among the first ``limit`` of ``all`` or ``test``
    (the same studies as without it, less the adults), ``limit`` of them in
    ``fresh``. ``skip`` (fresh only): leave out the first ``skip`` studies of the
    fresh split that qualify (a new check set once the first ones have been looked at).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if skip and split != "fresh":
        raise ValueError("skip applies to the fresh split only")
    if split == "fresh":
        if limit is None:
            raise ValueError("the fresh split needs a limit (studies per site)")
        out: list[int] = []
        index = fresh_start(site)
        while len(out) < limit + skip:
            if not paediatric_only or plan_study(site, index).paediatric:
                out.append(index)
            index += 1
        return out[skip:]
    indices = list(range(site.n_studies))
    if split == "test" and site.role == "train_test":
        indices = [i for i in indices if i % 5 == 0]
    indices = indices[:limit] if limit is not None else indices
    return [i for i in indices if plan_study(site, i).paediatric] if paediatric_only else indices


def generate(sites: list[FdopaSite], out_dir: Path, workers: int = 2, split: str = "all",
             limit: int | None = None, paediatric_only: bool = False, skip: int = 0) -> Path:
    """Generate (or finish) ``sites`` under ``out_dir``; returns the manifest path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(s, i, out_dir) for s in sites
             for i in study_indices(s, split, limit, paediatric_only, skip)
             if not is_done(out_dir, s, i)]
    if tasks:
        check_folder_anatomy(out_dir, sites)
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # same arithmetic as in the pool: same bytes
        try:
            for t in tasks:
                _run(t)
        finally:
            torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            list(pool.map(_run, tasks, chunksize=1))
    return write_manifest(sites, out_dir)


class FolderAnatomyError(ValueError):
    """A benchmark folder holds studies of another head anatomy than this process's."""


def check_folder_anatomy(out_dir: Path, sites: list[FdopaSite]) -> None:
    """Refuse to add studies of another head anatomy to a folder (a resumed benchmark).

    Every finished study's truth names its head labels (``atlas_labels``); a
    study without the field (made before it existed) is not checked.

    Raises
    ------
    FolderAnatomyError
        A finished study of ``out_dir`` was made with other head labels than
        this process's choice (:func:`service.sim.fdopa.head.choose_anatomy`).
    """
    from service.sim.fdopa.head import choose_anatomy, setting_of

    source = choose_anatomy().source
    for site in sites:
        for path in sorted(_site_dir(out_dir, site).glob(f"{site.name}_[0-9]*/{TRUTH_FILE}")):
            found = json.loads(path.read_text()).get("atlas_labels")
            if found is not None and found != source:
                raise FolderAnatomyError(
                    f"{out_dir} holds studies made with {found} head labels "
                    f"({path.parent.name}); this process simulates {source}: resume it with "
                    f"DOPANODE_FDOPA_ANATOMY={setting_of(found)}, or use another folder")


def write_manifest(sites: list[FdopaSite], out_dir: Path) -> Path:
    """Collect every finished study's truth (without the TAC lists) into ``manifest.csv``."""
    rows = []
    for site in sites:  # the benchmark's studies and any fresh ones, in index order
        for path in sorted(_site_dir(out_dir, site).glob(f"{site.name}_[0-9]*/{TRUTH_FILE}")):
            row = json.loads(path.read_text())
            rows.append({k: v for k, v in row.items() if not isinstance(v, list)})
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    manifest = out_dir / MANIFEST_FILE
    tmp = manifest.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or ["study_id"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


#: Benchmark design minimums (issue: >= 600 static, >= 200 dynamic, >= 200 FLAIR, ~1/3 children).
CENSUS_GOALS = {"studies": 600, "dynamic": 200, "flair": 200}


def census(rows: list[dict[str, object]]) -> dict[str, object]:
    """Composition of a generated benchmark from its truth rows (``manifest.csv`` or truth.json).

    Counts studies, children, dynamic series (a non-empty ``schedule``), FLAIR
    series, Enhanced PET objects, measurable lesions, the tumour classes and
    the generation CPU time recorded per study (``cpu_s``).
    """
    def truthy(value: object) -> bool:
        return value not in (None, "", False, "False", "0", 0)

    classes: dict[str, int] = {}
    for r in rows:
        classes[str(r.get("tumour_class"))] = classes.get(str(r.get("tumour_class")), 0) + 1
    cpu = [float(str(r["cpu_s"])) for r in rows if truthy(r.get("cpu_s"))]
    return {
        "studies": len(rows),
        "paediatric": sum(truthy(r.get("paediatric")) for r in rows),
        "dynamic": sum(truthy(r.get("schedule")) for r in rows),
        "flair": sum(truthy(r.get("flair")) for r in rows),
        "enhanced_pet": sum(truthy(r.get("enhanced_pet")) for r in rows),
        "measurable": sum(truthy(r.get("measurable")) for r in rows),
        "classes": dict(sorted(classes.items())),
        "cpu_s_total": round(sum(cpu), 1),
        "cpu_s_mean": round(sum(cpu) / len(cpu), 2) if cpu else None,
    }


def census_shortfalls(counts: dict[str, object]) -> list[str]:
    """The design minimums a census misses, as readable lines (empty when all are met)."""
    return [f"{key}: {counts[key]} < {goal}" for key, goal in CENSUS_GOALS.items()
            if int(str(counts[key])) < goal]
