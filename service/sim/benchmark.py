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
study is finished when its ``truth.json`` exists, written last).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:  # torch-free at import time
    from service.sim.anatomy import SubjectTransform
    from service.sim.disease import Background, DiseaseState
    from service.sim.scan import SimulatedScan

logger = logging.getLogger(__name__)

#: Scans sharing one simulated anatomy.
SCANS_PER_ANATOMY = 4
TRUTH_FILE = "truth.json"
MANIFEST_FILE = "manifest.csv"


@dataclass(frozen=True)
class SiteSpec:
    """One simulated site (data set).

    Attributes
    ----------
    name : str
        Data set name; also the study-folder prefix.
    profile : str
        Camera profile name (:data:`service.sim.profiles.PROFILES`).
    n_studies : int
    seed : int
    role : str
        ``"train_test"`` (in-distribution) or ``"unseen"``.
    variants : dict of str to float
        Encoding-variant mix (:class:`service.sim.nm_writer.EncodingVariant` values).
    """

    name: str
    profile: str
    n_studies: int
    seed: int
    role: str
    variants: dict[str, float]


SITES: dict[str, SiteSpec] = {
    s.name: s
    for s in (
        SiteSpec(
            "site_a",
            "siemens_lehr_osem_ctac",
            550,
            1001,
            "train_test",
            {"multiframe": 0.5, "per_slice": 0.2, "rescaled": 0.1, "jpegls": 0.1, "deflate": 0.1},
        ),
        SiteSpec(
            "site_b",
            "ge_lehr_fbp_chang",
            550,
            1002,
            "train_test",
            {"ge_negative_spacing": 0.5, "per_slice": 0.2, "z_flipped": 0.2, "rle": 0.1},
        ),
        SiteSpec(
            "site_c",
            "legacy_legp_lowcount",
            550,
            1003,
            "train_test",
            {"per_slice": 0.5, "multiframe": 0.3, "rescaled": 0.2},
        ),
        SiteSpec(
            "site_d_unseen",
            "fanbeam_hr_osem",
            350,
            1004,
            "unseen",
            {"multiframe": 0.4, "jpeg2000": 0.3, "z_flipped": 0.3},
        ),
    )
}


def profile_site(profile: str, n_studies: int, seed: int, variant: str | None) -> SiteSpec:
    """An ad-hoc site for ``dopanode simulate`` (one profile, one or mixed variants)."""
    from service.sim.nm_writer import EncodingVariant

    mix = (
        {variant: 1.0}
        if variant
        else {v.value: 1.0 / len(EncodingVariant) for v in EncodingVariant}
    )
    return SiteSpec(profile, profile, n_studies, seed, "custom", mix)


def study_id(site: SiteSpec, index: int) -> str:
    return f"{site.name}_{index:05d}"


def generate_group(site: SiteSpec, group: int, out_dir: Path) -> list[dict[str, object]]:
    """Simulate and write the studies of one anatomy group; returns their truth rows.

    Studies already finished (truth file present) are skipped, but their random
    draws are still made so the others stay identical.
    """
    from service.sim.anatomy import sample_transform
    from service.sim.disease import sample_background, sample_state
    from service.sim.profiles import get_profile
    from service.sim.scan import AnatomyScanner

    profile = get_profile(site.profile)
    rng = np.random.default_rng([site.seed, group])
    transform = sample_transform(rng)
    background = sample_background(rng)
    indices = range(group * SCANS_PER_ANATOMY, min((group + 1) * SCANS_PER_ANATOMY, site.n_studies))
    states = [sample_state(rng) for _ in indices]
    variants = [str(rng.choice(list(site.variants), p=_probabilities(site))) for _ in indices]
    activities = [float(rng.uniform(150.0, 190.0)) for _ in indices]
    noise_seeds = [int(rng.integers(2**63)) for _ in indices]
    todo = [k for k, i in enumerate(indices) if not _done(out_dir, site, i)]
    if not todo:
        return []
    scanner = AnatomyScanner(profile, transform, background)
    rows = []
    for k in todo:
        index = indices[k]
        t0 = time.process_time()
        scan = scanner.scan(states[k], np.random.default_rng(noise_seeds[k]))
        row = _write_study(
            site,
            index,
            group,
            k,
            scan,
            states[k],
            variants[k],
            activities[k],
            transform,
            background,
            out_dir,
        )
        row["cpu_s"] = round(time.process_time() - t0, 2)
        # written last: its presence marks the study as finished
        truth = out_dir / site.name / study_id(site, index) / TRUTH_FILE
        truth.write_text(json.dumps(row, indent=1))
        rows.append(row)
    return rows


def _probabilities(site: SiteSpec) -> np.ndarray:
    p = np.array(list(site.variants.values()), float)
    return p / p.sum()


def _done(out_dir: Path, site: SiteSpec, index: int) -> bool:
    return (out_dir / site.name / study_id(site, index) / TRUTH_FILE).exists()


def _write_study(
    site: SiteSpec,
    index: int,
    group: int,
    k: int,
    scan: SimulatedScan,
    state: DiseaseState,
    variant: str,
    activity: float,
    transform: SubjectTransform,
    background: Background,
    out_dir: Path,
) -> dict[str, object]:
    from service.sim.anatomy import STRIATAL_COMPONENTS
    from service.sim.nm_writer import CameraHeader, EncodingVariant, SubjectHeader, write_nm_study
    from service.sim.profiles import get_profile
    from service.sim.scan import measure_sbr, to_image

    profile = get_profile(site.profile)
    sid = study_id(site, index)
    study_dir = out_dir / site.name / sid
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
        age_years=state.age_years, sex=state.sex, injected_activity_mbq=activity
    )
    image = to_image(scan.volume_zyx, scan.grid, profile.matrix)
    write_nm_study(
        image,
        camera,
        subject,
        EncodingVariant(variant),
        study_dir / "series",
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
        "injected_activity_mbq": round(activity, 1),
        "counts_total": scan.counts_total,
    }
    for comp in STRIATAL_COMPONENTS:
        row[f"true_br_{comp}"] = round(state.binding[comp], 4)
    for name, value in region_binding(state.binding).items():
        row[f"true_br_{name}"] = round(value, 4)
    for name, value in measure_sbr(scan.volume_zyx, scan.labels_zyx).items():
        row[f"roi_sbr_{name}"] = round(value, 4)
    row.update(_transform_fields(transform, background))
    return row


def region_binding(binding: dict[str, float]) -> dict[str, float]:
    """Volume-weighted true binding of whole caudate/putamen per side (atlas volumes)."""
    from service.imaging.atlas import load_atlas

    atlas = load_atlas()
    out = {}
    for side in ("left", "right"):
        out[f"caudate_{side}"] = binding[f"caudate_{side}"]
        vols = {p: float(atlas.putamen_part(side, p).sum()) for p in ("anterior", "posterior")}
        out[f"putamen_{side}"] = sum(
            binding[f"putamen_{p}_{side}"] * v for p, v in vols.items()
        ) / sum(vols.values())
    return out


def _transform_fields(transform: SubjectTransform, background: Background) -> dict[str, object]:
    fields: dict[str, object] = {}
    for axis, s, r, t in zip(
        "xyz", transform.scale, transform.rotation_deg, transform.translation_mm, strict=True
    ):
        fields[f"scale_{axis}"] = round(float(s), 4)
        fields[f"rotation_{axis}_deg"] = round(float(r), 3)
        fields[f"translation_{axis}_mm"] = round(float(t), 3)
    fields["bg_white_matter"] = round(background.white_matter, 4)
    fields["bg_extracerebral"] = round(background.extracerebral, 4)
    fields["bg_salivary"] = round(background.salivary, 4)
    return fields


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_group(args: tuple[SiteSpec, int, Path]) -> int:
    return len(generate_group(*args))


def generate(sites: list[SiteSpec], out_dir: Path, workers: int = 2) -> Path:
    """Generate (or finish) ``sites`` under ``out_dir``; writes and returns the manifest CSV."""
    out_dir.mkdir(parents=True, exist_ok=True)
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
    fields = list(rows[0]) if rows else ["study_id"]
    tmp = manifest.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, manifest)
    return manifest


def truth_labels(site: SiteSpec, index: int) -> sitk.Image:
    """Atlas ROI labels of study ``index`` on its written image grid (LPS).

    Re-draws the study's anatomy from the site seed (cheap: no projection), so
    the known ROIs of any generated study can be had without storing them.
    Labels as :data:`service.imaging.atlas.LABELS`, uint8.
    """
    from service.sim.anatomy import build_phantom, sample_transform
    from service.sim.profiles import get_profile
    from service.sim.scan import support_grid, to_image

    if not 0 <= index < site.n_studies:
        raise ValueError(f"study index {index} outside 0..{site.n_studies - 1}")
    profile = get_profile(site.profile)
    transform = sample_transform(np.random.default_rng([site.seed, index // SCANS_PER_ANATOMY]))
    grid = support_grid(profile)
    return to_image(build_phantom(transform, grid).labels_zyx, grid, profile.matrix)
