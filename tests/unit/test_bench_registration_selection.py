"""``bench/dat_registration_robustness.py`` measures the studies it is asked for.

``--studies`` (a file of study ids) restricts a run to the studies a change of
the engine can affect (docs/dat_registration.md, "A bounded affine instead of
the rigid fallback"); ``--variants`` to whole variants; both together to the
studies in both.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dat_registration_robustness.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dat_registration_robustness", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def robust_dir(tmp_path: Path) -> Path:
    rows = ["study_id,site", "fwhm_18mm_00001,fwhm_18mm", "fwhm_18mm_00002,fwhm_18mm",
            "atrophy_severe_00001,atrophy_severe"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_studies_are_selected_by_id_and_by_variant(robust_dir: Path) -> None:
    studies = _bench().studies
    everything = studies(robust_dir, None)
    assert [s[2] for s in everything] == ["fwhm_18mm_00001", "fwhm_18mm_00002",
                                          "atrophy_severe_00001"]
    assert everything[0] == (robust_dir / "fwhm_18mm" / "fwhm_18mm_00001" / "series",
                             "fwhm_18mm", "fwhm_18mm_00001")
    picked = studies(robust_dir, None, {"fwhm_18mm_00002", "atrophy_severe_00001"})
    assert [s[2] for s in picked] == ["fwhm_18mm_00002", "atrophy_severe_00001"]
    both = studies(robust_dir, ["fwhm_18mm"], {"fwhm_18mm_00002", "atrophy_severe_00001"})
    assert [s[2] for s in both] == ["fwhm_18mm_00002"]
    assert studies(robust_dir, None, {"not_in_the_manifest_00009"}) == []


def test_an_id_that_is_not_in_the_manifest_stops_the_run(robust_dir: Path) -> None:
    ids = robust_dir / "ids.txt"
    ids.write_text("fwhm_18mm_00001\nfwhm_18mm_00099\n")
    with pytest.raises(SystemExit, match=r"--studies: 1 not in .*manifest.csv, e.g. fwhm_18mm_00099"):
        _bench().main([str(robust_dir), "--studies", str(ids)])
