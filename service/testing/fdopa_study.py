"""Small simulated FDOPA studies (static + short dynamic) for the pipeline's tests.

The FDOPA simulator (:mod:`service.sim.fdopa.study`) with a coarser
simulation (4 mm voxels, 30 views, 2 x 6 OSEM) and short dynamic schedules
covering 0-30 min, so the static window 10-30 min and the 120 s fit start
both hold. Two output grids:

* ``fine`` (the Siemens-like grid, 128 x 128 x 87 voxels of 2.04 x 2.04 x
  2.03 mm; 6 frames of 1, 1, 3, 5, 10, 10 min; about 25 s on one core):
  for the numbers, which then match the truth measured on the reconstruction
  within about 1 % (threshold baseline);
* ``coarse`` (88 x 88 x 59 voxels of 3 mm; 4 frames of 2, 8, 10, 10 min;
  354 per-slice instances with the non-AC series): for the PACS round trip,
  where every instance crosses Orthanc twice. Resampling onto 3 mm lowers
  maxima by about 10 % against the truth measured on the simulation grid.

Not a site of the benchmark; never ``site_d_unseen``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from service.sim.fdopa import kinetics
from service.sim.fdopa.kinetics import FrameSchedule
from service.sim.fdopa.profiles import PET_PROFILES, PetProfile, get_pet_profile
from service.sim.fdopa.study import StudyPlan, simulate_study

_FAST = replace(get_pet_profile("siemens_biograph_like"), sim_voxel_mm=4.0, n_views=30,
                iterations=2, subsets=6)
PRESETS: dict[str, tuple[PetProfile, FrameSchedule]] = {
    "fine": (replace(_FAST, name="test_fdopa_fine"),
             FrameSchedule("test_fdopa_6x30", (60.0, 60.0, 180.0, 300.0, 600.0, 600.0))),
    "coarse": (replace(_FAST, name="test_fdopa_coarse", matrix=88, pixel_mm=3.0, slice_mm=3.0),
               FrameSchedule("test_fdopa_4x30", (120.0, 480.0, 600.0, 600.0))),
}
#: A hemispheric high-grade glioma, away from the striatum, TBRmax 2.7, MTV 20 mL.
SEED = 3


@contextmanager
def _registered(profile: PetProfile, schedule: FrameSchedule) -> Iterator[None]:
    """The test profile and schedule, known to the simulator only while it runs."""
    PET_PROFILES[profile.name] = profile
    kinetics.SCHEDULES[schedule.name] = schedule
    try:
        yield
    finally:
        PET_PROFILES.pop(profile.name, None)
        kinetics.SCHEDULES.pop(schedule.name, None)


def small_study(out_dir: Path, preset: Literal["fine", "coarse"] = "fine", seed: int = SEED,
                tumour_class: str = "hgg", dynamic: bool = True, flair: str | None = None,
                flair_enhanced: bool = False) -> tuple[Path, dict[str, Any]]:
    """Simulate (or reuse) one study under ``out_dir``; its folder and truth row.

    The folder holds ``PT_STATIC``, ``PT_NAC``, ``CT_AC``, ``PT_DYNAMIC`` (when
    ``dynamic``), ``MR_FLAIR`` and ``truth_flair_seg.nii.gz`` (when ``flair``
    names a protocol of :data:`service.sim.fdopa.flair.PROTOCOLS`),
    ``truth_seg.nii.gz`` and ``truth.json`` (:mod:`service.sim.fdopa.study`).
    """
    profile, schedule = PRESETS[preset]
    suffix = f"_{flair}{'_enh' if flair_enhanced else ''}" if flair else ""
    plan = StudyPlan(f"fdopa_test_{preset}_{tumour_class}_{seed}{suffix}", profile.name,
                     tumour_class, False, seed, schedule=schedule.name if dynamic else None,
                     flair=flair, flair_enhanced=flair_enhanced)
    folder = out_dir / plan.study_id
    if not (folder / "truth.json").is_file():
        with _registered(profile, schedule):
            simulate_study(plan, out_dir)
    return folder, json.loads((folder / "truth.json").read_text())


def analysed_small_study(work: Path) -> tuple[list[Path], Path]:
    """The ``fine`` study's static PET files and the folder ``dopanode analyze`` wrote for it.

    The node's code path (the shipped template and U-Net) on the static and
    dynamic series; the folder holds ``<study uid>/seg.dcm``, ``sr.dcm``,
    ``picture.dcm`` and ``summary.json``. Reused when already there.
    """
    folder, _ = small_study(work / "sim", "fine")
    out = work / "analysis"
    if not list(out.glob("*/seg.dcm")):
        cmd = [sys.executable, "-m", "service.cli", "analyze", "--out", str(out),
               str(folder / "PT_STATIC"), str(folder / "PT_DYNAMIC")]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return sorted((folder / "PT_STATIC").iterdir()), out
