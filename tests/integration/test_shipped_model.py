"""The shipped CNN: file, checksum, card, contract, and ratings of fresh simulated scans.

The scans are simulated here with a seed the benchmark never used, under the
camera profile the model never saw in training (the unseen fan-beam site),
then go through the pipeline's own normalisation and the node's
onnxruntime session.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from service.imaging.atlas import load_atlas
from service.inference.manifest import read_sidecar
from service.paths import default_models_dir
from service.pipelines.dat_spect.assets import load_dat_models
from service.pipelines.dat_spect.cnn import CnnSession
from service.pipelines.dat_spect.normalise import normalise
from service.pipelines.dat_spect.plugin import MODEL_FILE
from service.pipelines.dat_spect.preprocess import cnn_input, contract_for_atlas
from service.pipelines.dat_spect.result import Level, Region
from service.sim.anatomy import sample_transform
from service.sim.disease import sample_background, sample_state
from service.sim.profiles import get_profile
from service.sim.scan import AnatomyScanner, to_image

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

MODEL = default_models_dir() / MODEL_FILE
UNSEEN_PROFILE = "fanbeam_hr_osem"


def test_model_file_checksum_card_and_thresholds() -> None:
    assert MODEL.stat().st_size < 20 * 1024 * 1024
    assert read_sidecar(MODEL) == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    card = MODEL.with_suffix(".card.md").read_text()
    assert "not for diagnosis" in card and "SIMULATED" in card
    assert read_sidecar(MODEL) in card
    labels = json.loads(MODEL.with_suffix(".labels.json").read_text())
    assert {"site_a", "site_b", "site_c", "site_d_unseen"} <= set(labels)
    for site in labels.values():
        for cuts in site["thresholds"].values():
            assert cuts == sorted(cuts, reverse=True) and len(cuts) == 4
    evaluation = json.loads(MODEL.with_suffix(".evaluation.json").read_text())
    assert evaluation["sha256"] == read_sidecar(MODEL)


def test_session_contract_is_the_pipelines() -> None:
    session = CnnSession(MODEL)
    assert session.contract == contract_for_atlas(load_atlas())
    assert session.sha256 == read_sidecar(MODEL)
    assert session.has_global_head  # the global score comes from the model's own head


def _state(rng: np.random.Generator, disease_class: str, min_severity: float = 0.0):
    while True:
        state = sample_state(rng, disease_class, age_years=60, sex="M")
        if state.severity >= min_severity:
            return state


@pytest.fixture(scope="module")
def unseen_scans() -> dict[str, np.ndarray]:
    """A normal and a severe PD scan of one new subject on the unseen camera."""
    rng = np.random.default_rng(424242)
    profile = get_profile(UNSEEN_PROFILE)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scanner = AnatomyScanner(profile, sample_transform(rng), sample_background(rng))
        states = {"normal": _state(rng, "normal"), "pd": _state(rng, "pd", 0.8)}
        images = {k: to_image(scanner.scan(s, rng).volume_zyx, scanner.grid, profile.matrix)
                  for k, s in states.items()}
    finally:
        torch.set_num_threads(threads)
    models = load_dat_models()
    return {k: cnn_input(normalise(img, models.template_zyx, models.atlas).volume_zyx,
                         models.atlas) for k, img in images.items()}


@pytest.mark.slow
def test_unseen_camera_normal_and_severe_pd(unseen_scans: dict[str, np.ndarray]) -> None:
    session = CnnSession(MODEL)
    normal = session.predict(unseen_scans["normal"])
    assert not normal.reduced and normal.p_reduced < 0.2
    assert all(r.level <= Level.BORDERLINE for r in normal.regions)
    pd = session.predict(unseen_scans["pd"])
    assert pd.reduced and pd.p_reduced > 0.8
    worst_putamen = max(pd.region(Region.PUTAMEN_LEFT).level,
                        pd.region(Region.PUTAMEN_RIGHT).level)
    assert worst_putamen >= Level.STRONG_REDUCTION


@pytest.mark.slow
def test_batch_and_single_agree(unseen_scans: dict[str, np.ndarray]) -> None:
    session = CnnSession(MODEL)
    batch = np.stack([unseen_scans["normal"], unseen_scans["pd"]]).astype(np.float32)
    together = session.probabilities(batch)
    for i, key in enumerate(("normal", "pd")):
        alone = session.probabilities(unseen_scans[key][None].astype(np.float32))[0]
        assert np.abs(together[i] - alone).max() < 1e-5
