"""One typed settings object: embedded defaults, a TOML file, DOPANODE_* env.

Precedence (later wins): the defaults below, the TOML file, the environment.

Environment rule
----------------
``DOPANODE_<SECTION>__<KEY>=value`` sets one scalar key of a table section,
upper-case, double underscore between section and key, for example
``DOPANODE_NODE__PORT=11113``, ``DOPANODE_API__TOKEN=s3cret``,
``DOPANODE_STORAGE__MIN_FREE_MB=500``. The two list sections are replaced as a
whole by a JSON array: ``DOPANODE_ALLOWED_CALLERS='[{"ae_title": "PACS"}]'``,
``DOPANODE_DESTINATIONS='[{"name": "pacs", "ae_title": "PACS", "host":
"10.0.0.5", "port": 104}]'``. ``DOPANODE_RETENTION_DAYS`` sets the top-level
key. Values are parsed as the key's type; ``none``/``""`` clears an optional
key. ``DOPANODE_CONFIG`` (read by the CLI, not here) names the TOML file.

Every error names the key (``node.port``) and says why it is wrong.

Safe default for callers: without configuration only the DCMTK and Orthanc
default AE titles (``STORESCU``, ``ECHOSCU``, ``ORTHANC``) may associate, and
only from loopback (127.0.0.0/8, ::1). A real site lists its PACS explicitly.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DOPANODE_"
_AE_RE = re.compile(r"^[\x21-\x5b\x5d-\x7e]([\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOOPBACK = ("127.0.0.0/8", "::1/128")


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range; names the key."""


ACCEPTORS = ("event", "pynetdicom")
SPOOL_SYNCS = ("auto", "posix")


@dataclass(frozen=True)
class NodeSettings:
    """Our own DICOM identity: AE title, listening address and port.

    ``acceptor``: ``"event"`` (pynetdicom's loops with event-driven waits,
    :mod:`service.net.acceptor`; the default, 1.5x faster per-slice ingest in
    bench/ingest.py together with ``storage.spool_sync = "auto"``) or
    ``"pynetdicom"`` (its stock acceptor, no private surface).
    """

    ae_title: str = "DOPANODE"
    port: int = 11112
    bind: str = "0.0.0.0"
    max_associations: int = 10
    acceptor: str = "event"


@dataclass(frozen=True)
class AllowedCaller:
    """A calling AE that may associate.

    ``host`` is an IP address or network (``10.1.2.3``, ``10.0.0.0/8``);
    ``None`` allows any address. ``series_quiet_s`` is how long a per-slice
    series from this caller may be silent before it counts as complete.
    """

    ae_title: str
    host: str | None = None
    series_quiet_s: float = 30.0

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


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP that receives every result (SR, picture report)."""

    name: str
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class StorageSettings:
    """Spool folder, SQLite file and receive limits (MiB).

    ``spool_sync``: ``"auto"`` (the default: one flush on ext4/XFS/btrfs,
    POSIX elsewhere; see :mod:`service.store.spool`) or ``"posix"`` (fsync,
    rename, fsync of the directory, on any file system).
    """

    spool_dir: Path = Path("var/spool")
    db_path: Path = Path("var/dopanode.sqlite3")
    min_free_mb: int = 1024
    max_instance_mb: int = 512
    spool_sync: str = "auto"


@dataclass(frozen=True)
class ApiSettings:
    """REST API address and Bearer token (None: /api answers loopback clients only)."""

    bind: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None


@dataclass(frozen=True)
class AnalysisSettings:
    """DaT analysis inputs: template folder and the tracer-code fallback.

    ``template_dir`` holds the FP-CIT template, SBR calibration and normal
    database (None: the shipped ``models/template``). ``fallback_keywords``:
    comma-separated Series Description keywords that admit a series whose
    Radiopharmaceutical Code Sequence is absent (empty: tracer code required).
    """

    template_dir: Path | None = None
    fallback_keywords: str = ""

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.fallback_keywords.split(",") if k.strip())


@dataclass(frozen=True)
class ModelSettings:
    """The CNN that rates the regions.

    ``enabled = false`` scores by SBR thresholds only. ``path`` None is the
    shipped model (``models/dopanode_dat_cnn.onnx``); ``sha256`` None is the
    checksum in the model's ``.sha256`` sidecar.
    """

    enabled: bool = True
    path: Path | None = None
    sha256: str | None = None

    @property
    def model_path(self) -> Path | None:
        """The ONNX file the node serves, or None when the CNN is off."""
        from service.paths import MODEL_FILE, default_models_dir

        if not self.enabled:
            return None
        return self.path if self.path is not None else default_models_dir() / MODEL_FILE


@dataclass(frozen=True)
class WorkerSettings:
    """Job workers: threads, lease, attempts before giving up, grace on SIGTERM."""

    count: int = 1
    lease_s: float = 300.0
    max_attempts: int = 3
    poll_interval_s: float = 0.2
    shutdown_grace_s: float = 30.0


@dataclass(frozen=True)
class SenderSettings:
    """Outbox retry policy: exponential back-off from base to cap, for hours."""

    retry_base_s: float = 10.0
    retry_cap_s: float = 600.0
    give_up_after_h: float = 72.0


def _default_callers() -> tuple[AllowedCaller, ...]:
    return tuple(
        AllowedCaller(ae_title=ae, host=net)
        for ae in ("STORESCU", "ECHOSCU", "ORTHANC")
        for net in LOOPBACK
    )


@dataclass(frozen=True)
class Settings:
    """Everything the node reads at start-up (see the module docstring)."""

    node: NodeSettings = field(default_factory=NodeSettings)
    allowed_callers: tuple[AllowedCaller, ...] = field(default_factory=_default_callers)
    destinations: tuple[Destination, ...] = ()
    storage: StorageSettings = field(default_factory=StorageSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    sender: SenderSettings = field(default_factory=SenderSettings)
    retention_days: int = 30

    def caller(self, ae_title: str, address: str) -> AllowedCaller | None:
        """The first allowed-caller entry matching this peer, or None."""
        for entry in self.allowed_callers:
            if entry.matches(ae_title, address):
                return entry
        return None

    @property
    def destination_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.destinations)


_SECTIONS: dict[str, type] = {
    "node": NodeSettings,
    "storage": StorageSettings,
    "api": ApiSettings,
    "model": ModelSettings,
    "analysis": AnalysisSettings,
    "worker": WorkerSettings,
    "sender": SenderSettings,
}
_LISTS: dict[str, type] = {"allowed_callers": AllowedCaller, "destinations": Destination}


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build and validate the settings.

    Parameters
    ----------
    path : Path or None
        TOML file; None uses the embedded defaults only.
    environ : mapping or None
        Environment to read ``DOPANODE_*`` overrides from (default ``os.environ``).

    Raises
    ------
    ConfigError
        Naming the offending key, e.g. ``node.port: must be 1..65535, got 0``.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    _apply_env(raw, os.environ if environ is None else environ)
    settings = _build(raw)
    _validate(settings)
    return settings


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        if rest in _LISTS:
            try:
                raw[rest] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{rest} (from {name}): not a JSON array: {exc}") from exc
        elif rest == "retention_days":
            raw[rest] = value
        elif "__" in rest:
            section, key = rest.split("__", 1)
            if section not in _SECTIONS:
                raise ConfigError(f"{name}: unknown section '{section}'")
            raw.setdefault(section, {})[key] = value


def _build(raw: dict[str, Any]) -> Settings:
    known = set(_SECTIONS) | set(_LISTS) | {"retention_days"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name in raw:
            if not isinstance(raw[name], dict):
                raise ConfigError(f"{name}: must be a table")
            kwargs[name] = _make(cls, raw[name], name)
    for name, cls in _LISTS.items():
        if name in raw:
            items = raw[name]
            if not isinstance(items, list):
                raise ConfigError(f"{name}: must be an array of tables")
            kwargs[name] = tuple(
                _make(cls, item, f"{name}[{i}]") for i, item in enumerate(items)
            )
    if "retention_days" in raw:
        kwargs["retention_days"] = _coerce(raw["retention_days"], int, "retention_days")
    return Settings(**kwargs)


def _make(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    values = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in table.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        missing = [f.name for f in fields(cls) if f.name not in values]
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}") from exc


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a TOML or environment value to the field's type, or raise ConfigError."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is Path:
            if not isinstance(value, str) or not value:
                raise ValueError
            return Path(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except ValueError:
        name = getattr(hint, "__name__", str(hint))
        raise ConfigError(f"{key}: expected {name}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover


def _validate(s: Settings) -> None:
    _check_ae("node.ae_title", s.node.ae_title)
    _check_port("node.port", s.node.port)
    _check_port("api.port", s.api.port)
    _check_range("node.max_associations", s.node.max_associations, 1, 1000)
    _check_choice("node.acceptor", s.node.acceptor, ACCEPTORS)
    _check_choice("storage.spool_sync", s.storage.spool_sync, SPOOL_SYNCS)
    if not s.allowed_callers:
        raise ConfigError("allowed_callers: at least one caller must be allowed")
    for i, c in enumerate(s.allowed_callers):
        _check_ae(f"allowed_callers[{i}].ae_title", c.ae_title)
        if c.host is not None:
            try:
                ipaddress.ip_network(c.host, strict=False)
            except ValueError:
                raise ConfigError(
                    f"allowed_callers[{i}].host: must be an IP address or network, got {c.host!r}"
                ) from None
        _check_range(f"allowed_callers[{i}].series_quiet_s", c.series_quiet_s, 0.1, 86400)
    seen: set[str] = set()
    for i, d in enumerate(s.destinations):
        if not _NAME_RE.match(d.name):
            raise ConfigError(f"destinations[{i}].name: letters, digits, _.- only, got {d.name!r}")
        if d.name in seen:
            raise ConfigError(f"destinations[{i}].name: duplicate name {d.name!r}")
        seen.add(d.name)
        _check_ae(f"destinations[{i}].ae_title", d.ae_title)
        _check_port(f"destinations[{i}].port", d.port)
        if not d.host:
            raise ConfigError(f"destinations[{i}].host: must not be empty")
    _check_range("storage.min_free_mb", s.storage.min_free_mb, 0, 10**9)
    _check_range("storage.max_instance_mb", s.storage.max_instance_mb, 1, 10**6)
    if s.api.token is not None and len(s.api.token) < 8:
        raise ConfigError("api.token: must be at least 8 characters")
    if s.model.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", s.model.sha256):
        raise ConfigError("model.sha256: must be 64 lower-case hex digits")
    _check_range("worker.count", s.worker.count, 1, 64)
    _check_range("worker.lease_s", s.worker.lease_s, 1, 86400)
    _check_range("worker.max_attempts", s.worker.max_attempts, 1, 100)
    _check_range("worker.poll_interval_s", s.worker.poll_interval_s, 0.01, 60)
    _check_range("worker.shutdown_grace_s", s.worker.shutdown_grace_s, 0, 3600)
    _check_range("sender.retry_base_s", s.sender.retry_base_s, 0.01, 86400)
    _check_range("sender.retry_cap_s", s.sender.retry_cap_s, s.sender.retry_base_s, 86400)
    _check_range("sender.give_up_after_h", s.sender.give_up_after_h, 0.001, 24 * 365)
    _check_range("retention_days", s.retention_days, 1, 36500)


def _check_ae(key: str, value: str) -> None:
    if not _AE_RE.match(value):
        raise ConfigError(f"{key}: 1-16 printable characters without backslash, got {value!r}")


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_port(key: str, value: int) -> None:
    _check_range(key, value, 1, 65535)


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key}: must be {low}..{high}, got {value}")


def describe(settings: Settings) -> str:
    """Human-readable summary for ``dopanode config check`` (token masked)."""
    lines = [
        f"node: {settings.node.ae_title} on {settings.node.bind}:{settings.node.port}"
        f" ({settings.node.acceptor} acceptor)",
        "allowed callers: "
        + ", ".join(f"{c.ae_title}@{c.host or 'any'} (quiet {c.series_quiet_s:g} s)"
                    for c in settings.allowed_callers),
        "destinations: "
        + (", ".join(f"{d.name}={d.ae_title}@{d.host}:{d.port}" for d in settings.destinations)
           or "none (results are kept, not sent)"),
        f"storage: spool {settings.storage.spool_dir}, db {settings.storage.db_path}, "
        f"min free {settings.storage.min_free_mb} MiB, max instance "
        f"{settings.storage.max_instance_mb} MiB, spool sync {settings.storage.spool_sync}",
        f"api: {settings.api.bind}:{settings.api.port}, token "
        + ("set" if settings.api.token else "NOT SET (/api answers loopback clients only)"),
        f"model: {settings.model.model_path or 'none (conventional scoring only)'}",
        f"worker: {settings.worker.count} x, lease {settings.worker.lease_s:g} s, "
        f"{settings.worker.max_attempts} attempts",
        f"sender: back-off {settings.sender.retry_base_s:g}..{settings.sender.retry_cap_s:g} s, "
        f"give up after {settings.sender.give_up_after_h:g} h",
        f"retention: {settings.retention_days} days",
    ]
    return "\n".join(lines)
