"""The putamen ratio of simulated DaT scans: the image, the atlas VOIs at the true pose, the node.

Where does a one-sided putamen loss lose its contrast between the image and
the node's asymmetry rule? For every normal and one-sided study of a
robustness folder (``dopanode benchmark robustness OUT [--training]``,
:mod:`service.sim.robustness`) three measurements of the lower putamen ratio
(affected / other putamen SBR, the lower of the two ratios):

* **image**: the simulator's own ROI measurement on its reconstruction with
  the subject's own striatal regions at the true pose (manifest ``roi_sbr_*``);
* **true pose**: the AAL putamen and occipital VOIs the node measures with,
  mapped into the written series through the pose the simulator drew
  (:func:`service.sim.robustness.variant_pose`), the series sampled there
  (linear): the node's VOIs without the node's registration;
* **node**: the node's SBRs through its registration (``sbr`` of the cache
  ``dopanode robustness BENCH --work WORK`` wrote), when ``--work`` is given.

Per variant: medians of normals and one-sided losses, and over the whole
folder the fewest errors any one cut makes between the normals and the
one-sided losses (a lower ratio below the cut counts as one-sided).

Usage::

    PYTHONPATH=$PWD .venv/bin/python bench/dat_putamen_ratio_pose.py BENCH \\
        [--work WORK] [--json out.json] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import map_rows  # noqa: E402
from service.imaging.atlas import load_atlas  # noqa: E402

#: The atlas labels measured (order of the node's REGIONS) and the reference.
PUTAMINA = ("putamen_left", "putamen_right")
REFERENCE = "occipital"
METHODS = ("image", "true_pose", "node")


def lower_ratio(left: float, right: float) -> float:
    """The lower of ``left / right`` and ``right / left`` (NaN without binding)."""
    if not (left > 0 and right > 0):
        return float("nan")
    return min(left / right, right / left)


@functools.cache
def _atlas_points(name: str) -> np.ndarray:
    """LPS mm of the centres of one atlas label's voxels, (n, 3) (once per process)."""
    atlas = load_atlas()
    idx_xyz = np.argwhere(atlas.mask(name))[:, ::-1].astype(float)
    direction = np.asarray(atlas.direction, float).reshape(3, 3)
    return np.asarray(atlas.origin_lps_mm) + (idx_xyz * np.asarray(atlas.spacing_mm)) @ direction.T


def true_pose_sbr(series_dir: Path, variant: str, study_index: int) -> dict[str, float]:
    """SBR of the AAL putamina in the written series at the simulator's pose."""
    import SimpleITK as sitk
    from scipy.ndimage import map_coordinates

    from service.dicom.header import read_series
    from service.imaging.nm_volume import volume_from_datasets
    from service.sim.robustness import variant_pose

    files = sorted(p for p in series_dir.rglob("*") if p.is_file())
    image = volume_from_datasets(read_series(files)).image
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    origin, spacing = np.array(image.GetOrigin()), np.array(image.GetSpacing())
    direction = np.array(image.GetDirection()).reshape(3, 3)
    posed = variant_pose(variant, study_index)
    means = {}
    for name in (*PUTAMINA, REFERENCE):
        index_xyz = ((posed.scan_points(_atlas_points(name)) - origin) @ direction) / spacing
        means[name] = float(map_coordinates(array, index_xyz[:, ::-1].T, order=1).mean())
    return {name: means[name] / means[REFERENCE] - 1.0 for name in PUTAMINA}


def _task(args: tuple[Path, dict[str, str], Path | None]) -> dict[str, object]:
    bench_dir, row, work = args
    sid, variant = row["study_id"], row["site"]
    pose = true_pose_sbr(bench_dir / variant / sid / "series", variant, int(sid.rsplit("_", 1)[1]))
    out: dict[str, object] = {
        "study_id": sid, "variant": variant, "case": row["case"],
        "image": lower_ratio(float(row["roi_sbr_putamen_left"]),
                             float(row["roi_sbr_putamen_right"])),
        "true_pose": lower_ratio(*(pose[n] for n in PUTAMINA)), "node": float("nan"),
        **{f"true_pose_sbr_{n}": pose[n] for n in PUTAMINA}}
    cached = None if work is None else work / "cache" / f"{sid}.npz"
    if cached is not None and cached.exists():
        with np.load(cached) as npz:
            sbr = npz["sbr"]  # caudate L, caudate R, putamen L, putamen R
        out["node"] = lower_ratio(float(sbr[2]), float(sbr[3]))
    return out


def studies(bench_dir: Path) -> list[dict[str, str]]:
    """The manifest's normal and one-sided studies (``case`` normal or loss_*)."""
    with (bench_dir / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("case") == "normal" or r.get("case", "").startswith("loss_")]


def fewest_errors(normal: np.ndarray, one_sided: np.ndarray) -> tuple[int, float]:
    """The fewest errors of one cut (ratio below it: one-sided) and that cut (lowest on a tie)."""
    normal, one_sided = normal[np.isfinite(normal)], one_sided[np.isfinite(one_sided)]
    cuts = np.unique(np.concatenate([normal, one_sided]))
    if cuts.size == 0:
        return 0, float("nan")
    errors = [int((normal < c).sum() + (one_sided >= c).sum()) for c in cuts]
    k = int(np.argmin(errors))
    return errors[k], float(cuts[k])


def table(rows: Sequence[dict[str, object]]) -> str:
    """Markdown: per variant the medians, then the fewest errors of one cut overall."""
    variants = sorted({str(r["variant"]) for r in rows})
    head = ("| variant | normals | one-sided | " + " | ".join(
        f"{m} normal / one-sided median" for m in METHODS) + " |")
    lines = [head, "|" + "---|" * (3 + len(METHODS))]
    for v in [*variants, "all"]:
        sel = [r for r in rows if v in ("all", r["variant"])]
        normal = [r for r in sel if r["case"] == "normal"]
        one = [r for r in sel if r["case"] != "normal"]
        cells = []
        for m in METHODS:
            a = np.array([float(r[m]) for r in normal])  # type: ignore[arg-type]
            b = np.array([float(r[m]) for r in one])  # type: ignore[arg-type]
            cells.append("-" if not (np.isfinite(a).any() and np.isfinite(b).any()) else
                         f"{np.nanmedian(a):.3f} / {np.nanmedian(b):.3f}")
        lines.append(f"| {v} | {len(normal)} | {len(one)} | " + " | ".join(cells) + " |")
    lines.append("")
    for m in METHODS:
        a = np.array([float(r[m]) for r in rows if r["case"] == "normal"])  # type: ignore[arg-type]
        b = np.array([float(r[m]) for r in rows if r["case"] != "normal"])  # type: ignore[arg-type]
        n, cut = fewest_errors(a, b)
        lines.append(f"{m}: fewest errors of one cut {n} of "
                     f"{int(np.isfinite(a).sum() + np.isfinite(b).sum())} (cut {cut:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench_dir", type=Path, help="a robustness folder (manifest.csv)")
    parser.add_argument("--work", type=Path, help="the work folder of 'dopanode robustness'")
    parser.add_argument("--json", type=Path, help="write every study's row here")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    todo = [(args.bench_dir, row, args.work) for row in studies(args.bench_dir)]
    rows = map_rows(_task, todo, args.workers, args.json, chunksize=4)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
