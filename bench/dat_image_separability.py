"""What the simulated image itself holds: one-sided putamen losses against normals per variant.

Issue 10 asks that a one-sided putamen loss be called reduced and a normal
normal on every camera profile of the robustness set. The set draws a
one-sided loss by what the *noise-free* image shows (the lost putamen at
45-58 % of the other, ``putamen_ratio_image`` of the manifest); the written
scan is a noisy reconstruction. This tool reads only the manifests (no node
run): per variant, the lower putamen ratio the phantom's own putamen ROIs
measure on the noisy reconstruction (``roi_sbr_putamen_*``: the true
anatomy at the true pose, no registration, no VOI error) for the normals and
for the one-sided losses, and the fewest errors one cut of it makes. Where
even that ratio puts a one-sided loss above a normal, no analysis that
reads the putamen's mean can call both right; the CNN may still see the
loss in the shape.

Usage::

    PYTHONPATH=$PWD .venv/bin/python bench/dat_image_separability.py BENCH [BENCH ...] \
        [--cases CSV [CSV ...]] [--column K+verdict]

``BENCH``: folders of ``dopanode benchmark robustness`` (one-sided and normal
cases) and of ``--normals`` (site-calibration normals, counted as normals of
their variant). ``--cases``: the per-study CSVs of ``dopanode robustness
--cases`` on the same folders; the table then sets the node's errors on the
same studies beside the image's (a one-sided loss not called reduced, a
normal not called normal, a study the node did not rate), so that what a
better analysis could still win shows per variant.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dat_putamen_ratio_pose import fewest_errors, lower_ratio, studies  # noqa: E402
from service.sim.robustness import NORMALS_SUFFIX  # noqa: E402


def ratios_by_variant(rows: Iterable[dict[str, str]]
                      ) -> dict[str, dict[str, list[float]]]:
    """``{variant: {"normal": [...], "one_sided": [...], "noise_free": [...]}}``: the
    phantom ROIs' lower putamen ratio on the written scan (normals, one-sided losses)
    and the noise-free image's ratio of the one-sided losses."""
    out: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        variant = row["site"].removesuffix(NORMALS_SUFFIX)
        cell = out.setdefault(variant, {"normal": [], "one_sided": [], "noise_free": []})
        ratio = lower_ratio(float(row["roi_sbr_putamen_left"]),
                            float(row["roi_sbr_putamen_right"]))
        if row["case"] == "normal":
            cell["normal"].append(ratio)
        else:
            cell["one_sided"].append(ratio)
            if row.get("putamen_ratio_image"):
                cell["noise_free"].append(float(row["putamen_ratio_image"]))
    return out


def table(by_variant: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: per variant the normals' lowest ratio, the one-sided losses' highest
    (noisy and noise-free) and the fewest errors of one cut; then all variants summed."""
    lines = ["| variant | normals | one-sided | normals' lowest | one-sided highest | "
             "one-sided highest, noise-free | fewest errors of one cut (cut) |",
             "|---|---|---|---|---|---|---|"]
    total_n = total_o = total_e = 0
    for variant in sorted(by_variant):
        cell = by_variant[variant]
        normal, one = np.array(cell["normal"]), np.array(cell["one_sided"])
        errors, cut = fewest_errors(normal, one)
        free = max(cell["noise_free"]) if cell["noise_free"] else float("nan")
        lines.append(f"| {variant} | {normal.size} | {one.size} | {_low(normal)} | "
                     f"{_high(one)} | {free:.3f} | {errors} ({cut:.3f}) |")
        total_n, total_o, total_e = total_n + normal.size, total_o + one.size, total_e + errors
    lines.append(f"| all (per-variant cuts) | {total_n} | {total_o} | | | | {total_e} |")
    return "\n".join(lines)


#: The node's counts per variant (:func:`node_errors`).
NODE_COUNTS = ("one_sided", "one_sided_missed", "normal", "normal_missed", "unrated")


def node_errors(rows: Iterable[dict[str, str]], verdicts: dict[str, str]
                ) -> dict[str, dict[str, int]]:
    """Per variant: ``one_sided`` / ``normal`` studies the node rated, how many of each
    it got wrong (``one_sided_missed``: not *reduced*; ``normal_missed``: not
    *normal*), and ``unrated`` (in the manifests, not in ``verdicts``: refused)."""
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        variant = row["site"].removesuffix(NORMALS_SUFFIX)
        cell = out.setdefault(variant, dict.fromkeys(NODE_COUNTS, 0))
        verdict = verdicts.get(row["study_id"])
        if verdict is None:
            cell["unrated"] += 1
            continue
        kind = "normal" if row["case"] == "normal" else "one_sided"
        cell[kind] += 1
        cell[f"{kind}_missed"] += verdict != ("normal" if kind == "normal" else "reduced")
    return out


def with_node(table_text: str, errors: dict[str, dict[str, int]]) -> str:
    """``table_text`` (:func:`table`) with the node's errors per variant as one more
    column, summed on its last line."""
    header, rule, *variant_lines, last = table_text.splitlines()
    total = {key: sum(cell[key] for cell in errors.values()) for key in NODE_COUNTS}

    def cell_text(cell: dict[str, int] | None) -> str:
        if cell is None:
            return " - |"
        return (f" {cell['one_sided_missed']} of {cell['one_sided']} / "
                f"{cell['normal_missed']} of {cell['normal']} / {cell['unrated']} |")

    lines = [header + " node: one-sided not reduced / normals not normal / not rated |",
             rule + "---|"]
    lines += [line + cell_text(errors.get(line.split("|")[1].strip())) for line in variant_lines]
    return "\n".join([*lines, last + cell_text(total)])


def read_verdicts(paths: Iterable[Path], column: str) -> dict[str, str]:
    """``{study_id: verdict}`` from ``dopanode robustness --cases`` CSVs (a later file wins)."""
    out: dict[str, str] = {}
    for path in paths:
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if column not in row:
                    raise SystemExit(f"{path.name}: no column {column!r}")
                out[row["study_id"]] = row[column]
    return out


def _low(a: np.ndarray) -> str:
    return f"{float(np.nanmin(a)):.3f}" if a.size else "-"


def _high(a: np.ndarray) -> str:
    return f"{float(np.nanmax(a)):.3f}" if a.size else "-"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bench", nargs="+", type=Path)
    parser.add_argument("--cases", nargs="+", type=Path, default=[],
                        help="dopanode robustness --cases CSVs of the same folders")
    parser.add_argument("--column", default="K+verdict",
                        help="the cases column holding the node's call (default K+verdict)")
    args = parser.parse_args(argv)
    rows = list({row["study_id"]: row for bench in args.bench
                 for row in studies(bench)}.values())  # a study in two folders counts once
    print(f"{len(rows)} normal and one-sided studies of {len(args.bench)} folders\n")
    text = table(ratios_by_variant(rows))
    if args.cases:
        text = with_node(text, node_errors(rows, read_verdicts(args.cases, args.column)))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
