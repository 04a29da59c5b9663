"""The summary ``dopanode config check`` prints: one line per section, secrets masked.

The API token and the PostgreSQL DSN are never printed (only whether they are
set); every registered pipeline's section is listed with its model files,
checked now; the release-0.1 keys read under their new names are named last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.pipelines.registry import specs

if TYPE_CHECKING:
    from service.config import Settings
    from service.config_sections import NodeSettings, StorageSettings

__all__ = ["describe"]


def describe(settings: Settings) -> str:
    """Human-readable summary for ``dopanode config check`` (token masked)."""
    lines = [
        *_describe_node(settings.node),
        "allowed callers: "
        + ", ".join(f"{c.ae_title}@{c.host or 'any'} (quiet {c.series_quiet_s:g} s)"
                    for c in settings.allowed_callers),
        "destinations: "
        + (", ".join(f"{d.name}={d.ae_title}@{d.host}:{d.port}{' (TLS)' if d.tls else ''}" for d in settings.destinations)
           or "none (results are kept, not sent)"),
        _describe_storage(settings.storage),
        f"api: {settings.api.bind}:{settings.api.port}, token "
        + ("set" if settings.api.token else "NOT SET (/api answers loopback clients only)"),
        *_describe_pipelines(settings),
        f"worker: {settings.worker.count} x, lease {settings.worker.lease_s:g} s, "
        f"{settings.worker.max_attempts} attempts",
        f"sender: back-off {settings.sender.retry_base_s:g}..{settings.sender.retry_cap_s:g} s, "
        f"give up after {settings.sender.give_up_after_h:g} h",
        f"retention: {settings.retention_days} days",
        "audit: " + (f"{settings.audit.path}, kept {settings.audit.retention_days} days"
                     if settings.audit.enabled else "DISABLED"),
    ]
    if settings.notes:
        lines.append("release-0.1 settings read under their new names (rename them):")
        lines.extend(f"  {note}" for note in settings.notes)
    return "\n".join(lines)


def _describe_node(node: NodeSettings) -> list[str]:
    """The ``node:`` and ``tls:`` lines."""
    return [
        f"node: {node.ae_title} on {node.bind}:"
        + (f"{node.port}" if node.plain else "(plain port off)")
        + f", acceptor {node.acceptor}",
        "tls: " + (f"port {node.tls.port}, TLS {node.tls.min_version}+, client certificates "
                   + ("required" if node.tls.require_client_cert
                      else "verified if sent" if node.tls.ca_file else "not asked")
                   if node.tls else "off"),
    ]


def _describe_storage(storage: StorageSettings) -> str:
    """The ``storage:`` line (the DSN never printed; S3 credentials: set or not)."""
    return (
        f"storage: spool {storage.spool_dir}, "
        + (f"db {storage.db_path}, " if storage.backend == "sqlite"
           else "db PostgreSQL (postgres_dsn set), ")
        + f"min free {storage.min_free_mb} MiB, max instance {storage.max_instance_mb} MiB, "
        f"spool sync {storage.spool_sync}, blobs "
        + ("local (spool folder)" if storage.blobs == "local"
           else f"S3 bucket {storage.s3_bucket} at {storage.s3_endpoint or 'AWS'}"
                f" (credentials from the environment: "
                f"{'set' if os.environ.get('AWS_ACCESS_KEY_ID') else 'default chain'})")
    )


def _describe_pipelines(settings: Settings) -> list[str]:
    """Every registered pipeline: state, section values, model files checked now."""
    lines = ["pipelines:"]
    for name, spec in specs().items():
        section = settings.pipelines.get(name) or spec.settings_model()
        lines.append(f"  {name}: {'enabled' if section.enabled else 'disabled'} ({spec.title})")
        lines.extend(f"    {key} = {_toml_value(value)}" for key, value in section
                     if key != "enabled")
        for model in spec.check_models(section):
            where = f" ({model.path})" if model.path else ""
            lines.append(f"    model {model.name}{where}: {'OK' if model.ok else 'NOT OK'}, "
                         f"{model.detail}")
    return lines


def _toml_value(value: Any) -> str:
    if value is None:
        return "(not set: default)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    return str(value)  # numbers; SecretStr prints masked
