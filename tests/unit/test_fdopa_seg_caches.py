"""Training data of the FDOPA U-Net from more than one anatomy: the multi-cache rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.fdopa_seg import data
from models.fdopa_seg.caches import (
    anatomy_fields,
    check_validation,
    fill_command,
    open_caches,
    prepare_caches,
)
from models.fdopa_seg.caches import main as fill_main
from models.fdopa_seg.data import ANATOMY_FILE, Sample, SampleId, load_sample, sample_path
from service.testing.fdopa_sample import tiny_static_sample

pytestmark = pytest.mark.no_storage

IDS = [SampleId("site_a", 1), SampleId("site_a", 2), SampleId("site_b", 3)]


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, str]]:
    """This process simulates the synthetic anatomy; ``make_sample`` writes a fake sample
    (no simulation) and records ``(cache, study_id)``."""
    monkeypatch.setenv("DOPANODE_FDOPA_ANATOMY", "synthetic")
    calls: list[tuple[Path, str]] = []

    def fake(cache: Path, sid: SampleId) -> float:
        calls.append((cache, sid.study_id))
        _write_sample(cache, sid)
        return 0.0

    monkeypatch.setattr(data, "make_sample", fake)
    monkeypatch.setattr(data, "_init_worker", lambda: None)  # no torch thread setting here
    return calls


def _write_sample(cache: Path, sid: SampleId, tumour: bool = True) -> None:
    """A small static image (2 mm, 30 x 60 x 60) with a brain block and a hot cube."""
    image, labels, affine = tiny_static_sample(tumour)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(sample_path(cache, sid), image_zyx=image, labels_zyx=labels,
                        affine=affine, truth=np.array(json.dumps({"truth_version": 2})))


def _cache(path: Path, anatomy: str | None, ids: list[SampleId]) -> Path:
    path.mkdir(parents=True)
    if anatomy is not None:
        (path / ANATOMY_FILE).write_text(anatomy + "\n")
    for sid in ids:
        _write_sample(path, sid)
    return path


def test_each_cache_has_its_own_anatomy(made: list[tuple[Path, str]], tmp_path: Path) -> None:
    dk = _cache(tmp_path / "dk", "desikan_killiany", IDS)
    new = tmp_path / "new"  # no marker yet: this process's anatomy
    caches = open_caches([dk, new])
    assert [(c.anatomy, c.simulated_here) for c in caches] == [
        ("desikan_killiany", False), ("synthetic", True)]
    with pytest.raises(ValueError, match="one cache per anatomy"):
        open_caches([dk, _cache(tmp_path / "dk2", "desikan_killiany", [])])
    with pytest.raises(ValueError, match="one cache per anatomy"):
        open_caches([new, tmp_path / "new2"])  # both would be filled with synthetic
    with pytest.raises(ValueError, match="more than once"):
        open_caches([dk, tmp_path / "x" / ".." / "dk"])
    legacy = _cache(tmp_path / "legacy", None, IDS[:1])  # samples from before the marker
    with pytest.raises(ValueError, match="no anatomy.txt"):
        open_caches([dk, legacy])
    assert open_caches([legacy])[0].anatomy == "synthetic"  # one cache alone: as before


def test_only_the_caches_of_this_anatomy_are_filled(made: list[tuple[Path, str]],
                                                   tmp_path: Path) -> None:
    dk = _cache(tmp_path / "dk", "desikan_killiany", IDS)
    syn = _cache(tmp_path / "syn", "synthetic", IDS[:1])
    prepare_caches(open_caches([dk, syn]), IDS, workers=1)
    assert made == [(syn, "site_a_00002"), (syn, "site_b_00003")]  # the missing ones only
    ho = _cache(tmp_path / "ho", "harvard_oxford", IDS[1:])
    made.clear()
    with pytest.raises(ValueError) as err:
        prepare_caches(open_caches([syn, ho]), IDS, workers=1, limit=2)
    assert made == [] and not sample_path(ho, IDS[0]).exists()
    message = str(err.value)
    assert "1 of 3 samples missing" in message and "site_a_00001" in message
    assert (f"DOPANODE_FDOPA_ANATOMY=ho python -m models.fdopa_seg.caches --data {ho} "
            "--limit 2") in message


def test_a_new_cache_is_marked_with_this_anatomy(made: list[tuple[Path, str]],
                                                 tmp_path: Path) -> None:
    new = tmp_path / "new"
    prepare_caches(open_caches([new]), IDS[:1], workers=1)
    assert (new / ANATOMY_FILE).read_text() == "synthetic\n" and len(made) == 1


def test_the_fill_command_fills_only_its_own_anatomy(made: list[tuple[Path, str]],
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    dk = _cache(tmp_path / "dk", "desikan_killiany", [])
    with pytest.raises(ValueError, match="DOPANODE_FDOPA_ANATOMY=dk"):
        fill_main(["--data", str(dk), "--limit", "1", "--workers", "1"])
    assert made == []
    syn = tmp_path / "syn"
    fill_main(["--data", str(syn), "--limit", "1", "--workers", "1"])
    assert {s for _, s in made} == {"site_a_00001", "site_a_00003", "site_b_00001",
                                    "site_b_00003", "site_c_00001", "site_c_00003"}
    assert (syn / ANATOMY_FILE).read_text() == "synthetic\n"
    caches = open_caches([syn, dk])
    assert fill_command(caches[1]) == (
        f"DOPANODE_FDOPA_ANATOMY=dk python -m models.fdopa_seg.caches --data {dk} --workers 2")


def test_sample_ids_of_two_anatomies_do_not_collide(made: list[tuple[Path, str]],
                                                    tmp_path: Path) -> None:
    dk = _cache(tmp_path / "dk", "desikan_killiany", IDS[:1])
    syn = _cache(tmp_path / "syn", "synthetic", IDS[:1])
    caches = open_caches([dk, syn])
    keyed = [c.ids(IDS[:1])[0] for c in caches]
    assert keyed[0] != keyed[1] and keyed[0].study_id == keyed[1].study_id
    samples = [load_sample(c.path, k) for c, k in zip(caches, keyed, strict=True)]
    assert [s.study_id for s in samples] == ["desikan_killiany:site_a_00001",
                                             "synthetic:site_a_00001"]
    assert load_sample(dk, IDS[0]).study_id == "site_a_00001"  # unnamed: as before
    assert samples[0].target_zyx.any()


def test_command_fields_record_every_anatomy(made: list[tuple[Path, str]],
                                             tmp_path: Path) -> None:
    dk = _cache(tmp_path / "dk", "desikan_killiany", IDS)
    syn = _cache(tmp_path / "syn", "synthetic", IDS)
    both = anatomy_fields(open_caches([dk, syn]), IDS[:2], IDS[2:])
    assert both["anatomy"] == "desikan_killiany and synthetic"
    assert both["anatomy_scope"] == "2 head anatomies"
    assert (both["n_train"], both["n_val"], both["truth_version"]) == (4, 2, "2")
    assert [(c["data"], c["anatomy"], c["simulated_here"]) for c in both["caches"]] == [
        (str(dk), "desikan_killiany", False), (str(syn), "synthetic", True)]
    one = anatomy_fields(open_caches([dk]), IDS[:2], IDS[2:])
    assert (one["anatomy"], one["anatomy_scope"], one["n_train"]) == (
        "desikan_killiany", "one head anatomy", 2)


def test_a_validation_set_without_a_tumour_is_refused() -> None:
    box = np.zeros((4, 4, 4), np.float32)
    with_tumour = Sample("a", box, np.ones((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.uint8))
    without = Sample("b", box, np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8))
    check_validation({"synthetic": [with_tumour, without]})
    with pytest.raises(ValueError, match="harvard_oxford"):
        check_validation({"synthetic": [with_tumour], "harvard_oxford": [without]})
