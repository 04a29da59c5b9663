"""The container files, validated offline (no image registry, no Docker engine here).

* docker/Dockerfile: the final user is a numeric non-root UID; a HEALTHCHECK
  asks /health on the API port; the exposed ports are the compose settings'
  DICOM and API ports; the shipped model, template and atlas are copied in,
  checked against their SHA-256 sidecars, and found through
  DOPANODE_MODELS_DIR; the default command reads the config the compose file
  mounts.
* /.dockerignore: the build context holds what the image needs (service/,
  models with their checksums) and not training code, tests or a venv; the
  models folder as the image gets it loads into the same DaT pipeline
  (template, calibration, normals, CNN) as the repository's.
* The HEALTHCHECK command itself, run against a real node: 0 while it
  serves, non-zero once it is stopped.
* deploy/compose/docker-compose.yml: ``docker-compose config`` accepts it (and
  refuses it without an API token); dopanode, Orthanc and Prometheus are in it;
  Prometheus gets deploy/prometheus/ (config and rules) mounted where its
  command reads it, and scrapes the node's API port; Orthanc and dopanode name
  each other with matching AE titles, hosts and ports, and Orthanc's network
  is inside dopanode's allowed callers; logs are bounded; the node gets time
  to stop; ``dopanode config check`` accepts the compose settings.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.app import compose_pipelines
from service.config import Settings, WorkerSettings
from service.testing.node import REPO_ROOT, NodeProcess, fake_settings
from service.testing.peers import require_tool

DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE_DIR = REPO_ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "docker-compose.yml"
NODE_TOML = COMPOSE_DIR / "dopanode.toml"
PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
TOKEN = "compose-test-token-0123456789abcdef"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def args_of(name: str) -> list[str]:
    return [rest for word, rest in instructions() if word == name]


@pytest.fixture(scope="module")
def node_toml() -> dict[str, Any]:
    return tomllib.loads(NODE_TOML.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


# --- Dockerfile -------------------------------------------------------------------------
def test_image_runs_as_a_numeric_non_root_user():
    users = args_of("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, users[-1]
    assert gid == "" or (gid.isdigit() and int(gid) > 0), users[-1]
    assert any(f"--uid {uid}" in run for run in args_of("RUN")), "the user is not created"
    after_user = [w for w, _ in instructions()[[w for w, _ in instructions()].index("USER"):]]
    assert "RUN" not in after_user and "COPY" not in after_user  # nothing installed as the user


def test_healthcheck_asks_health_on_the_api_port(node_toml):
    (check,) = args_of("HEALTHCHECK")
    assert "CMD" in check and "NONE" not in check
    assert f"127.0.0.1:{node_toml['api']['port']}/health" in check
    assert re.search(r"--start-period=\d+s", check) and "--timeout=" in check


def test_exposed_ports_are_the_configured_dicom_and_api_ports(node_toml):
    exposed = {int(p.split("/")[0]) for e in args_of("EXPOSE") for p in e.split()}
    assert exposed == {node_toml["node"]["port"], node_toml["api"]["port"]}


def test_models_are_inside_the_image_and_checked():
    workdir = args_of("WORKDIR")[0]
    (models_dest,) = [c.split()[1] for c in args_of("COPY") if c.split()[0] == "models"]
    models_dir = (Path(workdir) / models_dest).as_posix().replace("/./", "/")
    env = " ".join(args_of("ENV"))
    assert f"DOPANODE_MODELS_DIR={models_dir}" in env, (models_dir, env)
    runs = " ".join(args_of("RUN"))
    for sidecar in ("dopanode_dat_cnn.onnx.sha256", "dopanode_dat_putamen_estimator.npz.sha256",
                    "mni_2mm.npz.sha256",
                    "fdopa_template_mni2mm.npz.sha256"):
        assert f"sha256sum -c {sidecar}" in runs
    # what those RUN lines check holds for the files in the repository
    for folder, sidecar in [("models", "dopanode_dat_cnn.onnx.sha256"),
                            ("models", "dopanode_dat_putamen_estimator.npz.sha256"),
                            ("models/atlas", "mni_2mm.npz.sha256"),
                            ("models/fdopa_template", "fdopa_template_mni2mm.npz.sha256")]:
        ok = subprocess.run(["sha256sum", "-c", sidecar], cwd=REPO_ROOT / folder,
                            capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stdout + ok.stderr


def test_default_command_reads_the_mounted_config(compose):
    cmd = json.loads(args_of("CMD")[-1])
    config = cmd[cmd.index("--config") + 1]
    mounts = [v.split(":") for v in compose["services"]["dopanode"]["volumes"]]
    assert [config, "ro"] in [m[1:] for m in mounts if m[0] == "./dopanode.toml"]
    assert json.loads(args_of("ENTRYPOINT")[-1]) == ["dopanode"]


# --- build context ----------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
    table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(table.get(p, re.escape(p)) for p in parts))


def context_files() -> set[str]:
    """Files Docker sends as the build context, by .dockerignore's rules.

    Docker's rules, re-implemented for the patterns used here: a pattern
    matches a path or any folder above it, ``*`` stays within a folder, ``**``
    crosses folders, the last matching line wins, ``!`` re-includes.
    """
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), _pattern_regex(line.lstrip("!"))))
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=REPO_ROOT, capture_output=True, text=True, check=True,
                             timeout=30).stdout.split()
    files = set()
    for path in tracked:
        prefixes = ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 2)]
        excluded = False
        for negated, regex in rules:
            if any(regex.fullmatch(p) for p in prefixes):
                excluded = not negated
        if not excluded:
            files.add(path)
    return files


def test_build_context_has_the_runtime_and_models_only():
    files = context_files()
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "service/cli.py", "service/metrics.py",
                   "models/dopanode_dat_cnn.onnx", "models/dopanode_dat_cnn.onnx.sha256",
                   "models/dopanode_dat_putamen_estimator.npz",
                   "models/dopanode_dat_putamen_estimator.npz.sha256",
                   "models/template/fpcit_template_mni2mm.npz",
                   "models/template/fpcit_template_noac_mni2mm.npz",
                   "models/template/calibration.json", "models/template/normals.json",
                   "models/atlas/mni_2mm.npz", "models/atlas/mni_2mm.npz.sha256",
                   "models/fdopa_template/fdopa_template_mni2mm.npz",
                   "models/fdopa_template/fdopa_template_mni2mm.npz.sha256"):
        assert needed in files, needed
    for path in files:
        assert not path.startswith(("tests/", "bench/", "docs/", ".venv/", "models/training/",
                                    "scripts/", "deploy/")), path
        assert "__pycache__" not in path, path


def test_models_as_the_image_gets_them_load_the_same_pipeline(tmp_path, monkeypatch):
    models_dir = tmp_path / "opt" / "dopanode" / "models"
    for path in context_files():
        if path.startswith("models/"):
            target = models_dir / path.removeprefix("models/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REPO_ROOT / path, target)
    reference = compose_pipelines(Settings())["dat_spect"]
    monkeypatch.setenv("DOPANODE_MODELS_DIR", str(models_dir))
    settings = Settings()
    assert settings.pipelines["dat_spect"].cnn_path == models_dir / "dopanode_dat_cnn.onnx"
    image = compose_pipelines(settings)["dat_spect"]
    assert image.models.calibration is not None and image.models.normals is not None
    assert image.models.sha256 == reference.models.sha256  # template, calibration, normals
    assert image.algorithm == reference.algorithm  # the same CNN, estimator and checksums
    assert image.estimator is not None and image.estimator.sha256 == (
        reference.estimator.sha256)


@pytest.mark.slow
def test_healthcheck_command_passes_on_a_serving_node_and_fails_on_a_stopped_one(tmp_path):
    (check,) = args_of("HEALTHCHECK")
    argv = json.loads(check[check.index("CMD") + 3:])
    assert argv[0] == "python"
    with NodeProcess(tmp_path, settings=fake_settings()) as node:
        node.start()
        command = [sys.executable, *(a.replace("127.0.0.1:8080", f"127.0.0.1:{node.api_port}")
                                     for a in argv[1:])]
        assert subprocess.run(command, capture_output=True, timeout=30).returncode == 0
        node.stop()
        assert subprocess.run(command, capture_output=True, timeout=30).returncode != 0


# --- compose ----------------------------------------------------------------------------
def _compose_config(token: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DOPANODE_API_TOKEN"}
    if token is not None:
        env["DOPANODE_API_TOKEN"] = token
    return subprocess.run([require_tool("docker-compose"), "-f", str(COMPOSE), "config"],
                          capture_output=True, text=True, env=env, timeout=60)


def test_docker_compose_accepts_the_file_and_requires_a_token():
    ok = _compose_config(TOKEN)
    assert ok.returncode == 0, ok.stderr
    resolved = yaml.safe_load(ok.stdout)
    assert set(resolved["services"]) == {"dopanode", "orthanc", "prometheus"}
    assert resolved["services"]["dopanode"]["environment"]["DOPANODE_API__TOKEN"] == TOKEN
    missing = _compose_config(None)
    assert missing.returncode != 0 and "DOPANODE_API_TOKEN" in missing.stderr


def test_prometheus_gets_the_rules_and_scrapes_the_node(compose, node_toml):
    prom = compose["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert (COMPOSE_DIR / mounts["/etc/prometheus"]).resolve() == PROM_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["rule_files"] == ["rules/*.yml"]  # relative: /etc/prometheus/rules/
    assert len(list((PROM_DIR / "rules").glob("*.yml"))) == 2
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "dopanode"]
    assert job["static_configs"][0]["targets"] == [f"dopanode:{node_toml['api']['port']}"]
    check = subprocess.run([require_tool("promtool"), "check", "config",
                            str(PROM_DIR / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_orthanc_and_dopanode_name_each_other(compose, node_toml):
    orthanc = compose["services"]["orthanc"]["environment"]
    ae, host, port = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])["dopanode"]
    assert (ae, host, port) == (node_toml["node"]["ae_title"], "dopanode",
                                node_toml["node"]["port"])
    (dest,) = node_toml["destinations"]
    assert (dest["ae_title"], dest["host"], dest["port"]) == (
        orthanc["ORTHANC__DICOM_AET"], "orthanc", 4242)
    (caller,) = node_toml["allowed_callers"]
    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert caller["ae_title"] == orthanc["ORTHANC__DICOM_AET"]
    assert subnet.subnet_of(ipaddress.ip_network(caller["host"]))


def test_services_have_bounded_logs_and_the_node_time_to_stop(compose, node_toml):
    for name, service in compose["services"].items():
        assert service["logging"]["driver"] == "json-file", name
        assert service["logging"]["options"]["max-size"], name
    node = compose["services"]["dopanode"]
    grace_s = int(node["stop_grace_period"].removesuffix("s"))
    worker_grace_s = node_toml.get("worker", {}).get("shutdown_grace_s",
                                                     WorkerSettings().shutdown_grace_s)
    assert grace_s > worker_grace_s
    assert "healthcheck" not in node or not node["healthcheck"].get("disable")
    assert node["cap_drop"] == ["ALL"]
    for service in compose["services"].values():  # HTTP without auth stays on loopback
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), mapping


def test_dopanode_config_check_accepts_the_compose_settings():
    env = {**os.environ, "DOPANODE_API__TOKEN": TOKEN}
    result = subprocess.run([sys.executable, "-m", "service.cli", "config", "check",
                             str(NODE_TOML)], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration OK" in result.stdout
    assert TOKEN not in result.stdout + result.stderr
