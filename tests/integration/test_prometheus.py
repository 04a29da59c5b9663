"""The Prometheus rules under deploy/prometheus/: promtool, and a real Prometheus.

* ``promtool check config`` / ``check rules``: syntax, PromQL, the rule files
  the shipped config names.
* ``promtool test rules``: deploy/prometheus/tests/dopanode_rules_test.yml
  (each alert firing and not firing on synthetic series; recording rules'
  values, including the coming ``pipeline`` label on job metrics).
* Every alert has a severity, a summary and a runbook anchor that exists in
  docs/operations.md; every rule and Grafana panel names only metrics the
  node exports (service/metrics.py) or recording rules that exist.
* A real Prometheus (Debian's ``prometheus``) scrapes a real ``dopanode
  serve`` and a dead port once a second with the shipped rule files: the
  targets' ``up``, recording rules carrying the node's labels, every rule
  evaluated without error, DopanodeDown pending for the dead target, and
  DopanodeModelCheckFailing only once the model file is altered; every
  Grafana panel query is accepted by that Prometheus.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from service import metrics
from service.inference import manifest
from service.store.jobs import JOB_STATES
from service.testing.node import REPO_ROOT, NodeProcess
from service.testing.peers import require_tool
from service.testing.polling import wait_until
from service.testing.ports import free_port, tcp_open

PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
OPERATIONS_MD = REPO_ROOT / "docs" / "operations.md"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "dopanode.json"
TIMEOUT_S = 20.0


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)


def test_promtool_accepts_the_config_and_the_rules():
    assert len(RULE_FILES) == 2, RULE_FILES
    config = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "2 rule files found" in config.stdout
    rules = promtool("check", "rules", *map(str, RULE_FILES))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_unit_tests_of_the_rules_pass():
    result = promtool("test", "rules", str(PROM_DIR / "tests" / "dopanode_rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _alerts() -> list[dict[str, Any]]:
    alerts = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            alerts += [rule for rule in group["rules"] if "alert" in rule]
    return alerts


def test_every_alert_has_a_severity_and_a_runbook_section():
    anchors = {heading.strip().lower() for heading in
               re.findall(r"^#{2,4} +(\w+) *$", OPERATIONS_MD.read_text(encoding="utf-8"),
                          flags=re.MULTILINE)}
    alerts = _alerts()
    names = [a["alert"] for a in alerts]
    assert {"DopanodeDown", "DopanodeOutboxBacklogStuck", "DopanodeJobFailureRateHigh",
            "DopanodeSpoolDiskFull", "DopanodeModelCheckFailing",
            "DopanodeTLSCertificateExpiring"} <= set(names)
    assert len(names) == len(set(names))
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        runbook = alert["annotations"]["runbook"]
        assert runbook == f"docs/operations.md#{alert['alert'].lower()}", runbook
        assert alert["alert"].lower() in anchors, f"no section for {alert['alert']}"


def _exported_names() -> set[str]:
    """Every series name the node's registry can expose (with or without samples yet)."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "gauge": ("",)}
    return {family.name + suffix for family in metrics.REGISTRY.collect()
            for suffix in suffixes[family.type]}


def _recorded_names() -> set[str]:
    return {rule["record"] for path in RULE_FILES
            for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
            for rule in group["rules"] if "record" in rule}


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def _names_in(expr: str) -> set[str]:
    """Metric and recording-rule names an expression uses (no labels, no strings)."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    return {n for n in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if n.startswith("dopanode_") or ":" in n}


def test_rules_and_dashboard_use_only_metrics_that_exist():
    exported, recorded = _exported_names(), _recorded_names()
    assert "dopanode_tls_certificate_expiry_timestamp_seconds" in exported  # DICOM TLS
    used_by_rules = set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                used_by_rules |= _names_in(rule["expr"])
    assert used_by_rules - exported - recorded == set()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        assert _names_in(expr) <= exported | recorded, expr


# --- a real Prometheus against a real node ---------------------------------------------
class Prometheus:
    """``prometheus`` on a free loopback port, scraping and evaluating every second."""

    def __init__(self, work_dir: Path, targets: list[str]) -> None:
        self.port = free_port()
        self.log_path = work_dir / "prometheus.log"
        self.config_path = work_dir / "prometheus.yml"
        self.data_dir = work_dir / "tsdb"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in RULE_FILES],
            "scrape_configs": [{"job_name": "dopanode", "scrape_timeout": "900ms",
                                "static_configs": [{"targets": targets}]}],
        }
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [require_tool("prometheus"), f"--config.file={self.config_path}",
               f"--storage.tsdb.path={self.data_dir}",
               f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, TIMEOUT_S, "Prometheus /-/ready")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
        if not tcp_open(self.port):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError):
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}{query}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as err:  # 400: PromQL the server refuses
            raise AssertionError(f"{path} {params}: {err.code} {err.read()!r}") from None
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=promql)["result"])

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A stand-in model file with its SHA-256 sidecar (checked by /ready and /metrics;
    never loaded: the node runs its SCP and API only)."""
    path = tmp_path / "models" / "dat.onnx"
    path.parent.mkdir()
    path.write_bytes(b"\x08\x07onnx-model-bytes" * 100)
    manifest.sidecar_path(path).write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    return path


@pytest.fixture
def node(tmp_path: Path, model: Path) -> Iterator[NodeProcess]:
    settings = {"pipelines": {"dat_spect": {"model_path": str(model)}}}
    with NodeProcess(tmp_path / "node", settings=settings, components="scp,api") as proc:
        yield proc.start()


@pytest.fixture
def prometheus(tmp_path: Path, node: NodeProcess) -> Iterator[tuple[Prometheus, str, str]]:
    live, dead = f"127.0.0.1:{node.api_port}", f"127.0.0.1:{free_port()}"
    prom = Prometheus(tmp_path, [live, dead])
    try:
        prom.start()
        yield prom, live, dead
    finally:
        prom.stop()


def _by_instance(results: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["instance"]: float(r["value"][1]) for r in results}


def _all_rules_evaluated_ok(prom: Prometheus) -> list[dict[str, Any]] | None:
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    if any(r["lastEvaluation"].startswith("0001-") for r in rules):
        return None  # not every rule evaluated yet
    return rules


@pytest.mark.slow
def test_real_prometheus_scrapes_the_node_and_evaluates_the_rules(prometheus, node, model):
    prom, live, dead = prometheus
    up = wait_until(lambda: len(r := prom.query('up{job="dopanode"}')) == 2 and r,
                    TIMEOUT_S, "both targets scraped")
    assert _by_instance(up) == {live: 1.0, dead: 0.0}

    jobs = wait_until(lambda: prom.query(f'instance_state:dopanode_jobs:sum{{instance="{live}"}}'),
                      TIMEOUT_S, "the jobs-by-state recording rule")
    assert {r["metric"]["state"]: float(r["value"][1]) for r in jobs} == {
        s: 0.0 for s in JOB_STATES}
    assert all(r["metric"]["job"] == "dopanode" for r in jobs)
    backlog = wait_until(lambda: prom.query("instance:dopanode_outbox_backlog:sum"),
                         TIMEOUT_S, "the outbox backlog recording rule")
    assert _by_instance(backlog) == {live: 0.0}
    disk = wait_until(lambda: prom.query("instance:dopanode_spool_free:ratio_to_min"),
                      TIMEOUT_S, "the spool free-space recording rule")
    assert _by_instance(disk)[live] > 1.0  # the test node's min_free_mb is 1

    rules = wait_until(lambda: _all_rules_evaluated_ok(prom), TIMEOUT_S, "every rule evaluated")
    assert len(rules) == 25  # 11 recording rules, 14 alerts
    assert [(r["name"], r["lastError"]) for r in rules if r["health"] != "ok"] == []

    down = wait_until(lambda: prom.alerts("DopanodeDown"), TIMEOUT_S, "DopanodeDown pending")
    assert [(a["labels"]["instance"], a["state"]) for a in down] == [(dead, "pending")]
    assert prom.alerts("DopanodeModelCheckFailing") == []

    with model.open("r+b") as f:  # the model file changes under the running node
        f.seek(10)
        f.write(b"X")
    failing = wait_until(lambda: prom.alerts("DopanodeModelCheckFailing"), TIMEOUT_S,
                         "DopanodeModelCheckFailing after the model file was altered")
    assert [(a["labels"]["instance"], a["labels"]["severity"], a["state"])
            for a in failing] == [(live, "critical", "pending")]
    assert node.api_get("/ready", token=None)[1]["failing"] == ["models_dat_spect"]


@pytest.mark.slow
def test_real_prometheus_accepts_every_dashboard_query(prometheus):
    prom, live, _ = prometheus
    wait_until(lambda: prom.query("instance:dopanode_instances_received:rate5m"), TIMEOUT_S,
               "two scrapes (the first rate)")
    regex = re.escape(live).replace("\\", "\\\\")  # a regex inside a PromQL string
    empty = set()
    for expr in _dashboard_exprs():
        if not prom.query(expr.replace("$instance", regex)):  # bad PromQL: HTTP 400
            empty.add(_names_in(expr).pop())
    # an idle node: no finished job, no association, nothing refused, sent or waiting
    assert empty == {"instance:dopanode_jobs_failed:ratio1h",
                     "instance_stage:dopanode_job_stage_duration_seconds:p95_1h",
                     "instance_reason:dopanode_instances_rejected:rate5m",
                     "instance_result:dopanode_associations:rate5m",
                     "instance_result:dopanode_deliveries:rate5m",
                     "dopanode_outbox_backlog",
                     "dopanode_jobs_deferred_total", "dopanode_outputs_resent_total"}
