"""Training data of more than one head anatomy: one sample cache per anatomy.

The simulator's head anatomy (``DOPANODE_FDOPA_ANATOMY``,
:func:`service.sim.fdopa.head.choose_anatomy`) is part of every sample, so a
cache (:mod:`models.fdopa_seg.data`) holds one anatomy, named in its
``anatomy.txt``. The training command takes several caches
(``--data`` repeated) and the rules are:

* each cache is checked against its own marker; a new cache (no marker) gets
  this process's anatomy; the same folder twice, two caches of one anatomy,
  or (with several caches) samples without a marker are refused
  (:func:`open_caches`);
* missing samples of a cache are simulated only when this process simulates
  that cache's anatomy; in any other cache a missing sample is an error
  naming the command that fills it (:func:`prepare_caches`,
  :func:`fill_command`): ``DOPANODE_FDOPA_ANATOMY=<synthetic|dk|ho> python -m
  models.fdopa_seg.caches --data CACHE [--limit N]``;
* sample ids carry the anatomy (:meth:`Cache.ids`, ``anatomy:site_a_00003``);
* ``command.json`` and the model card record every cache and its anatomy
  (:func:`anatomy_fields`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.fdopa_seg.data import (
    ANATOMY_FILE,
    Sample,
    SampleId,
    check_anatomy,
    generate,
    process_anatomy,
    read_anatomy,
    sample_ids,
    sample_path,
    setting_name,
    truth_version,
)


@dataclass(frozen=True)
class Cache:
    """One sample cache of the training data.

    Attributes
    ----------
    path : Path
    anatomy : str
        The head-label source of its samples (its marker; this process's for a new cache).
    simulated_here : bool
        This process simulates that anatomy, so missing samples are made here.
    """

    path: Path
    anatomy: str
    simulated_here: bool

    def ids(self, ids: Sequence[SampleId]) -> list[SampleId]:
        """``ids`` named with this cache's anatomy (:attr:`SampleId.key`)."""
        return [replace(s, anatomy=self.anatomy) for s in ids]


def open_caches(paths: Sequence[Path]) -> list[Cache]:
    """The caches of ``paths`` (in order) with their anatomies.

    Raises
    ------
    ValueError
        A folder given twice, two caches of the same anatomy (one cache per
        anatomy: the same studies would be in the training set twice), or, with
        more than one cache, a cache holding samples without an ``anatomy.txt``
        (made before the marker existed: its anatomy is not known, and adopting
        this process's could mislabel it; one cache alone adopts it, as before).
    """
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("the same --data folder is given more than once")
    if len(paths) > 1:
        for p in paths:
            if read_anatomy(p) is None and any(p.glob("*.npz")):
                raise ValueError(
                    f"{p} holds samples but no {ANATOMY_FILE}: write the anatomy they were made "
                    f"with (synthetic, desikan_killiany or harvard_oxford) into {p / ANATOMY_FILE}")
    now = process_anatomy()
    caches = [Cache(p, found or now, (found or now) == now)
              for p, found in ((p, read_anatomy(p)) for p in paths)]
    seen: dict[str, Path] = {}
    for c in caches:
        if c.anatomy in seen:
            raise ValueError(f"{seen[c.anatomy]} and {c.path} both hold {c.anatomy} samples "
                             "(or have no anatomy.txt yet); give one cache per anatomy")
        seen[c.anatomy] = c.path
    return caches


def fill_command(cache: Cache, limit: int | None = None) -> str:
    """The command that simulates every training and validation sample of ``cache``."""
    limit_arg = f" --limit {limit}" if limit is not None else ""
    return (f"DOPANODE_FDOPA_ANATOMY={setting_name(cache.anatomy)} "
            f"python -m models.fdopa_seg.caches --data {cache.path}{limit_arg} --workers 2")


def prepare_caches(caches: Sequence[Cache], ids: Sequence[SampleId], workers: int = 2,
                   limit: int | None = None) -> None:
    """Make the missing samples of ``ids`` in the caches of this process's anatomy; in the
    others every sample must be present already.

    Raises
    ------
    ValueError
        A sample is missing from a cache of another anatomy; the message names
        the command that fills it (:func:`fill_command`, ``limit`` as given).
    """
    for cache in caches:
        if cache.simulated_here:
            generate(cache.path, ids, workers)
            continue
        missing = [s for s in ids if not sample_path(cache.path, s).exists()]
        if missing:
            raise ValueError(
                f"{len(missing)} of {len(ids)} samples missing in {cache.path} ({cache.anatomy} "
                f"anatomy, e.g. {missing[0].study_id}); this process simulates "
                f"{process_anatomy()}, so they are not made here. Fill the cache first: "
                f"{fill_command(cache, limit)}")


def check_validation(val_sets: Mapping[str, list[Sample]]) -> None:
    """Refuse a validation set without a PET-active tumour (its Dice, and so the total
    that chooses the best step, would be NaN)."""
    empty = [name for name, samples in val_sets.items()
             if not any(s.target_zyx.any() for s in samples)]
    if empty:
        raise ValueError(f"no validation study with a PET-active tumour in the {', '.join(empty)} "
                         "cache(s): the best step could not be chosen (raise --limit)")


def anatomy_fields(caches: list[Cache], train_ids: list[SampleId],
                   val_ids: list[SampleId]) -> dict[str, Any]:
    """What ``command.json`` and the model card say about the data: totals, the anatomies
    (``anatomy``: their names, ``anatomy_scope``: how many) and one record per cache."""
    per_cache = [{"data": str(c.path), "anatomy": c.anatomy, "n_train": len(train_ids),
                  "n_val": len(val_ids), "truth_version": truth_version(c.path, val_ids[0]),
                  "simulated_here": c.simulated_here} for c in caches]
    versions = sorted({str(r["truth_version"]) for r in per_cache})
    return {"n_train": len(train_ids) * len(caches), "n_val": len(val_ids) * len(caches),
            "anatomy": " and ".join(c.anatomy for c in caches),
            "anatomy_scope": ("one head anatomy" if len(caches) == 1
                              else f"{len(caches)} head anatomies"),
            "truth_version": ", ".join(versions), "caches": per_cache}


def main(argv: list[str] | None = None) -> None:
    """``python -m models.fdopa_seg.caches --data CACHE [--limit N]``: fill one cache with the
    training and validation samples of this process's anatomy (refused when the cache
    holds another one)."""
    p = argparse.ArgumentParser(prog="python -m models.fdopa_seg.caches", description=main.__doc__)
    p.add_argument("--data", type=Path, required=True, help="sample cache to fill")
    p.add_argument("--limit", type=int, default=None, help="first N studies per site and split")
    p.add_argument("--workers", type=int, default=2, help="simulation workers")
    a = p.parse_args(argv)
    ids = sample_ids("val", limit=a.limit) + sample_ids("train", limit=a.limit)
    t0 = time.monotonic()
    a.data.mkdir(parents=True, exist_ok=True)
    anatomy = check_anatomy(a.data)
    generate(a.data, ids, a.workers)
    print(f"{a.data}: {len(ids)} samples of the {anatomy} anatomy ready "
          f"({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
