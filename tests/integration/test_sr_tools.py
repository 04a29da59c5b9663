"""The SR and the picture report checked by real DICOM tools.

dciodvfy (dicom3tools) validates both IODs; DCMTK's dsrdump parses the SR and
dsr2html renders it. The only dciodvfy warnings allowed are the ones for the
documented private coding scheme 99DOPANODE, which dciodvfy cannot know.
"""

from __future__ import annotations

import html
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from service.pipelines.dat_spect.example import example_evidence, example_result
from service.pipelines.dat_spect.picture import build_picture_report
from service.pipelines.dat_spect.result import Region, StudyResult
from service.pipelines.dat_spect.sr import RESEARCH_USE_TEXT, build_sr
from service.testing.peers import require_tool

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

JOB = "job-tools-1"
ALLOWED_WARNINGS = ("Unrecognized defined term <99DOPANODE>",)
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def result() -> StudyResult:
    base = example_result(reduced=True, with_cnn=True)
    return replace(base, warnings=("registration quality below 0.95",))


@pytest.fixture(scope="module")
def files(result: StudyResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("report")
    evidence = example_evidence(result)
    paths = {"sr": out / "sr.dcm", "picture": out / "picture.dcm"}
    pydicom.dcmwrite(paths["sr"], build_sr(result, evidence, JOB), enforce_file_format=True)
    picture = build_picture_report(result, evidence, JOB)
    pydicom.dcmwrite(paths["picture"], picture, enforce_file_format=True)
    return paths


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


@pytest.mark.parametrize(("kind", "iod"), [("sr", "ComprehensiveSR"), ("picture", "SCImage")])
def test_dciodvfy_reports_no_errors(files: dict[str, Path], kind: str, iod: str) -> None:
    proc = run(require_tool("dciodvfy"), files[kind])
    output = proc.stdout + proc.stderr
    assert iod in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(errors)
    warnings = [line for line in lines if line.startswith("Warning")]
    unexpected = [w for w in warnings if not any(a in w for a in ALLOWED_WARNINGS)]
    assert unexpected == [], "\n".join(unexpected)


def test_dsrdump_parses_without_complaint(files: dict[str, Path], result: StudyResult) -> None:
    proc = run(require_tool("dsrdump"), files["sr"])
    assert proc.returncode == 0, proc.stderr
    assert "W:" not in proc.stderr and "E:" not in proc.stderr, proc.stderr
    dump = proc.stdout
    assert "Comprehensive SR Document" in dump
    assert dump.count('"Measurement Group")') == 5
    left_putamen = result.region(Region.PUTAMEN_LEFT)
    assert f'"Specific binding ratio")="{left_putamen.sbr:g}"' in dump


def rendered_text(html_text: str) -> str:
    text = re.sub(r"<[^>]+>", " ", html_text)
    return re.sub(r"\s+", " ", html.unescape(text))


def test_dsr2html_renders_the_levels_readably(
    files: dict[str, Path], result: StudyResult, tmp_path: Path
) -> None:
    out = tmp_path / "sr.html"
    proc = run(require_tool("dsr2html"), files["sr"], out)
    assert proc.returncode == 0, proc.stderr
    text = rendered_text(out.read_text(encoding="utf-8", errors="replace"))
    # Each group reads "<level concept>: <level meaning>" in document order.
    for region in Region:
        r = result.region(region)
        assert f'Tracking Identifier = "{region.value.replace("_", " ")}"' in text
        segment = text.split(f'"{region.value.replace("_", " ")}"', 1)[1]
        segment = segment.split("Measurement Group", 1)[0]
        assert f"Striatal DaT uptake level: {r.level.label.capitalize()}" in segment
        assert f"SBR thresholds: {r.level_sbr.label.capitalize()}" in segment
        assert r.level_cnn is not None
        assert f"Striatal DaT uptake level, CNN: {r.level_cnn.label.capitalize()}" in segment
        assert f"Specific binding ratio: {r.sbr:g}" in segment
    assert "Finding: Abnormal" in text
    assert "Result inconclusive: No" in text
    assert RESEARCH_USE_TEXT in text
    assert "Warning: registration quality below 0.95" in text
