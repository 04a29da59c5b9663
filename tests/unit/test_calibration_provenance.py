"""Calibration honesty: the provenance of thresholds and normals reaches the SR and the picture."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items

from service.paths import default_models_dir
from service.pipelines.dat_spect import codes, render
from service.pipelines.dat_spect.example import example_evidence, example_result
from service.pipelines.dat_spect.levels import Calibration
from service.pipelines.dat_spect.normals import NormalDatabase
from service.pipelines.dat_spect.picture import build_picture_report
from service.pipelines.dat_spect.protocol import FAMILIES, ByProtocol, Family, read_by_protocol
from service.pipelines.dat_spect.provenance import (
    SIMULATED,
    SITE,
    CalibrationInfo,
    provenance_of,
)
from service.pipelines.dat_spect.result import StudyResult, summary_dict
from service.pipelines.dat_spect.sr import build_sr

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

SHIPPED = default_models_dir() / "template"


def _shipped() -> tuple[ByProtocol[Calibration], ByProtocol[NormalDatabase]]:
    return (read_by_protocol(json.loads((SHIPPED / "calibration.json").read_text()),
                             Calibration.from_dict),
            read_by_protocol(json.loads((SHIPPED / "normals.json").read_text()),
                             NormalDatabase.from_dict))


def test_shipped_files_say_they_are_simulated_and_hold_every_family() -> None:
    calibrations, normals = _shipped()
    assert (calibrations.provenance, normals.provenance) == (SIMULATED, SIMULATED)
    for family in FAMILIES:
        assert calibrations.select(Family(family)).provenance == SIMULATED
        assert normals.select(Family(family)).provenance == SIMULATED
        assert "SIMULATED" in calibrations.select(Family(family)).source


def test_provenance_field_round_trips_and_old_files_are_read_from_their_source() -> None:
    calibration = _shipped()[0].select(Family("attn"))
    site = replace(calibration, provenance=SITE, source="GMM labels of dataset cam1")
    assert Calibration.from_dict(site.to_dict()).provenance == SITE
    assert provenance_of({"source": "GMM labels of 120 SIMULATED scans"}) == SIMULATED
    assert provenance_of({"source": "site X normals 2026"}) == SITE
    with pytest.raises(ValueError, match="provenance"):
        provenance_of({"provenance": "vendor"})


def test_statements() -> None:
    assert CalibrationInfo(SIMULATED, SIMULATED).statement().startswith(
        "SBR levels and z-scores use the shipped SIMULATED calibration")
    assert CalibrationInfo(SIMULATED, SIMULATED).indicative
    mixed = CalibrationInfo(SITE, SIMULATED)
    assert mixed.indicative and mixed.statement().startswith("z-scores use the shipped SIMULATED")
    site = CalibrationInfo(SITE, SITE)
    assert not site.indicative and site.provenance == SITE
    assert site.statement() == "SBR levels and z-scores use this site's own calibration"
    assert CalibrationInfo(SITE, None).statement() == "SBR levels use this site's own calibration"


def sr_items(result: StudyResult) -> dict[str, pydicom.Dataset]:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, build_sr(result, example_evidence(result), "job-cal"),
                     enforce_file_format=True)
    sr = hd.sr.srread(io.BytesIO(buffer.getvalue()))
    (container,) = find_content_items(sr.content[0], name=codes.QUALITATIVE_EVALUATIONS)
    return {i.ConceptNameCodeSequence[0].CodeValue: i for i in container.ContentSequence}


@pytest.mark.parametrize(("info", "code"), [
    (CalibrationInfo(SIMULATED, SIMULATED), codes.SIMULATED_CALIBRATION),
    (CalibrationInfo(SITE, SITE), codes.SITE_CALIBRATION),
])
def test_sr_carries_provenance_and_note(info: CalibrationInfo, code: object) -> None:
    result = replace(example_result(), calibration=info)
    items = sr_items(result)
    value = items[codes.CALIBRATION_PROVENANCE.value].ConceptCodeSequence[0]
    assert (value.CodeValue, value.CodingSchemeDesignator) == (code.value, "99DOPANODE")  # type: ignore[attr-defined]
    assert items[codes.CALIBRATION_NOTE.value].TextValue == info.statement()
    assert summary_dict(result)["calibration"]["indicative"] == info.indicative


def test_sr_without_stated_calibration_has_no_item() -> None:
    items = sr_items(replace(example_result(), calibration=None))
    assert codes.CALIBRATION_PROVENANCE.value not in items


def test_picture_report_marks_levels_indicative() -> None:
    simulated = replace(example_result(), calibration=CalibrationInfo(SIMULATED, SIMULATED))
    lines = render._footer_lines(simulated)
    assert lines[0].startswith("* SBR levels and z-scores use the shipped SIMULATED calibration")
    site = replace(simulated, calibration=CalibrationInfo(SITE, SITE))
    assert render._footer_lines(site)[0].startswith("SBR levels and z-scores use this site's")
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, build_picture_report(simulated, example_evidence(simulated), "j"),
                     enforce_file_format=True)
    rgb = pydicom.dcmread(io.BytesIO(buffer.getvalue())).pixel_array.astype(int)
    target = np.array([int(render.CALIBRATION_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    footer = rgb[int(0.87 * render.HEIGHT_PX):]
    assert (np.abs(footer - target) <= 12).all(axis=-1).sum() > 300
    site_rgb = render.render_report_rgb(site)[int(0.87 * render.HEIGHT_PX):].astype(int)
    assert (np.abs(site_rgb - target) <= 12).all(axis=-1).sum() == 0


def test_build_commands_write_provenance(tmp_path: Path) -> None:
    from service.cli import main

    rng = np.random.default_rng(4)
    csv_path = tmp_path / "normals.csv"
    rows = ["id,caudate_left,caudate_right,putamen_left,putamen_right,age"]
    rows += [f"s{i},{3 + rng.normal(0, .2):.3f},{3 + rng.normal(0, .2):.3f},"
             f"{2 + rng.normal(0, .2):.3f},{2 + rng.normal(0, .2):.3f},{50 + i}"
             for i in range(20)]
    csv_path.write_text("\n".join(rows) + "\n")
    assert main(["build-normals", str(csv_path), "--out", str(tmp_path / "site.json")]) == 0
    assert main(["build-normals", str(csv_path), "--out", str(tmp_path / "sim.json"),
                 "--simulated"]) == 0
    assert json.loads((tmp_path / "site.json").read_text())["provenance"] == SITE
    assert json.loads((tmp_path / "sim.json").read_text())["provenance"] == SIMULATED


def test_sbr_verdict_on_simulated_thresholds_is_indicative() -> None:
    from service.pipelines.dat_spect.verdict import INDICATIVE_RULE, with_calibration

    sbr = example_result(reduced=True, with_cnn=False)
    simulated = CalibrationInfo(SIMULATED, SIMULATED)
    score = with_calibration(sbr.global_score, simulated)
    assert score.rule.endswith(INDICATIVE_RULE) and score.reduced and not score.inconclusive
    assert with_calibration(sbr.global_score, CalibrationInfo(SITE, SITE)) == sbr.global_score
    cnn = example_result(reduced=True, with_cnn=True)
    assert with_calibration(cnn.global_score, simulated) == cnn.global_score
    assert render.headline(replace(sbr, calibration=simulated))[0] == (
        "REDUCED DaT uptake - INDICATIVE")
    normal = example_result(reduced=False, with_cnn=False)
    assert render.headline(replace(normal, calibration=CalibrationInfo(SITE, SITE)))[0] == (
        "NORMAL striatal DaT uptake")
