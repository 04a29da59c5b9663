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
  regions named.

The binary call itself (``reduced``) is left as the method made it; only the
inconclusive flag and the rule text change. A result whose methods agree is
returned unchanged. A verdict of the SBR path (no CNN) on the shipped
simulated thresholds says in its rule that it is indicative only
(:func:`with_calibration`; the picture headline says INDICATIVE).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from service.pipelines.dat_spect.provenance import SIMULATED, CalibrationInfo
from service.pipelines.dat_spect.result import GlobalScore, Level, RegionResult

#: The level from which a region counts as reduced (moderate reduction).
REDUCED_FROM = Level.MODERATE_REDUCTION
#: Appended to the rule of an SBR-threshold verdict on the shipped simulated thresholds.
INDICATIVE_RULE = "indicative only: SBR thresholds from the shipped SIMULATED calibration"


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


def consistent_score(regions: Sequence[RegionResult], score: GlobalScore) -> GlobalScore:
    """``score`` made inconclusive, with the reason first in its rule, where it
    contradicts the regional table (rule in the module docstring)."""
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


def with_calibration(score: GlobalScore, calibration: CalibrationInfo) -> GlobalScore:
    """An SBR-path verdict on simulated thresholds says it is indicative (rule text)."""
    if score.method != "sbr" or calibration.thresholds != SIMULATED:
        return score
    return replace(score, rule=f"{score.rule}; {INDICATIVE_RULE}")


def contradiction(regions: Sequence[RegionResult], score: GlobalScore) -> str:
    """Short headline text when the verdict and the table disagree, else ``""``."""
    if methods_call_differently(regions):
        return "CNN and SBR disagree"
    levels = [max(r.level, r.level_sbr) for r in regions]
    if not score.reduced and any(level >= REDUCED_FROM for level in levels):
        return "a region is at level 2+"
    if score.reduced and not any(r.level >= REDUCED_FROM for r in regions):
        return "no region at level 2+"
    return ""
