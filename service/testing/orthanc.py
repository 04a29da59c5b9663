"""A real Orthanc PACS for integration tests, on free loopback ports.

Usage::

    from service.testing.orthanc import OrthancPeer

    with OrthancPeer(tmp_path / "orthanc",
                     modalities={"dopanode": ("DOPANODE", "127.0.0.1", scp_port)}) as pacs:
        instance_id = pacs.upload(path.read_bytes())
        pacs.post("/modalities/dopanode/echo", json={})
        pacs.post("/modalities/dopanode/store", json={"Resources": [instance_id]})
        pacs.dicom_port, pacs.ae_title          # to send to Orthanc

Each peer gets its own storage and index folders and a config file under the
given directory; ``start`` returns once the REST API answers ``/system``
(polled with a deadline); ``stop`` terminates it (kill after 10 s). Orthanc's
own log is kept in ``<dir>/orthanc.log`` for failure reports.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port


def orthanc_binary() -> str:
    """Path of the Orthanc executable (Debian puts it in /usr/sbin)."""
    return require_tool("Orthanc")


class OrthancPeer:
    """One Orthanc process.

    Parameters
    ----------
    directory : Path
        Working folder (created): config, storage, index, log.
    modalities : dict of str to (ae_title, host, port)
        ``DicomModalities`` entries, e.g. ``{"dopanode": ("DOPANODE", "127.0.0.1", 11112)}``.
    ae_title : str
        Orthanc's own AE title.
    extra_config : dict, optional
        More configuration keys (override the defaults).
    """

    def __init__(self, directory: Path, modalities: dict[str, tuple[str, str, int]] | None = None,
                 ae_title: str = "ORTHANC", extra_config: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.ae_title = ae_title
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.log_path = self.directory / "orthanc.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The configuration written to ``orthanc.json``."""
        cfg: dict[str, Any] = {
            "Name": "dopanode-test-pacs",
            "StorageDirectory": str(self.directory / "storage"),
            "IndexDirectory": str(self.directory / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.ae_title,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomScuTimeout": 10,
            "StorageCompression": False,
            "SyncStorageArea": True,
            "Plugins": [],
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 4,
        }
        cfg.update(self.extra_config)
        return cfg

    def start(self, timeout_s: float = 30.0) -> OrthancPeer:
        """Write the config, start Orthanc, wait until its REST API answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        config_path = self.directory / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen([orthanc_binary(), str(config_path)],
                                      stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._client = httpx.Client(base_url=self.url, timeout=30.0)
        try:
            wait_until(self._answers, timeout_s, "Orthanc's REST API")
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        """True once ``/system`` answers 200; raises if Orthanc has exited."""
        assert self._proc is not None and self._client is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self._proc.returncode}: {self.log_tail()}")
        try:
            return self._client.get("/system").status_code == 200
        except httpx.TransportError:
            return False  # not listening yet

    def stop(self) -> None:
        """Terminate Orthanc (SIGTERM, then SIGKILL after 10 s)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def log_tail(self, n_chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    # --- REST ---------------------------------------------------------------
    def _http(self) -> httpx.Client:
        if self._client is None:
            raise RuntimeError("Orthanc is not running")
        return self._client

    def get(self, path: str, **kw: Any) -> Any:
        """GET ``path``; raises for an HTTP error; returns parsed JSON."""
        r = self._http().get(path, **kw)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, **kw: Any) -> httpx.Response:
        """POST ``path``; raises for an HTTP error; returns the response."""
        r = self._http().post(path, **kw)
        r.raise_for_status()
        return r

    def upload(self, part10: bytes) -> str:
        """Store one Part 10 file through REST; returns the Orthanc instance id."""
        r = self.post("/instances", content=part10,
                      headers={"Content-Type": "application/dicom"})
        return str(r.json()["ID"])

    def instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        ids = self.get("/instances")
        return {self.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in ids}

    def __enter__(self) -> OrthancPeer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
