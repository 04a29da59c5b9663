"""The simulated DaT benchmark's sites: what each data set is (camera, size, seed, role).

:data:`SITES` is benchmark version 1, :data:`SITES_V2` version 2,
:data:`BENCHMARKS` both by version; :func:`profile_site` makes an ad-hoc site
for ``dopanode simulate``. Generating the studies of a site is
:mod:`service.sim.benchmark`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SiteSpec:
    """One simulated site (data set).

    Attributes
    ----------
    name : str
        Data set name; also the study-folder prefix.
    profile : str
        Camera profile name (:data:`service.sim.profiles.PROFILES`).
    n_studies : int
    seed : int
    role : str
        ``"train_test"`` (in-distribution) or ``"unseen"``.
    variants : dict of str to float
        Encoding-variant mix (:class:`service.sim.nm_writer.EncodingVariant` values).
    appearance : str
        ``"classic"`` (one brain, benchmark version 1) or ``"broad"`` (domain
        randomisation, :mod:`service.sim.appearance`). ``profile`` may be
        ``"broad"`` (a random protocol per group, :mod:`service.sim.broad_profiles`).
    """

    name: str
    profile: str
    n_studies: int
    seed: int
    role: str
    variants: dict[str, float]
    appearance: str = "classic"


SITES: dict[str, SiteSpec] = {
    s.name: s
    for s in (
        SiteSpec(
            "site_a",
            "siemens_lehr_osem_ctac",
            550,
            1001,
            "train_test",
            {"multiframe": 0.5, "per_slice": 0.2, "rescaled": 0.1, "jpegls": 0.1, "deflate": 0.1},
        ),
        SiteSpec(
            "site_b",
            "ge_lehr_fbp_chang",
            550,
            1002,
            "train_test",
            {"ge_negative_spacing": 0.5, "per_slice": 0.2, "z_flipped": 0.2, "rle": 0.1},
        ),
        SiteSpec(
            "site_c",
            "legacy_legp_lowcount",
            550,
            1003,
            "train_test",
            {"per_slice": 0.5, "multiframe": 0.3, "rescaled": 0.2},
        ),
        SiteSpec(
            "site_d_unseen",
            "fanbeam_hr_osem",
            350,
            1004,
            "unseen",
            {"multiframe": 0.4, "jpeg2000": 0.3, "z_flipped": 0.3},
        ),
    )
}


#: Version 2 (issue 10): the same four-site design and unseen camera, every
#: site with the broad appearance, plus a training site drawn from the broad
#: camera family. New seeds; version 1 (:data:`SITES`) stays reproducible.
SITES_V2: dict[str, SiteSpec] = {
    s.name: s
    for s in (
        replace(SITES["site_a"], seed=2001, appearance="broad"),
        replace(SITES["site_b"], seed=2002, appearance="broad"),
        replace(SITES["site_c"], seed=2003, appearance="broad"),
        replace(SITES["site_d_unseen"], seed=2004, appearance="broad"),
        SiteSpec(
            "site_e_broad",
            "broad",
            1000,
            2005,
            "train_test",
            {"multiframe": 0.4, "per_slice": 0.2, "ge_negative_spacing": 0.2, "z_flipped": 0.2},
            "broad",
        ),
    )
}
#: Benchmark definitions by version; ``dopanode benchmark generate`` makes the latest.
BENCHMARKS: dict[int, dict[str, SiteSpec]] = {1: SITES, 2: SITES_V2}
BENCHMARK_VERSION = 2


def profile_site(
    profile: str, n_studies: int, seed: int, variant: str | None, appearance: str = "classic"
) -> SiteSpec:
    """An ad-hoc site for ``dopanode simulate`` (one profile, one or mixed variants)."""
    from service.sim.nm_writer import EncodingVariant

    mix = (
        {variant: 1.0}
        if variant
        else {v.value: 1.0 / len(EncodingVariant) for v in EncodingVariant}
    )
    return SiteSpec(profile, profile, n_studies, seed, "custom", mix, appearance)
