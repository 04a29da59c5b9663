"""Where settings come from: the TOML file, the environment, release-0.1 names.

:func:`service.config.load_settings` reads each source into a table of raw
values with pydantic-settings' own sources, moves the release-0.1 keys to
their new names (per source, so the environment still wins over the file),
and merges the tables before one validation.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, EnvSettingsSource, TomlConfigSettingsSource

from service.config_errors import ConfigError

ENV_PREFIX = "DOPANODE_"

#: Keys of the release-0.1 sections [analysis] and [model], now in [pipelines.dat_spect].
LEGACY_KEYS: dict[tuple[str, str], str] = {
    ("analysis", "template_dir"): "template_dir",
    ("analysis", "fallback_keywords"): "fallback_keywords",
    ("model", "enabled"): "cnn_enabled",
    ("model", "path"): "model_path",
    ("model", "sha256"): "model_sha256",
}
LEGACY_SECTIONS = ("analysis", "model")
_LEGACY_TARGET = ("pipelines", "dat_spect")


def file_key(parts: tuple[str, ...]) -> str:
    """A key as the settings file spells it: ``pipelines.dat_spect.model_path``."""
    return ".".join(parts)


def env_name(parts: tuple[str, ...]) -> str:
    """A key as the environment spells it: ``DOPANODE_PIPELINES__DAT_SPECT__MODEL_PATH``."""
    return ENV_PREFIX + "__".join(parts).upper()


def read_file(path: Path, settings_cls: type[BaseSettings]) -> dict[str, Any]:
    """The TOML file's tables, unvalidated."""
    if not path.is_file():  # pydantic-settings skips a missing file silently
        raise ConfigError(f"config file not found: {path}")
    try:
        return dict(TomlConfigSettingsSource(settings_cls, toml_file=path)())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def read_environ(environ: Mapping[str, str], settings_cls: type[BaseSettings]) -> dict[str, Any]:
    """The ``DOPANODE_*`` variables of ``environ`` as tables, unvalidated."""
    return _EnvironSource(settings_cls, environ)()


class _EnvironSource(EnvSettingsSource):
    """``DOPANODE_*`` variables read from a given mapping instead of ``os.environ``.

    Beyond pydantic-settings' own reading: a ``DOPANODE_<SECTION>__...`` name
    whose section is unknown is an error (a typo would otherwise be ignored),
    a JSON value that does not parse names its variable, and the release-0.1
    sections are collected for :func:`move_legacy`.
    """

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): None if value.strip().lower() == "none" else value
                for name, value in self._environ.items()}

    def __call__(self) -> dict[str, Any]:
        prefix = ENV_PREFIX.lower()
        fields = self.settings_cls.model_fields
        legacy: dict[str, dict[str, Any]] = {}
        for name, value in self.env_vars.items():
            if not name.startswith(prefix):
                continue
            section, nested, key = name[len(prefix):].partition("__")
            if section in fields and not nested and section != "retention_days":
                _check_json(section, name, value)
            elif nested and section in LEGACY_SECTIONS:
                legacy.setdefault(section, {})[key] = value
            elif nested and section not in fields:
                known = ", ".join(n for n in fields if n != "notes")
                raise ConfigError(f"{name.upper()}: unknown section '{section}' (known: {known})")
        return {**super().__call__(), **legacy}


def _check_json(field: str, name: str, value: str | None) -> None:
    try:
        json.loads(value or "null")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{field} (from {name.upper()}): not valid JSON: {exc}") from None


def move_legacy(values: dict[str, Any], spell: Callable[[tuple[str, ...]], str],
                 origins: dict[str, str]) -> tuple[str, ...]:
    """Move [analysis] and [model] (release 0.1) into [pipelines.dat_spect].

    A key already set under its new name wins. Returns one ``rename`` note per
    key moved, spelled as the source spells keys (``spell``); ``origins`` maps
    each new dotted key to the old spelling, for error messages.
    """
    notes: list[str] = []
    for section in LEGACY_SECTIONS:
        table = values.pop(section, None)
        if table is None:
            continue
        if not isinstance(table, dict):
            raise ConfigError(f"{spell((section,))}: must be a table")
        pipelines = values.setdefault(_LEGACY_TARGET[0], {})
        if not isinstance(pipelines, dict) or not isinstance(
                pipelines.setdefault(_LEGACY_TARGET[1], {}), dict):
            raise ConfigError("pipelines: must be a table of [pipelines.<name>] sections")
        for key, value in table.items():
            new_key = LEGACY_KEYS.get((section, key))
            if new_key is None:
                had = ", ".join(k for s, k in LEGACY_KEYS if s == section)
                raise ConfigError(f"{spell((section, key))}: unknown key "
                                  f"(release 0.1 [{section}] had: {had})")
            pipelines[_LEGACY_TARGET[1]].setdefault(new_key, value)
            old, new = spell((section, key)), spell((*_LEGACY_TARGET, new_key))
            origins[".".join((*_LEGACY_TARGET, new_key))] = old
            notes.append(f"rename {old} to {new}")
    return tuple(notes)


def merged(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top, tables merged key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out
