"""TLS settings: bad certificates fail at load (start-up and ``config check``), naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import metrics
from service.config import ConfigError, load_settings
from service.net import tls, tls_port
from service.testing import certs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, certs.Pair]:
    root = tmp_path_factory.mktemp("pki")
    ca = certs.make_ca(root, "ca")
    return {"ca": ca, "server": certs.make_leaf(root, ca, "server", "CN=node"),
            "other": certs.make_leaf(root, ca, "other", "CN=other"),
            "expired": certs.expired(root, ca, "old", "CN=old")}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dopanode.toml"
    path.write_text(text, encoding="utf-8")
    return path


def node_tls(cert: Path, key: Path, extra: str = "") -> str:
    return f'[node]\nport = 11112\n[node.tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n{extra}'


def test_good_settings_load_and_describe(tmp_path, pki):
    s = pki["server"]
    settings = load_settings(write(tmp_path, node_tls(
        s.cert, s.key, f'ca_file = "{pki["ca"].cert}"\nrequire_client_cert = true\n')))
    assert settings.node.tls is not None and settings.node.tls.port == 2762


@pytest.mark.parametrize(("case", "expected"), [
    ("missing", r"^node\.tls\.cert_file: no such file"),
    ("expired", r"^node\.tls\.cert_file: certificate expired on Jan  2 00:00:00 2020"),
    ("mismatch", r"^node\.tls\.key_file: does not match the certificate"),
    ("not_pem", r"^node\.tls\.cert_file: not a PEM certificate"),
    ("no_ca", r"^node\.tls\.ca_file: is required when require_client_cert"),
    ("same_port", r"^node\.tls\.port: must differ from node\.port"),
])
def test_bad_certificate_names_the_key(tmp_path, pki, case, expected):
    s = pki["server"]
    text = {
        "missing": node_tls(tmp_path / "nope.pem", s.key),
        "expired": node_tls(pki["expired"].cert, pki["expired"].key),
        "mismatch": node_tls(s.cert, pki["other"].key),
        "not_pem": node_tls(s.key, s.key),
        "no_ca": node_tls(s.cert, s.key, "require_client_cert = true\n"),
        "same_port": node_tls(s.cert, s.key, "port = 11112\n"),
    }[case]
    with pytest.raises(ConfigError, match=expected):
        load_settings(write(tmp_path, text))


def test_plain_off_needs_tls(tmp_path):
    with pytest.raises(ConfigError, match=r"^node\.plain: false needs a \[node\.tls\]"):
        load_settings(write(tmp_path, "[node]\nplain = false\n"))


def test_destination_tls_files_are_checked(tmp_path, pki):
    text = (f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "10.0.0.5"\n'
            f'port = 2762\ntls = true\nca_file = "{pki["expired"].cert}"\n')
    with pytest.raises(ConfigError, match=r"^destinations\[0\]\.ca_file: certificate expired"):
        load_settings(write(tmp_path, text))


def test_config_check_exits_2_naming_the_key(tmp_path, pki):
    path = write(tmp_path, node_tls(pki["server"].cert, pki["other"].key))
    done = subprocess.run([sys.executable, "-m", "service.cli", "config", "check", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2
    assert "node.tls.key_file: does not match the certificate" in done.stderr


def test_reload_keeps_the_old_pair_when_the_new_one_is_bad(tmp_path, pki):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(pki["server"].cert.read_bytes())
    key.write_bytes(pki["server"].key.read_bytes())
    settings = load_settings(write(tmp_path, node_tls(cert, key)))
    contexts = tls_port.scp_contexts(settings)
    first = contexts.current()
    gauge = metrics.TLS_CERTIFICATE_EXPIRY.labels(role="scp", name="node")
    assert gauge._value.get() > time.time()
    key.write_bytes(pki["other"].key.read_bytes())  # does not match: the old one stays
    os.utime(key, (time.time() + 5, time.time() + 5))
    assert contexts.current() is first
    key.write_bytes(pki["server"].key.read_bytes())
    os.utime(key, (time.time() + 10, time.time() + 10))
    assert contexts.current() is not first


def test_same_subject_ignores_order_spaces_and_long_names():
    assert tls.same_subject("CN=PACS, O=Hospital", "organizationName=Hospital,commonName=PACS")
    assert not tls.same_subject("CN=PACS,O=Hospital", "CN=PACS")
    assert not tls.same_subject("CN=PACS", "")


def test_reload_on_request_reads_files_whose_mtime_did_not_change(tmp_path, pki):
    """SIGHUP's path: a pair replaced with its old mtime (cp -p) is read only when asked."""
    root = tmp_path / "renewal"
    root.mkdir()
    renewed = certs.make_leaf(root, pki["ca"], "renewed", "CN=node-renewed", days=90)
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_bytes(pki["server"].cert.read_bytes())
    key.write_bytes(pki["server"].key.read_bytes())
    settings = load_settings(write(tmp_path, node_tls(cert, key)))
    contexts = tls_port.scp_contexts(settings)
    first = contexts.current()
    gauge = metrics.TLS_CERTIFICATE_EXPIRY.labels(role="scp", name="node")
    old_expiry = gauge._value.get()
    stamps = {p: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (cert, key)}
    cert.write_bytes(renewed.cert.read_bytes())
    key.write_bytes(renewed.key.read_bytes())
    for path, (atime, mtime) in stamps.items():
        os.utime(path, ns=(atime, mtime))  # as cp -p leaves them
    assert contexts.current() is first  # the mtime check cannot see it
    assert contexts.reload("sighup") is True
    assert contexts.current() is not first
    assert gauge._value.get() > old_expiry + 30 * 86400  # 90 days, not 30
    key.write_bytes(pki["other"].key.read_bytes())  # a broken pair: the renewed one stays
    second = contexts.current()
    assert contexts.reload("sighup") is False and contexts.current() is second
