"""Which series of a study one FDOPA job reads, and when it may start (routing, no pixels).

The node routes each completed series on its own (:mod:`service.scheduler`);
a study's static and dynamic series complete at different times. Every
FDOPA series of a study therefore answers with the **same study-level plan**,
so that they converge on one job:

* roles: ``"primary"`` is the chosen static series
  (:func:`~service.pipelines.fdopa_pet.gate.select_series`: attenuation-
  corrected, lowest Series Number), or the chosen dynamic series when the
  study has no static one; ``"dynamic"`` is the chosen dynamic series beside
  a static primary; ``"flair"`` is a FLAIR MR series of the study
  (:func:`.flair_gate.classify_mr_series`), the input of the MR-guided route;
* the job key hashes the instances of all inputs and jobs are keyed by their
  primary series: the same plan reached from either series makes the job
  once (the second ``create`` is a no-op), and a later plan with the same
  primary (a dynamic series that arrived after the static one was analysed),
  or whose inputs hold the earlier job's primary, **supersedes** the earlier
  job; its SR names the earlier outputs as predecessors, so the PACS ends
  with one current result;
* waits, each bounded (:class:`WaitRules`):

  - the primary must be *ready*: complete, and holding the instances its
    header announces, or ``companion_wait_s`` past its completion (then the
    analysis refuses it as incomplete, with the reason);
  - a dynamic companion that is announced (received in part, or complete
    with fewer instances than announced) is waited for until
    ``companion_wait_s`` after the routed series completed; after that the
    static is analysed without curves and the note says why;
  - a dynamic series with no static series in the study waits
    ``static_wait_s`` after it completed for one to arrive, then its frames
    give the static image;
  - the FLAIR, once the PET plan is ready (:func:`with_flair`): a FLAIR that
    is complete is taken (the lowest Series Number of the complete ones). The
    node waits for one only when it has a reason to expect one: a FLAIR
    series of the study is **announced** (received in part, or complete with
    fewer instances than its header announces), or the site says its
    FDOPA studies come with a FLAIR (``expect_flair``). Then it waits until
    ``flair_wait_s`` after the routed PET series completed, and after that
    makes the job without the FLAIR (PET-only route) and the note says why.
    Without either, nothing is waited for. An MR series is recognised as a
    FLAIR from its first instance's header, so a FLAIR still arriving counts.

A static series that arrives after a dynamic-only job was made makes the
static + dynamic job, which supersedes the dynamic-only one: a new job
supersedes the jobs whose primary is one of its inputs
(:func:`service.store.jobs.create`), and its SR names their sent outputs as
predecessors.

A FLAIR routed on its own (:func:`flair_plan`; the pipeline takes FLAIR MR
series too) answers with the plan of its study's FDOPA PET, seen from the PET
(so the same plan as the PET's: one job), or with no job when the study
holds no FDOPA PET series (an MR-only study of the PACS). So a FLAIR that
arrives after the PET-only job was made makes the PET + FLAIR job, which
supersedes the PET-only one like a late static does, and its SR names the
sent PET-only outputs as predecessors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from service.dicom.header import InstanceHeader, expected_count
from service.errors import AnalysisError
from service.pipelines.base import PRIMARY, InputPlan, InputSeries, SeriesView
from service.pipelines.fdopa_pet.flair_gate import DEFAULT_KEYWORDS as FLAIR_KEYWORDS
from service.pipelines.fdopa_pet.flair_gate import classify_mr_series
from service.pipelines.fdopa_pet.gate import classify_series, select_series

#: The role of the dynamic series beside a static primary.
DYNAMIC = "dynamic"
#: The role of the FLAIR MR series (the MR-guided route).
FLAIR = "flair"


@dataclass(frozen=True)
class WaitRules:
    """How long routing waits (seconds; see the module docstring).

    Attributes
    ----------
    companion_wait_s, static_wait_s : float
    flair_wait_s : float
        After the routed PET series completed, how long an announced or
        expected FLAIR is waited for.
    expect_flair : bool
        The site's FDOPA studies come with a FLAIR: wait for one even when
        none has arrived yet.
    flair_keywords : tuple of str
        Fallback keywords of the FLAIR gate (:mod:`.flair_gate`).
    """

    companion_wait_s: float = 600.0
    static_wait_s: float = 120.0
    flair_wait_s: float = 600.0
    expect_flair: bool = False
    flair_keywords: tuple[str, ...] = FLAIR_KEYWORDS


def _int_or_none(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def announced_instances(header: Dataset) -> int | None:
    """Instances the series should hold, from one instance's header (None: unknown)."""
    series_type = header.get("SeriesType") or [""]
    kind = str(series_type if isinstance(series_type, str) else series_type[0]).upper()
    info = InstanceHeader(
        str(header.get("SOPClassUID", "")), _int_or_none(header.get("NumberOfFrames")),
        _int_or_none(header.get("NumberOfSlices")), _int_or_none(header.get("ImagesInAcquisition")),
        _int_or_none(header.get("NumberOfTimeSlices")), kind.strip(),
        _int_or_none(header.get("NumberOfTimeSlots")))
    return expected_count(info)


def is_whole(view: SeriesView) -> bool:
    """Complete, with at least the instances its header announces (when it announces any)."""
    announced = announced_instances(view.header)
    return view.is_complete and (announced is None or view.instance_count >= announced)


def _ready_at(view: SeriesView, rules: WaitRules, now: float) -> float | None:
    """When the series may be used: None now; else a time to ask again."""
    if is_whole(view):
        return None
    if not view.is_complete:  # still arriving: its own quiet time bounds the wait
        return now + max(rules.companion_wait_s, 1.0)
    since = view.completed_at if view.completed_at is not None else now
    until = since + rules.companion_wait_s
    return until if now < until else None


def _describe(view: SeriesView) -> str:
    announced = announced_instances(view.header)
    if not view.is_complete:
        return "still arriving"
    return f"{view.instance_count} of {announced} announced instances"


def study_plan(trigger: SeriesView, study: Sequence[SeriesView], now: float,
               fallback_keywords: Sequence[str] = (),
               rules: WaitRules | None = None) -> InputPlan:
    """The FDOPA job of ``trigger``'s study, or a wait (module docstring).

    Parameters
    ----------
    trigger : SeriesView
        The completed series being routed (the pipeline took it).
    study : sequence of SeriesView
        The study's other series so far (any state).
    now : float
        Seconds since the epoch.
    """
    rules = rules or WaitRules()
    plan = _pet_plan(trigger, study, now, fallback_keywords, rules)
    if plan.wait_until is not None:
        return plan
    return with_flair(plan, trigger, study, now, rules)


#: The note of a FLAIR routed in a study without FDOPA PET (the scheduler declines it).
NO_PET_FOR_FLAIR = "FLAIR series: no FDOPA PET series in the study"


def flair_plan(flair: SeriesView, study: Sequence[SeriesView], now: float,
               fallback_keywords: Sequence[str] = (),
               rules: WaitRules | None = None) -> InputPlan:
    """The plan of a FLAIR routed on its own (module docstring): the PET's plan, or no job.

    The study's FDOPA PET series (any state) become the trigger (the lowest
    Series Number), the FLAIR one of the study's series; without one the
    plan has no series and the note :data:`NO_PET_FOR_FLAIR`.
    """
    pets = sorted((v for v in study
                   if classify_series(v.header, fallback_keywords).role in ("static", "dynamic")),
                  key=lambda v: (_series_number(v), v.series_uid))
    if not pets:
        return InputPlan((), None, NO_PET_FOR_FLAIR)
    others = [v for v in study if v.series_uid != pets[0].series_uid]
    return study_plan(pets[0], [*others, flair], now, fallback_keywords, rules)


def _series_number(view: SeriesView) -> int:
    number = _int_or_none(view.header.get("SeriesNumber"))
    return number if number is not None else 1 << 30


def with_flair(plan: InputPlan, trigger: SeriesView, study: Sequence[SeriesView], now: float,
               rules: WaitRules) -> InputPlan:
    """``plan`` (ready) with the study's FLAIR, a bounded wait for one, or why not (docstring)."""
    flairs = sorted((v for v in study if v.modality.upper() == "MR"
                     and classify_mr_series(v.header, rules.flair_keywords).is_flair),
                    key=lambda v: (_series_number(v), v.series_uid))
    whole = [v for v in flairs if is_whole(v)]
    if whole:
        return InputPlan((*plan.series, InputSeries(FLAIR, whole[0].series_uid)), None,
                         plan.note)
    if flairs:
        waiting = f"the FLAIR series ({_describe(flairs[0])})"
        late = f"FLAIR series {_describe(flairs[0])} after {rules.flair_wait_s:g} s"
    elif rules.expect_flair:
        waiting = "a FLAIR series (expected at this site)"
        late = f"no FLAIR in the study after {rules.flair_wait_s:g} s"
    else:
        return plan
    since = trigger.completed_at if trigger.completed_at is not None else now
    until = since + rules.flair_wait_s
    if now < until:
        return InputPlan(plan.series, until, _joined(plan.note, f"waiting for {waiting}"))
    return InputPlan(plan.series, None, _joined(plan.note, f"PET-only route: {late}"))


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _pet_plan(trigger: SeriesView, study: Sequence[SeriesView], now: float,
              fallback_keywords: Sequence[str], rules: WaitRules) -> InputPlan:
    """The PET part of :func:`study_plan` (static, dynamic and their waits)."""
    views = {v.series_uid: v for v in (trigger, *study)}
    fdopa = [v.header for v in views.values()
             if classify_series(v.header, fallback_keywords).role in ("static", "dynamic")]
    try:
        selection = select_series(fdopa, fallback_keywords)
    except AnalysisError:  # the trigger itself was taken: only an odd header gets here
        return InputPlan.single(trigger.series_uid, "no analysable FDOPA series in the study")
    static = views.get(selection.static_series_uid or "")
    dynamic = views.get(selection.dynamic_series_uid or "")
    if static is None:
        assert dynamic is not None
        return _dynamic_only(trigger, dynamic, rules, now)
    wait = _ready_at(static, rules, now)
    if wait is not None:
        return InputPlan((InputSeries(PRIMARY, static.series_uid),), wait,
                         f"waiting for the static series ({_describe(static)})")
    if dynamic is None:
        return InputPlan.single(static.series_uid)
    plan = (InputSeries(PRIMARY, static.series_uid), InputSeries(DYNAMIC, dynamic.series_uid))
    if is_whole(dynamic):
        return InputPlan(plan)
    since = trigger.completed_at if trigger.completed_at is not None else now
    until = since + rules.companion_wait_s
    if now < until:
        return InputPlan(plan, until, f"waiting for the dynamic series ({_describe(dynamic)})")
    return InputPlan.single(
        static.series_uid, f"dynamic series {_describe(dynamic)} after "
        f"{rules.companion_wait_s:g} s: analysed without curves")


def _dynamic_only(trigger: SeriesView, dynamic: SeriesView, rules: WaitRules,
                  now: float) -> InputPlan:
    """A study with a dynamic series and no static one (yet)."""
    plan = (InputSeries(PRIMARY, dynamic.series_uid),)
    wait = _ready_at(dynamic, rules, now)
    if wait is not None:
        return InputPlan(plan, wait, f"waiting for the dynamic series ({_describe(dynamic)})")
    since = dynamic.completed_at if dynamic.completed_at is not None else now
    until = since + rules.static_wait_s
    note = (f"no static series after {rules.static_wait_s:g} s: static image summed from "
            "the dynamic frames")
    if now < until:
        return InputPlan(plan, until, note)
    return InputPlan(plan, None, note)
