"""A putamen estimator learnt from training scans (candidate X): its ratio beside the node's.

Issue 10's one-sided losses are lost in the measurement: with the phantom's
own putamen ROIs the image separates them from normals, the AAL putamen VOI
on the registered scan does not (``bench/dat_putamen_ratio_pose.py``). X is a
linear estimator of each putamen's SBR learnt on training scans
(``models/training/rules/dat32_learned_putamen_estimator.md`` fixes it):

* features: the node's CNN crop (cached by ``dopanode robustness SET --work
  WORK``) in a box around the AAL left putamen, averaged over 2 x 2 x 2
  voxels; the right putamen's box is the mirror image through the atlas
  midline, read mirrored, so both sides share one set of weights (the node's
  own code, :mod:`service.pipelines.dat_spect.putamen_estimator`);
* target: the image's putamen mean (the phantom's own ROIs, manifest
  ``roi_sbr_putamen_*``) split between the sides as the true binding
  (``true_br_putamen_*``) is: what the image would show if its putamina
  differed only by binding (:func:`binding_split`);
* fit: ridge regression (centred features, unpenalised bias), both putamina
  of every training scan (normal, one-sided and bilateral) as samples.

Per variant of each evaluated folder: the area under the ROC curve of the
lower putamen ratio, one-sided losses against normals, for the node's AAL
VOI (``sbr`` of the cache), X and the image's own ROIs; the errors at fixed
cuts (``--cut-aal``, ``--cut-x``) and the fewest errors of one cut.

Usage::

    PYTHONPATH=$PWD .venv/bin/python bench/dat_putamen_estimator.py \\
        --train T:WT [--alpha 1000] [--save X.npz | --weights X.npz] \\
        [--cut-aal 0.83 --cut-x 0.745] EVAL:WORK [EVAL:WORK ...]

``T`` is a training folder (``dopanode benchmark robustness T --training``)
and ``WT`` its ``dopanode robustness`` work folder; ``EVAL:WORK`` likewise for
each folder evaluated.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dat_putamen_ratio_pose import fewest_errors, lower_ratio, studies  # noqa: E402
from service.imaging.atlas import Atlas, load_atlas  # noqa: E402
from service.pipelines.dat_spect.putamen_estimator import (  # noqa: E402
    BOX_ATLAS_ZYX,
    POOL,
    Box,
    side_features,
)
from service.pipelines.dat_spect.putamen_estimator import (  # noqa: E402
    putamen_box as node_putamen_box,
)

#: Ridge penalty (chosen on the training folder alone, by group cross-validation).
ALPHA = 1000.0


def putamen_box(atlas: Atlas | None = None) -> Box:
    """The node's putamen box (:func:`~service.pipelines.dat_spect.putamen_estimator.putamen_box`)
    in the crop of the shipped contract."""
    from service.pipelines.dat_spect.preprocess import contract_for_atlas

    atlas = atlas or load_atlas()
    return node_putamen_box(atlas, contract_for_atlas(atlas))


def binding_split(roi_left: float, roi_right: float, br_left: float, br_right: float
                  ) -> tuple[float, float]:
    """The image's putamen mean split between the sides as the binding is."""
    m, total = 0.5 * (roi_left + roi_right), br_left + br_right
    return m * 2.0 * br_left / total, m * 2.0 * br_right / total


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge weights and bias for ``(n, p)`` features (centred; the bias is not penalised)."""
    mean_x, mean_y = x.mean(axis=0), float(y.mean())
    xc = x - mean_x
    dual = np.linalg.solve(xc @ xc.T + alpha * np.eye(len(xc)), y - mean_y)
    w = xc.T @ dual
    return w, mean_y - float(mean_x @ w)


@dataclass
class Scan:
    study_id: str
    variant: str
    case: str
    left: np.ndarray
    right: np.ndarray
    node: tuple[float, float]  # the node's AAL putamen SBRs, left and right
    image: tuple[float, float]  # the phantom's own ROIs
    binding: tuple[float, float]


def load_scans(bench_dir: Path, work: Path, box: Box, every_case: bool = False) -> list[Scan]:
    """Normal and one-sided studies of ``bench_dir`` the node measured (cache of ``work``);
    ``every_case``: bilateral losses too (training)."""
    if every_case:
        with (bench_dir / "manifest.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = studies(bench_dir)
    out = []
    for row in rows:
        cached = work / "cache" / f"{row['study_id']}.npz"
        if not cached.exists():
            continue
        with np.load(cached) as npz:
            crop, sbr = npz["x"][0], npz["sbr"]
        left, right = side_features(crop, box)
        out.append(Scan(row["study_id"], row["site"], row["case"], left, right,
                        (float(sbr[2]), float(sbr[3])),
                        (float(row["roi_sbr_putamen_left"]), float(row["roi_sbr_putamen_right"])),
                        (float(row["true_br_putamen_left"]), float(row["true_br_putamen_right"]))))
    return out


def fit_scans(scans: Sequence[Scan], alpha: float = ALPHA) -> tuple[np.ndarray, float]:
    """X fitted on training scans (both putamina of each as samples)."""
    x = np.array([f for s in scans for f in (s.left, s.right)])
    y = np.array([t for s in scans for t in binding_split(*s.image, *s.binding)])
    return fit_ridge(x, y, alpha)


def ratios(scans: Sequence[Scan], w: np.ndarray, b: float) -> dict[str, np.ndarray]:
    """The lower putamen ratio of each scan: the node's AAL VOI, X, the image's own ROIs."""
    return {
        "aal": np.array([lower_ratio(*s.node) for s in scans]),
        "x": np.array([lower_ratio(float(s.left @ w + b), float(s.right @ w + b)) for s in scans]),
        "image": np.array([lower_ratio(*s.image) for s in scans]),
    }


def auc(normal: np.ndarray, one_sided: np.ndarray) -> float:
    """P(a one-sided loss's ratio is below a normal's), ties counting a half (NaN: empty)."""
    normal, one_sided = normal[np.isfinite(normal)], one_sided[np.isfinite(one_sided)]
    if not (normal.size and one_sided.size):
        return float("nan")
    below = one_sided[:, None] < normal[None, :]
    ties = one_sided[:, None] == normal[None, :]
    return float(below.mean() + 0.5 * ties.mean())


def table(scans: Sequence[Scan], r: Mapping[str, np.ndarray], cuts: Mapping[str, float]) -> str:
    """Markdown: per variant the AUCs and the errors at the fixed cuts; then all pooled."""
    methods = list(r)
    lines = ["| variant | normals | one-sided | " + " | ".join(f"AUC {m}" for m in methods)
             + "".join(f" | errors {m} < {c:.3f}" for m, c in cuts.items()) + " |",
             "|" + "---|" * (3 + len(methods) + len(cuts))]
    variants = sorted({s.variant for s in scans})
    for v in [*variants, "all"]:
        sel = np.array([v in ("all", s.variant) for s in scans])
        normal = sel & np.array([s.case == "normal" for s in scans])
        one = sel & ~normal
        cells = [f"{auc(r[m][normal], r[m][one]):.3f}" for m in methods]
        for m, c in cuts.items():
            cells.append(f"{int((r[m][normal] < c).sum())} + {int((r[m][one] >= c).sum())}")
        lines.append(f"| {v} | {int(normal.sum())} | {int(one.sum())} | " + " | ".join(cells)
                     + " |")
    lines.append("")
    normal = np.array([s.case == "normal" for s in scans])
    for m in methods:
        n, cut = fewest_errors(r[m][normal], r[m][~normal])
        lines.append(f"{m}: fewest errors of one cut {n} of {len(scans)} (cut {cut:.3f})")
    return "\n".join(lines)


def _pair(text: str) -> tuple[Path, Path]:
    bench, _, work = text.partition(":")
    if not work:
        raise argparse.ArgumentTypeError(f"{text!r}: need BENCH:WORK")
    return Path(bench), Path(work)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("evaluate", nargs="*", type=_pair, metavar="BENCH:WORK")
    parser.add_argument("--train", type=_pair, metavar="BENCH:WORK",
                        help="training folder and its work folder (fit X)")
    parser.add_argument("--weights", type=Path, help="X's weights (.npz) instead of --train")
    parser.add_argument("--save", type=Path, help="write the fitted weights here (.npz)")
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--cut-aal", type=float, default=None)
    parser.add_argument("--cut-x", type=float, default=None)
    args = parser.parse_args(argv)
    box = putamen_box()
    if args.weights is not None:
        with np.load(args.weights) as npz:
            w, b = npz["w"], float(npz["b"])
    elif args.train is not None:
        training = load_scans(*args.train, box, every_case=True)
        w, b = fit_scans(training, args.alpha)
        print(f"X fitted on {len(training)} scans: {w.size} weights, b = {b:.5f}, "
              f"sum |w| = {float(np.abs(w).sum()):.5f}")
        if args.save is not None:
            np.savez(args.save, w=w, b=b, box_atlas_zyx=np.array(BOX_ATLAS_ZYX),
                     pool=np.int64(POOL))
    else:
        parser.error("need --train or --weights")
    cuts = {m: c for m, c in (("aal", args.cut_aal), ("x", args.cut_x)) if c is not None}
    for bench, work in args.evaluate:
        scans = load_scans(bench, work, box)
        print(f"\n{bench} ({len(scans)} normal and one-sided scans measured)\n")
        print(table(scans, ratios(scans, w, b), cuts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
