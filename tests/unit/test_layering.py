"""The import contract of the design (shared/design.md, "The house"): no forbidden arrow.

Every ``import`` in ``service/`` (module level and inside functions) is read
with :mod:`ast` and checked against the never-arrows:

* imaging, pipelines and report never import the socket edge, the store,
  the worker/scheduler/app, the API, or torch;
* the socket edge (``service.net``) never imports imaging, pipelines,
  inference or report: no decoding or analysis on the association thread;
* DICOM knowledge (``service.dicom``) imports no socket, store or pipeline code;
* the node (worker, scheduler, app, store, net, api) never imports the
  simulator or torch;
* only ``service.inference.onnx`` imports onnxruntime;
* only ``service.store.postgres`` imports psycopg (the PostgreSQL adapter;
  the test support reads a test node's PostgreSQL rows too).
* nothing outside ``service.testing`` imports it: the test support
  (NodeProcess, OrthancPeer, the test pipelines) ships in the distribution
  but is never part of the node.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.no_storage  # never opens the node's rows: not rerun on PostgreSQL

SERVICE = Path(__file__).resolve().parents[2] / "service"

NODE = ("service.worker", "service.job_runner", "service.scheduler", "service.app",
        "service.node_commands", "service.store", "service.net", "service.api")
RULES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("service.imaging", "service.pipelines", "service.report"),
     ("service.net", "service.store", "service.worker", "service.job_runner", "service.scheduler",
      "service.app", "service.node_commands", "service.api", "torch")),
    (("service.net",),
     ("service.imaging", "service.pipelines", "service.inference", "service.report")),
    (("service.dicom",), ("service.net", "service.store", "service.pipelines", "torch")),
    (NODE, ("service.sim", "torch", "models", "service.testing")),
)
ONNX_OWNER = "service.inference.onnx"
PSYCOPG_OWNER = "service.store.postgres"
TESTING = ("service.testing",)


def module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names imported anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations() -> list[str]:
    broken = []
    for path in sorted(SERVICE.rglob("*.py")):
        name = module_name(path)
        imported = imports_of(path)
        for sources, forbidden in RULES:
            if _under(name, sources):
                broken += [f"{name} -> {i}" for i in sorted(imported) if _under(i, forbidden)]
        if name != ONNX_OWNER:
            broken += [f"{name} -> {i}" for i in sorted(imported) if _under(i, ("onnxruntime",))]
        if name != PSYCOPG_OWNER and not _under(name, TESTING):  # tests read PostgreSQL too
            broken += [f"{name} -> {i}" for i in sorted(imported) if _under(i, ("psycopg",))]
        if not _under(name, TESTING):
            broken += [f"{name} -> {i}" for i in sorted(imported) if _under(i, TESTING)]
    return sorted(set(broken))


def test_no_forbidden_import_arrow() -> None:
    assert violations() == []


def test_the_checker_sees_a_forbidden_arrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: a pipeline module importing the store is reported, and
    so is node code importing the test support; the test support itself may."""
    fake = tmp_path / "service" / "pipelines" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from service.store import jobs\n    import onnxruntime\n")
    (tmp_path / "service" / "worker.py").write_text("from service.testing import node\n")
    allowed = tmp_path / "service" / "testing" / "node.py"
    allowed.parent.mkdir()
    allowed.write_text("from service.testing.polling import wait_until\nimport service.store\n")
    monkeypatch.setattr(__import__(__name__), "SERVICE", tmp_path / "service")
    assert violations() == ["service.pipelines.bad -> onnxruntime",
                            "service.pipelines.bad -> service.store",
                            "service.pipelines.bad -> service.store.jobs",
                            "service.worker -> service.testing",
                            "service.worker -> service.testing.node"]
