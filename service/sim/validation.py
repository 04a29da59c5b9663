"""Validation of the simulator: pictures per profile, SBR tables, effect of AC and SC.

SBR here is the simple truth-ROI analysis of :func:`service.sim.scan.measure_sbr`:
the AAL ROIs mapped into scan space through the *known* simulated anatomy
transform (no registration), occipital reference. Used by
``dopanode benchmark validate`` to write ``docs/img/sim_*.png`` and print the
tables of ``docs/simulator.md``.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from service.sim.disease import DiseaseState
from service.sim.profiles import PROFILES, CameraProfile

#: Display rows of the example panel: (class, severity label).
PANEL_CLASSES = ("normal", "borderline", "pd", "atypical")


def _states(seed: int) -> list[DiseaseState]:
    from service.sim.disease import sample_state

    rng = np.random.default_rng(seed)
    out = []
    for cls in PANEL_CLASSES:
        while True:
            s = sample_state(rng, cls, age_years=62, sex="M")
            if cls not in ("pd", "atypical") or 0.45 < s.severity < 0.75:
                out.append(s)
                break
    return out


def render_profiles(out_png: Path, seed: int = 2026) -> None:
    """Axial slabs through the striatum: rows = classes, columns = profiles (same subject)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from service.sim.anatomy import sample_transform
    from service.sim.disease import sample_background
    from service.sim.scan import AnatomyScanner

    rng = np.random.default_rng(seed)
    transform, background = sample_transform(rng, max_rotation_deg=3.0), sample_background(rng)
    states = _states(seed)
    fig, axes = plt.subplots(
        len(states), len(PROFILES), figsize=(3.2 * len(PROFILES), 3.3 * len(states))
    )
    for j, profile in enumerate(PROFILES.values()):
        scanner = AnatomyScanner(profile, transform, background)
        labels = scanner.phantom.labels_zyx
        z = int(np.argmax(np.isin(labels, [1, 2, 3, 4]).sum(axis=(1, 2))))
        for i, state in enumerate(states):
            vol = scanner.scan(state, np.random.default_rng(seed + i)).volume_zyx
            slab = vol[max(z - 1, 0) : z + 2].mean(axis=0)
            ax = axes[i, j]
            ax.imshow(slab[:, ::-1], cmap="gray_r", vmin=0, vmax=float(slab.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(
                    f"{profile.name}\n{profile.voxel_mm} mm, {profile.reconstruction_description}",
                    fontsize=7,
                )
            if j == 0:
                ax.set_ylabel(f"{state.disease_class} (sev {state.severity:.2f})", fontsize=8)
    fig.suptitle(
        "Simulated DaTscans, same subject, axial slab through the striatum "
        "(radiological view: patient's right on the left)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def load_manifest(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def sbr_groups(rows: list[dict[str, str]]) -> dict[str, dict[str, np.ndarray]]:
    """Per profile: normal caudate, normal putamen, PD putamen of the more affected side."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for profile in sorted({r["profile"] for r in rows}):
        mine = [r for r in rows if r["profile"] == profile]
        normal = [r for r in mine if r["disease_class"] == "normal"]
        pd = [r for r in mine if r["disease_class"] == "pd"]
        out[profile] = {
            "normal caudate": np.array(
                [float(r[f"roi_sbr_caudate_{s}"]) for r in normal for s in ("left", "right")]
            ),
            "normal putamen": np.array(
                [float(r[f"roi_sbr_putamen_{s}"]) for r in normal for s in ("left", "right")]
            ),
            "PD putamen (worse side)": np.array(
                [float(r[f"roi_sbr_putamen_{r['more_affected_side']}"]) for r in pd]
            ),
        }
    return out


def sbr_table(groups: dict[str, dict[str, np.ndarray]]) -> str:
    """Markdown table: mean +- SD (n) per profile and group."""
    names = list(next(iter(groups.values())))
    lines = ["| profile | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for profile, g in groups.items():
        cells = [
            f"{v.mean():.2f} ± {v.std():.2f} (n={v.size})" if v.size else "-" for v in g.values()
        ]
        lines.append(f"| {profile} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sbr_figure(groups: dict[str, dict[str, np.ndarray]], out_png: Path) -> None:
    """Box plots of the groups per profile with the literature ranges shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(next(iter(groups.values())))
    literature = {
        "normal caudate": (3.0, 3.7),
        "normal putamen": (1.6, 2.0),
        "PD putamen (worse side)": (0.8, 1.1),
    }
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4))
    for ax, name in zip(axes, names, strict=True):
        data = [g[name] for g in groups.values()]
        ax.boxplot(data, tick_labels=[p.split("_")[0] for p in groups], showfliers=False)
        lo, hi = literature[name]
        ax.axhspan(lo, hi, color="tab:green", alpha=0.2, label="literature")
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("SBR (occipital reference)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


CORRECTION_VARIANTS: dict[str, dict[str, dict[str, object]]] = {
    "siemens_lehr_osem_ctac": {
        "OSEM, no AC, no SC": {"attenuation_correction": "none", "scatter_correction": False},
        "OSEM + CT-AC": {"attenuation_correction": "ct", "scatter_correction": False},
        "OSEM + CT-AC + SC": {"attenuation_correction": "ct", "scatter_correction": True},
    },
    "ge_lehr_fbp_chang": {
        "FBP, no AC": {"attenuation_correction": "none"},
        "FBP + Chang": {"attenuation_correction": "chang"},
        "FBP + Chang + SC": {"attenuation_correction": "chang", "scatter_correction": True},
    },
}


def correction_effect(profile_name: str, n_subjects: int, seed: int) -> dict[str, dict[str, float]]:
    """Mean normal-subject SBR per reconstruction variant (same subjects and noise)."""
    from service.sim.anatomy import sample_transform
    from service.sim.disease import sample_background, sample_state
    from service.sim.scan import AnatomyScanner, measure_sbr

    base: CameraProfile = PROFILES[profile_name]
    results: dict[str, list[dict[str, float]]] = {v: [] for v in CORRECTION_VARIANTS[profile_name]}
    rng = np.random.default_rng(seed)
    for _ in range(n_subjects):
        transform, background = sample_transform(rng), sample_background(rng)
        state = sample_state(rng, "normal", age_years=60, sex="M")
        noise_seed = int(rng.integers(2**32))
        for variant, changes in CORRECTION_VARIANTS[profile_name].items():
            variant_profile = replace(base, **changes)  # type: ignore[arg-type]
            scanner = AnatomyScanner(variant_profile, transform, background)
            scan = scanner.scan(state, np.random.default_rng(noise_seed))
            results[variant].append(measure_sbr(scan.volume_zyx, scan.labels_zyx))
    return {
        v: {
            s: float(np.mean([r[f"{s}_{side}"] for r in rs for side in ("left", "right")]))
            for s in ("caudate", "putamen")
        }
        for v, rs in results.items()
    }


def correction_table(effects: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| profile | reconstruction | caudate SBR | putamen SBR | putamen vs no AC |",
        "|---|---|---|---|---|",
    ]
    for profile, variants in effects.items():
        first = next(iter(variants.values()))["putamen"]
        for name, v in variants.items():
            lines.append(
                f"| {profile} | {name} | {v['caudate']:.2f} | {v['putamen']:.2f} | "
                f"{100 * (v['putamen'] / first - 1):+.0f} % |"
            )
    return "\n".join(lines)
