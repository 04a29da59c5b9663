"""Pictures of the broad simulator (``dopanode benchmark montage``, docs/simulator.md).

* :func:`render_sources`: the striatum of each anatomical source on the same
  axial and coronal atlas slices (the analysis' AAL outline in red);
* :func:`render_appearance`: one subject's noise-free activity at three ages
  (atrophy, ventricles, cortical pattern, extracerebral uptake);
* :func:`render_broad`: ``n`` subjects of a broad site (broad appearance and
  camera family), each as the noise-free activity of its phantom and the
  reconstructed scan, axial slab through the striatum.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.imaging.atlas import load_atlas

#: Site of the montage draws (never a benchmark site; its own seed).
_MONTAGE_SITE = "montage"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render_sources(out_png: Path) -> None:
    """Axial (MNI z = +4 mm) and coronal (y = +8 mm) striatum of each source."""
    from service.sim.striatal_sources import SOURCES, label_volumes_ml, striatal_labels

    plt = _plt()
    atlas = load_atlas()
    z = int(round((4.0 - atlas.origin_lps_mm[2]) / atlas.spacing_mm[2]))
    y = int(np.argmin(np.abs(atlas.mni_y_mm() - 8.0)))
    aal = striatal_labels("aal") > 0
    fig, axes = plt.subplots(2, len(SOURCES), figsize=(3.0 * len(SOURCES), 5.6))
    for j, source in enumerate(SOURCES):
        labels = striatal_labels(source)
        vols = label_volumes_ml(labels)
        for i, (cut, aal_cut, bg) in enumerate(
            ((labels[z], aal[z], atlas.gm_zyx[z]),
             (labels[:, y][::-1], aal[:, y][::-1], atlas.gm_zyx[:, y][::-1]))
        ):
            ax = axes[i, j]
            view = (slice(32, 90), slice(22, 70)) if i == 0 else (slice(25, 70), slice(22, 70))
            rows = slice(None, None, -1) if i == 0 else slice(None)  # anterior / superior up
            ax.imshow(bg[view][rows], cmap="gray", vmin=0, vmax=1.5)
            shown = np.ma.masked_equal(cut[view][rows], 0)
            ax.imshow(shown, cmap="viridis", vmin=1, vmax=4, alpha=0.8)
            ax.contour(aal_cut[view][rows], levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                c = vols["caudate_left"] + vols["caudate_right"]
                p = vols["putamen_left"] + vols["putamen_right"]
                ax.set_title(f"{source}\ncaudate {c:.1f} ml, putamen {p:.1f} ml", fontsize=8)
    axes[0, 0].set_ylabel("axial z = +4 mm", fontsize=8)
    axes[1, 0].set_ylabel("coronal y = +8 mm", fontsize=8)
    fig.suptitle("Striatal sources (colour) and the AAL outline the analysis measures with "
                 "(red); radiological view (patient's right on the left)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)


def render_appearance(out_png: Path, seed: int, ages: tuple[int, ...] = (35, 60, 85)) -> None:
    """Noise-free activity of one subject (same draws) at ``ages``; three axial levels."""
    from dataclasses import replace

    from service.sim.anatomy import SubjectTransform, atlas_centre_lps_mm
    from service.sim.appearance import build_broad_phantom, sample_appearance
    from service.sim.disease import sample_state
    from service.sim.scan import ScanGrid

    plt = _plt()
    identity = SubjectTransform(np.ones(3), np.zeros(3), np.zeros(3), np.zeros((3, 2, 2, 2)))
    # the scan centre maps to the atlas brain centroid: pick rows by MNI z
    grid = ScanGrid((76, 114, 92), 2.0, np.zeros(3))
    centroid_z = float(atlas_centre_lps_mm(load_atlas())[2])
    levels_mm = (20.0, 4.0, -40.0, -56.0)
    fig, axes = plt.subplots(len(levels_mm), len(ages),
                             figsize=(3.0 * len(ages), 3.3 * len(levels_mm)))
    for j, age in enumerate(ages):
        app = replace(sample_appearance(np.random.default_rng(seed), age),
                      striatal_source="aal", cortical_contrast=0.25, salivary=1.5, nasal=1.5)
        state = sample_state(np.random.default_rng(seed), "normal", age_years=age, sex="M",
                             br_young=app.br_young())
        ph = build_broad_phantom(identity, app, grid)
        amps = np.concatenate([state.striatal_amplitudes(), app.amplitudes()])
        act = np.tensordot(amps, ph.components_czyx, axes=1)
        for i, z_mm in enumerate(levels_mm):
            z = int(round((z_mm - centroid_z - grid.origin_lps_mm[2]) / grid.voxel_mm))
            ax = axes[i, j]
            ax.imshow(act[z], cmap="gray_r", vmin=0, vmax=3.0)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"age {age}: ventricles x{app.ventricle_factor:.1f}, "
                             f"brain {app.brain_scale ** 3:.0%}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"MNI z = {z_mm:+.0f} mm", fontsize=8)
    fig.suptitle("One subject's noise-free activity at three ages (striatum clipped at 3x "
                 "grey matter); lower rows: nasal mucosa, parotids, face", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=72)
    plt.close(fig)


def render_broad(out_png: Path, n: int, seed: int) -> list[dict[str, object]]:
    """Phantom and scan of ``n`` broad subjects; returns one row of draws per subject."""
    from service.sim.benchmark import SCANS_PER_ANATOMY
    from service.sim.sites import SiteSpec

    plt = _plt()
    site = SiteSpec(_MONTAGE_SITE, "broad", n * SCANS_PER_ANATOMY, seed, "custom",
                    {"multiframe": 1.0}, "broad")
    cols = 4
    rows_n = -(-n // cols)
    fig, axes = plt.subplots(2 * rows_n, cols, figsize=(3.1 * cols, 2.9 * 2 * rows_n))
    axes = np.atleast_2d(axes)
    out = []
    for g in range(n):
        truth, scan, row, titles = _subject(site, g)
        z = int(np.argmax(np.isin(scan.labels_zyx, [1, 2, 3, 4]).sum(axis=(1, 2))))
        r, c = 2 * (g // cols), g % cols
        for k, vol in enumerate((truth, scan.volume_zyx)):
            slab = vol[max(z - 1, 0): z + 2].mean(axis=0)
            ax = axes[r + k, c]
            # rows run to posterior: anterior up as drawn; columns to patient left
            ax.imshow(slab, cmap="gray_r", vmin=0, vmax=float(slab.max()))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(titles[k], fontsize=7)
        out.append(row)
    for g in range(n, rows_n * cols):
        axes[2 * (g // cols), g % cols].set_visible(False)
        axes[2 * (g // cols) + 1, g % cols].set_visible(False)
    fig.suptitle("Broad simulator: per subject the noise-free activity (upper) and the "
                 "reconstructed scan (lower), axial slab through the striatum, "
                 "radiological view", fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=72)
    plt.close(fig)
    return out


def _subject(site: Any, g: int) -> tuple[np.ndarray, Any, dict[str, object], tuple[str, str]]:
    """Noise-free activity, scan, row of draws and panel titles of group ``g``'s first scan."""
    from service.sim.benchmark import SCANS_PER_ANATOMY
    from service.sim.broad_profiles import profile_fields
    from service.sim.groups import plan_group, plan_scanner
    from service.sim.scan import measure_sbr
    from service.sim.striatal_sources import region_binding

    plan = plan_group(site, g, SCANS_PER_ANATOMY)
    a = plan.appearance
    assert a is not None  # a broad site
    scanner = plan_scanner(plan)
    state = plan.states[0]
    scan = scanner.scan(state, np.random.default_rng(plan.noise_seeds[0]))
    amps = np.concatenate([state.striatal_amplitudes(), a.amplitudes()])
    truth = np.tensordot(amps, scanner.phantom.components_czyx, axes=1)
    cam = profile_fields(plan.profile)
    titles = (
        f"{a.striatal_source}, {a.age_years} y, vent x{a.ventricle_factor:.1f}\n"
        f"{state.disease_class} ({_reference(state, a.striatal_source)})",
        f"{cam['cam_recon_family']} {plan.profile.matrix}/{plan.profile.voxel_mm} mm\n"
        f"filter {cam['cam_filter_fwhm_mm']} mm, {scan.counts_total / 1e6:.1f} Mc",
    )
    b = region_binding(state.normal_binding(), a.striatal_source)  # without disease
    row = {"subject": g, "source": a.striatal_source, "age": a.age_years,
           "ventricles_x": round(a.ventricle_factor, 2), "brain_scale": round(a.brain_scale, 3),
           "normal_c_p": round((b["caudate_left"] + b["caudate_right"])
                               / (b["putamen_left"] + b["putamen_right"]), 2),
           "class": state.disease_class, **cam, "counts_m": round(scan.counts_total / 1e6, 2),
           **{f"sbr_{k}": round(v, 2) for k, v in measure_sbr(scan.volume_zyx,
                                                              scan.labels_zyx).items()}}
    return truth, scan, row, titles


def _reference(state: Any, source: str) -> str:
    from service.sim.reference import binary_from_levels, region_levels
    from service.sim.striatal_sources import region_binding

    true = region_binding(state.binding, source)
    normal = region_binding(state.normal_binding(), source)
    return binary_from_levels(region_levels(true, normal))


def draws_table(rows: list[dict[str, object]]) -> str:
    """Markdown table of :func:`render_broad`'s rows."""
    keys = ["subject", "source", "age", "ventricles_x", "brain_scale", "normal_c_p", "class",
            "cam_recon_family", "cam_matrix", "cam_voxel_mm", "cam_filter_fwhm_mm", "counts_m",
            "sbr_caudate_left", "sbr_putamen_left", "sbr_caudate_right", "sbr_putamen_right"]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
