"""``dopanode audit verify``: check the audit trail's hash chain (:mod:`service.audit_verify`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.config import load_command_settings


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """0 the chain holds, 1 it does not (or there is no trail), 2 bad settings."""
    from service.audit_verify import summary, verify

    path = args.path
    if path is None:
        settings = load_command_settings(args.config)
        if settings is None:
            return 2
        path = Path(settings.audit.path)
    if not path.exists() and not path.parent.is_dir():
        print(f"no audit trail at {path}", file=sys.stderr)
        return 1
    try:
        report = verify(path, args.against)
    except OSError as exc:
        print(f"audit trail {path} or the ARR copy cannot be read: {exc.strerror}",
              file=sys.stderr)
        return 1
    print(summary(report, path))
    return 0 if report.intact and report.files else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``audit verify``."""
    audit = subparsers.add_parser("audit", help="audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    check = audit_sub.add_parser(
        "verify", help="check the trail's hash chain (edits, removals, reordering)")
    check.add_argument("--config", type=Path,
                       help="TOML settings file (default: $DOPANODE_CONFIG, else embedded "
                            "defaults); the trail is its [audit] path")
    check.add_argument("--path", type=Path,
                       help="the trail's current file instead (rotated files beside it)")
    check.add_argument("--against", type=Path, metavar="ARR_COPY",
                       help="the audit record repository's copy (one record per line): "
                            "its records must be in the trail (a rewritten or cut trail)")
    check.set_defaults(func=cmd_audit_verify)


__all__ = ["cmd_audit_verify", "register"]
