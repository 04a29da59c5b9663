"""``bench/dat_putamen_estimator.py``: the learnt putamen estimator's pieces (candidate X).

The rule ``models/training/rules/dat32_learned_putamen_estimator.md`` fixes the
box, the mirror, the target and the fit; these tests hold the code to it (the
box and the mirror: ``test_dat_putamen_estimator.py``, the node's module).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.preprocess import contract_for_atlas

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dat_putamen_estimator.py"


@pytest.fixture(scope="module")
def x_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dat_putamen_estimator", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_bench_reads_the_nodes_box(x_bench: ModuleType) -> None:
    """The tool fits and evaluates on the node's own features (one piece of code)."""
    from service.pipelines.dat_spect import putamen_estimator as node

    atlas = load_atlas()
    assert x_bench.putamen_box(atlas) == node.putamen_box(atlas, contract_for_atlas(atlas))
    assert x_bench.side_features is node.side_features


def test_ridge_recovers_a_linear_map_and_leaves_the_bias_free(x_bench: ModuleType) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5))
    w_true, b_true = np.array([0.5, -1.0, 0.0, 2.0, 0.25]), 3.0
    y = x @ w_true + b_true
    w, b = x_bench.fit_ridge(x, y, 1e-9)
    np.testing.assert_allclose(w, w_true, atol=1e-6)
    assert b == pytest.approx(b_true, abs=1e-6)
    w_big, b_big = x_bench.fit_ridge(x, y, 1e9)  # all shrinkage goes to the weights
    assert np.abs(w_big).max() < 1e-6 and b_big == pytest.approx(float(y.mean()), abs=1e-5)


def test_the_target_splits_the_image_mean_as_the_binding(x_bench: ModuleType) -> None:
    assert x_bench.binding_split(0.8, 0.6, 2.0, 2.0) == pytest.approx((0.7, 0.7))
    left, right = x_bench.binding_split(0.5, 0.9, 1.0, 3.0)
    assert left + right == pytest.approx(1.4) and right / left == pytest.approx(3.0)


def test_auc_counts_pairs_and_ties(x_bench: ModuleType) -> None:
    normal = np.array([0.9, 0.95, 1.0])
    assert x_bench.auc(normal, np.array([0.5, 0.6])) == 1.0
    assert x_bench.auc(normal, np.array([0.95])) == pytest.approx(0.5)
    assert x_bench.auc(normal, np.array([1.1])) == 0.0
    assert np.isnan(x_bench.auc(normal, np.array([])))
