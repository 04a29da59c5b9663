"""The OHIF front (service/testing/ohif.py) against a real Orthanc with its DICOMweb plugin.

The viewer itself is a manual npm download (scripts/fdopa_viewer_screenshot.sh),
so a stand-in ``dist`` folder is served here; what is tested is what the
screenshot relies on: the generated ``app-config.js`` points at this origin,
client-side routes get ``index.html``, nothing outside ``dist`` is served, and
QIDO-RS / WADO-RS requests reach Orthanc's DICOMweb plugin and come back.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from service.sim.fdopa.pet_writer import PetEncoding, PetSeriesInfo, build_pet_series
from service.testing.ohif import OhifServer, dicomweb_config
from service.testing.orthanc import OrthancPeer

INFO = PetSeriesInfo("ohif-seed", 70.0, 180.0, 50, "F", "SIEMENS", "Biograph", "OSEM", 2,
                     "Brain FDOPA")


def _get(url: str, accept: str = "*/*") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, answer.headers.get("Content-Type", ""), answer.read()


def _part10(ds: object) -> bytes:
    buffer = DicomBytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_ohif_front_serves_the_app_and_forwards_dicomweb(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    (dist / "index.html").write_text("<html>stand-in viewer</html>")
    (dist / "app-config.js").write_text("window.config = {};  // replaced when served")
    (dist / "app.bundle.js").write_text("console.log('bundle')")
    (tmp_path / "secret.txt").write_text("outside dist")
    image = sitk.GetImageFromArray(np.full((3, 8, 8), 1000.0, np.float32))
    datasets = build_pet_series([image], [600.0], [1200.0], INFO, PetEncoding(), False)
    study_uid = str(datasets[0].StudyInstanceUID)

    with OrthancPeer(tmp_path / "orthanc", extra_config=dicomweb_config()) as pacs:
        for ds in datasets:
            pacs.upload(_part10(ds))
        with OhifServer(dist, pacs.url) as viewer:
            _, kind, body = _get(f"{viewer.url}/app-config.js")
            config = json.loads(body.decode().split("=", 1)[1].strip().rstrip(";"))
            [source] = config["dataSources"]
            assert source["configuration"]["qidoRoot"] == f"{viewer.url}/dicom-web"
            assert config["defaultDataSourceName"] == source["sourceName"]
            assert "javascript" in kind
            assert _get(viewer.viewer_url(study_uid))[2] == b"<html>stand-in viewer</html>"
            assert _get(f"{viewer.url}/app.bundle.js")[2] == b"console.log('bundle')"
            connection = http.client.HTTPConnection("127.0.0.1", int(viewer.url.rsplit(":", 1)[1]))
            connection.request("GET", "/../secret.txt")
            assert b"outside dist" not in connection.getresponse().read()
            connection.close()

            status, kind, body = _get(f"{viewer.url}/dicom-web/studies?StudyInstanceUID={study_uid}",
                                      "application/dicom+json")
            assert status == 200 and "json" in kind
            [study] = json.loads(body)
            assert study["0020000D"]["Value"] == [study_uid]
            series_uid = str(datasets[0].SeriesInstanceUID)
            _, kind, body = _get(f"{viewer.url}/dicom-web/studies/{study_uid}/series/"
                                 f"{series_uid}/metadata", "application/dicom+json")
            assert len(json.loads(body)) == len(datasets)
            missing = urllib.request.Request(f"{viewer.url}/dicom-web/studies/1.2.3/metadata")
            try:
                urllib.request.urlopen(missing, timeout=30)
                raise AssertionError("an unknown study was answered")
            except urllib.error.HTTPError as err:
                assert err.code == 404
    assert any("/dicom-web/studies" in line for line in viewer.requests)
