"""The admin page in a real browser: Debian's headless Chromium through WebDriver.

A real node (``dopanode serve``, the real DaT pipeline) receives three series
from DCMTK's storescu: a simulated DaT study (a sentinel patient name in its
header), a per-slice DaT series with a missing slice (its job fails as
incomplete) and a brain perfusion series (ignored: not a DaT scan). Results go
to a DCMTK storescp ("pacs") and to a destination that is down ("archive").
Then the node is restarted without its worker (a retried job stays pending,
so the state change the page shows is deterministic) and Chromium opens
``/admin``:

* no token, then a wrong one: the page says the API refused the token;
* the right token: health and readiness, the queue, the outbox per
  destination, the failed job with its reason, the ignored series with its
  reason, the study with the verdict the API serves and its picture report;
* no patient name or ID anywhere in the page, UIDs abbreviated;
* Retry on the failed job: the job is pending in the page and in the database;
* with ``[api] show_patient_names = true`` (node restarted) the name appears.

Screenshots go to the test's temporary folder; with
``DOPANODE_SCREENSHOT_DIR=docs/img`` they replace the ones kept in the
repository (``docs/img/admin_*.png``, shown in docs/operations.md), so a plain
``make test`` leaves the work tree clean.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from test_dat_incomplete_node import per_slice
from test_ingress_dcmtk import storescu
from test_sender_dcmtk import start_storescp

from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.result import Region
from service.testing.dat_phantom import make_phantom, random_pose
from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess
from service.testing.ports import free_port
from service.testing.webdriver import Browser

pytestmark = pytest.mark.slow  # real node processes or servers

REPO = Path(__file__).resolve().parents[2]
PATIENT_NAME = "SENTINEL^ADMINPAGE"
PATIENT_ID = "SENTINELID4711"
TRUE_SBR = {Region.CAUDATE_LEFT: 4.0, Region.CAUDATE_RIGHT: 4.0,
            Region.PUTAMEN_LEFT: 0.25, Region.PUTAMEN_RIGHT: 1.6}


SETTINGS: dict[str, Any] = {"destinations": [
    {"name": "pacs", "ae_title": "DEST", "host": "127.0.0.1", "port": free_port()},
    {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port()},
]}


@dataclass
class Site:
    node: NodeProcess
    study_uid: str
    done_job: int
    failed_job: int
    ignored_series: str


def _with_identity(paths: list[Path]) -> list[Path]:
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.save_as(path, enforce_file_format=True)
    return paths


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("admin-page")
    rng = np.random.default_rng(14)
    phantom = make_phantom(load_atlas(), TRUE_SBR, random_pose(rng), rng)
    dat = _with_identity(write_marker_study(root / "dat", "multiframe", image=phantom.image,
                                            uid_seed="admin-page-dat"))
    gap = _with_identity(per_slice(root / "gap", "admin-page-gap", 1, drop={40}))
    other = _with_identity(write_marker_study(root / "other", "multiframe",
                                              image=marker_image((16, 16, 20)),
                                              uid_seed="admin-page-other", tracer="other"))
    scp = start_storescp(root / "storescp", SETTINGS["destinations"][0]["port"], ae_title="DEST")
    settings = SETTINGS
    try:
        with NodeProcess(root / "node", settings=settings) as node:
            node.start(timeout_s=120)
            for files in (dat, gap, other):
                sent = storescu(node, files)
                assert sent.returncode == 0, sent.stderr
            study = str(pydicom.dcmread(dat[0], stop_before_pixels=True).StudyInstanceUID)
            gap_series = str(pydicom.dcmread(gap[0], stop_before_pixels=True).SeriesInstanceUID)
            other_series = str(pydicom.dcmread(other[0],
                                               stop_before_pixels=True).SeriesInstanceUID)
            ((done,),) = node.wait_for(
                "SELECT id FROM jobs WHERE study_uid = ? AND state = 'done'",
                lambda r: len(r) == 1, timeout_s=240, params=(study,))
            ((failed,),) = node.wait_for(
                "SELECT id FROM jobs WHERE series_uid = ? AND state = 'failed'",
                lambda r: len(r) == 1, timeout_s=120, params=(gap_series,))
            node.wait_for("SELECT state FROM series WHERE series_uid = ?", [("ignored",)],
                          params=(other_series,))
            node.wait_for("SELECT COUNT(*) FROM outbox WHERE destination = 'pacs'"
                          " AND state = 'sent' AND job_id = ?", [(2,)], params=(done,))
            node.wait_for("SELECT COUNT(*) FROM outbox WHERE destination = 'archive'"
                          " AND last_error IS NOT NULL", lambda r: r[0][0] >= 1)
            assert node.stop() == 0
            # Without the worker a retried job stays pending: the page's change is certain.
            node.components = "scp,sender,api"
            node.start(timeout_s=120)
            yield Site(node, study, int(done), int(failed), other_series)
            assert node.stop() == 0
            assert PATIENT_NAME.split("^")[0] not in node.log_text()
    finally:
        scp.terminate()
        scp.wait(10)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go (see the module docstring)."""
    chosen = os.environ.get("DOPANODE_SCREENSHOT_DIR")
    return REPO / chosen if chosen else tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with Browser(tmp_path_factory.mktemp("chromium") / "profile") as b:
        yield b


def enter_token(browser: Browser, token: str) -> None:
    browser.find("#token").send_keys(token)
    browser.find("#token-save").click()


def page_source(browser: Browser) -> str:
    return str(browser.execute("return document.documentElement.outerHTML;"))


def test_wrong_token_shows_an_error(site: Site, browser: Browser, shots: Path) -> None:
    browser.get(f"http://127.0.0.1:{site.node.api_port}/admin")
    text = browser.wait_for_text("#error", "refused the token")
    assert "missing Bearer token" in text
    enter_token(browser, "not-the-token-at-all")
    text = browser.wait_for_text("#error", "invalid token")
    assert "refused the token (401" in text
    assert str(site.done_job) not in browser.text("#studies")  # nothing leaked past the 401
    browser.screenshot(shots / "admin_wrong_token.png", full_page=False)


def test_page_shows_health_queue_outbox_studies_without_names(site: Site, browser: Browser,
                                                              shots: Path) -> None:
    browser.get(f"http://127.0.0.1:{site.node.api_port}/admin")
    enter_token(browser, site.node.api_token)
    studies = browser.wait_for_text("#studies", "level · SBR")
    browser.wait_for("return [...document.querySelectorAll('img.thumb')]"
                     ".some(i => i.complete && i.naturalWidth > 0);", 30, "the picture report")
    assert not browser.text("#error")

    status, served = site.node.api_get(f"/api/studies/{site.study_uid}")
    assert status == 200
    result = served["results"]["dat_spect"]["result"]
    verdict = "reduced" if result["global"]["reduced"] else "normal"
    row = browser.text(f"#studies tr[data-job='{site.done_job}']")
    assert "dat_spect" in row and verdict in row
    sbr = result["regions"]["putamen_left"]["sbr"]
    assert f"{result['regions']['putamen_left']['level']} · {sbr:.2f}" in row
    assert "…" + site.study_uid[-12:] in studies  # abbreviated
    assert site.study_uid not in page_source(browser)

    health = browser.wait_for_text("#health", "ready")
    assert "ready" in health and "database" in health and "scp" in health
    queue = browser.wait_for_text("#queue", "dat_spect")  # panels refresh one by one
    assert "dat_spect" in queue
    outbox = browser.wait_for_text("#outbox", "archive")
    assert "pacs" in outbox and "archive" in outbox
    archive = browser.text("#outbox tbody tr:nth-child(2)").split("\t")
    assert archive[0] == "archive" and int(archive[1]) >= 1 and archive[-1] != "–"  # its error
    failed = browser.text(f"#failed tr[data-job='{site.failed_job}']")
    assert "incomplete_series" in failed and "missing slices" in failed
    ignored = browser.text("#ignored")
    assert "…" + site.ignored_series[-12:] in ignored and "dat_spect" in ignored

    source = page_source(browser)
    for identifier in (PATIENT_NAME, "SENTINEL", PATIENT_ID, "SIM^"):
        assert identifier not in source
    browser.screenshot(shots / "admin_overview.png")

    browser.find("img.thumb").click()
    browser.wait_for("return document.getElementById('picture-dialog').open &&"
                     " document.getElementById('picture-full').naturalWidth > 0;", 10,
                     "the full picture report")
    browser.screenshot(shots / "admin_picture.png", full_page=False)
    browser.find("#picture-dialog button").click()


def test_retry_button_queues_the_failed_job_again(site: Site, browser: Browser,
                                                  shots: Path) -> None:
    browser.get(f"http://127.0.0.1:{site.node.api_port}/admin")  # the token is kept (tab)
    browser.wait_for_text(f"#failed tr[data-job='{site.failed_job}']", "Retry")
    browser.find(f"#failed button[data-job='{site.failed_job}']").click()
    notice = browser.wait_for_text("#notice", "queued again")
    assert f"Job {site.failed_job}" in notice and "pending" in notice
    browser.wait_for("return !document.querySelector(arguments[0]);", 15,
                     "the job to leave the failed list", f"#failed tr[data-job='{site.failed_job}']")
    row = browser.wait_for_text(f"#studies tr[data-job='{site.failed_job}']", "pending")
    assert "failed" not in row
    assert site.node.query("SELECT state FROM jobs WHERE id = ?",
                           (site.failed_job,)) == [("pending",)]
    browser.screenshot(shots / "admin_after_retry.png")


def test_names_appear_only_when_the_site_enables_them(site: Site, browser: Browser) -> None:
    node = site.node
    assert node.stop() == 0
    node._write_config({"destinations": SETTINGS["destinations"],
                        "api": {"show_patient_names": True}})
    node.start(timeout_s=120)
    browser.get(f"http://127.0.0.1:{node.api_port}/admin")
    browser.wait_for_text("#studies", "patient")
    row = browser.text(f"#studies tr[data-job='{site.done_job}']")
    assert PATIENT_NAME in row
    assert PATIENT_ID not in page_source(browser)  # the name, never the ID
