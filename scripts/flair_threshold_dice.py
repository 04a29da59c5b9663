"""Dice of the classical FLAIR lesion (:func:`flair_threshold_lesion`) against simulated truth.

Usage::

    python scripts/flair_threshold_dice.py STUDY_DIR [STUDY_DIR ...]

Each STUDY_DIR is a simulated FDOPA study with ``MR_FLAIR`` and
``truth_flair_seg.nii.gz`` (tumour 1 + oedema 2 = the whole-tumour truth).
Prints one line per study and the mean +- SD over studies with a lesion;
studies without a truth lesion report the false-positive volume instead.
Evaluation only: the rule's constants were set on the test study of
``service.testing.fdopa_study`` and are not tuned here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from service.imaging.mr_volume import mr_volume_from_datasets
from service.pipelines.fdopa_pet.flair_lesion import flair_threshold_lesion


def study_dice(folder: Path) -> tuple[float | None, float, float]:
    """(Dice or None without a truth lesion, found mL, truth mL) of one study."""
    mr = mr_volume_from_datasets([pydicom.dcmread(p)
                                  for p in sorted((folder / "MR_FLAIR").glob("*.dcm"))])
    found = flair_threshold_lesion(mr) >= 0.5
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "truth_flair_seg.nii.gz"))) > 0
    voxel_ml = float(np.prod(mr.spacing_zyx_mm)) / 1000.0
    sizes = float(found.sum()) * voxel_ml, float(truth.sum()) * voxel_ml
    if not truth.any():
        return None, *sizes
    return 2.0 * float((found & truth).sum()) / float(found.sum() + truth.sum()), *sizes


def main(argv: list[str]) -> int:
    dices = []
    for arg in argv:
        folder = Path(arg)
        dice, found_ml, truth_ml = study_dice(folder)
        shown = "   -  " if dice is None else f"{dice:6.3f}"
        print(f"{folder.name:28s} dice {shown}  found {found_ml:6.1f} mL  truth {truth_ml:6.1f} mL")
        if dice is not None:
            dices.append(dice)
    if dices:
        print(f"n = {len(dices)}: Dice {np.mean(dices):.3f} +- {np.std(dices, ddof=1):.3f}, "
              f"median {np.median(dices):.3f}, min {np.min(dices):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
