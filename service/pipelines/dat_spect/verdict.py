"""One consistent verdict: the global score never contradicts the regional table silently.

The regional table shows, per region, the CNN's level and the SBR-threshold
level (:mod:`.levels`) beside each other, and the global score is the CNN's
(:mod:`.cnn`) or the SBR path's. They are separate methods and may disagree.
The rule here, applied after both have rated a scan:

* **methods disagree**: when one method finds a region at level 2 (moderate
  reduction) or worse and the other finds none, so that the two methods would
  call the scan differently, the verdict is *inconclusive* and its rule text
  names the methods, the regions and both levels, e.g. ``"inconclusive: CNN
  and SBR thresholds disagree on putamen right (CNN 0, SBR 2)"``;
* **methods differ in a region but agree on the scan**: both find a region at
  level 2 or worse, not the same ones. The call stands (both methods make it);
  the rule text names the regions where they differ (``"CNN and SBR
  thresholds differ on ... ; both call the scan reduced"``) and the table shows
  both levels. Until December 2026 any such region made the verdict
  inconclusive: with the per-family thresholds that left 29 of the 62
  validation scans without an answer, most of them reduced scans whose two
  methods agreed that they were reduced (``models/training/README.md``,
  "Fourth attempt");
* **verdict and table disagree**: a *normal* call above a reported level of 2
  or worse, or a *reduced* call without one, is *inconclusive* too, with the
  regions named;
* **a clear one-sided putamen loss under a normal CNN call**
  (``asymmetry_decides``, the node's default, ``[pipelines.dat_spect]
  asymmetry_decides``): when the CNN calls the scan normal and both putamen
  measures see one putamen low (:func:`both_measures_one_sided`): the VOI
  SBR ratio (AAL putamen VOIs) and the learnt putamen estimator's ratio
  (X, :mod:`.putamen_estimator`) both name it the lower putamen, both put it
  below the SBR path's asymmetry cut 0.78 x the other, and at least one
  clearly (VOI below 0.741 or X below 0.66), the verdict is *reduced* and
  conclusive, method ``"cnn+asymmetry"``; its rule names the putamen, both
  ratios and the CNN's level, and that putamen's reported level is its SBR
  level, at least 2 (:func:`apply_verdict`; the CNN level stays in its own
  column). The ratios compare the scan with itself and need no camera
  calibration; the CNN is the weaker method on one-sided losses
  (``models/training/README.md``, "The asymmetry decides"). The two
  measures fail differently (the VOI where it does not fit the anatomy, X
  on counting noise); until December 2026 the VOI ratio below 0.741 decided
  alone (rule ``models/training/rules/dat33_both_measures_override.md``).
  Without the option the case is a disagreement (first point);
* **a strong one-sided CNN call the scan's own asymmetry points to** (the
  same option, :func:`cnn_side_override`): when the CNN calls the scan
  reduced, every region it rates 2 or worse lies on one side, that side's
  putamen is rated 3 or worse (strong reduction), the SBR thresholds find no
  region at level 2, and that putamen's SBR is below
  :data:`SIDE_AGREES_RATIO` (0.95) of the other putamen's, the verdict is
  *reduced* and conclusive, method ``"cnn+side"``; its rule names the
  putamen, the CNN level and the ratio, and says that the SBR thresholds see
  no region at level 2. Blur, missing attenuation correction and another
  striatal shape lift a lost putamen's VOI ratio above the SBR path's cut
  (0.78) while the CNN sees the loss (``models/training/README.md``, "The
  CNN's one-sided call where the asymmetry agrees"). The ratio 0.95 was
  chosen on the CNN's validation split only.

Apart from these two overrides the binary call itself (``reduced``) is left as the
method made it; only the inconclusive flag and the rule text change. A result
whose methods agree is returned unchanged. A verdict of the SBR path (no CNN)
on the shipped simulated thresholds says in its rule that it is indicative
only (:func:`with_calibration`; the picture headline says INDICATIVE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from service.pipelines.dat_spect.levels import ASYMMETRY_REDUCED_RATIO, CLEAR_ASYMMETRY_RATIO
from service.pipelines.dat_spect.provenance import SIMULATED, CalibrationInfo
from service.pipelines.dat_spect.putamen_estimator import X_CLEAR_RATIO, lower_ratio
from service.pipelines.dat_spect.result import REGIONS, GlobalScore, Level, Region, RegionResult

#: The level from which a region counts as reduced (moderate reduction).
REDUCED_FROM = Level.MODERATE_REDUCTION
#: Appended to the rule of an SBR-threshold verdict on the shipped simulated thresholds.
INDICATIVE_RULE = "indicative only: SBR thresholds from the shipped SIMULATED calibration"
#: ``GlobalScore.method`` of a normal CNN call overridden by a clear one-sided loss.
ASYMMETRY_METHOD = "cnn+asymmetry"
#: ``GlobalScore.method`` of a strong one-sided CNN call kept by the scan's asymmetry.
SIDE_METHOD = "cnn+side"
#: The CNN level from which its one-sided call may stand against the SBR thresholds.
SIDE_CNN_FROM = Level.STRONG_REDUCTION
#: The putamen ratio (CNN-rated putamen over the other) below which the scan's own
#: asymmetry points to the CNN's side (chosen on the CNN's validation split, 2026-12-04).
SIDE_AGREES_RATIO = 0.95


def _name(r: RegionResult) -> str:
    return f"{r.region.structure} {r.region.side}"


def method_disagreements(regions: Sequence[RegionResult]) -> tuple[str, ...]:
    """Regions where the CNN and the SBR thresholds fall on opposite sides of level 2.

    Returns
    -------
    tuple of str
        One ``"putamen right (CNN 0, SBR 2)"`` per such region, in the order
        given; empty when there is no CNN level or the methods agree.
    """
    out = []
    for r in regions:
        if r.level_cnn is None:
            continue
        if (r.level_cnn >= REDUCED_FROM) != (r.level_sbr >= REDUCED_FROM):
            out.append(f"{_name(r)} (CNN {int(r.level_cnn)}, SBR {int(r.level_sbr)})")
    return tuple(out)


def table_disagreements(regions: Sequence[RegionResult], reduced: bool) -> tuple[str, ...]:
    """Why a binary call contradicts the reported levels (empty when it does not)."""
    at_two = [f"{_name(r)} level {int(r.level)}" for r in regions if r.level >= REDUCED_FROM]
    if not reduced and at_two:
        return tuple(at_two)
    if reduced and not at_two:
        return ("no region at level 2 or worse",)
    return ()


def calls_differ(levels_cnn: Iterable[int], levels_sbr: Iterable[int]) -> bool:
    """True when one method's levels have a region at level 2+ and the other's none."""
    return (any(level >= REDUCED_FROM for level in levels_cnn)
            != any(level >= REDUCED_FROM for level in levels_sbr))


def methods_call_differently(regions: Sequence[RegionResult]) -> bool:
    """:func:`calls_differ` of the regions' CNN and SBR levels (False without a CNN)."""
    cnn = [r.level_cnn for r in regions if r.level_cnn is not None]
    if len(cnn) < len(regions):
        return False
    return calls_differ(cnn, [r.level_sbr for r in regions])


def one_sided_side(x_left: float, x_right: float, voi_left: float, voi_right: float
                   ) -> int | None:
    """The putamen both measures see clearly low: 0 left, 1 right, or None.

    ``x_*``: the learnt estimator's putamen SBRs; ``voi_*``: the VOI SBRs. Both
    must name the same putamen the lower one, both ratios (lower over higher)
    be below :data:`~service.pipelines.dat_spect.levels.ASYMMETRY_REDUCED_RATIO`,
    and the VOI's below :data:`~service.pipelines.dat_spect.levels.CLEAR_ASYMMETRY_RATIO`
    or X's below :data:`X_CLEAR_RATIO` (rule dat33, candidate Z).
    """
    x, voi = lower_ratio(x_left, x_right), lower_ratio(voi_left, voi_right)
    side_x, side_voi = int(x_right < x_left), int(voi_right < voi_left)
    if side_x != side_voi or not (x < ASYMMETRY_REDUCED_RATIO and voi < ASYMMETRY_REDUCED_RATIO):
        return None  # NaN compares False: no decision without binding
    return side_x if (voi < CLEAR_ASYMMETRY_RATIO or x < X_CLEAR_RATIO) else None


def both_measures_one_sided(regions: Sequence[RegionResult]
                            ) -> dict[Region, tuple[float, float]]:
    """The putamen both measures see clearly low (:func:`one_sided_side`), or ``{}``.

    Returns
    -------
    dict
        ``{putamen: (X's ratio, the VOI SBR ratio)}``; empty where the
        estimates are missing (no CNN) or the rule does not hold.
    """
    by_region = {r.region: r for r in regions}
    left, right = by_region.get(Region.PUTAMEN_LEFT), by_region.get(Region.PUTAMEN_RIGHT)
    if left is None or right is None or left.sbr_estimated is None or right.sbr_estimated is None:
        return {}
    side = one_sided_side(left.sbr_estimated, right.sbr_estimated, left.sbr, right.sbr)
    if side is None:
        return {}
    low = (left, right)[side]
    return {low.region: (lower_ratio(left.sbr_estimated, right.sbr_estimated),
                         lower_ratio(left.sbr, right.sbr))}


def one_sided_override(regions: Sequence[RegionResult], score: GlobalScore
                       ) -> GlobalScore | None:
    """The *reduced* verdict of a clear one-sided putamen loss under a normal CNN call,
    or None where the rule does not apply (module docstring)."""
    if score.method != "cnn" or score.reduced:
        return None
    clear = both_measures_one_sided(regions)
    if not clear:
        return None
    found = "; ".join(
        f"{_name(r)}: VOI SBR ratio {clear[r.region][1]:.2f}, learnt estimator "
        f"{clear[r.region][0]:.2f}, CNN level "
        f"{int(r.level_cnn) if r.level_cnn is not None else '-'}"
        for r in regions if r.region in clear)
    return GlobalScore(
        reduced=True, inconclusive=False, method=ASYMMETRY_METHOD,
        rule=(f"reduced: one-sided putamen loss seen by both putamen measures, calibration-"
              f"free ({found}; both below {ASYMMETRY_REDUCED_RATIO:.2f} x the other putamen, "
              f"the VOI below {CLEAR_ASYMMETRY_RATIO:.3f} or the estimator below "
              f"{X_CLEAR_RATIO:.2f}); the CNN called the scan normal. CNN rule: {score.rule}"))


def cnn_side(levels_cnn: Sequence[int], sbr: Sequence[float], levels_sbr: Sequence[int]
             ) -> tuple[int, float] | None:
    """The putamen of a strong one-sided CNN call that the scan's asymmetry points to.

    Arguments in the order of :data:`~service.pipelines.dat_spect.result.REGIONS`
    (caudate left, caudate right, putamen left, putamen right). Returns the
    putamen's index and its SBR ratio to the other putamen where the rule of
    :func:`cnn_side_override` holds for the levels, else None.
    """
    if any(level >= REDUCED_FROM for level in levels_sbr):
        return None
    at_two = [k for k, level in enumerate(levels_cnn) if level >= REDUCED_FROM]
    if not at_two or len({k % 2 for k in at_two}) != 1:
        return None
    putamen, other = (2, 3) if at_two[0] % 2 == 0 else (3, 2)
    if levels_cnn[putamen] < SIDE_CNN_FROM or sbr[other] <= 0:
        return None
    ratio = sbr[putamen] / sbr[other]
    return (putamen, ratio) if ratio < SIDE_AGREES_RATIO else None


def _cnn_side_of(regions: Sequence[RegionResult]) -> tuple[RegionResult, float] | None:
    """:func:`cnn_side` of the regions: the putamen and its ratio, or None."""
    by_region = {r.region: r for r in regions}
    if set(by_region) != set(REGIONS) or any(r.level_cnn is None for r in regions):
        return None
    found = cnn_side([int(by_region[g].level_cnn or 0) for g in REGIONS],
                     [by_region[g].sbr for g in REGIONS],
                     [int(by_region[g].level_sbr) for g in REGIONS])
    return None if found is None else (by_region[REGIONS[found[0]]], found[1])


def cnn_side_override(regions: Sequence[RegionResult], score: GlobalScore
                      ) -> GlobalScore | None:
    """The *reduced* verdict of a strong one-sided CNN call that the scan's own putamen
    asymmetry points to while the SBR thresholds see nothing, or None (module docstring)."""
    if score.method != "cnn" or not score.reduced or score.inconclusive:
        return None
    found = _cnn_side_of(regions)
    if found is None:
        return None
    putamen = found[0]
    return GlobalScore(
        reduced=True, inconclusive=False, method=SIDE_METHOD,
        rule=(f"reduced: the CNN rates {_name(putamen)} level {int(putamen.level_cnn or 0)} "
              f"and the other side 0-1; its SBR is {found[1]:.2f} x the other putamen's "
              f"(below {SIDE_AGREES_RATIO:.2f}: the scan's own asymmetry points the same way), "
              f"while the SBR thresholds find no region at level 2. CNN rule: {score.rule}"))


def consistent_score(regions: Sequence[RegionResult], score: GlobalScore,
                     asymmetry_decides: bool = True) -> GlobalScore:
    """``score`` made inconclusive, with the reason first in its rule, where it
    contradicts the regional table (rule in the module docstring); with
    ``asymmetry_decides`` a normal CNN call above a clear one-sided putamen
    loss becomes *reduced* (:func:`one_sided_override`) and a strong one-sided
    CNN call the putamen ratio points to stays *reduced* (:func:`cnn_side_override`)."""
    if asymmetry_decides:
        override = one_sided_override(regions, score) or cnn_side_override(regions, score)
        if override is not None:
            return override
    reasons = []
    methods = method_disagreements(regions)
    if methods and methods_call_differently(regions):
        reasons.append(f"CNN and SBR thresholds disagree on {', '.join(methods)}")
    elif methods:
        call = "reduced" if score.reduced else "normal"
        score = replace(score, rule=f"CNN and SBR thresholds differ on {', '.join(methods)}; "
                                    f"both call the scan {call}. Rule: {score.rule}")
    table = table_disagreements(regions, score.reduced)
    if table:
        call = "reduced" if score.reduced else "normal"
        reasons.append(f"the {score.method.upper()} call ({call}) disagrees with the "
                       f"regional levels ({', '.join(table)})")
    if not reasons:
        return score
    return replace(score, inconclusive=True,
                   rule=f"inconclusive: {'; '.join(reasons)}. Rule: {score.rule}")


def apply_verdict(regions: Sequence[RegionResult], score: GlobalScore,
                  asymmetry_decides: bool = True
                  ) -> tuple[tuple[RegionResult, ...], GlobalScore]:
    """The regions and :func:`consistent_score`; where the one-sided override
    decided, the overridden putamen reports its SBR level, at least 2
    (``by_asymmetry``), so the table's reported level shows what the verdict rests on."""
    final = consistent_score(regions, score, asymmetry_decides)
    if final.method != ASYMMETRY_METHOD:
        return tuple(regions), final
    clear = both_measures_one_sided(regions)
    return tuple(replace(r, by_asymmetry=True) if r.region in clear else r
                 for r in regions), final


def with_calibration(score: GlobalScore, calibration: CalibrationInfo) -> GlobalScore:
    """An SBR-path verdict on simulated thresholds says it is indicative (rule text)."""
    if score.method != "sbr" or calibration.thresholds != SIMULATED:
        return score
    return replace(score, rule=f"{score.rule}; {INDICATIVE_RULE}")


def contradiction(regions: Sequence[RegionResult], score: GlobalScore) -> str:
    """Short headline text when the verdict and the table disagree, else ``""``."""
    if (score.method == ASYMMETRY_METHOD and score.reduced
            and any(r.by_asymmetry for r in regions)):
        return ""  # the putamen is reported at level 2+, the rule says why
    if score.method == SIDE_METHOD and score.reduced and _cnn_side_of(regions):
        return ""  # the reported (CNN) level is 3+, the rule says why the SBR column is not
    if methods_call_differently(regions):
        return "CNN and SBR disagree"
    levels = [max(r.level, r.level_sbr) for r in regions]
    if not score.reduced and any(level >= REDUCED_FROM for level in levels):
        return "a region is at level 2+"
    if score.reduced and not any(r.level >= REDUCED_FROM for r in regions):
        return "no region at level 2+"
    return ""
