"""Classical FLAIR baseline: hyperintensity relative to the brain level (no learning).

On the contract's box (:func:`service.pipelines.fdopa_pet.flair_segment.preprocess_flair`:
the FLAIR divided by the median of its bright voxels, so white matter is near
1 and grey matter about 1.2-1.3): Gaussian smoothing of ``sigma_vox`` voxels
(against the Rician noise), voxels above ``threshold`` x the brain level,
connected components (26-neighbourhood) of at least ``min_ml`` mL kept, then
the mask is carried onto the FLAIR's native grid like the network's
probability (linear, >= 0.5). The threshold separates the tumour and oedema
(about 1.5-2.5 x white matter on the simulator's FLAIRs) from grey matter
and scalp; :func:`tune` picks it and the minimum size on TRAINING and
VALIDATION samples only (never the test split); the constants below are its
result on the paediatric training subset and validation studies (25
samples, box Dice mean 0.814 at threshold 1.5, sigma 1 voxel, no minimum
size; ``python -m models.flair_seg.baseline --data .cache/flairnet/data``).
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class BaselineConfig:
    threshold: float = 1.5
    sigma_vox: float = 1.0
    min_ml: float = 0.0
    spacing_mm: float = 2.0


BASELINE = BaselineConfig()


def baseline_box(image_zyx: np.ndarray, config: BaselineConfig = BASELINE) -> np.ndarray:
    """(D, H, W) bool lesion mask on the normalised box (module docstring)."""
    smooth = ndimage.gaussian_filter(np.asarray(image_zyx, np.float32), config.sigma_vox)
    mask = smooth > config.threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:] * config.spacing_mm**3 / 1000.0
    keep = np.flatnonzero(sizes >= config.min_ml) + 1
    return np.isin(labels, keep)


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & truth).sum()) / total


def tune(images: Sequence[np.ndarray], targets: Sequence[np.ndarray],
         thresholds: Sequence[float] = (1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 2.0),
         min_mls: Sequence[float] = (0.0, 0.5, 1.0, 2.0)) -> tuple[BaselineConfig, float]:
    """The configuration with the best mean box Dice over the samples with a lesion."""
    best, best_dice = BASELINE, -1.0
    with_lesion = [(i, t.astype(bool)) for i, t in zip(images, targets, strict=True) if t.any()]
    for thr, min_ml in itertools.product(thresholds, min_mls):
        config = BaselineConfig(threshold=thr, min_ml=min_ml)
        score = float(np.mean([_dice(baseline_box(i, config), t) for i, t in with_lesion]))
        if score > best_dice:
            best, best_dice = config, score
    return best, best_dice


def main(argv: list[str] | None = None) -> None:
    from models.flair_seg.data import flair_sample_ids, load_samples

    p = argparse.ArgumentParser(prog="python -m models.flair_seg.baseline",
                                description="tune the classical baseline (training data only)")
    p.add_argument("--data", type=Path, default=Path(".cache/flairnet/data"))
    p.add_argument("--paediatric-limit", type=int, default=5)
    a = p.parse_args(argv)
    ids = flair_sample_ids("train", True, limit=a.paediatric_limit) + \
        flair_sample_ids("val", True)
    samples = load_samples(a.data, ids)
    config, score = tune([s.image_zyx for s in samples], [s.target_zyx for s in samples])
    print(json.dumps({"n": len(samples), "best": config.__dict__, "box_dice_mean": score}))


if __name__ == "__main__":
    main()
