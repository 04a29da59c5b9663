"""One typed settings object: embedded defaults, a TOML file, DOPANODE_* environment.

Built on pydantic-settings. Precedence (later wins): the defaults below, the
TOML file, the environment.

Environment rule
----------------
``DOPANODE_<SECTION>__<KEY>=value`` sets one key of a table section,
upper-case, double underscore between the parts, for example
``DOPANODE_NODE__PORT=11113``, ``DOPANODE_API__TOKEN=s3cret``,
``DOPANODE_PIPELINES__DAT_SPECT__ENABLED=false``. The two list sections are
replaced as a whole by a JSON array: ``DOPANODE_ALLOWED_CALLERS='[{"ae_title":
"PACS"}]'``, ``DOPANODE_DESTINATIONS='[{"name": "pacs", "ae_title": "PACS",
"host": "10.0.0.5", "port": 104}]'``. ``DOPANODE_RETENTION_DAYS`` sets the
top-level key. Values are parsed as the key's type; ``none`` clears an
optional key. ``DOPANODE_CONFIG`` (read by the CLI, not here) names the TOML
file; other ``DOPANODE_*`` names without ``__`` are not settings and are left
alone, but ``DOPANODE_<UNKNOWN>__...`` is an error.

Every error names the key (``node.port: must be 1..65535, got 0``) and says
why it is wrong; unknown keys are errors too.

Pipelines: each registered analysis has a ``[pipelines.<name>]`` section that
its own settings model validates (:mod:`service.pipelines.registry`);
``enabled = false`` turns it off. The release-0.1 sections ``[analysis]`` and
``[model]`` (and their ``DOPANODE_ANALYSIS__*``/``DOPANODE_MODEL__*``
variables) are still read into ``[pipelines.dat_spect]``; each one read adds
a note naming the rename, which ``dopanode config check`` prints.

The sections' models live in :mod:`service.config_sections`; reading the
file and the environment and the release-0.1 names in
:mod:`service.config_sources`; the wording of errors in
:mod:`service.config_errors`; the ``config check`` summary in
:mod:`service.config_summary`. Import all of them from here.

Safe default for callers: without configuration only the DCMTK and Orthanc
default AE titles (``STORESCU``, ``ECHOSCU``, ``ORTHANC``) may associate, and
only from loopback (127.0.0.0/8, ::1). A real site lists its PACS explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from service.config_errors import ConfigError, KeyedValueError, explain
from service.config_sections import (
    PLACEHOLDER_TOKEN_PREFIXES,
    AllowedCaller,
    ApiSettings,
    AuditSettings,
    Destination,
    Int,
    NodeSettings,
    SenderSettings,
    StorageSettings,
    TlsSettings,
    WorkerSettings,
)
from service.config_sources import (
    ENV_PREFIX,
    LEGACY_KEYS,
    env_name,
    file_key,
    merged,
    move_legacy,
    read_environ,
    read_file,
)
from service.config_summary import describe
from service.pipelines.registry import (
    PipelineConfigError,
    PipelineSettings,
    validate_sections,
)

__all__ = [
    "LEGACY_KEYS", "PLACEHOLDER_TOKEN_PREFIXES", "AllowedCaller", "ApiSettings", "AuditSettings",
    "ConfigError", "Destination", "NodeSettings", "SenderSettings", "Settings",
    "StorageSettings", "TlsSettings", "WorkerSettings", "describe", "load_command_settings",
    "load_settings",
]

LOOPBACK = ("127.0.0.0/8", "::1/128")


def _default_callers() -> tuple[AllowedCaller, ...]:
    return tuple(
        AllowedCaller(ae_title=ae, host=net)
        for ae in ("STORESCU", "ECHOSCU", "ORTHANC")
        for net in LOOPBACK
    )


def _default_pipelines() -> dict[str, PipelineSettings]:
    return validate_sections({})


class Settings(BaseSettings):
    """Everything the node reads at start-up (see the module docstring).

    ``Settings()`` is the embedded defaults (plus any section passed as an
    argument); :func:`load_settings` adds the file and the environment.
    ``settings.model_copy(update={...})`` makes a changed copy (tests).

    Attributes
    ----------
    pipelines : mapping of str to PipelineSettings
        Every registered pipeline's validated section, enabled or not.
    notes : tuple of str
        Not a setting: the release-0.1 keys read while loading, each as
        ``"rename <old> to <new>"``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False,
        extra="forbid", frozen=True,
    )

    node: NodeSettings = NodeSettings()
    allowed_callers: tuple[AllowedCaller, ...] = Field(default_factory=_default_callers)
    destinations: tuple[Destination, ...] = ()
    storage: StorageSettings = StorageSettings()
    api: ApiSettings = ApiSettings()
    pipelines: Mapping[str, PipelineSettings] = Field(default_factory=_default_pipelines)
    notes: tuple[str, ...] = Field(default=(), exclude=True)
    worker: WorkerSettings = WorkerSettings()
    sender: SenderSettings = SenderSettings()
    audit: AuditSettings = AuditSettings()
    retention_days: Int = Field(default=30, ge=1, le=36500)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments only: load_settings reads the file and the given environment
        # itself, so that Settings() never picks up the test runner's variables.
        return (init_settings,)

    @field_validator("allowed_callers")
    @classmethod
    def _someone_may_call(cls, value: tuple[AllowedCaller, ...]) -> tuple[AllowedCaller, ...]:
        if not value:
            raise ValueError("at least one caller must be allowed")
        return value

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: tuple[Destination, ...]) -> tuple[Destination, ...]:
        seen: set[str] = set()
        for i, destination in enumerate(value):
            if destination.name in seen:
                raise KeyedValueError(f"[{i}].name", f"duplicate name {destination.name!r}")
            seen.add(destination.name)
        return value

    @field_validator("pipelines", mode="before")
    @classmethod
    def _each_pipeline_validates_its_section(cls, value: Any) -> dict[str, PipelineSettings]:
        if not isinstance(value, Mapping):
            raise PipelineConfigError("pipelines: must be a table of [pipelines.<name>] sections")
        # sections already validated (defaults, a copy) are validated again as tables
        return validate_sections({name: dict(section) if isinstance(section, BaseModel)
                                  else section for name, section in value.items()})

    def caller(self, ae_title: str, address: str) -> AllowedCaller | None:
        """The first allowed-caller entry matching this peer, or None."""
        for entry in self.allowed_callers:
            if entry.matches(ae_title, address):
                return entry
        return None

    @property
    def destination_names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.destinations)


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
    file_values = read_file(Path(path), Settings) if path is not None else {}
    env_values = read_environ(os.environ if environ is None else environ, Settings)
    origins: dict[str, str] = {}
    notes = (move_legacy(file_values, file_key, origins)
             + move_legacy(env_values, env_name, origins))
    for values in (file_values, env_values):
        for key in values:
            if key == "notes" or key.startswith("_"):  # not settings, or BaseSettings options
                raise ConfigError(f"{key}: unknown key")
    try:
        return Settings(**merged(file_values, env_values), notes=notes)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, origins)) from None


def load_command_settings(path: str | None) -> Settings | None:
    """Settings for a command line: ``path``, else ``$DOPANODE_CONFIG``, else the defaults.

    A bad configuration prints ``config error: ...`` on stderr and gives None
    (the command then exits 2).
    """
    import sys

    chosen = path or os.environ.get("DOPANODE_CONFIG")
    try:
        return load_settings(Path(chosen) if chosen else None)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


def _explain(exc: ValidationError, origins: Mapping[str, str]) -> str:
    cause = exc.errors()[0].get("ctx", {}).get("error")
    message = str(cause) if isinstance(cause, PipelineConfigError) else explain(exc, Settings)
    key = message.partition(":")[0]
    if key in origins:  # a release-0.1 key: name it as the site wrote it
        return f"{origins[key]} (read as {key}){message[len(key):]}"
    return message
