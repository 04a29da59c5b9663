"""Training data of the FDOPA tumour U-Net: simulated static PET + truth, cached as .npz.

Sites ``site_a``, ``site_b`` and ``site_c`` of the FDOPA benchmark
(:data:`service.sim.fdopa.benchmark.SITES`) only; the held-out
``site_d_unseen`` is never generated, read or used here. Splits by study
index (the benchmark's suggestion):

* ``test``: ``index % 5 == 0`` (in-distribution test; never used in training);
* ``val``: ``index % 5 != 0`` and ``index % 20 == 3`` (validation Dice, best checkpoint);
* ``train``: every other index.

One sample per study, :func:`service.sim.fdopa.study.simulate_static` (the
attenuation-corrected static image the benchmark writes, without NAC, CT,
dynamic, FLAIR or DICOM), saved as ``<cache>/<study_id>.npz`` with
``image_zyx`` (float32, Bq/mL, native output grid), ``labels_zyx`` (uint8,
truth labels: 1 lesion not PET-active, 2 PET-active tumour, 3-5 reference
regions), ``affine`` ((4, 4), index ``(z, y, x)`` to LPS mm of the voxel
centre) and ``truth`` (JSON text of the truth values). Files are written to a
temporary name and renamed: a present file is complete, a rerun skips it, and
two workers never see a half-written file.

Anatomies: the simulator's head anatomy (``DOPANODE_FDOPA_ANATOMY``,
:func:`service.sim.fdopa.head.choose_anatomy`) is part of a sample, so one
cache holds one anatomy, named in ``<cache>/anatomy.txt``. Training may read
several caches, one per anatomy (:mod:`models.fdopa_seg.caches`). Sample ids
carry the anatomy (:attr:`SampleId.key`), so the same study of two anatomies
never shares an id.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

TRAINING_SITES: tuple[str, ...] = ("site_a", "site_b", "site_c")
SPLITS = ("train", "val", "test")


def split_of(index: int) -> str:
    """The split of study ``index`` of a training site (module docstring)."""
    if index % 5 == 0:
        return "test"
    return "val" if index % 20 == 3 else "train"


@dataclass(frozen=True)
class SampleId:
    """One benchmark study of a training site, optionally of a named head anatomy.

    ``study_id`` names the file in a cache; ``key`` (``anatomy:study_id`` when
    the anatomy is set) names the sample wherever several caches meet.
    """

    site: str
    index: int
    anatomy: str = ""

    @property
    def study_id(self) -> str:
        return f"{self.site}_{self.index:05d}"

    @property
    def key(self) -> str:
        return f"{self.anatomy}:{self.study_id}" if self.anatomy else self.study_id


def sample_ids(split: str, sites: Sequence[str] = TRAINING_SITES,
               limit: int | None = None) -> list[SampleId]:
    """Studies of ``split`` at ``sites``, the first ``limit`` of each site when given."""
    from service.sim.fdopa.benchmark import SITES

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    out = []
    for name in sites:
        if SITES[name].role != "train_test":
            raise ValueError(f"{name} is not a training site")
        ids = [SampleId(name, i) for i in range(SITES[name].n_studies) if split_of(i) == split]
        out += ids[:limit]
    return out


def fresh_ids(n: int, sites: Sequence[str] = TRAINING_SITES) -> list[SampleId]:
    """``n`` studies per site beyond the benchmark's last index (fresh seeds: never in the
    benchmark, so never in its test split); extra validation studies."""
    from service.sim.fdopa.benchmark import SITES

    return [SampleId(name, SITES[name].n_studies + i) for name in sites for i in range(n)]


def affine_of(image: sitk.Image) -> np.ndarray:
    """(4, 4) affine of a SimpleITK image: index ``(z, y, x)`` to LPS mm of the voxel centre."""
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = (direction * np.array(image.GetSpacing()))[:, ::-1]
    affine[:3, 3] = image.GetOrigin()
    return affine


def sample_path(cache: Path, sid: SampleId) -> Path:
    return cache / f"{sid.study_id}.npz"


def make_sample(cache: Path, sid: SampleId) -> float:
    """Simulate and save one sample unless present; returns the seconds it took."""
    from service.sim.fdopa.benchmark import SITES, plan_study
    from service.sim.fdopa.study import simulate_static

    path = sample_path(cache, sid)
    if path.exists():
        return 0.0
    t0 = time.monotonic()
    image, labels, values = simulate_static(plan_study(SITES[sid.site], sid.index))
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(
        tmp, image_zyx=sitk.GetArrayFromImage(image).astype(np.float32),
        labels_zyx=sitk.GetArrayFromImage(labels).astype(np.uint8),
        affine=affine_of(image), truth=np.array(json.dumps(values, default=_json)))
    os.replace(tmp, path)
    return time.monotonic() - t0


def truth_version(cache: Path, sid: SampleId) -> str:
    """The simulator truth version of a cached sample (the first samples predate the key: 1)."""
    with np.load(sample_path(cache, sid)) as data:
        return str(json.loads(str(data["truth"])).get("truth_version", 1))


def _json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _make(args: tuple[Path, SampleId]) -> float:
    return make_sample(*args)


ANATOMY_FILE = "anatomy.txt"


def process_anatomy() -> str:
    """The head-label source this process simulates (``synthetic``, ``desikan_killiany``
    or ``harvard_oxford``; :func:`service.sim.fdopa.head.choose_anatomy`)."""
    from service.sim.fdopa.head import choose_anatomy

    return choose_anatomy().source


def read_anatomy(cache: Path) -> str | None:
    """The anatomy ``<cache>/anatomy.txt`` names (``None`` without a marker)."""
    marker = cache / ANATOMY_FILE
    return marker.read_text().strip() if marker.exists() else None


def check_anatomy(cache: Path) -> str:
    """The simulator's head anatomy now, recorded in ``<cache>/anatomy.txt``.

    One cache holds one anatomy (module docstring), so a cache marked with
    another one is refused: this is the check before anything is simulated
    into ``cache`` (:func:`generate`).
    """
    source = process_anatomy()
    found = read_anatomy(cache)
    if found is not None and found != source:
        raise ValueError(f"{cache} holds {found} samples but the simulator now uses {source} "
                         f"labels (set DOPANODE_FDOPA_ANATOMY={setting_name(found)} to add to it)")
    if found is None:
        (cache / ANATOMY_FILE).write_text(source + "\n")
    return source


def setting_name(source: str) -> str:
    """The ``DOPANODE_FDOPA_ANATOMY`` value of a head-label source (a placeholder when unknown)."""
    from service.sim.fdopa.head import AnatomyError, setting_of

    try:
        return setting_of(source)
    except AnatomyError:
        return f"<unknown: {source}>"


def generate(cache: Path, ids: Sequence[SampleId], workers: int = 2) -> list[SampleId]:
    """Make every missing sample of ``ids`` under ``cache`` (resumable, parallel-safe);
    the cache's anatomy is checked first (:func:`check_anatomy`)."""
    cache.mkdir(parents=True, exist_ok=True)
    check_anatomy(cache)
    todo = [(cache, s) for s in ids if not sample_path(cache, s).exists()]
    if workers <= 1:
        _init_worker()
        for task in todo:
            _make(task)
    elif todo:
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
            list(pool.map(_make, todo, chunksize=1))
    return list(ids)


@dataclass(frozen=True, eq=False)
class Sample:
    """One sample on the contract's box (the model's input grid).

    Attributes
    ----------
    study_id : str
    image_zyx : (D, H, W) float32 array
        The normalised box (:func:`service.pipelines.fdopa_pet.segment.preprocess`).
    target_zyx : (D, H, W) uint8 array
        PET-active tumour (truth label 2) on the box.
    lesion_zyx : (D, H, W) uint8 array
        Any truth lesion (labels 1 and 2) on the box.
    """

    study_id: str
    image_zyx: np.ndarray
    target_zyx: np.ndarray
    lesion_zyx: np.ndarray


def load_sample(cache: Path, sid: SampleId) -> Sample:
    """A cached sample preprocessed onto the box; labels by linear interpolation >= 0.5."""
    from service.pipelines.fdopa_pet.segment import preprocess, resample_to_box

    with np.load(sample_path(cache, sid)) as data:
        image, labels, affine = data["image_zyx"], data["labels_zyx"], data["affine"]
    net_input = preprocess(image, affine)
    active = resample_to_box((labels == 2).astype(np.float32), affine, net_input) >= 0.5
    lesion = resample_to_box(np.isin(labels, (1, 2)).astype(np.float32), affine,
                             net_input) >= 0.5
    return Sample(sid.key, net_input.image_zyx, active.astype(np.uint8),
                  lesion.astype(np.uint8))


def _load(args: tuple[Callable[[Path, SampleId], Sample], Path, SampleId]) -> Sample:
    loader, cache, sid = args
    return loader(cache, sid)


def load_samples(cache: Path, ids: Sequence[SampleId], workers: int = 2,
                 loader: Callable[[Path, SampleId], Sample] | None = None) -> list[Sample]:
    """``loader`` (default :func:`load_sample`; a module-level function) of every id,
    in order, with ``workers`` processes."""
    tasks = [(loader or load_sample, cache, s) for s in ids]
    if workers <= 1 or len(tasks) < 2:
        return [_load(t) for t in tasks]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_load, tasks, chunksize=4))

