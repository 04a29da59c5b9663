"""Shared helpers of the end-to-end and analysis benchmarks (bench/e2e.py, bench/analysis.py).

Study data comes from the simulator (``dopanode simulate``), generated into a
temporary folder inside the benchmark run; its manifest CSV carries the truth.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO_ROOT = Path(__file__).resolve().parents[1]

T = TypeVar("T")

MANIFEST_FILE = "manifest.csv"


@dataclass(frozen=True)
class Study:
    """One simulated study: its series folder and its manifest row (truth).

    Attributes
    ----------
    study_id : str
    profile : str
        Camera profile name.
    series_dir : Path
        Folder with the study's DICOM file(s).
    truth : dict of str to str
        The manifest row (``true_br_*``, ``roi_sbr_*``, ...).
    """

    study_id: str
    profile: str
    series_dir: Path
    truth: dict[str, str]

    @property
    def files(self) -> list[Path]:
        return sorted(p for p in self.series_dir.iterdir() if p.is_file())


def simulate(out_dir: Path, profile: str, n: int, seed: int, variant: str | None,
             workers: int = 2) -> list[Study]:
    """Run ``dopanode simulate`` into ``out_dir`` and return its studies.

    The simulator runs as a subprocess (its torch memory stays out of the
    benchmark process); a failure raises ``CalledProcessError``.
    """
    cmd = [sys.executable, "-m", "service.cli", "--log-level", "WARNING", "simulate",
           str(out_dir), "--profile", profile, "--n", str(n), "--seed", str(seed),
           "--workers", str(workers)]
    if variant:
        cmd += ["--variant", variant]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    return load_studies(out_dir)


def load_studies(data_dir: Path) -> list[Study]:
    """Studies listed in ``data_dir/manifest.csv`` (simulator layout site/study/series)."""
    with (data_dir / MANIFEST_FILE).open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    studies = []
    for row in rows:
        series_dir = data_dir / row["site"] / row["study_id"] / "series"
        if not series_dir.is_dir():
            raise FileNotFoundError(f"manifest lists {row['study_id']} but {series_dir} is missing")
        studies.append(Study(row["study_id"], row["profile"], series_dir, row))
    return studies


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (left-aligned first column, right-aligned numbers)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    right = [i > 0 and bool(cells) and all(_numeric(r[i]) for r in cells)
             for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w)
                 for v, w, r in zip(values, widths, right, strict=True)]
        return "| " + " | ".join(parts) + " |"

    print(line(list(headers)))
    print("|" + "|".join("-" * (w + 1) + (":" if r else "-")
                         for w, r in zip(widths, right, strict=True)) + "|")
    for r in cells:
        print(line(r))


def _numeric(text: str) -> bool:
    try:
        float(text.split("/")[0])
    except ValueError:
        return False
    return True


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def machine_note() -> str:
    """CPU count and load average, printed beside every result."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def map_rows(task: Callable[[T], dict[str, object]], todo: Sequence[T], workers: int = 1,
             json_path: Path | None = None, chunksize: int = 1) -> list[dict[str, object]]:
    """``task`` over ``todo`` (in ``workers`` processes when more than one), in order;
    the rows also written to ``json_path`` when given."""
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(pool.map(task, todo, chunksize=chunksize))
    else:
        rows = [task(t) for t in todo]
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=1))
    return rows
