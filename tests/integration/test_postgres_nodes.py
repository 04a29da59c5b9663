"""One setting moves the node to PostgreSQL: two node processes share one server.

Two listeners receive the two halves of one per-slice series (as two
associations behind a load balancer would deliver it); only the second node
runs a worker and the scheduler. The series completes once (quiet time,
computed from the shared rows), one job is made with every instance, and the
worker on the other node finishes it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from service.testing.nmdata import marker_image, write_marker_study
from service.testing.node import NodeProcess, fake_settings
from service.testing.peers import require_tool

pytestmark = pytest.mark.slow  # real node processes or servers


def test_two_listeners_one_worker_share_one_postgres(tmp_path: Path, postgres_dsn: str) -> None:
    files = write_marker_study(tmp_path / "ps", "per_slice",
                               image=marker_image((16, 16, 6), (4.0, 4.0, 4.0)),
                               uid_seed="pg-two-listeners")
    spool = tmp_path / "spool"  # shared, as a network file system would be (phase 2: S3)
    with NodeProcess(tmp_path / "a", settings=fake_settings(), components="scp",
                     postgres_dsn=postgres_dsn, spool_dir=spool) as a, \
            NodeProcess(tmp_path / "b", settings=fake_settings(), components="scp,worker,api",
                        postgres_dsn=postgres_dsn, spool_dir=spool) as b:
        a.start()
        b.start()
        halves = ((a, "STORESCU", files[::2]), (b, "ORTHANC", files[1::2]))
        for node, calling_ae, half in halves:  # the caller's AE title tells them apart
            cmd = [require_tool("storescu"), "-aet", calling_ae, "-aec", node.ae_title,
                   "127.0.0.1", str(node.scp_port), *map(str, half)]
            assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
        b.wait_for("SELECT pipeline, state FROM jobs", [("fake_nm", "done")], timeout_s=60)
        [(count, state)] = b.query("SELECT instance_count, state FROM series")
        assert (count, state) == (len(files), "routed")
        status, body = b.api_get("/api/jobs")
        assert status == 200 and [j["instance_count"] for j in body["jobs"]] == [len(files)]
        assert a.query("SELECT calling_ae, COUNT(*) FROM instances GROUP BY calling_ae"
                       " ORDER BY calling_ae") == [("ORTHANC", len(files) // 2),
                                                   ("STORESCU", len(files) - len(files) // 2)]
        assert a.stop() == 0 and b.stop() == 0
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert study not in a.log_text() + b.log_text()  # no identifiers in either node's log
