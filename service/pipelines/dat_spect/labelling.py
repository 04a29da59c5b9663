"""Automatic reference labels for one dataset: GMM per structure, five levels.

The rule itself is documented in :mod:`service.pipelines.dat_spect.levels`. This module
pools the left and right SBRs of each structure, fits the mixture, derives
the thresholds and labels every scan, and draws the histogram with the
fitted components and thresholds so a physicist can check the fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.imaging.gmm import Mixture, select_mixture
from service.pipelines.dat_spect.levels import (
    NORMAL_CV_MAX,
    STRUCTURES,
    Calibration,
    Thresholds,
    normal_component,
    normal_spread,
    thresholds_from_mixture,
)
from service.pipelines.dat_spect.result import REGIONS, Level, Region

#: Range of mixture components tried (chosen by BIC). A referral dataset
#: holds normal and reduced scans, so at least two populations are fitted;
#: a single Gaussian would make the whole dataset "normal" and put the
#: thresholds in its lower tail. Use 1 only for a dataset of normals.
MIN_COMPONENTS = 2
MAX_COMPONENTS = 4


@dataclass(frozen=True)
class StructureFit:
    """The mixture and thresholds of one structure of one dataset."""

    structure: str
    values: tuple[float, ...]
    mixture: Mixture
    thresholds: Thresholds
    cv_max: float = NORMAL_CV_MAX


@dataclass(frozen=True)
class DatasetLabels:
    """Labels of every scan of a dataset and the fits that made them.

    Attributes
    ----------
    dataset : str
    fits : mapping of structure name to StructureFit
    levels : tuple of mappings Region -> Level
        One per input row, in input order.
    """

    dataset: str
    fits: Mapping[str, StructureFit]
    levels: tuple[Mapping[Region, Level], ...]

    def calibration(self) -> Calibration:
        return Calibration(
            caudate=self.fits["caudate"].thresholds,
            putamen=self.fits["putamen"].thresholds,
            source=f"GMM labels of dataset {self.dataset}",
        )


def label_dataset(
    dataset: str,
    sbr_rows: Sequence[Mapping[Region, float]],
    rng: np.random.Generator,
    max_components: int = MAX_COMPONENTS,
    min_components: int = MIN_COMPONENTS,
    cv_max: float = NORMAL_CV_MAX,
) -> DatasetLabels:
    """Fit caudate and putamen separately and label each scan's four regions.

    ``cv_max`` caps the normal component's SD / mean (rule in
    :mod:`service.pipelines.dat_spect.levels`); set it from a site's own normals.
    """
    fits = {}
    for structure in STRUCTURES:
        regions = [r for r in REGIONS if r.structure == structure]
        values = np.array([row[r] for row in sbr_rows for r in regions], float)
        mixture = select_mixture(values, max_components, rng, min_components=min_components)
        fits[structure] = StructureFit(
            structure, tuple(values.tolist()), mixture, thresholds_from_mixture(mixture, cv_max),
            cv_max,
        )
    levels = tuple(
        {r: fits[r.structure].thresholds.level(row[r]) for r in REGIONS} for row in sbr_rows
    )
    return DatasetLabels(dataset, fits, levels)


def plot_fit(fit: StructureFit, dataset: str, path: Path) -> None:
    """PNG of the SBR histogram, the weighted components, their sum and the thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array(fit.values)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    counts, edges, _ = ax.hist(values, bins=max(10, values.size // 8), color="0.8", label="scans")
    width = float(edges[1] - edges[0])
    x = np.linspace(min(0.0, values.min()), values.max() * 1.1, 400)
    dens = fit.mixture.component_pdf(x) * values.size * width
    for k, d in enumerate(dens):
        ax.plot(x, d, lw=1.2, label=f"component {k + 1}: mean {fit.mixture.means[k]:.2f}")
    ax.plot(x, dens.sum(axis=0), "k", lw=1.5, label="mixture")
    mu, spread = normal_spread(fit.mixture, fit.cv_max)
    w_n = fit.mixture.weights[normal_component(fit.mixture)]
    z = (x - mu) / max(spread, 1e-9)
    ax.plot(x, w_n * values.size * width * np.exp(-0.5 * z * z) / (max(spread, 1e-9) * np.sqrt(2 * np.pi)),
            "k:", lw=1.2, label=f"normal used: mean {mu:.2f}, SD {spread:.2f}")
    top = float(max(np.asarray(counts).max(), dens.sum(axis=0).max()))
    for i, t in enumerate(fit.thresholds.values):
        ax.axvline(t, color="tab:red", ls="--", lw=1)
        ax.text(t, top * (0.95 - 0.07 * i), f" {i}|{i + 1}: {t:.2f}", color="tab:red", fontsize=8)
    ax.set_xlabel(f"{fit.structure} SBR (occipital reference), left and right pooled")
    ax.set_ylabel("regions")
    ax.set_title(
        f"{dataset}: {fit.structure}, {fit.mixture.n_components} component(s) by BIC"
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
