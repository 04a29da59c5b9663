"""Random draws of one anatomy group: classic (benchmark version 1) or broad.

Everything a group of :data:`service.sim.benchmark.SCANS_PER_ANATOMY` scans
needs is drawn up front from ``numpy.random.default_rng([seed, group])``.
The *classic* plan makes exactly the draws of benchmark version 1, in the
same order, so its sites keep their pixel bytes. The *broad* plan
(``appearance="broad"`` and/or ``profile="broad"``) draws one age and sex per
group (the anatomy is one person: atrophy follows the age), an
:class:`~service.sim.appearance.Appearance` and, for the broad profile
family, a camera protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.sim.anatomy import ScanGrid, SubjectPhantom, SubjectTransform
    from service.sim.appearance import Appearance
    from service.sim.disease import Background, DiseaseState
    from service.sim.profiles import CameraProfile
    from service.sim.scan import AnatomyScanner
    from service.sim.sites import SiteSpec

APPEARANCES: tuple[str, ...] = ("classic", "broad")


@dataclass(frozen=True, eq=False)
class GroupPlan:
    """The draws of one anatomy group (see module docstring)."""

    profile: CameraProfile
    transform: SubjectTransform
    background: Background | None
    appearance: Appearance | None
    indices: range
    states: list[DiseaseState]
    variants: list[str]
    activities: list[float]
    noise_seeds: list[int]


def plan_group(site: SiteSpec, group: int, n_scans: int) -> GroupPlan:
    """Draw group ``group`` of ``site`` (``n_scans`` scans per anatomy)."""
    from service.sim.anatomy import sample_transform
    from service.sim.appearance import sample_appearance
    from service.sim.broad_profiles import BROAD_PROFILE, sample_broad_profile
    from service.sim.disease import sample_background, sample_state
    from service.sim.profiles import get_profile

    if site.appearance not in APPEARANCES:
        raise ValueError(f"unknown appearance {site.appearance!r}; known: {', '.join(APPEARANCES)}")
    rng = np.random.default_rng([site.seed, group])
    indices = range(group * n_scans, min((group + 1) * n_scans, site.n_studies))
    transform = sample_transform(rng)
    background: Background | None = None
    appearance: Appearance | None = None
    if site.appearance == "classic" and site.profile != BROAD_PROFILE:
        background = sample_background(rng)
        profile = get_profile(site.profile)
        states = [sample_state(rng) for _ in indices]
    else:
        age = int(np.clip(round(rng.normal(62.0, 12.0)), 25, 90))
        sex = "F" if rng.random() < 0.45 else "M"
        if site.appearance == "broad":
            appearance = sample_appearance(rng, age)
        else:
            background = sample_background(rng)
        profile = (sample_broad_profile(rng) if site.profile == BROAD_PROFILE
                   else get_profile(site.profile))
        young = appearance.br_young() if appearance else None
        states = [sample_state(rng, age_years=age, sex=sex, br_young=young) for _ in indices]
    p = np.array(list(site.variants.values()), float)
    variants = [str(rng.choice(list(site.variants), p=p / p.sum())) for _ in indices]
    activities = [float(rng.uniform(150.0, 190.0)) for _ in indices]
    noise_seeds = [int(rng.integers(2**63)) for _ in indices]
    return GroupPlan(profile, transform, background, appearance, indices, states, variants,
                     activities, noise_seeds)


def plan_phantom(plan: GroupPlan, grid: ScanGrid) -> SubjectPhantom:
    """The group's phantom on ``grid`` (classic or broad)."""
    from service.sim.anatomy import build_phantom
    from service.sim.appearance import build_broad_phantom

    if plan.appearance is None:
        return build_phantom(plan.transform, grid)
    return build_broad_phantom(plan.transform, plan.appearance, grid)


def plan_scanner(plan: GroupPlan) -> AnatomyScanner:
    """Project the group's anatomy once under its profile."""
    from service.sim.scan import AnatomyScanner, support_grid

    grid = support_grid(plan.profile)
    levels = plan.appearance if plan.appearance is not None else plan.background
    assert levels is not None  # a plan has one or the other
    phantom = plan_phantom(plan, grid) if plan.appearance is not None else None
    return AnatomyScanner(plan.profile, plan.transform, levels, phantom)


def plan_fields(plan: GroupPlan) -> dict[str, object]:
    """Manifest columns of the group's broad draws (empty for a classic plan)."""
    from service.sim.broad_profiles import BROAD_PROFILE, profile_fields

    out: dict[str, object] = {}
    if plan.appearance is not None:
        out.update(plan.appearance.fields())
    if plan.profile.name == BROAD_PROFILE:
        out.update(profile_fields(plan.profile))
    return out
