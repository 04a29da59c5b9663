"""Test certificates made with the ``openssl`` command: CAs, server and client pairs.

RSA 2048 (every DICOM TLS peer takes it), SHA-256, subjectAltName
``localhost`` / ``127.0.0.1`` on every leaf so host-name checks pass on
loopback. :func:`expired` signs through ``openssl ca`` (the only way to set a
past end date in OpenSSL 3.0).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from service.testing.peers import require_tool

SAN = "subjectAltName=DNS:localhost,IP:127.0.0.1"


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, PEM files."""

    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([require_tool("openssl"), *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def _slash(subject: str) -> str:
    return "/" + "/".join(part.strip() for part in subject.split(","))


def make_ca(directory: Path, name: str, subject: str = "") -> Pair:
    """A self-signed CA valid for 30 days."""
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pair.key),
             "-out", str(pair.cert), "-days", "30", "-subj", _slash(subject or f"CN={name}"),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return pair


def _request(directory: Path, name: str, subject: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key, csr = directory / f"{name}.key", directory / f"{name}.csr"
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", _slash(subject), cwd=directory)
    return key, csr


def make_leaf(directory: Path, ca: Pair, name: str, subject: str, days: int = 30) -> Pair:
    """A certificate for ``subject`` signed by ``ca`` (server and client use)."""
    key, csr = _request(directory, name, subject)
    ext = directory / f"{name}.ext"
    ext.write_text(f"{SAN}\nextendedKeyUsage=serverAuth,clientAuth\n", encoding="utf-8")
    cert = directory / f"{name}.pem"
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-out", str(cert), "-days", str(days), "-sha256",
             "-extfile", str(ext), cwd=directory)
    return Pair(cert, key)


def expired(directory: Path, ca: Pair, name: str, subject: str) -> Pair:
    """A certificate that ended on 2 January 2020."""
    key, csr = _request(directory, name, subject)
    db = directory / f"{name}-db"
    db.mkdir()
    (db / "index.txt").write_text("", encoding="utf-8")
    (db / "serial").write_text("01\n", encoding="utf-8")
    conf = directory / f"{name}.cnf"
    conf.write_text(f"[ca]\ndefault_ca=d\n[d]\ndatabase={db}/index.txt\nnew_certs_dir={db}\n"
                    f"serial={db}/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n",
                    encoding="utf-8")
    cert = directory / f"{name}.pem"
    _openssl("ca", "-batch", "-config", str(conf), "-cert", str(ca.cert), "-keyfile",
             str(ca.key), "-in", str(csr), "-out", str(cert), "-startdate", "20200101000000Z",
             "-enddate", "20200102000000Z", cwd=directory)
    return Pair(cert, key)


__all__ = ["Pair", "expired", "make_ca", "make_leaf"]
