"""The pipeline registry: which analyses exist, their settings, which are enabled.

A pipeline package exposes one :class:`PipelineSpec` (name, a pydantic
settings model for its ``[pipelines.<name>]`` section, and a ``build``
function). The built-in ones are listed in :data:`BUILTIN`; others (and the
tests' own pipeline) register through the ``dopanode.pipelines`` entry-point
group of an installed distribution, so adding an analysis changes no shared
file: one package, one settings section, one registry entry.

Spec modules must import cheaply (no numerics at import time): ``build``
does the heavy imports.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from service.config_errors import explain
from service.pipelines.base import ModelStatus, Pipeline

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dopanode.pipelines"

#: Built-in pipelines: name -> "module:attribute" of their :class:`PipelineSpec`.
BUILTIN: dict[str, str] = {
    "dat_spect": "service.pipelines.dat_spect.plugin:SPEC",
    "fdopa_pet": "service.pipelines.fdopa_pet.plugin:SPEC",
}


class PipelineSettings(BaseModel):
    """Base of every ``[pipelines.<name>]`` section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


@dataclass(frozen=True)
class PipelineSpec:
    """One analysis as the registry knows it.

    Attributes
    ----------
    name : str
        Registry name, also the settings section and the jobs' ``pipeline``.
    title : str
        One line for ``config check`` and the admin page.
    settings_model : type of PipelineSettings
        Validates the ``[pipelines.<name>]`` section.
    build : callable
        ``(settings) -> Pipeline``; loads models and refuses (raises) when
        something it needs is missing or fails its checksum.
    check_models : callable
        ``(settings) -> tuple of ModelStatus``: the model files the pipeline
        would serve, checked (presence, SHA-256) without loading them; what
        /ready and ``config check`` report.
    command_modules : tuple of str
        Modules with a ``register(subparsers)`` adding the pipeline's own
        ``dopanode`` sub-commands (e.g. ``analyze``); imported only by the CLI.
    """

    name: str
    title: str
    settings_model: type[PipelineSettings]
    build: Callable[[Any], Pipeline]
    check_models: Callable[[Any], tuple[ModelStatus, ...]]
    command_modules: tuple[str, ...] = ()


class PipelineConfigError(ValueError):
    """A ``[pipelines.*]`` section is wrong; the message names the key."""


def _load_spec(target: str) -> PipelineSpec:
    module_name, _, attr = target.partition(":")
    spec = getattr(importlib.import_module(module_name), attr)
    if not isinstance(spec, PipelineSpec):
        raise TypeError(f"{target} is not a PipelineSpec")
    return spec


def specs() -> dict[str, PipelineSpec]:
    """Every registered pipeline: the built-in ones and the entry points."""
    found = {name: _load_spec(target) for name, target in BUILTIN.items()}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        spec = entry.load()
        if not isinstance(spec, PipelineSpec) or spec.name != entry.name:
            raise TypeError(f"entry point {entry.name} is not a PipelineSpec of that name")
        if found.get(spec.name) is spec:
            continue  # a built-in one also declared as an entry point (pyproject.toml)
        if spec.name in found:
            raise ValueError(f"pipeline {spec.name!r} is registered twice")
        found[spec.name] = spec
    return found


def validate_sections(raw: Mapping[str, Any]) -> dict[str, PipelineSettings]:
    """Validate every ``[pipelines.<name>]`` section; defaults for those left out.

    Raises
    ------
    PipelineConfigError
        Naming the key, e.g. ``pipelines.dat_spect.enabled: Input should be
        a valid boolean``, or an unknown pipeline name (message from
        :func:`service.config_errors.explain`).
    """
    known = specs()
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise PipelineConfigError(
            f"pipelines.{unknown[0]}: unknown pipeline (known: {', '.join(sorted(known))})")
    validated: dict[str, PipelineSettings] = {}
    for name, spec in known.items():
        section = raw.get(name, {})
        if not isinstance(section, Mapping):
            raise PipelineConfigError(f"pipelines.{name}: must be a table")
        try:
            validated[name] = spec.settings_model.model_validate(dict(section))
        except ValidationError as exc:
            raise PipelineConfigError(
                explain(exc, spec.settings_model, prefix=f"pipelines.{name}")) from None
    return validated


def build_enabled(sections: Mapping[str, PipelineSettings]) -> dict[str, Pipeline]:
    """Build every enabled pipeline, in registry order.

    Raises
    ------
    Exception
        Whatever a pipeline's ``build`` raises (missing model, bad checksum):
        the node refuses to start rather than analyse with something else.
    """
    known = specs()
    built: dict[str, Pipeline] = {}
    for name, section in sections.items():
        if not section.enabled:
            continue
        pipeline = known[name].build(section)
        built[name] = pipeline
        log.info("pipeline_loaded", extra={"fields": {
            "pipeline": name, "version": pipeline.version}})
    return built


def check_enabled_models(sections: Mapping[str, PipelineSettings]) -> dict[str, tuple[ModelStatus, ...]]:
    """Every enabled pipeline's model files, checked now (presence and SHA-256)."""
    known = specs()
    return {name: known[name].check_models(section)
            for name, section in sections.items() if section.enabled}
