"""A reader is never left with nothing: incomplete DaT series in a real node, DCMTK on both sides.

storescu sends a per-slice NM series into ``dopanode serve`` (the real DaT
pipeline); a DCMTK storescp is the destination. Two cases, short waits set in
the settings:

* 72 of the 80 slices the header announces (Number of Slices 80): the series
  completes by quiet time but is not analysed; routing waits
  ``incomplete_wait_s``, then the job fails ``incomplete_series`` and the
  "analysis not possible" SR reaches storescp (and nothing else does);
* Number of Slices 1 on every slice (no count announced) and one slice
  missing in the middle: refused as incomplete, failure SR delivered.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from test_ingress_dcmtk import storescu
from test_sender_dcmtk import received, start_storescp

from service.pipelines.dat_spect import codes
from service.pipelines.dat_spect.failure import FAILURE_SR_SERIES_DESCRIPTION
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port

pytestmark = pytest.mark.slow  # real node processes or servers

N_SLICES = 80
WAIT_S = 4.0


def per_slice(out_dir: Path, seed: str, number_of_slices: int, drop: set[int]) -> list[Path]:
    """A 16x16x80 per-slice DaT series; the slices in ``drop`` are not returned."""
    paths = write_marker_study(out_dir, "per_slice", image=marker_image((16, 16, N_SLICES)),
                               uid_seed=seed)
    kept = []
    for k, path in enumerate(paths):
        if k in drop:
            continue
        ds = pydicom.dcmread(path)
        ds.NumberOfSlices = number_of_slices
        ds.save_as(path, enforce_file_format=True)
        kept.append(path)
    return kept


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, Path]]:
    root = tmp_path_factory.mktemp("dat-incomplete")
    port = free_port()
    inbox = root / "storescp"
    scp = start_storescp(inbox, port, ae_title="DEST")
    settings = {
        "destinations": [{"name": "pacs", "ae_title": "DEST", "host": "127.0.0.1",
                          "port": port}],
        "pipelines": {"dat_spect": {"incomplete_wait_s": WAIT_S, "report_failures": True}},
    }
    try:
        with NodeProcess(root / "node", settings=settings, components="scp,worker,sender") as node:
            node.start(timeout_s=120)
            yield node, inbox
            assert node.stop() == 0
    finally:
        scp.terminate()
        scp.wait(10)


def delivered(inbox: Path, series_uid: str) -> list[pydicom.Dataset]:
    """What storescp received that references ``series_uid``."""
    out = []
    for path in received(inbox):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, OSError, ValueError):  # storescp still writing
            continue
        evidence = ds.get("CurrentRequestedProcedureEvidenceSequence", [])
        refs = {r.SeriesInstanceUID for e in evidence for r in e.ReferencedSeriesSequence}
        if series_uid in refs:
            out.append((path, ds))
    return out


def check_failure_sr(path: Path, ds: pydicom.Dataset, reason_start: str) -> None:
    assert ds.Modality == "SR" and ds.SeriesDescription == FAILURE_SR_SERIES_DESCRIPTION
    texts = {i.ConceptNameCodeSequence[0].CodeValue: i.TextValue
             for i in ds.ContentSequence if i.ValueType == "TEXT"}
    assert texts[codes.ANALYSIS_NOT_POSSIBLE.value].startswith(reason_start)
    dump = subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True,
                          timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "Analysis not possible" in dump.stdout


def test_announced_slices_missing_wait_then_report_incomplete(
        peers: tuple[NodeProcess, Path], tmp_path: Path) -> None:
    node, inbox = peers
    files = per_slice(tmp_path / "a", "dat-72-of-80", N_SLICES, drop=set(range(72, 80)))
    series = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    sent = storescu(node, files)
    assert sent.returncode == 0, sent.stderr
    # Complete by quiet time, yet no job while routing waits for the rest.
    node.wait_for("SELECT state FROM series WHERE series_uid = ?", [("complete",)],
                  params=(series,))
    assert node.query("SELECT COUNT(*) FROM jobs WHERE series_uid = ?", (series,)) == [(0,)]
    (row,) = node.wait_for(
        "SELECT state, reason_code, reason, note, created_at FROM jobs WHERE series_uid = ?",
        lambda r: len(r) == 1 and r[0][0] == "failed", timeout_s=60, params=(series,))
    ((completed_at, state),) = node.query(
        "SELECT completed_at, state FROM series WHERE series_uid = ?", (series,))
    assert row[4] - completed_at >= WAIT_S and state == "routed"
    assert row[1] == "incomplete_series"
    assert row[2] == "incomplete series: 72 of 80 announced slices"
    assert row[3] == f"incomplete: 72 of 80 announced slices after {WAIT_S:g} s"
    got = wait_until(lambda: delivered(inbox, series), 60, "the failure SR at storescp")
    (path, ds), = got
    check_failure_sr(path, ds, "incomplete series: 72 of 80")
    assert ds.StudyInstanceUID == pydicom.dcmread(files[0]).StudyInstanceUID


def test_gap_without_announced_count_is_refused_as_incomplete(
        peers: tuple[NodeProcess, Path], tmp_path: Path) -> None:
    node, inbox = peers
    files = per_slice(tmp_path / "b", "dat-gap", 1, drop={40})
    series = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    sent = storescu(node, files)
    assert sent.returncode == 0, sent.stderr
    (row,) = node.wait_for(
        "SELECT state, reason_code, reason FROM jobs WHERE series_uid = ?",
        lambda r: len(r) == 1 and r[0][0] == "failed", timeout_s=60, params=(series,))
    assert row[1:] == ("incomplete_series", "incomplete series: missing slices: 1 gap(s) in "
                       "the stack")
    got = wait_until(lambda: delivered(inbox, series), 60, "the failure SR at storescp")
    (path, ds), = got
    check_failure_sr(path, ds, "incomplete series: missing slices")
