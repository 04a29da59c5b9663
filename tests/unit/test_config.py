"""Settings: defaults, TOML, DOPANODE_* overrides, pipeline sections, errors that name the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import (
    ConfigError,
    NodeSettings,
    Settings,
    StorageSettings,
    describe,
    load_settings,
)
from service.pipelines import registry
from service.pipelines.base import ModelStatus
from service.pipelines.registry import PipelineSettings, PipelineSpec

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "dopanode.example.toml"
RELEASE_01_EXAMPLE = Path(__file__).with_name("data") / "dopanode-0.1.toml"
SHIPPED_CNN = REPO / "models" / "dopanode_dat_cnn.onnx"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_run_without_file() -> None:
    s = load_settings(None, environ={})
    assert s.node.ae_title == "DOPANODE" and s.node.port == 11112 and s.api.port == 8080
    assert s.node.acceptor == "event" and s.storage.spool_sync == "auto"
    assert s.storage.db_path.name.endswith(".sqlite3")
    assert s.destinations == () and s.notes == ()
    assert (s.node.acceptor, s.storage.spool_sync) == ("event", "auto")  # bench/README.md
    # the safe default: DCMTK/Orthanc default titles, loopback only
    assert s.caller("STORESCU", "127.0.0.1") is not None
    assert s.caller("STORESCU", "::1") is not None
    assert s.caller("STORESCU", "10.1.2.3") is None
    assert s.caller("PACS", "127.0.0.1") is None
    # every registered pipeline has its section, enabled by default
    assert set(s.pipelines) == set(registry.specs()) and s.pipelines["dat_spect"].enabled
    assert Settings() == s  # the bare constructor is the embedded defaults, never os.environ


def test_example_file_is_valid_and_complete() -> None:
    s = load_settings(EXAMPLE, environ={})
    assert s.destinations and s.destinations[0].name == "pacs"
    assert s.caller("ORTHANC", "127.0.0.1") is not None
    assert s.worker.max_attempts >= 1
    assert s.pipelines["dat_spect"].enabled and s.notes == ()  # no release-0.1 names left
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "\n[analysis]" not in text and "\n[model]" not in text
    for field in [*NodeSettings.model_fields, *StorageSettings.model_fields]:
        if field != "tls":  # a table, shown commented out (it needs certificate files)
            assert f"\n{field} = " in text, field  # every key shown with its default
    assert "# [node.tls]" in text


def test_toml_and_env_override(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        '[node]\nport = 11000\nae_title = "NODE1"\n'
        '[[allowed_callers]]\nae_title = "PACS"\nhost = "10.0.0.0/8"\nseries_quiet_s = 5\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
        '[api]\ntoken = "from-the-file-123"\n',
    )
    env = {
        "DOPANODE_NODE__PORT": "11113",
        "DOPANODE_NODE__ACCEPTOR": "pynetdicom",
        "DOPANODE_STORAGE__SPOOL_SYNC": "posix",
        "DOPANODE_WORKER__COUNT": "2",
        "DOPANODE_RETENTION_DAYS": "7",
        "DOPANODE_PIPELINES__DAT_SPECT__MODEL_PATH": "none",
        "DOPANODE_MODELS_DIR": "/opt/models",  # not a setting (no __): left alone
        "DOPANODE_CONFIG": "/etc/dopanode.toml",
        "OTHER__VAR": "1",
    }
    s = load_settings(cfg, environ=env)
    assert s.node.port == 11113 and s.node.ae_title == "NODE1"
    assert s.node.acceptor == "pynetdicom" and s.storage.spool_sync == "posix"
    assert s.api.token == "from-the-file-123" and s.worker.count == 2 and s.retention_days == 7
    assert s.pipelines["dat_spect"].model_path is None  # type: ignore[attr-defined]
    assert s.caller("PACS", "10.9.8.7").series_quiet_s == 5.0  # type: ignore[union-attr]
    assert s.caller("PACS", "192.168.0.1") is None
    assert s.destination_names == ("pacs",)
    # "none" clears an optional key the file set
    assert load_settings(cfg, environ={"DOPANODE_API__TOKEN": "none"}).api.token is None


def test_env_replaces_list_sections_with_json(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[[destinations]]\nname = "old"\nae_title = "OLD"\nhost = "h"\nport = 1\n')
    env = {"DOPANODE_DESTINATIONS": '[{"name": "a", "ae_title": "A", "host": "h", "port": 1}]',
           "DOPANODE_ALLOWED_CALLERS": '[{"ae_title": "PACS", "host": "10.0.0.5"}]'}
    s = load_settings(cfg, environ=env)
    assert s.destination_names == ("a",) and s.destinations[0].ae_title == "A"
    assert s.caller("PACS", "10.0.0.5") is not None and s.caller("STORESCU", "127.0.0.1") is None


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[node]\nport = 0\n", {}, "node.port: must be 1..65535, got 0"),
        ("[node]\nport = 'abc'\n", {}, "node.port"),
        ("", {"DOPANODE_NODE__PORT": "eleven"}, "node.port"),
        ("[node]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", {}, "node.ae_title"),
        ("[node]\nprot = 1\n", {}, "node.prot: unknown key"),
        ("[node]\nacceptor = 'twisted'\n", {}, "node.acceptor"),
        ("[nodes]\nport = 1\n", {}, "nodes: unknown key"),
        ("", {"DOPANODE_NODES__PORT": "1"}, "DOPANODE_NODES__PORT"),
        ("[[allowed_callers]]\nae_title = 'X'\nhost = 'pacs.example'\n", {},
         "allowed_callers[0].host"),
        ("[[destinations]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\n", {}, "destinations[0]"),
        ("[[destinations]]\nname = 'a b'\nae_title = 'A'\nhost = 'h'\nport = 1\n", {},
         "destinations[0].name"),
        ("[[destinations]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\nport = 1\n" * 2, {},
         "destinations[1].name: duplicate"),
        ("", {"DOPANODE_DESTINATIONS": "[{oops"}, "destinations (from DOPANODE_DESTINATIONS)"),
        ("[api]\ntoken = 'short'\n", {}, "api.token"),
        ("[sender]\nretry_base_s = 100\nretry_cap_s = 10\n", {}, "sender.retry_cap_s"),
        ("[worker]\ncount = 0\n", {}, "worker.count"),
        ("allowed_callers = []\n", {}, "allowed_callers"),
        ("[storage]\nmin_free_mb = true\n", {}, "storage.min_free_mb"),
        ("[storage]\nspool_dir = ''\n", {}, "storage.spool_dir"),
        ("[storage]\nspool_sync = 'never'\n", {}, "storage.spool_sync"),
        ("retention_days = 0\n", {}, "retention_days"),
        ("notes = ['not a setting']\n", {}, "notes"),
        # pipeline sections: the pipeline's own model, the key named in full
        ("[pipelines.dat_spect]\ncnn_enable = false\n", {}, "pipelines.dat_spect.cnn_enable"),
        ("[pipelines.dat_spect]\nenabled = 'maybe'\n", {}, "pipelines.dat_spect.enabled"),
        ("", {"DOPANODE_PIPELINES__DAT_SPECT__MODEL_SHA256": "xyz"},
         "pipelines.dat_spect.model_sha256"),
        ("[pipelines.fdopa_pett]\nenabled = true\n", {}, "pipelines.fdopa_pett: unknown pipeline"),
        ("", {"DOPANODE_PIPELINES__NOPE__ENABLED": "true"}, "pipelines.nope: unknown pipeline"),
        ("pipelines = 3\n", {}, "pipelines"),
        # release-0.1 keys are named as the site wrote them
        ("[model]\nsha256 = 'xyz'\n", {}, "model.sha256 (read as pipelines.dat_spect.model_sha256)"),
        ("[model]\nfile = 'x.onnx'\n", {}, "model.file: unknown key"),
        ("", {"DOPANODE_ANALYSIS__TEMPLATE": "x"}, "DOPANODE_ANALYSIS__TEMPLATE: unknown key"),
        ("[node]\nacceptor = 'fast'\n", {}, "node.acceptor"),
        ("", {"DOPANODE_STORAGE__SPOOL_SYNC": "always"}, "storage.spool_sync"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml), environ=env)
    assert str(info.value).startswith(key), str(info.value)


def test_errors_never_echo_the_token(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[api]\ntoken = 'sh0rt'\n"), environ={})
    assert "sh0rt" not in str(info.value)


@pytest.mark.parametrize(("acceptor", "spool_sync"), [("event", "auto"), ("pynetdicom", "posix")])
def test_receive_path_choices(acceptor: str, spool_sync: str) -> None:
    s = load_settings(None, environ={"DOPANODE_NODE__ACCEPTOR": acceptor,
                                     "DOPANODE_STORAGE__SPOOL_SYNC": spool_sync})
    assert (s.node.acceptor, s.storage.spool_sync) == (acceptor, spool_sync)
    text = describe(s)
    assert f"acceptor {acceptor}" in text and f"spool sync {spool_sync}" in text


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})


def test_settings_are_frozen_and_copied_with_changes(tmp_path: Path) -> None:
    s = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        s.node.port = 1
    with pytest.raises(ValidationError, match="frozen"):
        s.retention_days = 1
    # what tests and benchmarks use instead of dataclasses.replace
    changed = s.model_copy(update={
        "node": NodeSettings(port=11999, bind="127.0.0.1"),
        "storage": StorageSettings(spool_dir=tmp_path / "spool", db_path=tmp_path / "db.sqlite3"),
    })
    assert changed.node.port == 11999 and changed.storage.spool_dir == tmp_path / "spool"
    assert s.node.port == 11112 and changed.pipelines == s.pipelines
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        NodeSettings(port=0)  # sections validate when built directly


def test_pipeline_enabled_and_disabled_by_toml_and_env(tmp_path: Path) -> None:
    off = write(tmp_path, "[pipelines.dat_spect]\nenabled = false\n")
    assert not load_settings(off, environ={}).pipelines["dat_spect"].enabled
    on_again = {"DOPANODE_PIPELINES__DAT_SPECT__ENABLED": "true"}
    assert load_settings(off, environ=on_again).pipelines["dat_spect"].enabled
    env_off = {"DOPANODE_PIPELINES__DAT_SPECT__ENABLED": "false"}
    assert not load_settings(None, environ=env_off).pipelines["dat_spect"].enabled


def test_dat_cnn_defaults_to_the_shipped_model_and_can_be_turned_off(tmp_path: Path) -> None:
    assert load_settings(None, environ={}).pipelines["dat_spect"].cnn_path == SHIPPED_CNN  # type: ignore[attr-defined]
    off = load_settings(None, environ={"DOPANODE_PIPELINES__DAT_SPECT__CNN_ENABLED": "false"})
    assert off.pipelines["dat_spect"].cnn_path is None  # type: ignore[attr-defined]
    site = write(tmp_path, '[pipelines.dat_spect]\nmodel_path = "/srv/site_cnn.onnx"\n')
    dat = load_settings(site, environ={}).pipelines["dat_spect"]
    assert dat.cnn_path == Path("/srv/site_cnn.onnx")  # type: ignore[attr-defined]


def test_release_01_example_file_still_loads_once_its_placeholder_token_is_replaced() -> None:
    """The 0.1 example's sections load under their new names; its placeholder token is
    refused by name (audit D13) until the site sets a secret, here from the environment."""
    with pytest.raises(ConfigError, match=r"^api.token: is the example's placeholder"):
        load_settings(RELEASE_01_EXAMPLE, environ={})
    s = load_settings(RELEASE_01_EXAMPLE, environ={"DOPANODE_API__TOKEN": "a" * 32})
    assert s.destination_names == ("pacs",) and s.pipelines["dat_spect"].enabled
    assert s.notes == ("rename analysis.fallback_keywords to pipelines.dat_spect.fallback_keywords",)


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "10.1.2.3"])
def test_an_api_off_loopback_needs_a_token(bind: str) -> None:
    """Audit D13: an API on other interfaces without a token was accepted."""
    with pytest.raises(ConfigError, match=r"^api.token: required when api.bind is not a loopback"):
        load_settings(None, environ={"DOPANODE_API__BIND": bind})
    s = load_settings(None, environ={"DOPANODE_API__BIND": bind, "DOPANODE_API__TOKEN": "b" * 32})
    assert s.api.bind == bind
    assert load_settings(None, environ={"DOPANODE_API__BIND": "::1"}).api.token is None


def test_release_01_sections_are_read_with_rename_notes(tmp_path: Path) -> None:
    site = write(
        tmp_path,
        '[analysis]\ntemplate_dir = "/srv/template"\nfallback_keywords = "DATSCAN, FP-CIT"\n'
        f'[model]\nenabled = false\npath = "/srv/cnn.onnx"\nsha256 = "{"ab" * 32}"\n',
    )
    s = load_settings(site, environ={"DOPANODE_MODEL__ENABLED": "true"})
    dat = s.pipelines["dat_spect"]
    assert dat.template_dir == Path("/srv/template")  # type: ignore[attr-defined]
    assert dat.keywords == ("DATSCAN", "FP-CIT")  # type: ignore[attr-defined]
    assert dat.cnn_enabled and dat.model_path == Path("/srv/cnn.onnx")  # type: ignore[attr-defined]
    assert dat.model_sha256 == "ab" * 32  # type: ignore[attr-defined]
    assert set(s.notes) == {
        "rename analysis.template_dir to pipelines.dat_spect.template_dir",
        "rename analysis.fallback_keywords to pipelines.dat_spect.fallback_keywords",
        "rename model.enabled to pipelines.dat_spect.cnn_enabled",
        "rename model.path to pipelines.dat_spect.model_path",
        "rename model.sha256 to pipelines.dat_spect.model_sha256",
        "rename DOPANODE_MODEL__ENABLED to DOPANODE_PIPELINES__DAT_SPECT__CNN_ENABLED",
    }
    text = describe(s)
    assert "rename model.path to pipelines.dat_spect.model_path" in text


def test_env_wins_over_the_file_for_release_01_names_too(tmp_path: Path) -> None:
    site = write(tmp_path, "[pipelines.dat_spect]\ncnn_enabled = true\n")
    s = load_settings(site, environ={"DOPANODE_MODEL__ENABLED": "false"})
    assert not s.pipelines["dat_spect"].cnn_enabled  # type: ignore[attr-defined]
    # within one source the new name wins over the old one
    both = write(tmp_path, "[pipelines.dat_spect]\ncnn_enabled = true\n[model]\nenabled = false\n")
    assert load_settings(both, environ={}).pipelines["dat_spect"].cnn_enabled  # type: ignore[attr-defined]


class ToySettings(PipelineSettings):
    """A pipeline known only to this test."""

    enabled: bool = False
    threshold: float = 0.5


def _toy_models(settings: ToySettings) -> tuple[ModelStatus, ...]:
    return (ModelStatus("toy_net", "/nowhere/toy.onnx", False, "model file not found: toy.onnx"),)


def _no_build(settings: ToySettings) -> object:
    raise AssertionError("config check never builds a pipeline")


TOY_SPEC = PipelineSpec(name="toy", title="a test pipeline", settings_model=ToySettings,
                        build=_no_build, check_models=_toy_models)  # type: ignore[arg-type]


def test_describe_lists_every_registered_pipeline(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTIN, "toy", f"{__name__}:TOY_SPEC")
    s = load_settings(None, environ={"DOPANODE_PIPELINES__DAT_SPECT__CNN_ENABLED": "false"})
    assert not s.pipelines["toy"].enabled
    text = describe(s)
    assert "  dat_spect: enabled (" in text and "cnn_enabled = false" in text
    assert "model dat_cnn: OK, no model configured" in text
    assert "  toy: disabled (a test pipeline)" in text and "threshold = 0.5" in text
    assert "model toy_net (/nowhere/toy.onnx): NOT OK, model file not found" in text
    on = load_settings(write(tmp_path, "[pipelines.toy]\nenabled = true\nthreshold = 0.7\n"),
                       environ={})
    assert on.pipelines["toy"].enabled and "  toy: enabled (" in describe(on)
    with pytest.raises(ConfigError, match=r"^pipelines\.toy\.threshold"):
        load_settings(None, environ={"DOPANODE_PIPELINES__TOY__THRESHOLD": "high"})


def run_config_check(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", "config", "check", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=None if env is None else {**os.environ, **env})


def test_config_check_command(tmp_path: Path) -> None:
    ok = run_config_check(EXAMPLE)
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout and "pacs=" in ok.stdout
    assert "change-me" not in ok.stdout  # the token is never printed
    assert "  dat_spect: enabled" in ok.stdout and "model dat_cnn" in ok.stdout
    assert "rename" not in ok.stdout
    bad = write(tmp_path, "[node]\nport = 70000\n")
    res = run_config_check(bad)
    assert res.returncode == 2 and "node.port" in res.stderr


def test_config_check_names_the_renames_of_a_release_01_file() -> None:
    res = run_config_check(RELEASE_01_EXAMPLE, env={"DOPANODE_API__TOKEN": "c" * 32})
    assert res.returncode == 0, res.stderr
    assert "rename analysis.fallback_keywords to pipelines.dat_spect.fallback_keywords" in res.stdout


def test_one_setting_moves_the_rows_to_postgres_and_the_dsn_stays_secret() -> None:
    assert load_settings(None, environ={}).storage.backend == "sqlite"  # the embedded default
    with pytest.raises(ConfigError, match="storage.postgres_dsn: is required"):
        load_settings(None, environ={"DOPANODE_STORAGE__BACKEND": "postgres"})
    dsn = "host=db.example port=5432 user=dopanode password=hunter2-secret dbname=dopanode"
    s = load_settings(None, environ={"DOPANODE_STORAGE__BACKEND": "postgres",
                                     "DOPANODE_STORAGE__POSTGRES_DSN": dsn})
    assert s.storage.postgres_dsn is not None and s.storage.postgres_dsn.get_secret_value() == dsn
    assert "hunter2" not in describe(s) and "hunter2" not in repr(s)
    with pytest.raises(ConfigError, match="storage.backend"):
        load_settings(None, environ={"DOPANODE_STORAGE__BACKEND": "mysql"})
