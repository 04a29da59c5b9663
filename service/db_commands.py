"""``dopanode db migrate``: bring the rows store's schema up to this release, then exit.

``serve`` migrates at start too (each part, under the store's own lock: the
SQLite write lock or a PostgreSQL advisory lock), so this command is for a
deployment that wants the schema change as one step of its own before any
new part starts: the Kubernetes Job of deploy/k8s/base, a release script.
A database newer than this release is refused (no downgrade), exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from service.config import load_command_settings

log = logging.getLogger(__name__)


def cmd_db_migrate(args: argparse.Namespace) -> int:
    """Migrate the store ``[storage]`` names; 0 done, 1 refused, 2 bad settings."""
    from service.store.rows import open_rows

    settings = load_command_settings(args.config)
    if settings is None:
        return 2
    try:
        found = open_rows(settings.storage).migrate()
    except RuntimeError as exc:  # newer than this release: refuse, say why
        print(f"migration refused: {exc}", file=sys.stderr)
        return 1
    print(f"{settings.storage.backend} schema migrated (found version {found})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``db migrate``."""
    db = subparsers.add_parser("db", help="database tools")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    migrate = db_sub.add_parser("migrate", help="migrate the schema to this release and exit")
    migrate.add_argument("--config", type=Path,
                         help="TOML settings file (default: $DOPANODE_CONFIG, else embedded defaults)")
    migrate.set_defaults(func=cmd_db_migrate)


__all__ = ["cmd_db_migrate", "register"]
