"""Published [18F]FDOPA values and the check that a simulated population reproduces them.

Every target carries its source (research note ``fdopa_sim_and_product.md``
§1-§2, where the evidence tags are given). A target is a range that the
*population statistic* (a mean, a median or a fraction) must fall in; ranges
are the published mean +- about half an SD where a mean +- SD is published,
and the note's simulator targets otherwise.

:func:`population_values` computes ideal (noise- and blur-free) per-subject
values from the kinetics alone, so the check is fast; the truth of generated
studies (:mod:`.study`) uses the same kinetics on voxel maps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.sim.fdopa.kinetics import (
    DT_MIN,
    SCHEDULES,
    slope,
    time_grid_min,
    time_to_peak_min,
    tissue_curve,
)
from service.sim.fdopa.uptake import SubjectKinetics, sample_subject_kinetics

#: Grey-matter share of the healthy-brain background (crescent / hemisphere mix).
BACKGROUND_GM_FRACTION = 0.55
#: Ginet 2020 TTP cut-off separating IDH-wildtype (< ) and IDH-mutant (>=), min.
TTP_CUTOFF_MIN = 5.4


@dataclass(frozen=True)
class Target:
    """One literature value: the statistic, its accepted range and the source."""

    name: str
    statistic: str
    low: float
    high: float
    literature: str
    source: str


TARGETS: tuple[Target, ...] = (
    Target("background_suv_mean", "mean", 1.0, 1.3, "healthy brain SUVmean ~1.0",
           "Lapa 2014 (derived); note §1.1 target 1.0-1.3"),
    Target("white_matter_suv_mean", "mean", 0.8, 1.0, "WM 0.8-1.0",
           "note §1.1 (WM 0.75-0.85 x background)"),
    Target("striatum_suv_mean", "mean", 2.0, 2.8, "basal ganglia SUVmean 2.6 +- 0.7",
           "Lapa 2014 EJNMMI; note §1.1 target 1.8-2.8"),
    Target("hgg_suvmax", "mean", 3.6, 4.9, "newly diagnosed HGG SUVmax 4.22 +- 1.30",
           "Fueger 2010 JNM 51:1532"),
    Target("lgg_suvmax", "mean", 1.7, 3.0, "LGG SUVmax 2.34 +- 1.35", "Fueger 2010 JNM 51:1532"),
    Target("hgg_tbrmax", "mean", 2.5, 4.0, "HGG TBRmax 3.0 +- 1.1 (2.5-4)",
           "Lapa 2014; note §0 target"),
    Target("lgg_tbrmax", "mean", 1.3, 2.2, "LGG TBRmax 1.3-2.2", "note §0 target"),
    Target("hgg_tbrmean", "mean", 1.8, 3.6, "HGG TBRmean 3.4 +- 1.2 (mixed primary/recurrent)",
           "Lapa 2014"),
    Target("hgg_ts_above_1", "fraction", 0.5, 0.9, "T/S > 1: sensitivity 67 % for HGG",
           "Janvier 2015 Clin Nucl Med"),
    Target("lgg_ts_above_1", "fraction", 0.0, 0.2, "T/S > 1: specificity 100 % (LGG below)",
           "Janvier 2015 Clin Nucl Med"),
    Target("low_uptake_ts_above_1", "fraction", 0.0, 0.05, "low-uptake lesions T/S < 1 by design",
           "issue 11"),
    Target("hgg_ttp_below_cutoff", "fraction", 0.65, 1.0, "IDH-wt TTP < 5.4 min (acc 74 %)",
           "Ginet 2020 EJNMMI"),
    Target("lgg_ttp_at_or_above_cutoff", "fraction", 0.65, 1.0, "IDH-mut TTP >= 5.4 min",
           "Ginet 2020 EJNMMI"),
    Target("hgg_slope_negative", "fraction", 0.65, 1.0, "HGG decreasing curve (slope < 0)",
           "Schiepers 2007; note §2.2"),
    Target("lgg_slope_positive", "fraction", 0.8, 1.0, "LGG increasing curve (slope > 0)",
           "note §2.2"),
    Target("striatum_kocc_per_min", "median", 0.0076, 0.0115,
           "striatal Patlak Kocc 0.0076-0.0104 /min", "mlfdopa Kocc CSV (note §2.2)"),
    Target("treatment_change_ts", "median", 0.4, 0.95, "treatment change T/S 0.4-0.9",
           "note §1.3 (Zaragori 2020 T/S > 1 recurrence)"),
    Target("treatment_change_tbrmax", "median", 1.2, 1.9, "treatment change TBRmax 1.2-1.8",
           "note §1.3 (Herrmann 2013 T/N cut-off 1.81)"),
    Target("treatment_change_tbrmax_above_2_5", "fraction", 0.0, 0.12,
           "about 10 % overlap with recurrence", "note §1.3 simulator consequence"),
)


def _kocc(subject: SubjectKinetics) -> float:
    """Occipital-reference Patlak slope of the striatum on ``late90``, from 20 min, 1/min."""
    sched = SCHEDULES["late90"]
    t = time_grid_min(sched.end_s / 60.0)
    ref = tissue_curve(subject.tissues["grey_matter"], subject.plasma, t)
    striatum = tissue_curve(subject.tissues["striatum"], subject.plasma, t)
    mid_min = sched.mids_s / 60.0
    ref_mid = np.interp(mid_min, t, ref)
    x = np.interp(mid_min, t, np.cumsum(ref) * DT_MIN) / ref_mid
    y = np.interp(mid_min, t, striatum) / ref_mid
    sel = mid_min >= 20.0
    return float(np.polyfit(x[sel], y[sel], 1)[0])


def subject_values(subject: SubjectKinetics) -> dict[str, float]:
    """Ideal static and dynamic values of one subject (SUV 10-30 min, nancy30 frames)."""
    suv = subject.static_suv("10-30")
    bg = BACKGROUND_GM_FRACTION * suv["grey_matter"] + (1 - BACKGROUND_GM_FRACTION) * suv[
        "white_matter"
    ]
    out = {
        "background_suv_mean": bg,
        "white_matter_suv_mean": suv["white_matter"],
        "striatum_suv_mean": suv["striatum"],
        "striatum_kocc_per_min": _kocc(subject),
    }
    if "tumour" in suv:
        suvmax = suv["tumour"] * subject.peak_factor
        sched = SCHEDULES["nancy30"]
        tac = subject.frame_tacs(sched)["tumour"]
        out |= {
            "suvmax": suvmax,
            "tbrmax": suvmax / bg,
            "tbrmean": suv["tumour"] / bg,
            # striatum max ~ 1.2 x mean at the simulator's 2 mm partial-volume level
            "ts": suvmax / (1.2 * suv["striatum"]),
            "ttp_min": time_to_peak_min(tac, sched.starts_s),
            "slope_percent_per_min": slope(tac, sched.starts_s)[1],
        }
    return out


def _stat(values: list[float], statistic: str, test: Callable[[float], bool] | None) -> float:
    arr = np.asarray(values, float)
    if arr.size == 0:
        return float("nan")
    if statistic == "fraction":
        assert test is not None
        return float(np.mean([test(v) for v in arr]))
    return float(np.median(arr) if statistic == "median" else np.mean(arr))


def population_statistics(values: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """The statistic of every :data:`TARGETS` entry from per-class subject values."""
    allv = [v for rows in values.values() for v in rows]

    def col(cls: str | None, key: str) -> list[float]:
        rows = allv if cls is None else values.get(cls, [])
        return [r[key] for r in rows if key in r]

    return {
        "background_suv_mean": _stat(col(None, "background_suv_mean"), "mean", None),
        "white_matter_suv_mean": _stat(col(None, "white_matter_suv_mean"), "mean", None),
        "striatum_suv_mean": _stat(col(None, "striatum_suv_mean"), "mean", None),
        "hgg_suvmax": _stat(col("hgg", "suvmax"), "mean", None),
        "lgg_suvmax": _stat(col("lgg", "suvmax"), "mean", None),
        "hgg_tbrmax": _stat(col("hgg", "tbrmax"), "mean", None),
        "lgg_tbrmax": _stat(col("lgg", "tbrmax"), "mean", None),
        "hgg_tbrmean": _stat(col("hgg", "tbrmean"), "mean", None),
        "hgg_ts_above_1": _stat(col("hgg", "ts"), "fraction", lambda v: v > 1.0),
        "lgg_ts_above_1": _stat(col("lgg", "ts"), "fraction", lambda v: v > 1.0),
        "low_uptake_ts_above_1": _stat(col("low_uptake", "ts"), "fraction", lambda v: v > 1.0),
        "hgg_ttp_below_cutoff": _stat(
            col("hgg", "ttp_min"), "fraction", lambda v: v < TTP_CUTOFF_MIN
        ),
        "lgg_ttp_at_or_above_cutoff": _stat(
            col("lgg", "ttp_min"), "fraction", lambda v: v >= TTP_CUTOFF_MIN
        ),
        "hgg_slope_negative": _stat(col("hgg", "slope_percent_per_min"), "fraction",
                                    lambda v: v < 0),
        "lgg_slope_positive": _stat(col("lgg", "slope_percent_per_min"), "fraction",
                                    lambda v: v > 0),
        "striatum_kocc_per_min": _stat(col(None, "striatum_kocc_per_min"), "median", None),
        "treatment_change_ts": _stat(col("treatment_change", "ts"), "median", None),
        "treatment_change_tbrmax": _stat(col("treatment_change", "tbrmax"), "median", None),
        "treatment_change_tbrmax_above_2_5": _stat(col("treatment_change", "tbrmax"), "fraction",
                                                   lambda v: v > 2.5),
    }


def simulate_population(seed: int, n_per_class: int) -> dict[str, list[dict[str, float]]]:
    """Ideal values of ``n_per_class`` subjects of every tumour class (seeded)."""
    from service.sim.fdopa.uptake import TUMOUR_CLASSES

    rng = np.random.default_rng(seed)
    return {
        cls: [subject_values(sample_subject_kinetics(rng, cls)) for _ in range(n_per_class)]
        for cls in TUMOUR_CLASSES
    }


def check(stats: dict[str, float]) -> list[tuple[Target, float, bool]]:
    """Each target with the simulated statistic and whether it lies in range."""
    return [(t, stats[t.name], t.low <= stats[t.name] <= t.high) for t in TARGETS]


def table_markdown(rows: list[tuple[Target, float, bool]]) -> str:
    """A Markdown table: quantity, simulated, accepted range, literature, source."""
    lines = [
        "| quantity | simulated | accepted | literature | source | ok |",
        "|---|---|---|---|---|---|",
    ]
    for t, value, ok in rows:
        shown, verdict = ("n/a", "n/a") if np.isnan(value) else (f"{value:.3g}",
                                                               "yes" if ok else "NO")
        lines.append(
            f"| {t.name} ({t.statistic}) | {shown} | {t.low:g}-{t.high:g} | "
            f"{t.literature} | {t.source} | {verdict} |"
        )
    return "\n".join(lines)
