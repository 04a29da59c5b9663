"""DICOM secure transport (PS3.15 Annex B.1 / BCP 195 profile): TLS contexts.

The one module that owns :mod:`ssl`: server and client contexts with the
BCP 195 (RFC 9325) policy by default, TLS 1.2 or later, ECDHE with AES-GCM
or ChaCha20-Poly1305 for TLS 1.2 (OpenSSL fixes the TLS 1.3 suites, all of
which qualify), no compression, no renegotiation.

Certificates and keys come from PEM files. :class:`ReloadingContext`
re-reads them when a file's mtime changes, checked on each new connection,
and when asked (:meth:`ReloadingContext.reload`: SIGHUP to ``dopanode serve``),
so a renewed certificate is used without a restart; a renewed pair that
does not load keeps the previous context and is logged.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: TLS 1.2 suites of the BCP 195 recommendation (RFC 9325 4.2), OpenSSL names
BCP195_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class CertificateError(ValueError):
    """A certificate or key file that cannot be used; ``key`` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class CertificateInfo:
    """What the node reports of its own certificate."""

    subject: str
    not_after_s: float  # POSIX seconds


#: attribute names of :meth:`ssl.SSLSocket.getpeercert` as RFC 4514 writes them
SHORT_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
               "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L"}


def subject_text(subject: Any) -> str:
    """``((('commonName', 'X'),), ...)`` as ``CN=X,O=Y`` (the order of the certificate)."""
    return ",".join(f"{SHORT_NAMES.get(k, k)}={v}" for rdn in subject for k, v in rdn)


def same_subject(wanted: str, actual: str) -> bool:
    """Compare two subjects (``CN=..,O=..`` or ``commonName=..``), ignoring spaces and order."""
    def parts(text: str) -> set[tuple[str, str]]:
        pairs = (p.split("=", 1) for p in text.split(",") if "=" in p)
        return {(SHORT_NAMES.get(k.strip(), k.strip()).upper(), v.strip()) for k, v in pairs}
    return bool(wanted) and parts(wanted) == parts(actual)


def read_certificate(path: Path, key: str) -> CertificateInfo:
    """Subject and expiry of the first certificate in a PEM file.

    Raises
    ------
    CertificateError
        Missing, unreadable, not a PEM certificate, or expired.
    """
    if not path.is_file():
        raise CertificateError(key, f"no such file: {path}")
    if not os.access(path, os.R_OK):
        raise CertificateError(key, f"not readable: {path}")
    try:  # the stdlib's only certificate decoder (used by CPython's own tests)
        decoded: dict[str, Any] = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError) as exc:
        raise CertificateError(key, f"not a PEM certificate: {path} ({exc.__class__.__name__})"
                               ) from None
    not_after_s = float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    if not_after_s < time.time():
        raise CertificateError(key, f"certificate expired on {decoded['notAfter']}: {path}")
    return CertificateInfo(subject_text(decoded.get("subject", ())), not_after_s)


def _policy(ctx: ssl.SSLContext, min_version: str) -> ssl.SSLContext:
    ctx.minimum_version = VERSIONS[min_version]
    ctx.set_ciphers(BCP195_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def _load_pair(ctx: ssl.SSLContext, cert_file: Path, key_file: Path, prefix: str) -> None:
    read_certificate(cert_file, f"{prefix}cert_file")
    if not key_file.is_file() or not os.access(key_file, os.R_OK):
        raise CertificateError(f"{prefix}key_file", f"missing or not readable: {key_file}")
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except ssl.SSLError as exc:
        reason = "does not match the certificate" if "MISMATCH" in str(exc) else "not usable"
        raise CertificateError(f"{prefix}key_file", f"{reason}: {key_file} ({exc.reason})"
                               ) from None


def _load_ca(ctx: ssl.SSLContext, ca_file: Path, key: str) -> None:
    read_certificate(ca_file, key)
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except ssl.SSLError as exc:
        raise CertificateError(key, f"not usable: {ca_file} ({exc.reason})") from None


def server_context(cert_file: Path, key_file: Path, ca_file: Path | None,
                   require_client_cert: bool, min_version: str = "1.2",
                   prefix: str = "node.tls.") -> ssl.SSLContext:
    """The SCP's context; with ``ca_file`` client certificates are verified.

    Raises
    ------
    CertificateError
        Naming the setting (``node.tls.key_file``) of the file at fault.
    """
    ctx = _policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), min_version)
    _load_pair(ctx, cert_file, key_file, prefix)
    if ca_file is not None:
        _load_ca(ctx, ca_file, f"{prefix}ca_file")
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca_file: Path | None, cert_file: Path | None, key_file: Path | None,
                   check_hostname: bool, min_version: str = "1.2",
                   prefix: str = "destinations.") -> ssl.SSLContext:
    """An SCU's context: the peer verified against ``ca_file`` (else the system store)."""
    ctx = _policy(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), min_version)
    ctx.check_hostname = check_hostname
    if ca_file is not None:
        _load_ca(ctx, ca_file, f"{prefix}ca_file")
    else:
        ctx.load_default_certs()
    if cert_file is not None and key_file is not None:
        _load_pair(ctx, cert_file, key_file, prefix)
    return ctx


class ReloadingContext:
    """A server context rebuilt when its files change (mtime), checked per connection."""

    def __init__(self, files: tuple[Path | None, ...], build: Any) -> None:
        self._files = tuple(f for f in files if f is not None)
        self._build = build
        self._lock = threading.Lock()
        self._stamp = self._mtimes()
        self._ctx: ssl.SSLContext = build()

    def _mtimes(self) -> tuple[int, ...]:
        stamps = []
        for path in self._files:
            try:
                stamps.append(path.stat().st_mtime_ns)
            except OSError:
                stamps.append(-1)
        return tuple(stamps)

    def current(self) -> ssl.SSLContext:
        """The context to use for the next connection, reloaded if a file changed."""
        with self._lock:
            stamp = self._mtimes()
            if stamp != self._stamp:
                self._stamp = stamp
                self._rebuild("file_changed")
            return self._ctx

    def reload(self, reason: str = "requested") -> bool:
        """Rebuild now whatever the mtimes say (SIGHUP); False keeps the old pair.

        For files replaced with their old mtime kept (``cp -p``, some
        certificate managers), and for an operator who wants the outcome in
        the log at once.
        """
        with self._lock:
            self._stamp = self._mtimes()
            return self._rebuild(reason)

    def _rebuild(self, reason: str) -> bool:
        try:
            self._ctx = self._build()
        except CertificateError as exc:  # keep serving with the old pair
            log.error("tls_reload_failed", extra={"fields": {
                "key": exc.key, "error": str(exc), "trigger": reason}})
            return False
        log.info("tls_reloaded", extra={"fields": {"trigger": reason}})
        return True


__all__ = ["BCP195_CIPHERS", "CertificateError", "CertificateInfo", "ReloadingContext",
           "client_context", "read_certificate", "same_subject", "server_context",
           "subject_text"]
