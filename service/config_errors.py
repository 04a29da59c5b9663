"""Settings errors, one line each, naming the key: ``node.port: must be 1..65535, got 0``.

pydantic reports a failed validation as a list of errors with a location
tuple (``("allowed_callers", 0, "host")``) and a message of its own. Settings
errors go to a site engineer editing a TOML file, so they are rewritten into
the file's own spelling of the key (``allowed_callers[0].host``), ranges are
stated whole, and unknown keys list the known ones. Used by
:mod:`service.config` and by the pipeline registry for ``[pipelines.<name>]``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

_RANGE_ERRORS = ("greater_than_equal", "less_than_equal")
_ECHO_INPUT = ("int_from_float", "literal_error")


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range; names the key."""


class KeyedValueError(ValueError):
    """A validator's error about one key below the model or field it validates.

    Parameters
    ----------
    key : str
        Relative to the validated model, e.g. ``"retry_cap_s"`` or ``"[1].name"``.
    message : str
        Why the value is wrong.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def key_name(loc: Sequence[int | str], prefix: str = "") -> str:
    """The TOML spelling of a location: ``("destinations", 0, "port")`` -> ``destinations[0].port``."""
    name = prefix
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


def explain(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """The first error of ``exc`` as ``key: message``.

    Parameters
    ----------
    exc : ValidationError
        Raised while validating ``model``.
    model : type of BaseModel
        The model validated, to look up bounds and known keys.
    prefix : str
        Key of ``model`` itself in the settings file (``"pipelines.dat_spect"``).
    """
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    cause = error.get("ctx", {}).get("error")
    key = key_name(loc, prefix)
    kind = error["type"]
    if isinstance(cause, KeyedValueError):
        sep = "" if not key or not cause.key or cause.key.startswith("[") else "."
        return f"{key}{sep}{cause.key}: {cause}"
    if kind == "value_error" and cause is not None:
        return f"{key}: {cause}"
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        known = ", ".join(_public_fields(parent)) if parent is not None else ""
        return f"{key}: unknown key" + (f" (known: {known})" if known else "")
    if kind == "missing":
        return f"{key}: missing required key"
    if kind in _RANGE_ERRORS:
        info = _field_at(model, loc)
        low, high = _bounds(info) if info is not None else (None, None)
        if low is not None and high is not None:
            return f"{key}: must be {low}..{high}, got {error['input']}"
    if kind.endswith("_parsing") or kind in _ECHO_INPUT:  # numbers, booleans, choices
        return f"{key}: {error['msg']}, got {error['input']!r}"
    return f"{key}: {error['msg']}"  # never the input: it may be a token


def _public_fields(model: type[BaseModel]) -> list[str]:
    return sorted(name for name, info in model.model_fields.items() if not info.exclude)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds: itself, or the element of a ``tuple[Model, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (tuple, list, types.UnionType, typing.Union):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _field_at(model: type[BaseModel], loc: Sequence[int | str]) -> FieldInfo | None:
    parent = _model_at(model, loc[:-1])
    if parent is None or not loc or not isinstance(loc[-1], str):
        return None
    return parent.model_fields.get(loc[-1])


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            continue  # an element of a tuple of models: same model
        info = current.model_fields.get(part) if current is not None else None
        if info is None:
            return None
        current = _model_in(info.annotation)
    return current


def _bounds(info: FieldInfo) -> tuple[Any, Any]:
    low = high = None
    for item in info.metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high
