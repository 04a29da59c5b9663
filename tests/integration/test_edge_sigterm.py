"""A real node stops on SIGTERM after bad C-STOREs (reliability audit D4, D7, D20).

``dopanode serve`` as a subprocess, each acceptor: a C-STORE of an unknown
SOP class (answered 0x0122; pynetdicom aborted, which deadlocked the event
acceptor's DUL thread so SIGTERM never completed) and one with an
undecodable command set (0xC000), then C-ECHO, /ready and SIGTERM: exit
code 0 within the timeout. The /metrics text counts a refused association
with its reason.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from service.testing.node import NodeProcess

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit"))

from test_scp_edge import (  # noqa: E402  (helpers of the unit tests)
    nm_bytes,
    send_raw_command,
    send_store,
    store_command,
)

from service.testing.peers import require_tool  # noqa: E402
from service.testing.scu import send_echo  # noqa: E402


@pytest.mark.parametrize("acceptor_kind", ["event", "pynetdicom"])
def test_sigterm_completes_after_bad_stores(tmp_path: Path, acceptor_kind: str) -> None:
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE

    from service.dicom import codes

    with NodeProcess(tmp_path, settings={"node": {"acceptor": acceptor_kind}}) as node:
        node.start()
        ae = AE(ae_title="STORESCU")
        ae.dimse_timeout = 10
        ae.add_requested_context(codes.VERIFICATION)
        ae.add_requested_context(codes.NM_IMAGE_STORAGE, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.scp_port, ae_title=node.ae_title)
        assert assoc.is_established
        data, uid = nm_bytes("sigterm")
        assert send_store(assoc, data, "1.2.3.4.5.6", uid).Status == 0x0122
        assert send_raw_command(assoc, store_command(None), data).Status == 0xC000
        # pynetdicom's send_c_echo can lose its answer to the reactor right after
        # a hand-built message (CI 2026-12-05); the helper pauses the reactor first
        assert send_echo(assoc).Status == 0x0000
        assoc.release()
        echoscu = require_tool("echoscu")
        wrong = subprocess.run([echoscu, "-aet", "ECHOSCU", "-aec", "WRONG", "127.0.0.1",
                                str(node.scp_port)], capture_output=True, timeout=30)
        assert wrong.returncode != 0
        status, _ = node.api_get("/ready", token=None)
        assert status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/metrics",
                                    timeout=10) as response:
            metrics_text = response.read().decode()
        assert 'dopanode_associations_total{reason="called_ae",result="rejected"} 1.0' in (
            metrics_text)
        assert node.stop(timeout_s=30) == 0  # before: never exited (SIGKILLed)
