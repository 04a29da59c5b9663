"""Rewrite a generated benchmark's truth under the current definitions, keeping its images.

The images of a study depend only on its plan's seed and the physics, not on
the truth definitions of :mod:`.truth`; when only those change (truth version
:data:`.truth.TRUTH_VERSION`), regenerating a benchmark repeats every
reconstruction for nothing. :func:`rewrite_study` links (or copies) a
finished study's series folders and FLAIR truth into a new benchmark folder
and writes ``truth_seg.nii.gz`` and ``truth.json`` as :func:`.study.simulate_study`
would now: the static truth and the image metrics inside the truth masks
(``measured_*``, on the static attenuation-corrected reconstruction, which
is redone: one reconstruction, not the four series), the dynamic truth on the
ideal frames; every other field of the old row is kept. A study whose old
row does not match its plan (seed, study id, head-label source) is refused:
its images were not made by this plan.

``dopanode fdopa retruth SRC DST [--sites] [--split test] [--limit N]``;
resumable (a study with a current-version ``truth.json`` in DST is skipped).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import SimpleITK as sitk

from service.sim.fdopa.benchmark import FdopaSite, plan_study, study_indices, write_manifest
from service.sim.fdopa.kinetics import SCHEDULES
from service.sim.fdopa.study import (
    TRUTH_FILE,
    StudyPlan,
    _json,
    _label_image,
    _measured,
    _static_acquisition,
    ideal_frames,
)
from service.sim.fdopa.truth import TRUTH_VERSION, dynamic_truth

#: Files of a study folder that are outputs of the truth definitions (rewritten, not linked).
TRUTH_OUTPUTS = (TRUTH_FILE, "truth_seg.nii.gz")


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link (copy across file systems) every file under ``src`` except the truth outputs."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir() or str(rel) in TRUTH_OUTPUTS or path.name.endswith(".tmp"):
            continue
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def rewrite_study(plan: StudyPlan, src_study: Path, dst_study: Path) -> dict[str, object]:
    """The study of ``plan`` from ``src_study`` into ``dst_study`` with current truth.

    Returns the new truth row. Raises ValueError when the old row was not
    made by ``plan`` (study id, seed, head-label source).
    """
    from service.sim.fdopa.head import head_labels
    from service.sim.fdopa.scanner import to_output

    old = json.loads((src_study / TRUTH_FILE).read_text())
    for key, want in (("study_id", plan.study_id), ("seed", plan.seed),
                      ("atlas_labels", head_labels()[1])):
        if old.get(key) != want:
            raise ValueError(f"{src_study.name}: {key} of the old truth differs from the plan's")
    _link_tree(src_study, dst_study)
    st = _static_acquisition(plan, (True,))
    sitk.WriteImage(to_output(_label_image(st.masks), st.maps.grid, st.profile, nearest=True),
                    str(dst_study / "truth_seg.nii.gz"))
    row = {k: v for k, v in old.items() if not k.startswith("dyn_")} | st.values
    row |= _measured(st.recons[0], st.masks)
    if plan.schedule:
        sched = SCHEDULES[plan.schedule]
        whole, lesion = ideal_frames(st.spec, st.maps, sched)
        row |= {f"dyn_{k}": v
                for k, v in dynamic_truth(whole, st.masks, sched, lesion).items()}
    tmp = dst_study / (TRUTH_FILE + ".tmp")
    tmp.write_text(json.dumps(row, indent=1, default=_json))
    os.replace(tmp, dst_study / TRUTH_FILE)
    return row


def is_current(study: Path) -> bool:
    """Whether ``study`` has a truth file of the current :data:`TRUTH_VERSION`."""
    path = study / TRUTH_FILE
    return path.is_file() and json.loads(path.read_text()).get("truth_version") == TRUTH_VERSION


def rewrite_benchmark(sites: list[FdopaSite], src: Path, dst: Path, split: str = "all",
                      limit: int | None = None) -> tuple[int, int, Path]:
    """Every finished study of ``sites`` (``split``, ``limit``) from ``src`` into ``dst``.

    Returns (studies rewritten, studies already current, manifest path).
    """
    done = skipped = 0
    for site in sites:
        for i in study_indices(site, split, limit):
            name = f"{site.name}_{i:05d}"
            source, target = src / site.name / name, dst / site.name / name
            if not (source / TRUTH_FILE).is_file():
                continue
            if is_current(target):
                skipped += 1
                continue
            rewrite_study(plan_study(site, i), source, target)
            done += 1
    return done, skipped, write_manifest(sites, dst)
