"""One-dimensional Gaussian mixture by EM, with BIC model selection.

Numpy only (scikit-learn stays out of the node's runtime). Used to label SBR
histograms automatically (:mod:`service.pipelines.dat_spect.levels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Variance floor relative to the data variance: keeps a component from
#: collapsing onto one point.
VARIANCE_FLOOR_REL = 1e-3


@dataclass(frozen=True)
class Mixture:
    """A fitted 1-D Gaussian mixture, components sorted by ascending mean.

    Attributes
    ----------
    weights, means, sds : tuple of float
        Mixing weights (sum 1), means and standard deviations (data units).
    log_likelihood : float
        Total log-likelihood of the fitted data.
    n_samples : int
    """

    weights: tuple[float, ...]
    means: tuple[float, ...]
    sds: tuple[float, ...]
    log_likelihood: float
    n_samples: int

    @property
    def n_components(self) -> int:
        return len(self.means)

    @property
    def bic(self) -> float:
        """Bayesian information criterion, ``-2 logL + p ln n`` with ``p = 3k - 1``."""
        n_params = 3 * self.n_components - 1
        return -2.0 * self.log_likelihood + n_params * np.log(self.n_samples)

    def component_pdf(self, x: np.ndarray) -> np.ndarray:
        """Weighted component densities, shape ``(k, len(x))``."""
        return _weighted_pdf(np.asarray(x, float), *self._arrays())

    def posterior(self, x: np.ndarray) -> np.ndarray:
        """Component responsibilities, shape ``(k, len(x))``, columns sum to 1."""
        dens = self.component_pdf(x)
        return dens / np.maximum(dens.sum(axis=0, keepdims=True), 1e-300)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.weights), np.array(self.means), np.array(self.sds)


def _weighted_pdf(x: np.ndarray, w: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> np.ndarray:
    z = (x[None, :] - mu[:, None]) / sd[:, None]
    return w[:, None] * np.exp(-0.5 * z * z) / (sd[:, None] * np.sqrt(2.0 * np.pi))


def fit_mixture(
    x: np.ndarray, n_components: int, rng: np.random.Generator, n_init: int = 5, max_iter: int = 300
) -> Mixture:
    """Fit ``n_components`` Gaussians by EM; best of ``n_init`` starts.

    Starts: the first from quantiles of the data, the others from random data
    points. Converges when the log-likelihood gains less than 1e-8 per sample.

    Parameters
    ----------
    x : (n,) array
        Samples; needs ``n >= 2 * n_components``.
    n_components : int
    rng : numpy Generator
        For the random starts (seed it for reproducible labels).
    """
    x = np.asarray(x, float).ravel()
    if x.size < 2 * n_components:
        raise ValueError(f"{x.size} samples are too few for {n_components} components")
    best: Mixture | None = None
    for i in range(n_init):
        if i == 0:
            means = np.quantile(x, (np.arange(n_components) + 0.5) / n_components)
        else:
            means = rng.choice(x, n_components, replace=False)
        fitted = _em(x, np.sort(means), max_iter)
        if best is None or fitted.log_likelihood > best.log_likelihood:
            best = fitted
    assert best is not None
    return best


def _em(x: np.ndarray, means: np.ndarray, max_iter: int) -> Mixture:
    k = means.size
    floor = max(float(x.var()) * VARIANCE_FLOOR_REL, 1e-12)
    w = np.full(k, 1.0 / k)
    var = np.full(k, max(float(x.var()) / k, floor))
    mu = means.astype(float)
    previous = -np.inf
    for _ in range(max_iter):
        dens = _weighted_pdf(x, w, mu, np.sqrt(var))
        total = np.maximum(dens.sum(axis=0), 1e-300)
        log_likelihood = float(np.log(total).sum())
        resp = dens / total
        nk = np.maximum(resp.sum(axis=1), 1e-10)
        w = nk / x.size
        mu = (resp @ x) / nk
        var = np.maximum((resp * (x[None, :] - mu[:, None]) ** 2).sum(axis=1) / nk, floor)
        if log_likelihood - previous < 1e-8 * x.size:
            break
        previous = log_likelihood
    total = np.maximum(_weighted_pdf(x, w, mu, np.sqrt(var)).sum(axis=0), 1e-300)
    log_likelihood = float(np.log(total).sum())
    order = np.argsort(mu)
    return Mixture(
        weights=tuple(float(v) for v in w[order]),
        means=tuple(float(v) for v in mu[order]),
        sds=tuple(float(v) for v in np.sqrt(var[order])),
        log_likelihood=log_likelihood,
        n_samples=int(x.size),
    )


def select_mixture(
    x: np.ndarray,
    max_components: int,
    rng: np.random.Generator,
    n_init: int = 5,
    min_components: int = 1,
) -> Mixture:
    """The mixture with the lowest BIC among ``min_components..max_components``.

    Component counts the data cannot support (fewer than two samples per
    component) are skipped.
    """
    x = np.asarray(x, float).ravel()
    candidates = [
        fit_mixture(x, k, rng, n_init=n_init)
        for k in range(min_components, max_components + 1)
        if x.size >= 2 * k
    ]
    if not candidates:
        raise ValueError(f"need at least {2 * min_components} samples")
    return min(candidates, key=lambda m: m.bic)
