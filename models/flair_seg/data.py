"""Training data of the FLAIR tumour U-Net: simulated FLAIR + whole-tumour truth, as .npz.

Studies of the FDOPA benchmark's training sites (``site_a``, ``site_b``,
``site_c``; never ``site_d_unseen``), split by study index exactly as the
PET U-Net (:func:`models.fdopa_seg.data.split_of`: ``index % 5 == 0`` is the
held-out test split and is never generated here, ``index % 20 == 3``
validation, the rest training). A study is adult or paediatric as the
benchmark plans it (:func:`service.sim.fdopa.benchmark.plan_study`).

One sample per study, made without the PET reconstruction: the subject and
its tumour are drawn from the plan's seed with the same random draws as
:func:`service.sim.fdopa.study.simulate_study`, and the FLAIR is
:func:`service.sim.fdopa.flair.synthesise_flair` with the study's fourth
noise seed, so a study that has a FLAIR in the benchmark gets the very image
the benchmark writes. Adults without a FLAIR in the plan (three quarters of
them) get one here under a protocol drawn from a seeded generator with the
benchmark's mix (2D 3 T 0.5, 2D 1.5 T 0.3, 3D 3 T 0.2), so that
pre-training has enough adult gliomas.

Stored as the DICOM writer stores it (:mod:`service.sim.fdopa.mr_writer`:
values scaled so the maximum is 4000, rounded, 12 bits), so training sees
what the node reads: ``flair_zyx`` (uint16, native FLAIR grid), ``truth_zyx``
(uint8: 1 lesion incl. necrosis, 2 oedema, 0 elsewhere), ``affine`` ((4, 4),
index ``(z, y, x)`` to LPS mm of the voxel centre, identity orientation of
the MR frame), ``protocol`` and ``paediatric``. The label the network learns
is the WHOLE TUMOUR: truth 1 or 2 (the T2/FLAIR-hyperintense abnormality,
BraTS "whole tumour", the paper's FLAIR lesion). Files are written to a
temporary name and renamed (resumable, parallel-safe).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.fdopa_seg import data as seg_data
from models.fdopa_seg.data import TRAINING_SITES, Sample, SampleId, split_of

#: Protocol mix of the benchmark's FLAIRs (:func:`service.sim.fdopa.benchmark.plan_study`).
PROTOCOL_MIX = {"ax2d_3t": 0.5, "ax2d_15t": 0.3, "iso3d_3t": 0.2}
#: Largest stored value (the writer's 12-bit scaling).
STORED_MAX = 4000.0


@dataclass(frozen=True)
class FlairSampleId(SampleId):
    """A study of a training site with its age group (``paediatric``)."""

    paediatric: bool = False


def flair_sample_ids(split: str, paediatric: bool, sites: Sequence[str] = TRAINING_SITES,
                     limit: int | None = None) -> list[FlairSampleId]:
    """Studies of ``split`` ("train" or "val") of one age group, the first ``limit`` per site.

    The test split is refused: it is the evaluation's.
    """
    from service.sim.fdopa.benchmark import SITES, plan_study

    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: only 'train' and 'val' are for training")
    out: list[FlairSampleId] = []
    for name in sites:
        site = SITES[name]
        if site.role != "train_test":
            raise ValueError(f"{name} is not a training site")
        ids = [FlairSampleId(name, i, paediatric=paediatric) for i in range(site.n_studies)
               if split_of(i) == split and plan_study(site, i).paediatric == paediatric]
        out += ids[:limit]
    return out


def extra_val_ids(per_site: int, paediatric: bool = True,
                  sites: Sequence[str] = TRAINING_SITES) -> list[FlairSampleId]:
    """``per_site`` studies of one age group per site just beyond the benchmark's last index.

    Extra validation studies (as :func:`models.fdopa_seg.data.fresh_ids`): never in the
    benchmark, so never in its test split, and below the fresh split
    (:func:`service.sim.fdopa.benchmark.fresh_start`).
    """
    from service.sim.fdopa.benchmark import SITES, fresh_start, plan_study

    out: list[FlairSampleId] = []
    for name in sites:
        site = SITES[name]
        index, found = site.n_studies, 0
        while found < per_site:
            if index >= fresh_start(site):
                raise ValueError(f"{per_site} extra validation studies reach the fresh split")
            if plan_study(site, index).paediatric == paediatric:
                out.append(FlairSampleId(name, index, paediatric=paediatric))
                found += 1
            index += 1
    return out


def protocol_of(sid: SampleId) -> str:
    """The study's FLAIR protocol: the benchmark's, else a seeded draw of :data:`PROTOCOL_MIX`."""
    from service.sim.fdopa.benchmark import SITES, plan_study

    site = SITES[sid.site]
    plan = plan_study(site, sid.index)
    if plan.flair:
        return plan.flair
    rng = np.random.default_rng([site.seed, sid.index, 1013])
    names = list(PROTOCOL_MIX)
    return str(rng.choice(names, p=np.array([PROTOCOL_MIX[n] for n in names])))


def simulate_flair(sid: SampleId) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Stored FLAIR (uint16), truth (uint8), affine and protocol of one study (module docstring)."""
    from service.sim.fdopa.benchmark import SITES, plan_study
    from service.sim.fdopa.flair import PROTOCOLS, synthesise_flair
    from service.sim.fdopa.profiles import get_pet_profile
    from service.sim.fdopa.scanner import sim_grid
    from service.sim.fdopa.subject import build_maps, sample_subject

    plan = plan_study(SITES[sid.site], sid.index)
    rng = np.random.default_rng(plan.seed)  # the draws of study._static_acquisition
    spec = sample_subject(rng, plan.tumour_class, plan.paediatric)
    noise_seeds = rng.integers(2**63, size=4)
    maps = build_maps(spec, sim_grid(get_pet_profile(plan.profile)))
    protocol = protocol_of(sid)
    image = synthesise_flair(spec, maps.grid, maps.tumour, PROTOCOLS[protocol],
                             np.random.default_rng(noise_seeds[3]))
    vol = image.volume_zyx
    stored = np.clip(np.rint(vol * (STORED_MAX / max(float(vol.max()), 1e-6))), 0, 4095)
    sx, sy, sz = image.spacing_mm
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, sx], [0.0, sy, 0.0], [sz, 0.0, 0.0]]  # columns: z, y, x steps
    affine[:3, 3] = image.origin_lps_mm
    return stored.astype(np.uint16), image.truth_zyx.astype(np.uint8), affine, protocol


def sample_path(cache: Path, sid: SampleId) -> Path:
    return cache / f"{sid.study_id}.npz"


def make_sample(cache: Path, sid: SampleId) -> float:
    """Simulate and save one sample unless present; returns the seconds it took."""
    path = sample_path(cache, sid)
    if path.exists():
        return 0.0
    t0 = time.monotonic()
    flair, truth, affine, protocol = simulate_flair(sid)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, flair_zyx=flair, truth_zyx=truth, affine=affine,
                        protocol=np.array(protocol))
    os.replace(tmp, path)
    return time.monotonic() - t0


def _make(args: tuple[Path, SampleId]) -> float:
    return make_sample(*args)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def generate(cache: Path, ids: Sequence[SampleId], workers: int = 1) -> None:
    """Make every missing sample of ``ids`` under ``cache`` (resumable, parallel-safe)."""
    cache.mkdir(parents=True, exist_ok=True)
    todo = [(cache, s) for s in ids if not sample_path(cache, s).exists()]
    if workers <= 1:
        for task in todo:
            _make(task)
    elif todo:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            list(pool.map(_make, todo, chunksize=1))


def load_sample(cache: Path, sid: SampleId) -> Sample:
    """A cached sample on the contract's box; whole-tumour target by linear interpolation >= 0.5."""
    from service.pipelines.fdopa_pet.flair_segment import preprocess_flair
    from service.pipelines.fdopa_pet.segment import resample_to_box

    with np.load(sample_path(cache, sid)) as data:
        flair, truth, affine = data["flair_zyx"], data["truth_zyx"], data["affine"]
    net_input = preprocess_flair(flair.astype(np.float32), affine)
    whole = resample_to_box((truth > 0).astype(np.float32), affine, net_input) >= 0.5
    mask = whole.astype(np.uint8)
    return Sample(sid.study_id, net_input.image_zyx, mask, mask)


def load_samples(cache: Path, ids: Sequence[SampleId], workers: int = 1) -> list[Sample]:
    """:func:`load_sample` of every id, in order, with ``workers`` processes."""
    return seg_data.load_samples(cache, ids, workers, loader=load_sample)
