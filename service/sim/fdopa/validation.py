"""Validation pictures of the FDOPA simulator (``dopanode fdopa validate``, docs/fdopa_simulator.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.sim.fdopa.kinetics import SCHEDULES
from service.sim.fdopa.literature import TTP_CUTOFF_MIN
from service.sim.fdopa.subject import SubjectSpec
from service.sim.fdopa.uptake import TUMOUR_ANCHORS, sample_subject_kinetics


def tac_figure(out_png: Path, seed: int, n_subjects: int = 40) -> None:
    """Median and 10-90 % band of the frame TACs (SUV, nancy30) per class, beside the targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sched = SCHEDULES["nancy30"]
    t_min = sched.mids_s / 60.0
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    curves: dict[str, list[np.ndarray]] = {}
    for cls in TUMOUR_ANCHORS:
        for _ in range(n_subjects):
            tacs = sample_subject_kinetics(rng, cls).frame_tacs(sched)
            curves.setdefault(cls, []).append(tacs["tumour"])
            curves.setdefault("striatum", []).append(tacs["striatum"])
            curves.setdefault("grey_matter", []).append(tacs["grey_matter"])
            curves.setdefault("white_matter", []).append(tacs["white_matter"])
    for name, arr in curves.items():
        a = np.array(arr)
        target = ax[0] if name in TUMOUR_ANCHORS else ax[1]
        (line,) = target.plot(t_min, np.median(a, axis=0), label=name)
        target.fill_between(t_min, *np.percentile(a, [10, 90], axis=0), alpha=0.15,
                            color=line.get_color())
    ax[0].axvline(TTP_CUTOFF_MIN, ls="--", c="k", lw=0.8)
    ax[0].text(TTP_CUTOFF_MIN + 0.3, 0.3, "TTP 5.4 min (Ginet 2020)", fontsize=8)
    ax[1].axhspan(2.0, 2.8, color="tab:green", alpha=0.08)
    ax[1].text(16, 2.85, "striatum SUV 2.6 +- 0.7 (Lapa 2014)", fontsize=8)
    ax[1].axhspan(1.0, 1.3, color="tab:blue", alpha=0.08)
    for a, title in zip(ax, ("tumour classes", "normal tissues"), strict=True):
        a.set_xlabel("time p.i. (min, mid-frame)")
        a.set_ylabel("SUV (decay corrected)")
        a.set_title(f"simulated FDOPA TACs, {title} (median, 10-90 %)")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def profile_figure(out_png: Path, seed: int) -> None:
    """One HGG subject: static AC per scanner profile (row 1); NAC, an early and the last
    dynamic frame, and the FLAIR (row 2); lesion outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from service.sim.fdopa.profiles import PET_PROFILES
    from service.sim.fdopa.scanner import PetScanner, sim_grid
    from service.sim.fdopa.subject import activity_bqml, build_maps, sample_subject
    from service.sim.fdopa.truth import static_truth

    rng = np.random.default_rng(seed)
    spec = sample_subject(rng, "hgg", False)
    while spec.location != "hemisphere" or not 0 < spec.lesions[0].centre_ras_mm[2] < 8:
        spec = sample_subject(rng, "hgg", False)  # a lesion at the striatum's level
    panels: list[tuple[str, np.ndarray, np.ndarray]] = []
    extra: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, profile in PET_PROFILES.items():
        sm = build_maps(spec, sim_grid(profile))
        act = activity_bqml(sm, spec, spec.kinetics.static_suv())
        _, masks = static_truth(sm, act, 1.0)
        scanner = PetScanner(profile, sm)
        vol, _ = scanner.frame(act, 600.0, 1200.0, np.random.default_rng(1))
        z = int(np.argwhere(masks["lesion"])[:, 0].mean())
        panels.append((f"{name}\nstatic 10-30 min AC", vol[z], masks["lesion"][z]))
        if name == "siemens_biograph_like":
            nac, _ = scanner.frame(act, 600.0, 1200.0, np.random.default_rng(2), False)
            extra = [("siemens NAC 10-30 min", nac[z], masks["lesion"][z])]
            sched = SCHEDULES["nancy30"]
            tac = spec.kinetics.frame_tacs(sched)
            for i in (9, 16):
                frame_act = activity_bqml(sm, spec, {k: float(v[i]) for k, v in tac.items()})
                frame, _ = scanner.frame(frame_act, float(sched.starts_s[i]),
                                         float(sched.durations_s[i]), np.random.default_rng(3))
                label = f"siemens dynamic frame {i + 1}\n{sched.starts_s[i] / 60:.2f} min, " \
                        f"{sched.durations_s[i]:.0f} s"
                extra.append((label, frame[z], masks["lesion"][z]))
    panels += extra
    panels.append(_flair_panel(spec, seed))
    fig, axes = plt.subplots(2, 4, figsize=(13, 7))
    for ax, (title, img, outline) in zip(axes.ravel(), panels, strict=True):
        cmap = "gray" if title.startswith("FLAIR") else "gray_r"
        ax.imshow(img, cmap=cmap, vmin=0, vmax=float(np.percentile(img, 99.8)))
        ax.contour(outline, levels=[0.5], colors="r", linewidths=0.7)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def _flair_panel(spec: SubjectSpec, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """FLAIR (2-D 3 T protocol) slice through the lesion, lesion outlined."""
    from service.sim.fdopa.flair import PROTOCOLS, synthesise_flair
    from service.sim.fdopa.profiles import get_pet_profile
    from service.sim.fdopa.scanner import sim_grid
    from service.sim.fdopa.subject import build_maps

    sm = build_maps(spec, sim_grid(get_pet_profile("siemens_biograph_like")))
    image = synthesise_flair(spec, sm.grid, sm.tumour, PROTOCOLS["ax2d_3t"],
                             np.random.default_rng(seed))
    z = int(np.argwhere(image.truth_zyx == 1)[:, 0].mean())
    return ("FLAIR ax2d_3t (own pose)\nlesion outlined", image.volume_zyx[z],
            image.truth_zyx[z] == 1)


#: Manifest columns summarised per tumour class by :func:`manifest_table`.
MANIFEST_COLUMNS = ("background_suv_mean", "striatum_suv_mean", "suvmax", "tbrmax", "tbrmean",
                    "t_s", "t_n", "mtv_ml", "measured_tbrmax", "dyn_tumour_ttp_min_start",
                    "dyn_tumour_slope_percent_per_min_start")


def manifest_table(rows: list[dict[str, str]]) -> str:
    """Median [10th-90th percentile] of the truth columns per tumour class (Markdown)."""
    classes = sorted({r["tumour_class"] for r in rows})
    lines = ["| class | n | " + " | ".join(MANIFEST_COLUMNS) + " |",
             "|---|---|" + "---|" * len(MANIFEST_COLUMNS)]
    for cls in classes:
        sub = [r for r in rows if r["tumour_class"] == cls]
        cells = []
        for col in MANIFEST_COLUMNS:
            vals = np.array([float(r[col]) for r in sub if r.get(col) not in (None, "", "None")])
            cells.append("-" if vals.size == 0 else
                         f"{np.median(vals):.2f} [{np.percentile(vals, 10):.2f}-"
                         f"{np.percentile(vals, 90):.2f}]")
        lines.append(f"| {cls} | {len(sub)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Manifest column for each per-subject key of :func:`literature.subject_values`.
_MANIFEST_KEYS = {
    "background_suv_mean": "background_suv_mean", "white_matter_suv_mean": "white_matter_suv_mean",
    "striatum_suv_mean": "striatum_suv_mean", "suvmax": "suvmax", "tbrmax": "tbrmax",
    "tbrmean": "tbrmean", "ts": "t_s", "ttp_min": "dyn_tumour_ttp_min_start",
    "slope_percent_per_min": "dyn_tumour_slope_percent_per_min_start",
}


def manifest_population(rows: list[dict[str, str]]) -> dict[str, list[dict[str, float]]]:
    """Per-class subject values from a benchmark manifest (voxel-level truth of real studies)."""
    out: dict[str, list[dict[str, float]]] = {}
    for r in rows:
        values = {k: float(r[c]) for k, c in _MANIFEST_KEYS.items()
                  if r.get(c) not in (None, "", "None")}
        out.setdefault(r["tumour_class"], []).append(values)
    return out
