"""``bench/dat_image_separability.py``: what the simulated image holds, per variant."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dat_image_separability.py"

pytestmark = pytest.mark.no_storage


@pytest.fixture(scope="module")
def tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dat_image_separability", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _row(sid: str, site: str, case: str, left: float, right: float, image: str = "") -> dict:
    return {"study_id": sid, "site": site, "case": case, "roi_sbr_putamen_left": str(left),
            "roi_sbr_putamen_right": str(right), "putamen_ratio_image": image}


def test_normals_folders_join_their_variant_and_a_noisy_loss_counts(tool: ModuleType) -> None:
    rows = [_row("a1", "cam", "normal", 2.0, 1.9), _row("a2", "cam_normals", "normal", 1.2, 2.0),
            _row("a3", "cam", "loss_left", 1.0, 2.0, "0.52"),
            _row("a4", "cam", "loss_right", 2.0, 1.4, "0.55")]
    by = tool.ratios_by_variant(rows)
    assert list(by) == ["cam"]
    assert by["cam"]["normal"] == pytest.approx([0.95, 0.6])
    assert by["cam"]["one_sided"] == pytest.approx([0.5, 0.7])
    text = tool.table(by)
    # the normal at 0.60 lies below the loss at 0.70: one error at the best cut
    assert "| cam | 2 | 2 | 0.600 | 0.700 | 0.550 | 1 (" in text
    assert text.splitlines()[-1].endswith("| 1 |")


def test_main_counts_a_study_in_two_folders_once(tool: ModuleType, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_row("b1", "cam", "normal", 2.0, 2.0), _row("b2", "cam", "loss_left", 1.0, 2.0, "0.5"),
            _row("b3", "cam", "bilateral", 1.0, 1.0)]
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        with (folder / "manifest.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    assert tool.main([str(tmp_path / "one"), str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 normal and one-sided studies of 2 folders")
    assert "| cam | 1 | 1 | 1.000 | 0.500 | 0.500 | 0 (" in out


def test_the_node_errors_sit_beside_the_image_per_variant(tool: ModuleType, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    rows = [_row("c1", "cam", "normal", 2.0, 2.0), _row("c2", "cam_normals", "normal", 2.0, 1.9),
            _row("c3", "cam", "loss_left", 1.0, 2.0, "0.5"),
            _row("c4", "cam", "loss_right", 2.0, 1.0, "0.5"),
            _row("d1", "other", "normal", 2.0, 2.0)]
    folder = tmp_path / "bench"
    folder.mkdir()
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cases = tmp_path / "cases.csv"
    with cases.open("w", newline="") as f:  # c4 refused by the gate: not in the cases
        writer = csv.DictWriter(f, fieldnames=["study_id", "K+verdict", "sbr"])
        writer.writeheader()
        writer.writerows([{"study_id": "c1", "K+verdict": "normal", "sbr": "reduced"},
                          {"study_id": "c2", "K+verdict": "inconclusive (normal)", "sbr": "normal"},
                          {"study_id": "c3", "K+verdict": "reduced", "sbr": "normal"},
                          {"study_id": "d1", "K+verdict": "normal", "sbr": "normal"}])
    assert tool.main([str(folder), "--cases", str(cases)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("| node: one-sided not reduced / normals not normal / not rated |")
    cam = next(line for line in lines if line.startswith("| cam |"))
    assert cam.endswith("| 0 of 1 / 1 of 2 / 1 |")
    assert next(line for line in lines if line.startswith("| other |")).endswith(
        "| 0 of 0 / 0 of 1 / 0 |")
    assert lines[-1].endswith("| 0 of 1 / 1 of 3 / 1 |")
    assert tool.main([str(folder), "--cases", str(cases), "--column", "sbr"]) == 0
    out = capsys.readouterr().out
    assert "| 1 of 1 / 1 of 2 / 1 |" in out  # the SBR path missed c3, called c1 reduced
    with pytest.raises(SystemExit, match="no column"):
        tool.main([str(folder), "--cases", str(cases), "--column", "nope"])
