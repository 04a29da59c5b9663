"""The OHIF viewer (prebuilt ``@ohif/app`` 3.x) in front of a real Orthanc.

Not part of ``make test``: the viewer is a manual download from the npm
registry (``npm pack @ohif/app@3.13.2``, 50 MB; see
``scripts/fdopa_viewer_screenshot.sh``). The package's ``dist`` folder is the
complete built web application, with the DICOM SEG extension
(``@ohif/extension-cornerstone-dicom-seg``) in its default mode.

:class:`OhifServer` serves that ``dist`` folder on a free loopback port and
forwards ``/dicom-web/...`` to Orthanc's DICOMweb plugin (``orthanc-dicomweb``),
so the viewer and its DICOMweb server share one origin (no CORS setup in
Orthanc). Paths that are not files get ``index.html`` (the viewer's client-side
routes such as ``/viewer?StudyInstanceUIDs=...``). ``app-config.js`` is
generated: one DICOMweb data source at this origin, nothing else enabled.

Tried first and given up: ``@ohif/viewer@4.12.51`` (OHIF v2's UMD bundle) has
no SEG support built in; its separately published
``@ohif/extension-dicom-segmentation@0.7.21`` UMD bundles its own copy of
``@ohif/core`` and cornerstone-tools, so loading a SEG fails in it ("Error
loading derived display set: ... getFirstImageId": the extension's study
metadata manager is not the viewer's).
"""

from __future__ import annotations

import json
import mimetypes
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from service.testing.ports import free_port

#: The version the reproduction was made with (``npm pack @ohif/app@3.13.2``).
OHIF_PACKAGE = "@ohif/app@3.13.2"
DICOMWEB_PREFIX = "/dicom-web"


#: Debian ``orthanc-dicomweb``'s plugin (scripts/install-peers.sh installs it).
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def dicomweb_config() -> dict[str, object]:
    """``OrthancPeer`` ``extra_config`` that loads the DICOMweb plugin under ``/dicom-web/``.

    Raises ``FileNotFoundError`` when the plugin is not installed (a missing
    peer fails a test, never skips it).
    """
    if not DICOMWEB_PLUGIN.is_file():
        raise FileNotFoundError(f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} is missing: "
                                "run scripts/install-peers.sh (orthanc-dicomweb)")
    return {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}


def app_config(root: str) -> str:
    """``app-config.js``: one DICOMweb data source at ``root`` + ``/dicom-web`` (WADO-RS)."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (loopback)", "name": "orthanc",
            "wadoUriRoot": f"{root}/wado", "qidoRoot": f"{root}{DICOMWEB_PREFIX}",
            "wadoRoot": f"{root}{DICOMWEB_PREFIX}", "qidoSupportsIncludeField": False,
            "imageRendering": "wadors", "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {"routerBasename": "/", "extensions": [], "modes": [], "showStudyList": True,
              "maxNumberOfWebWorkers": 2, "showLoadingIndicator": True,
              "showWarningMessageForCrossOrigin": False, "showCPUFallbackMessage": True,
              "defaultDataSourceName": "orthanc", "dataSources": [source]}
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.startswith(DICOMWEB_PREFIX + "/"):
            self._forward()
        else:
            self._static()

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _static(self) -> None:
        name = self.path.split("?", 1)[0].lstrip("/")
        if name == "app-config.js":
            root = f"http://127.0.0.1:{self.server.server_address[1]}"
            self._send(200, app_config(root).encode(), "application/javascript")
            return
        path = (self.server.dist / name).resolve()
        if name and path.is_file() and self.server.dist in path.parents:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._send(200, path.read_bytes(), kind)
            return
        html = (self.server.dist / "index.html").read_bytes()
        self._send(200, html, "text/html; charset=utf-8")

    def _forward(self) -> None:
        request = urllib.request.Request(self.server.orthanc_url + self.path, headers={
            "Accept": self.headers.get("Accept", "*/*")})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                body, status = answer.read(), answer.status
                kind = answer.headers.get("Content-Type", "application/octet-stream")
        except urllib.error.HTTPError as err:
            body, status = err.read(), err.code
            kind = err.headers.get("Content-Type", "text/plain")
        self._send(status, body, kind)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.server.requests.append(format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, orthanc_url: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self.requests: list[str] = []


class OhifServer:
    """The OHIF bundle and a DICOMweb forwarder on one loopback port.

    Parameters
    ----------
    dist : Path
        The bundle's ``dist`` folder (``index.html``, ``index.umd.js``).
    orthanc_url : str
        Orthanc's REST root; its DICOMweb plugin answers under ``/dicom-web``.
    """

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        if not (dist / "app-config.js").is_file():
            raise FileNotFoundError(f"no OHIF bundle in {dist} (npm pack {OHIF_PACKAGE})")
        self._server = _Server(free_port(), dist, orthanc_url)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        """The request lines served so far (for failure reports)."""
        return list(self._server.requests)

    def viewer_url(self, study_uid: str) -> str:
        """The viewer route of one study."""
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
