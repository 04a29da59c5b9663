"""Statistics of the FDOPA evaluation in the papers' format (issue 12, point 8). Pure.

Definitions (as the reference papers report them, research note ``fdopa.md`` §1a, §1c):

* **Dice** of two boolean masks: ``2 |A & B| / (|A| + |B|)`` (1.0 when both are empty).
* **Dice summary**: median and interquartile range (25th and 75th percentiles,
  linear interpolation between order statistics, numpy's default; PET RANO
  reports "median [IQR]") and mean +- sample SD (``ddof=1``; the paediatric
  paper reports "mean +- SD").
* **Bland-Altman** of paired values ``pred`` and ``ref``: differences
  ``d = pred - ref``; bias = mean(d); 95 % limits of agreement = bias +-
  1.96 x SD(d) (sample SD, ``ddof=1``). PET RANO reports "bias [LoA]".
* **ICC** (McGraw and Wong 1996; Shrout and Fleiss 1979), two-way model,
  single measures, from the ANOVA of the ``n x k`` table (here ``k = 2``:
  pipeline and reference): ``ICC(A,1)`` = ICC(2,1), absolute agreement,
  ``(MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)``; ``ICC(C,1)`` =
  ICC(3,1), consistency, ``(MSR - MSE) / (MSR + (k-1) MSE)``. Neither paper
  states its form in the text we have; the table reports ICC(A,1), the
  stricter one (a constant bias lowers it), and the JSON both.
* **Detection**: found / total, as a fraction.
* **Paired difference** of two methods on the same studies (``x - y``): the
  difference of their means and of their medians, each with a percentile
  bootstrap 95 % interval (studies drawn with replacement, the same draw for
  both; seeded, so a rerun prints the same interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: z of the two-sided 95 % limits of agreement.
LOA_Z = 1.96


@dataclass(frozen=True)
class Summary:
    """Median (IQR) and mean +- SD of a sample; NaN where undefined (n < 1, or SD with n < 2)."""

    n: int
    median: float
    q1: float
    q3: float
    mean: float
    sd: float


@dataclass(frozen=True)
class Agreement:
    """Agreement of paired values ``pred`` with ``ref`` (module docstring).

    Attributes
    ----------
    n : int
        Pairs with both values finite.
    bias, sd : float
        Mean and sample SD of ``pred - ref``.
    loa_low, loa_high : float
        95 % limits of agreement, ``bias -+ 1.96 sd``.
    icc_agreement, icc_consistency : float
        ICC(A,1) = ICC(2,1) and ICC(C,1) = ICC(3,1); NaN for n < 2 or no variance.
    """

    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float
    icc_agreement: float
    icc_consistency: float


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks of one shape; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError("masks differ in shape")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def summarise(values: Sequence[float | None]) -> Summary:
    """Median, quartiles, mean and sample SD of the finite ``values``."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if v.size == 0:
        return Summary(0, *(math.nan,) * 5)
    q1, med, q3 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    sd = float(v.std(ddof=1)) if v.size > 1 else math.nan
    return Summary(int(v.size), med, q1, q3, float(v.mean()), sd)


def icc(table: np.ndarray, form: Literal["agreement", "consistency"] = "agreement") -> float:
    """Two-way, single-measure ICC of an ``(n subjects, k raters)`` table (module docstring).

    Parameters
    ----------
    table : (n, k) float array
        Every value finite; n >= 2, k >= 2.
    form : {"agreement", "consistency"}
        ICC(A,1) = ICC(2,1), or ICC(C,1) = ICC(3,1).

    Returns
    -------
    float
        NaN when n < 2 or the table has no variance at all.
    """
    y = np.asarray(table, float)
    if y.ndim != 2 or y.shape[1] < 2:
        raise ValueError("ICC needs an (n, k) table with k >= 2")
    n, k = y.shape
    if n < 2:
        return math.nan
    grand = y.mean()
    ss_rows = k * float(((y.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((y.mean(axis=0) - grand) ** 2).sum())
    ss_error = float(((y - grand) ** 2).sum()) - ss_rows - ss_cols
    ms_rows, ms_cols = ss_rows / (n - 1), ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    if form == "agreement":
        denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    elif form == "consistency":
        denominator = ms_rows + (k - 1) * ms_error
    else:
        raise ValueError(f"unknown ICC form {form!r}")
    return math.nan if denominator <= 0 else (ms_rows - ms_error) / denominator


def agreement(pred: Sequence[float | None], ref: Sequence[float | None]) -> Agreement:
    """Bland-Altman bias, 95 % LoA and ICCs of the pairs where both values are finite."""
    if len(pred) != len(ref):
        raise ValueError("pred and ref differ in length")
    pairs = np.asarray([(p, r) for p, r in zip(pred, ref, strict=True)
                        if p is not None and r is not None
                        and math.isfinite(p) and math.isfinite(r)], float).reshape(-1, 2)
    n = pairs.shape[0]
    if n == 0:
        return Agreement(0, *(math.nan,) * 6)
    d = pairs[:, 0] - pairs[:, 1]
    bias = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    return Agreement(n, bias, sd, bias - LOA_Z * sd, bias + LOA_Z * sd,
                     icc(pairs, "agreement"), icc(pairs, "consistency"))


def fraction(found: Sequence[bool]) -> tuple[int, int, float]:
    """(found, total, found / total); the fraction is NaN when total is 0."""
    total = len(found)
    k = sum(bool(f) for f in found)
    return k, total, (k / total if total else math.nan)


@dataclass(frozen=True)
class PairedDifference:
    """``x - y`` on the same studies (module docstring): mean and median differences with
    their bootstrap 95 % intervals; ``n`` pairs."""

    n: int
    mean: float
    mean_low: float
    mean_high: float
    median: float
    median_low: float
    median_high: float


def paired_difference(x: Sequence[float], y: Sequence[float], draws: int = 2000,
                      seed: int = 0) -> PairedDifference:
    """Mean and median of ``x`` minus those of ``y`` (paired, same length), bootstrap 95 %."""
    a, b = np.asarray(x, float), np.asarray(y, float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired_difference needs two non-empty samples of one length")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired_difference needs finite values")
    if draws < 1:
        raise ValueError("paired_difference needs at least one bootstrap draw")
    k = np.random.default_rng(seed).integers(0, a.size, (draws, a.size))
    means = (a[k] - b[k]).mean(axis=1)
    medians = np.median(a[k], axis=1) - np.median(b[k], axis=1)
    m_lo, m_hi = (float(v) for v in np.percentile(means, [2.5, 97.5]))
    d_lo, d_hi = (float(v) for v in np.percentile(medians, [2.5, 97.5]))
    return PairedDifference(int(a.size), float((a - b).mean()), m_lo, m_hi,
                            float(np.median(a) - np.median(b)), d_lo, d_hi)
