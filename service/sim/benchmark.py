"""The benchmark: four simulated sites, resumable parallel generation, truth manifest.

Design (mirrors Buddenkotte et al. 2025): three sites with different cameras
for training and in-distribution testing, one more site held out as unseen.
Studies are generated in *anatomy groups*: one random subject anatomy
(:mod:`service.sim.anatomy`) is projected once and scanned with
:data:`SCANS_PER_ANATOMY` independent disease states; groups never straddle
sites, and ``anatomy_id`` is in the manifest so splits can keep groups
together. Every group draws from its own generator
``numpy.random.default_rng([seed, group])``, so output does not depend on the
order in which worker processes run, and a rerun skips finished studies (a
study is finished when its ``truth.json`` exists, written last). The sites
themselves (:data:`~service.sim.sites.SITES`, ...) are :mod:`service.sim.sites`.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from service.sim.groups import GroupPlan, plan_fields
from service.sim.sites import SiteSpec

if TYPE_CHECKING:  # torch-free at import time
    from service.sim.anatomy import SubjectTransform
    from service.sim.disease import Background, DiseaseState
    from service.sim.scan import SimulatedScan

logger = logging.getLogger(__name__)

#: Scans sharing one simulated anatomy.
SCANS_PER_ANATOMY = 4
TRUTH_FILE = "truth.json"
MANIFEST_FILE = "manifest.csv"
VERSION_FILE = "benchmark_version.json"


def study_id(site: SiteSpec, index: int) -> str:
    return f"{site.name}_{index:05d}"


def generate_group(site: SiteSpec, group: int, out_dir: Path) -> list[dict[str, object]]:
    """Simulate and write the studies of one anatomy group; returns their truth rows.

    Studies already finished (truth file present) are skipped, but their random
    draws are still made so the others stay identical.
    """
    from service.sim.groups import plan_group, plan_scanner

    plan = plan_group(site, group, SCANS_PER_ANATOMY)
    todo = [k for k, i in enumerate(plan.indices) if not _done(out_dir, site, i)]
    if not todo:
        return []
    scanner = plan_scanner(plan)
    rows = []
    for k in todo:
        index = plan.indices[k]
        t0 = time.process_time()
        scan = scanner.scan(plan.states[k], np.random.default_rng(plan.noise_seeds[k]))
        row = _write_study(site, index, group, k, scan, plan, out_dir)
        row["cpu_s"] = round(time.process_time() - t0, 2)
        # written last: its presence marks the study as finished
        truth = out_dir / site.name / study_id(site, index) / TRUTH_FILE
        truth.write_text(json.dumps(row, indent=1))
        rows.append(row)
    return rows


def _done(out_dir: Path, site: SiteSpec, index: int) -> bool:
    return (out_dir / site.name / study_id(site, index) / TRUTH_FILE).exists()


def _write_study(
    site: SiteSpec,
    index: int,
    group: int,
    k: int,
    scan: SimulatedScan,
    plan: GroupPlan,
    out_dir: Path,
) -> dict[str, object]:
    from service.sim.nm_writer import CameraHeader, EncodingVariant, SubjectHeader, write_nm_study
    from service.sim.scan import to_image

    profile, state, variant = plan.profile, plan.states[k], plan.variants[k]
    sid = study_id(site, index)
    camera = CameraHeader(
        manufacturer=profile.manufacturer,
        model_name=profile.model_name,
        collimator=profile.collimator.name,
        reconstruction_description=profile.reconstruction_description,
        attenuation_corrected=profile.attenuation_correction != "none",
        scatter_corrected=profile.scatter_correction,
        energy_window_kev=profile.energy_window_kev,
        counts_total=scan.counts_total,
    )
    subject = SubjectHeader(
        age_years=state.age_years, sex=state.sex, injected_activity_mbq=plan.activities[k]
    )
    write_nm_study(
        to_image(scan.volume_zyx, scan.grid, profile.matrix),
        camera,
        subject,
        EncodingVariant(variant),
        out_dir / site.name / sid / "series",
        uid_seed=f"dopanode-sim:{site.name}:{site.seed}:{index}",
    )
    row: dict[str, object] = {
        "study_id": sid,
        "site": site.name,
        "role": site.role,
        "profile": site.profile,
        "seed": site.seed,
        "anatomy_id": f"{site.name}_a{group:04d}",
        "scan_in_anatomy": k,
        "encoding_variant": variant,
        "disease_class": state.disease_class,
        "severity": round(state.severity, 4),
        "more_affected_side": state.more_affected_side,
        "age_years": state.age_years,
        "sex": state.sex,
        "injected_activity_mbq": round(plan.activities[k], 1),
        "counts_total": scan.counts_total,
    }
    row.update(_truth_fields(state, plan, scan))
    row.update(_transform_fields(plan.transform, plan.background))
    row["appearance"] = site.appearance
    row.update(plan_fields(plan))
    return row


def _truth_fields(state: DiseaseState, plan: GroupPlan, scan: SimulatedScan) -> dict[str, object]:
    """True and normal binding, truth levels, binary reference and truth-ROI SBR."""
    from service.sim.anatomy import STRIATAL_COMPONENTS
    from service.sim.reference import binary_from_levels, region_levels
    from service.sim.scan import measure_sbr
    from service.sim.striatal_sources import region_binding

    source = plan.appearance.striatal_source if plan.appearance else "aal"
    row: dict[str, object] = {}
    for comp in STRIATAL_COMPONENTS:
        row[f"true_br_{comp}"] = round(state.binding[comp], 4)
    true = region_binding(state.binding, source)
    normal = region_binding(state.normal_binding(), source)
    for name, value in true.items():
        row[f"true_br_{name}"] = round(value, 4)
    levels = region_levels(true, normal)
    for name in true:
        row[f"normal_br_{name}"] = round(normal[name], 4)
        row[f"true_level_{name}"] = levels[name]
    row["binary_reference"] = binary_from_levels(levels)
    for name, value in measure_sbr(scan.volume_zyx, scan.labels_zyx).items():
        row[f"roi_sbr_{name}"] = round(value, 4)
    return row


def _transform_fields(
    transform: SubjectTransform, background: Background | None
) -> dict[str, object]:
    fields: dict[str, object] = {}
    for axis, s, r, t in zip(
        "xyz", transform.scale, transform.rotation_deg, transform.translation_mm, strict=True
    ):
        fields[f"scale_{axis}"] = round(float(s), 4)
        fields[f"rotation_{axis}_deg"] = round(float(r), 3)
        fields[f"translation_{axis}_mm"] = round(float(t), 3)
    if background is not None:
        fields["bg_white_matter"] = round(background.white_matter, 4)
        fields["bg_extracerebral"] = round(background.extracerebral, 4)
        fields["bg_salivary"] = round(background.salivary, 4)
    return fields


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_group(args: tuple[SiteSpec, int, Path]) -> int:
    return len(generate_group(*args))


class VersionMismatch(ValueError):
    """The output folder holds another benchmark version (same study ids, other data)."""


def claim_version(out_dir: Path, version: int) -> None:
    """Mark ``out_dir`` as holding benchmark ``version``; refuse a folder of another one.

    A folder without the marker but with finished studies is version 1 (made
    before the marker existed). Resuming would otherwise mix versions silently.
    """
    path = out_dir / VERSION_FILE
    if path.exists():
        found = int(json.loads(path.read_text())["version"])
    elif any(out_dir.glob(f"*/*/{TRUTH_FILE}")):
        found = 1
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": version}))
        return
    if found != version:
        raise VersionMismatch(
            f"{out_dir} holds benchmark version {found}, not {version}: use another folder "
            f"or --version {found}"
        )
    if not path.exists():
        path.write_text(json.dumps({"version": found}))


def generate(
    sites: list[SiteSpec], out_dir: Path, workers: int = 2, version: int | None = None
) -> Path:
    """Generate (or finish) ``sites`` under ``out_dir``; writes and returns the manifest CSV.

    ``version``: the benchmark version the sites belong to (checked and
    recorded by :func:`claim_version`); ``None`` for ad-hoc sites.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if version is not None:
        claim_version(out_dir, version)
    tasks = [(s, g, out_dir) for s in sites for g in range(-(-s.n_studies // SCANS_PER_ANATOMY))]
    t0 = time.monotonic()
    done = 0
    if workers <= 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # same arithmetic as in the pool: same bytes
        try:
            for t in tasks:
                done += _run_group(t)
        finally:
            torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            for n in pool.map(_run_group, tasks, chunksize=1):
                done += n
    elapsed = time.monotonic() - t0
    logger.info(
        "benchmark generated",
        extra={
            "fields": {
                "event": "sim_generate",
                "studies_written": done,
                "duration_s": round(elapsed, 1),
                "workers": workers,
            }
        },
    )
    return write_manifest(sites, out_dir)


def write_manifest(sites: list[SiteSpec], out_dir: Path) -> Path:
    """Collect every finished study's truth into ``out_dir/manifest.csv`` (sorted)."""
    rows = []
    for site in sites:
        for i in range(site.n_studies):
            path = out_dir / site.name / study_id(site, i) / TRUTH_FILE
            if path.exists():
                rows.append(json.loads(path.read_text()))
    manifest = out_dir / MANIFEST_FILE
    # union in first-seen order: broad-camera rows have columns the others lack
    fields = list(dict.fromkeys(k for row in rows for k in row)) or ["study_id"]
    tmp = manifest.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


def truth_labels(site: SiteSpec, index: int) -> sitk.Image:
    """Truth ROI labels of study ``index`` on its written image grid (LPS).

    Re-draws the study's anatomy (and, for broad sites, its appearance and
    camera) from the site seed (cheap: no projection), so the known ROIs of
    any generated study can be had without storing them. Labels as
    :data:`service.imaging.atlas.LABELS` (striatum of the study's source), uint8.
    """
    from service.sim.groups import plan_group, plan_phantom
    from service.sim.scan import support_grid, to_image

    if not 0 <= index < site.n_studies:
        raise ValueError(f"study index {index} outside 0..{site.n_studies - 1}")
    plan = plan_group(site, index // SCANS_PER_ANATOMY, SCANS_PER_ANATOMY)
    grid = support_grid(plan.profile)
    return to_image(plan_phantom(plan, grid).labels_zyx, grid, plan.profile.matrix)
