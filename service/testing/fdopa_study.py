"""One small simulated FDOPA study (static + short dynamic) for the pipeline's tests.

The FDOPA simulator (:mod:`service.sim.fdopa.study`) with a coarser
simulation (4 mm voxels, 30 views, 2 x 6 OSEM: about 25 s on one core)
written on the Siemens-like output grid (128 x 128, 2.04 mm pixels, 87
per-slice instances per frame), and a 6-frame dynamic schedule covering
0-30 min (1, 1, 3, 5, 10, 10 min) instead of the clinical 17 frames, so the
static window 10-30 min and the 120 s fit start both hold. Not a site of the
benchmark; never ``site_d_unseen``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.sim.fdopa import kinetics
from service.sim.fdopa.kinetics import FrameSchedule
from service.sim.fdopa.profiles import PET_PROFILES, get_pet_profile
from service.sim.fdopa.study import StudyPlan, simulate_study

PROFILE = replace(get_pet_profile("siemens_biograph_like"), name="test_fdopa_fast",
                  sim_voxel_mm=4.0, n_views=30, iterations=2, subsets=6)
SCHEDULE = FrameSchedule("test_short30", (60.0, 60.0, 180.0, 300.0, 600.0, 600.0))
#: A hemispheric high-grade glioma, away from the striatum, TBRmax 2.7, MTV 20 mL.
SEED = 3


@contextmanager
def _registered() -> Iterator[None]:
    """The test profile and schedule, known to the simulator only while it runs."""
    PET_PROFILES[PROFILE.name] = PROFILE
    kinetics.SCHEDULES[SCHEDULE.name] = SCHEDULE
    try:
        yield
    finally:
        PET_PROFILES.pop(PROFILE.name, None)
        kinetics.SCHEDULES.pop(SCHEDULE.name, None)


def small_study(out_dir: Path, seed: int = SEED, tumour_class: str = "hgg",
                dynamic: bool = True) -> tuple[Path, dict[str, Any]]:
    """Simulate (or reuse) one study under ``out_dir``; its folder and truth row.

    The folder holds ``PT_STATIC``, ``PT_NAC``, ``CT_AC``, ``PT_DYNAMIC`` (when
    ``dynamic``), ``truth_seg.nii.gz`` and ``truth.json``
    (:mod:`service.sim.fdopa.study`).
    """
    plan = StudyPlan(f"fdopa_test_{tumour_class}_{seed}", PROFILE.name, tumour_class, False,
                     seed, schedule=SCHEDULE.name if dynamic else None)
    folder = out_dir / plan.study_id
    if not (folder / "truth.json").is_file():
        with _registered():
            simulate_study(plan, out_dir)
    return folder, json.loads((folder / "truth.json").read_text())
