"""Orthanc and dopanode wired to each other: the PACS round trip, for tests and the demo.

Orthanc has dopanode as modality ``dopanode``; dopanode has Orthanc as its
destination ``pacs`` (and ``ORTHANC`` is an allowed caller in the node's base
test config).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.testing.node import NodeProcess
from service.testing.orthanc import OrthancPeer
from service.testing.polling import wait_until


@contextmanager
def pacs_and_node(work_dir: Path, settings: dict[str, Any] | None = None
                  ) -> Iterator[tuple[OrthancPeer, NodeProcess]]:
    """Start Orthanc and ``dopanode serve`` pointing at each other; stop both after.

    ``settings``: more TOML sections for the node (e.g. ``{"pipelines": {...}}``).
    """
    pacs = OrthancPeer(work_dir / "orthanc")
    destination = {"name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1",
                   "port": pacs.dicom_port}
    node_settings = {**(settings or {}), "destinations": [destination]}
    with NodeProcess(work_dir / "node", settings=node_settings) as node:
        pacs.modalities["dopanode"] = (node.ae_title, "127.0.0.1", node.scp_port)
        with pacs:
            node.start()
            yield pacs, node


def route_and_wait(pacs: OrthancPeer, instance_id: str, expected_series: int = 3,
                   timeout_s: float = 120.0) -> list[dict[str, Any]]:
    """Push the instance's series to dopanode (as a routing rule would) and wait.

    Returns the study's series once it holds ``expected_series`` of them (the
    source, the SR and the picture report).
    """
    series_id = pacs.get(f"/instances/{instance_id}/series")["ID"]
    study_id = pacs.get(f"/instances/{instance_id}/study")["ID"]
    pacs.post("/modalities/dopanode/store", json={"Resources": [series_id],
                                                  "Synchronous": True})

    def complete() -> list[dict[str, Any]] | None:
        series: list[dict[str, Any]] = pacs.get(f"/studies/{study_id}/series")
        return series if len(series) == expected_series else None

    result: list[dict[str, Any]] = wait_until(complete, timeout_s,
                                              "SR and picture report in the study")
    return result
