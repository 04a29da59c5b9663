"""Settings: defaults, TOML, DOPANODE_* overrides, errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, Settings, describe, load_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config" / "dopanode.example.toml"


def test_defaults_run_without_file() -> None:
    s = load_settings(None, environ={})
    assert s.node.ae_title == "DOPANODE" and s.node.port == 11112 and s.api.port == 8080
    assert s.storage.db_path.name.endswith(".sqlite3")
    assert s.destinations == ()
    assert (s.node.acceptor, s.storage.spool_sync) == ("event", "auto")  # bench/README.md
    # the safe default: DCMTK/Orthanc default titles, loopback only
    assert s.caller("STORESCU", "127.0.0.1") is not None
    assert s.caller("STORESCU", "10.1.2.3") is None
    assert s.caller("PACS", "127.0.0.1") is None


def test_example_file_is_valid_and_complete() -> None:
    s = load_settings(EXAMPLE, environ={})
    assert s.destinations and s.destinations[0].name == "pacs"
    assert s.caller("ORTHANC", "127.0.0.1") is not None
    assert s.worker.max_attempts >= 1


def test_toml_and_env_override(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[node]\nport = 11000\nae_title = "NODE1"\n'
        '[[allowed_callers]]\nae_title = "PACS"\nhost = "10.0.0.0/8"\nseries_quiet_s = 5\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
    )
    env = {
        "DOPANODE_NODE__PORT": "11113",
        "DOPANODE_API__TOKEN": "0123456789abcdef",
        "DOPANODE_MODEL__PATH": "none",
        "DOPANODE_WORKER__COUNT": "2",
        "DOPANODE_RETENTION_DAYS": "7",
    }
    s = load_settings(cfg, environ=env)
    assert s.node.port == 11113 and s.node.ae_title == "NODE1"
    assert s.api.token == "0123456789abcdef" and s.worker.count == 2 and s.retention_days == 7
    assert s.caller("PACS", "10.9.8.7").series_quiet_s == 5.0  # type: ignore[union-attr]
    assert s.caller("PACS", "192.168.0.1") is None
    assert s.destination_names == ("pacs",)


def test_env_replaces_list_sections_with_json() -> None:
    env = {"DOPANODE_DESTINATIONS":
           '[{"name": "a", "ae_title": "A", "host": "h", "port": 1}]'}
    assert load_settings(None, environ=env).destinations[0].ae_title == "A"


@pytest.mark.parametrize(
    ("toml", "env", "key"),
    [
        ("[node]\nport = 0\n", {}, "node.port"),
        ("[node]\nport = 'abc'\n", {}, "node.port"),
        ("", {"DOPANODE_NODE__PORT": "eleven"}, "node.port"),
        ("[node]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", {}, "node.ae_title"),
        ("[node]\nprot = 1\n", {}, "node.prot"),
        ("[nodes]\nport = 1\n", {}, "nodes"),
        ("", {"DOPANODE_NODES__PORT": "1"}, "DOPANODE_NODES__PORT"),
        ("[[allowed_callers]]\nae_title = 'X'\nhost = 'pacs.example'\n", {},
         "allowed_callers[0].host"),
        ("[[destinations]]\nname = 'a'\nae_title = 'A'\nhost = 'h'\n", {}, "destinations[0]"),
        ("[[destinations]]\nname = 'a b'\nae_title = 'A'\nhost = 'h'\nport = 1\n", {},
         "destinations[0].name"),
        ("[api]\ntoken = 'short'\n", {}, "api.token"),
        ("[model]\nsha256 = 'xyz'\n", {}, "model.sha256"),
        ("[sender]\nretry_base_s = 100\nretry_cap_s = 10\n", {}, "sender.retry_cap_s"),
        ("[worker]\ncount = 0\n", {}, "worker.count"),
        ("allowed_callers = []\n", {}, "allowed_callers"),
        ("[storage]\nmin_free_mb = true\n", {}, "storage.min_free_mb"),
        ("[node]\nacceptor = 'fast'\n", {}, "node.acceptor"),
        ("", {"DOPANODE_STORAGE__SPOOL_SYNC": "always"}, "storage.spool_sync"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, env: dict[str, str], key: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, environ=env)
    assert str(info.value).startswith(key), str(info.value)


@pytest.mark.parametrize(("acceptor", "spool_sync"), [("event", "auto"), ("pynetdicom", "posix")])
def test_receive_path_choices(acceptor: str, spool_sync: str) -> None:
    s = load_settings(None, environ={"DOPANODE_NODE__ACCEPTOR": acceptor,
                                     "DOPANODE_STORAGE__SPOOL_SYNC": spool_sync})
    assert (s.node.acceptor, s.storage.spool_sync) == (acceptor, spool_sync)
    text = describe(s)
    assert f"({acceptor} acceptor)" in text and f"spool sync {spool_sync}" in text


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.node.port = 1  # type: ignore[misc]


def test_config_check_command(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "service.cli", "config", "check", str(EXAMPLE)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "configuration OK" in ok.stdout and "pacs=" in ok.stdout
    assert "change-me" not in ok.stdout  # the token is never printed
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = 70000\n")
    res = subprocess.run([sys.executable, "-m", "service.cli", "config", "check", str(bad)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "node.port" in res.stderr


def test_model_defaults_to_the_shipped_cnn_and_can_be_turned_off(tmp_path: Path) -> None:
    shipped = REPO / "models" / "dopanode_dat_cnn.onnx"
    assert load_settings(None, environ={}).model.model_path == shipped
    off = load_settings(None, environ={"DOPANODE_MODEL__ENABLED": "false"})
    assert off.model.model_path is None
    cfg = tmp_path / "c.toml"
    cfg.write_text('[model]\npath = "/srv/site_cnn.onnx"\n')
    assert load_settings(cfg, environ={}).model.model_path == Path("/srv/site_cnn.onnx")
