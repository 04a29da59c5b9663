"""The settings file's table sections, one frozen pydantic model each.

``[node]`` (with ``[node.tls]``), ``[[allowed_callers]]``, ``[[destinations]]``,
``[storage]``, ``[api]``, ``[worker]``, ``[sender]`` and ``[audit]``: each
model checks its own values (ranges, formats, files that must load) and
names the key in its errors. :class:`service.config.Settings` puts them
together with the pipelines' sections; import them from there.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from service.config_errors import KeyedValueError
from service.net import tls

__all__ = [
    "PLACEHOLDER_TOKEN_PREFIXES", "AllowedCaller", "ApiSettings", "AuditSettings", "Destination",
    "NodeSettings", "SenderSettings", "StorageSettings", "TlsSettings", "WorkerSettings",
]

_AE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _number(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; a TOML boolean in a number key is a mistake.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()}")
    return value


def _ae_title(value: str) -> str:
    if not _AE_RE.match(value):
        raise ValueError(f"1-16 printable characters without backslash, got {value!r}")
    return value


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(f"letters, digits, _.- only, got {value!r}")
    return value


def _path(value: Any) -> Any:
    if value == "":  # pydantic reads "" as Path("."), the working directory
        raise ValueError("must not be empty")
    return value


Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]
Port = Annotated[int, BeforeValidator(_number), Field(ge=1, le=65535)]
AeTitle = Annotated[str, AfterValidator(_ae_title)]
FilePath = Annotated[Path, BeforeValidator(_path)]


class _Section(BaseModel):
    """A table of the settings file: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsSettings(_Section):
    """The SCP's TLS port (PS3.15 B.1, BCP 195): certificate, key, client checks.

    ``ca_file`` turns on client-certificate verification (optional unless
    ``require_client_cert``: mutual TLS). The files are checked here (present,
    readable, not expired, key matching the certificate) and re-read when
    they change, without a restart.
    """

    port: Port = 2762
    cert_file: FilePath
    key_file: FilePath
    ca_file: FilePath | None = None
    require_client_cert: bool = False
    min_version: Literal["1.2", "1.3"] = "1.2"

    @model_validator(mode="after")
    def _files_usable(self) -> TlsSettings:
        if self.require_client_cert and self.ca_file is None:
            raise KeyedValueError("ca_file", "is required when require_client_cert = true")
        try:
            tls.server_context(self.cert_file, self.key_file, self.ca_file,
                               self.require_client_cert, self.min_version, prefix="")
        except tls.CertificateError as exc:
            raise KeyedValueError(exc.key, str(exc)) from None
        return self


class NodeSettings(_Section):
    """Our own DICOM identity: AE title, listening address and port, acceptor.

    ``acceptor`` chooses how associations are accepted: ``"event"`` (our
    event-driven acceptor) or ``"pynetdicom"`` (the stock server).

    Bounds at the socket edge (both acceptors): ``max_associations_per_host``
    connections from one IP address at a time (more are closed at TCP accept,
    before a byte is read; the effective bound is at most
    ``max_associations``); ``artim_timeout_s`` (PS3.8 9.1.5: how long an
    A-ASSOCIATE-RQ, or the close after an abort, may take);
    ``network_timeout_s`` (an established association with no traffic is
    aborted); ``receive_timeout_s`` (longest wait for the rest of a PDU once
    it has started, and for a send to make progress). ``require_called_ae``:
    refuse an association whose Called AE Title is not ``ae_title``.

    ``proxy_protocol_from``: addresses or networks of TCP load balancers that
    send a PROXY protocol header (v1 or v2, HAProxy ``send-proxy-v2``) before
    the DICOM stream; a connection from one of them must start with one, and
    the allow-list's host check and the per-host slots then see the client's
    address it names. Plain port only (the TLS port reads no header).
    Empty (the default): no header is read from anyone.
    """

    ae_title: AeTitle = "DOPANODE"
    port: Port = 11112
    bind: str = "0.0.0.0"
    max_associations: Int = Field(default=10, ge=1, le=1000)
    max_associations_per_host: Int = Field(default=5, ge=1, le=1000)
    acceptor: Literal["event", "pynetdicom"] = "event"
    artim_timeout_s: Float = Field(default=10.0, ge=0.1, le=600)
    network_timeout_s: Float = Field(default=60.0, ge=0.1, le=86400)
    receive_timeout_s: Float = Field(default=30.0, ge=0.1, le=3600)
    require_called_ae: bool = True
    proxy_protocol_from: tuple[str, ...] = ()
    plain: bool = True
    tls: TlsSettings | None = None

    @field_validator("proxy_protocol_from")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"must be IP addresses or networks, got {entry!r}") from None
        return value

    @model_validator(mode="after")
    def _some_port(self) -> NodeSettings:
        if not self.plain and self.tls is None:
            raise KeyedValueError("plain", "false needs a [node.tls] section (no port left)")
        if self.tls is not None and self.plain and self.tls.port == self.port:
            raise KeyedValueError("tls.port", f"must differ from node.port ({self.port})")
        return self


class AllowedCaller(_Section):
    """A calling AE that may associate.

    ``host`` is an IP address or network (``10.1.2.3``, ``10.0.0.0/8``);
    ``None`` allows any address. ``series_quiet_s`` is how long a per-slice
    series from this caller may be silent before it counts as complete.
    """

    ae_title: AeTitle
    host: str | None = None
    series_quiet_s: Float = Field(default=30.0, ge=0.1, le=86400)
    tls_subject: str | None = None

    @field_validator("host")
    @classmethod
    def _network(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"must be an IP address or network, got {value!r}") from None
        return value

    def matches(self, ae_title: str, address: str) -> bool:
        """True when a peer with this calling AE title and IP address is allowed."""
        if ae_title.strip() != self.ae_title:
            return False
        if self.host is None:
            return True
        try:
            return ipaddress.ip_address(address) in ipaddress.ip_network(self.host, strict=False)
        except ValueError:
            return False


class Destination(_Section):
    """A C-STORE SCP that receives every result (SR, picture report)."""

    name: Annotated[str, AfterValidator(_name)]
    ae_title: AeTitle
    host: str
    port: Port
    tls: bool = False
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    server_hostname: str | None = None

    @field_validator("host")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _tls_files_usable(self) -> Destination:
        if (self.cert_file is None) != (self.key_file is None):
            raise KeyedValueError("key_file", "cert_file and key_file go together")
        if self.tls:
            try:
                tls.client_context(self.ca_file, self.cert_file, self.key_file,
                                   self.server_hostname is not None, prefix="")
            except tls.CertificateError as exc:
                raise KeyedValueError(exc.key, str(exc)) from None
        return self


class StorageSettings(_Section):
    """Spool folder, database and receive limits (MiB).

    ``spool_sync`` chooses how an adopted spool file is made durable:
    ``"auto"`` (one flush where the file system is known to allow it) or
    ``"posix"`` (the portable fsync sequence). ``backend`` chooses where the
    rows live: ``"sqlite"`` (the file ``db_path``, the embedded default) or
    ``"postgres"`` (the server ``postgres_dsn``, shared by several nodes; a
    secret: set it with ``DOPANODE_STORAGE__POSTGRES_DSN``). ``blobs`` chooses
    where received instances and outputs live: ``"local"`` (the spool folder)
    or ``"s3"`` (bucket ``s3_bucket`` below ``s3_prefix`` of the S3-compatible
    server ``s3_endpoint``, AWS when unset; credentials only from the
    environment, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``). See
    docs/storage.md.
    """

    spool_dir: FilePath = Path("var/spool")
    db_path: FilePath = Path("var/dopanode.sqlite3")
    backend: Literal["sqlite", "postgres"] = "sqlite"
    postgres_dsn: SecretStr | None = None
    min_free_mb: Int = Field(default=1024, ge=0, le=10**9)
    max_instance_mb: Int = Field(default=512, ge=1, le=10**6)
    spool_sync: Literal["auto", "posix"] = "auto"
    blobs: Literal["local", "s3"] = "local"
    s3_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s@]+$")
    s3_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
    s3_prefix: str = Field(default="", pattern=r"^([A-Za-z0-9._\-]+/)*$")
    s3_region: str | None = Field(default=None, pattern=r"^[a-z0-9\-]{1,32}$")
    #: blobs no row refers to are deleted once this old (hours; 0: never)
    orphan_grace_h: Float = Field(default=24.0, ge=0, le=100000)

    @field_validator("postgres_dsn", "s3_endpoint", "s3_bucket", "s3_region", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> StorageSettings:
        if self.backend == "postgres" and not self.postgres_dsn:
            raise KeyedValueError("postgres_dsn", 'is required when backend = "postgres"'
                                  " (set DOPANODE_STORAGE__POSTGRES_DSN)")
        if self.blobs == "s3" and not self.s3_bucket:
            raise KeyedValueError("s3_bucket", 'is required when blobs = "s3"')
        if 0 < self.orphan_grace_h < 1:
            raise KeyedValueError("orphan_grace_h", "must be 0 (no sweep) or at least 1 hour"
                                  " (above any C-STORE and job)")
        return self


#: Tokens that are an example's placeholder, never a secret.
PLACEHOLDER_TOKEN_PREFIXES = ("change-me", "changeme", "replace-me", "your-token")


def _is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


class ApiSettings(_Section):
    """REST API address and Bearer token (None: /api answers loopback clients only).

    ``show_patient_names``: the admin page's study list (GET /api/studies)
    carries each study's patient name, read from the result's header; off by
    default, so no API response holds a name.
    """

    bind: str = "127.0.0.1"
    port: Port = 8080
    token: str | None = None
    show_patient_names: bool = False
    #: open HTTP connections at most (more are closed at once, before reading)
    max_connections: Int = Field(default=64, ge=1, le=10000)
    #: a request's line and headers must arrive within this many seconds
    header_timeout_s: Float = Field(default=10.0, ge=0.1, le=600)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: str | None) -> str | None:
        if value is not None and len(value) < 8:
            raise ValueError("must be at least 8 characters")  # never echo the token
        if value is not None and value.lower().startswith(PLACEHOLDER_TOKEN_PREFIXES):
            raise ValueError("is the example's placeholder: set a random secret "
                             "(e.g. openssl rand -hex 32)")
        return value

    @model_validator(mode="after")
    def _token_off_loopback(self) -> ApiSettings:
        """An API reachable from other hosts must have a token (audit D13)."""
        if self.token is None and not _is_loopback(self.bind):
            raise KeyedValueError("token", f"required when api.bind is not a loopback "
                                           f"address (bind is {self.bind})")
        return self


class WorkerSettings(_Section):
    """Job workers: threads, lease, attempts before giving up, grace on SIGTERM."""

    count: Int = Field(default=1, ge=1, le=64)
    lease_s: Float = Field(default=300.0, ge=1, le=86400)
    max_attempts: Int = Field(default=3, ge=1, le=100)
    poll_interval_s: Float = Field(default=0.2, ge=0.01, le=60)
    shutdown_grace_s: Float = Field(default=30.0, ge=0, le=3600)
    #: A job that meets a full disk waits base, 2 x base, ... (at most cap) seconds
    #: before it runs again, and fails after ``disk_full_max_retries`` such waits.
    disk_full_retry_base_s: Float = Field(default=60.0, ge=0.01, le=86400)
    disk_full_retry_cap_s: Float = Field(default=1800.0, ge=0.01, le=86400)
    disk_full_max_retries: Int = Field(default=12, ge=0, le=1000)

    @model_validator(mode="after")
    def _disk_full_cap_above_base(self) -> WorkerSettings:
        if self.disk_full_retry_cap_s < self.disk_full_retry_base_s:
            raise KeyedValueError("disk_full_retry_cap_s", f"must be {self.disk_full_retry_base_s}"
                                  f"..86400, got {self.disk_full_retry_cap_s}")
        return self


class SenderSettings(_Section):
    """Outbox retry policy: exponential back-off from base to cap, for hours."""

    retry_base_s: Float = Field(default=10.0, ge=0.01, le=86400)
    retry_cap_s: Float = Field(default=600.0, le=86400)
    give_up_after_h: Float = Field(default=72.0, ge=0.001, le=24 * 365)

    @model_validator(mode="after")
    def _cap_above_base(self) -> SenderSettings:
        if self.retry_cap_s < self.retry_base_s:
            raise KeyedValueError("retry_cap_s", f"must be {self.retry_base_s}..86400, "
                                                 f"got {self.retry_cap_s}")
        return self


class AuditSettings(_Section):
    """The audit trail (:mod:`service.audit`): its file, retention, rotation, fsync.

    The one place identifiers are written; kept ``retention_days`` (its own,
    apart from the spool's), a new file at least every ``rotate_hours`` or
    ``rotate_mb``; records wait at most ``fsync_interval_s`` for fsync (0: each).
    The process serving the API checks the trail's hash chain at start and every
    ``verify_interval_h`` (0: never; :mod:`service.audit_watch`).
    """

    enabled: bool = True
    path: FilePath = Path("var/audit/audit.jsonl")
    retention_days: Int = Field(default=365, ge=1, le=36500)
    rotate_mb: Float = Field(default=64.0, gt=0, le=10**6)
    rotate_hours: Float = Field(default=24.0, gt=0, le=24 * 3660)
    fsync_interval_s: Float = Field(default=1.0, ge=0, le=3600)
    verify_interval_h: Float = Field(default=24.0, ge=0, le=24 * 366)
