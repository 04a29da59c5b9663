"""``dopanode fdopa``: generation through the CLI, manifest, resumption."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import pytest

from service.cli import main
from service.sim.fdopa import benchmark
from service.sim.fdopa.profiles import PET_PROFILES, get_pet_profile

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL


@pytest.fixture
def tiny_site(monkeypatch: pytest.MonkeyPatch) -> str:
    profile = replace(get_pet_profile("petmr_unseen"), name="test_tiny", sim_voxel_mm=5.0,
                      n_views=24, iterations=1, subsets=4, matrix=48, pixel_mm=5.0,
                      slice_mm=5.0)
    monkeypatch.setitem(PET_PROFILES, "test_tiny", profile)
    site = replace(benchmark.SITES["site_d_unseen"], profile="test_tiny")
    monkeypatch.setitem(benchmark.SITES, "site_d_unseen", site)
    return "site_d_unseen"


def _fast_prefix(site: str) -> int:
    """The largest limit (2..) whose studies have no dynamic series and no FLAIR."""
    limit = 0
    while limit < 20:
        plan = benchmark.plan_study(benchmark.SITES[site], limit)
        if plan.schedule is not None or plan.flair is not None:
            break
        limit += 1
    assert limit >= 2, "site plan changed: pick another fast prefix"
    return limit


def test_generate_writes_a_manifest_and_resumes(tiny_site: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    limit = min(_fast_prefix(tiny_site), 3)
    argv = ["fdopa", "generate", str(tmp_path), "--sites", tiny_site, "--limit", str(limit),
            "--workers", "1"]
    assert main(argv) == 0
    with (tmp_path / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["study_id"] for r in rows] == [f"{tiny_site}_{i:05d}" for i in range(limit)]
    assert {r["role"] for r in rows} == {"unseen"} and all(r["seed"] for r in rows)
    truth = tmp_path / tiny_site / rows[0]["study_id"] / "truth.json"
    stamp = truth.stat().st_mtime_ns
    assert main(argv) == 0  # resumes: nothing left to do, nothing rewritten
    assert truth.stat().st_mtime_ns == stamp
    assert "manifest" in capsys.readouterr().out


def test_unknown_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown site"):
        main(["fdopa", "generate", str(tmp_path), "--sites", "site_x"])
    with pytest.raises(SystemExit, match="unknown PET profile"):
        main(["fdopa", "simulate", str(tmp_path), "--profile", "nope", "--n", "1", "--seed", "1"])
    with pytest.raises(SystemExit):  # lossy syntaxes are not offered
        main(["fdopa", "simulate", str(tmp_path), "--profile", "petmr_unseen", "--n", "1",
              "--seed", "1", "--transfer-syntax", "jpeg_baseline"])
    with pytest.raises(SystemExit, match="native-enhanced"):
        main(["fdopa", "simulate", str(tmp_path), "--profile", "petmr_unseen", "--n", "1",
              "--seed", "1", "--native-enhanced", "1.5"])
