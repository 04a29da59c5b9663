"""A tiny run of the three arms of the FLAIR U-Net on simulated FLAIRs; freeze, export, serving.

Three real samples from the simulator (two paediatric 2D FLAIRs at 3 T and
1.5 T, one adult 3 T), a few steps per arm with a width-2 network and 16^3
patches: the machinery, not the quality.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from models.fdopa_seg.augment import AugmentConfig  # noqa: E402
from models.fdopa_seg.data import Sample  # noqa: E402
from models.fdopa_seg.export import check_parity, synthetic_boxes  # noqa: E402
from models.fdopa_seg.network import UNet3d  # noqa: E402
from models.fdopa_seg.train import TrainConfig, set_train_mode  # noqa: E402
from models.flair_seg.data import (  # noqa: E402
    FlairSampleId,
    flair_sample_ids,
    load_samples,
    make_sample,
    sample_path,
)
from models.flair_seg.evaluate import (  # noqa: E402
    ALL_GROUP,
    TEST_GROUP,
    group_of,
    held_out_studies,
    put_in_card,
    summarise,
    table,
)
from models.flair_seg.export import TABLE_BEGIN, TABLE_END, export_arms  # noqa: E402
from models.flair_seg.train import arm_configs, run_arms  # noqa: E402
from service.imaging.mr_volume import MrVolume  # noqa: E402
from service.pipelines.fdopa_pet.flair_segment import CONTRACT, FlairSegmenter  # noqa: E402
from service.sim.fdopa.benchmark import SITES, fresh_start  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.no_storage]

PAEDIATRIC = [FlairSampleId("site_a", 3, paediatric=True), FlairSampleId("site_a", 23, paediatric=True)]
ADULT = FlairSampleId("site_a", 2, paediatric=False)
BASE = TrainConfig(width=2, threads=1, checkpoint_every=3, val_every=3,
                   augment=AugmentConfig(patch_zyx=(16, 16, 16)))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flair_data")
    for sid in [*PAEDIATRIC, ADULT]:
        make_sample(out, sid)
    return out


@pytest.fixture(scope="module")
def sets(cache: Path) -> dict[str, list[Sample]]:
    paed = load_samples(cache, PAEDIATRIC)
    adult = load_samples(cache, [ADULT])
    return {"adult_train": adult, "adult_val": adult, "paediatric_train": paed[:1],
            "paediatric_val": paed[1:]}


@pytest.fixture(scope="module")
def run(sets: dict[str, list[Sample]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("flair_run")
    configs = arm_configs(BASE, 3, 3, out, freeze_levels=1, encoder_lr_factor=0.1,
                          finetune_lr=5e-4)
    run_arms(["adult", "scratch", "finetune"], configs, sets, out)
    return out


def test_samples_hold_the_whole_tumour(cache: Path, sets: dict[str, list[Sample]]) -> None:
    with np.load(sample_path(cache, PAEDIATRIC[0])) as data:
        assert data["flair_zyx"].dtype == np.uint16 and data["flair_zyx"].max() <= 4095
        assert data["flair_zyx"].shape == (30, 256, 256)  # 2D axial: 5 mm slices
        truth = data["truth_zyx"]
        assert set(np.unique(truth)) == {0, 1, 2}  # lesion and oedema
    s = sets["paediatric_train"][0]
    assert s.image_zyx.shape == CONTRACT.box_shape_zyx
    # the target is lesion + oedema: about their volume (2 mm box voxels of 8 uL)
    with np.load(sample_path(cache, PAEDIATRIC[0])) as data:
        affine = data["affine"]
    native_ml = float((truth > 0).sum()) * abs(np.linalg.det(affine[:3, :3])) / 1000
    assert s.target_zyx.sum() * 0.008 == pytest.approx(native_ml, rel=0.2)
    # the lesion is FLAIR-hyperintense on the normalised box
    assert float(np.median(s.image_zyx[s.target_zyx > 0])) > 1.3


def test_the_test_split_is_never_training_data() -> None:
    with pytest.raises(ValueError):
        flair_sample_ids("test", True)
    ids = flair_sample_ids("train", True, limit=3) + flair_sample_ids("val", False, limit=3)
    assert ids and all(s.index % 5 != 0 for s in ids)


def test_every_arm_trains_and_is_resumable(run: Path) -> None:
    for arm in ("adult", "scratch", "finetune"):
        history = [json.loads(x) for x in (run / arm / "history.jsonl").read_text().splitlines()]
        assert [h["step"] for h in history] == [3]
        assert (run / arm / "best.pt").exists() and (run / arm / "checkpoint.pt").exists()


def _state(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)["net"]


def test_freeze_keeps_the_frozen_level_and_trains_the_rest(run: Path) -> None:
    adult, tuned = _state(run / "adult" / "best.pt"), _state(run / "finetune" / "checkpoint.pt")
    frozen = [k for k in adult if k.startswith("down.0.")]
    assert any(k.endswith("running_mean") for k in frozen)  # batch-norm statistics too
    for key in frozen:
        assert torch.equal(adult[key], tuned[key]), key
    for prefix in ("down.1.0.weight", "merge.0.0.weight", "head.weight"):
        assert not torch.equal(adult[prefix], tuned[prefix]), prefix
    # from scratch shares nothing with the adult model
    assert not torch.equal(adult["down.0.0.weight"], _state(run / "scratch" / "best.pt")
                           ["down.0.0.weight"])


def test_set_train_mode_leaves_frozen_blocks_in_eval() -> None:
    net = UNet3d(2)
    set_train_mode(net, replace(BASE, freeze_encoder_levels=2))
    assert not net.down[0].training and not net.down[1].training
    assert net.down[2].training and net.head.training


def test_export_parity_and_serving(run: Path, sets: dict[str, list[Sample]],
                                   cache: Path) -> None:
    shipped = run / "shipped" / "flair.onnx"
    summary = export_arms(run, sets["paediatric_val"], shipped)
    assert set(summary["arms"]) == {"adult", "scratch", "finetune"}
    assert summary["shipped"]["arm"] in summary["arms"]
    seg = FlairSegmenter(shipped)
    from models.fdopa_seg.train import load_net

    net, _ = load_net(run / summary["shipped"]["arm"] / "best.pt")
    assert check_parity(net, shipped, synthetic_boxes(1, 3, CONTRACT), seg) < 1e-4
    with np.load(sample_path(cache, PAEDIATRIC[1])) as data:
        flair = MrVolume(data["flair_zyx"].astype(np.float32), data["affine"], "1.2.3", "1.2.4")
    prob = seg.probabilities(flair)
    assert prob.shape == flair.array_zyx.shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    card = shipped.with_suffix(".card.md").read_text()
    assert "Research use only" in card and summary["shipped"]["sha256"] in card
    assert TABLE_BEGIN in card and "PRELIMINARY" not in card


def test_ablation_table_and_test_split_guard(tmp_path: Path) -> None:
    for study, paed in (("site_a_00005", True), ("site_a_00010", False)):
        (tmp_path / "site_a" / study).mkdir(parents=True)
        (tmp_path / "site_a" / study / "truth.json").write_text(json.dumps(
            {"study_id": study, "paediatric": paed, "flair": "ax2d_3t", "role": "train_test"}))
    assert [p.name for p in held_out_studies(tmp_path)] == ["site_a_00005"]
    (tmp_path / "site_a" / "site_a_00007").mkdir()
    (tmp_path / "site_a" / "site_a_00007" / "truth.json").write_text(json.dumps(
        {"study_id": "site_a_00007", "paediatric": True, "flair": "ax2d_3t",
         "role": "train_test"}))
    with pytest.raises(ValueError, match="not in the test split"):
        held_out_studies(tmp_path)
    # a whole benchmark: its training studies are skipped, never evaluated
    assert [p.name for p in held_out_studies(tmp_path, full=True)] == ["site_a_00005"]
    assert held_out_studies(tmp_path, full=True, sites=("site_b",)) == []
    # a fresh study (beyond the benchmark, 'fdopa generate --split fresh') is held out too
    fresh = f"site_a_{fresh_start(SITES['site_a']) + 3:05d}"
    (tmp_path / "site_a" / fresh).mkdir()
    (tmp_path / "site_a" / fresh / "truth.json").write_text(json.dumps(
        {"study_id": fresh, "paediatric": True, "flair": "ax2d_3t", "role": "train_test"}))
    assert [p.name for p in held_out_studies(tmp_path, full=True)] == ["site_a_00005", fresh]
    rows = [{"method": "finetune", "role": "train_test", "dice": d, "pred_ml": 1.0,
             "study_id": f"site_a_{i:05d}"} for i, d in ((0, 0.6), (5, 0.8), (10, 0.9))]
    rows += [{"method": "finetune", "role": "train_test", "dice": None, "pred_ml": 0.5,
              "study_id": "site_a_00015"},
             {"method": "finetune", "role": "train_test", "dice": 0.1, "pred_ml": 0.5,
              "study_id": fresh}]
    assert group_of(rows[-1]) != group_of(rows[0]) == TEST_GROUP
    assert summarise(rows, "finetune", group_of(rows[-1]))["n"] == 1
    assert summarise(rows, "finetune", ALL_GROUP)["n"] == 4  # every group together
    s = summarise(rows, "finetune", TEST_GROUP)
    assert s["n"] == 3 and s["dice_mean"] == pytest.approx(0.7667, abs=1e-3)
    assert s["dice_median"] == pytest.approx(0.8) and s["fp_ml_no_lesion"] == 0.5
    text = table([{"group": "test", **s}])
    assert "0.767 ± 0.153" in text and "0.82 ± 0.11" in text
    card = tmp_path / "card.md"
    card.write_text(f"a\n{TABLE_BEGIN}\nold\n{TABLE_END}\nb\n")
    put_in_card(card, text)
    assert "old" not in card.read_text() and card.read_text().endswith(f"{TABLE_END}\nb\n")


def test_shipped_model_finds_the_lesion_of_a_validation_study(cache: Path) -> None:
    """The committed model through the serving path on a simulated FLAIR (not a test study)."""
    from service.pipelines.fdopa_pet.flair_segment import DEFAULT_MODEL

    assert PAEDIATRIC[0].index % 5 != 0  # validation split, never the held-out test split
    with np.load(sample_path(cache, PAEDIATRIC[0])) as data:
        flair = MrVolume(data["flair_zyx"].astype(np.float32), data["affine"], "1.2.3", "1.2.4")
        truth = data["truth_zyx"] > 0
    mask = FlairSegmenter(DEFAULT_MODEL).lesion_mask(flair)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.7


def test_fresh_split_lies_beyond_the_benchmark_and_is_held_out() -> None:
    from service.sim.fdopa.benchmark import is_held_out, plan_study, study_indices

    site = SITES["site_b"]
    with pytest.raises(ValueError, match="limit"):
        study_indices(site, "fresh")
    fresh = study_indices(site, "fresh", 4)
    assert fresh == list(range(fresh_start(site), fresh_start(site) + 4))
    assert fresh[0] >= site.n_studies + 1000 and all(is_held_out(site, i) for i in fresh)
    children = study_indices(site, "fresh", 3, paediatric_only=True)
    assert len(children) == 3 and all(plan_study(site, i).paediatric for i in children)
    later = study_indices(site, "fresh", 2, paediatric_only=True, skip=2)
    assert later == study_indices(site, "fresh", 4, paediatric_only=True)[2:]
    with pytest.raises(ValueError, match="fresh"):
        study_indices(site, "test", 4, skip=1)
    test_children = study_indices(site, "test", 12, paediatric_only=True)
    assert test_children == [i for i in study_indices(site, "test", 12)
                             if plan_study(site, i).paediatric]
    # training and validation studies (PET U-Net fresh validation ids included) are not held out
    assert not is_held_out(site, 3) and not is_held_out(site, site.n_studies + 5)
    assert is_held_out(SITES["site_d_unseen"], 3)


def test_extra_validation_studies_lie_between_the_benchmark_and_the_fresh_split() -> None:
    from models.flair_seg.data import extra_val_ids
    from service.sim.fdopa.benchmark import is_held_out, plan_study

    ids = extra_val_ids(3)
    assert len(ids) == 9 and {i.site for i in ids} == {"site_a", "site_b", "site_c"}
    for sid in ids:
        site = SITES[sid.site]
        assert site.n_studies <= sid.index < fresh_start(site) and not is_held_out(site, sid.index)
        assert plan_study(site, sid.index).paediatric and sid.paediatric


def test_flair_sample_ids_keep_their_age_group() -> None:
    from models.flair_seg.data import flair_sample_ids
    from service.sim.fdopa.benchmark import plan_study

    children, adults = flair_sample_ids("val", True, limit=2), flair_sample_ids("val", False, limit=1)
    assert children and adults
    assert all(s.paediatric and plan_study(SITES[s.site], s.index).paediatric for s in children)
    assert not any(s.paediatric or plan_study(SITES[s.site], s.index).paediatric for s in adults)
    assert all(s.anatomy == "" and s.key == s.study_id for s in children + adults)


def test_cached_ablation_rows_are_reused_only_for_the_same_model(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.flair_seg.evaluate as ev

    study = tmp_path / "site_a" / "site_a_00005"
    study.mkdir(parents=True)
    (study / "truth.json").write_text(json.dumps(
        {"study_id": study.name, "role": "train_test", "flair": "ax2d_3t", "tumour_class": "lgg"}))
    truth = np.zeros((4, 4, 4), bool)
    truth[1:3, 1:3, 1:3] = True
    flair = MrVolume(np.ones((4, 4, 4), np.float32), np.eye(4), "1.2.3", "1.2.4")
    monkeypatch.setattr(ev, "read_study", lambda folder: (flair, truth))
    calls: list[str] = []

    def method(tag: str) -> Any:
        def segment(volume: MrVolume) -> np.ndarray:
            calls.append(tag)
            return truth
        return segment

    rows_path = tmp_path / "rows.jsonl"
    ev.evaluate([study], {"finetune": method("a")}, rows_path, {"finetune": "sha-a"})
    ev.evaluate([study], {"finetune": method("a")}, rows_path, {"finetune": "sha-a"})
    assert calls == ["a"]  # the second run reads the cache
    rows = ev.evaluate([study], {"finetune": method("b")}, rows_path, {"finetune": "sha-b"})
    assert calls == ["a", "b"] and rows[0]["model"] == "sha-b" and rows[0]["dice"] == 1.0
