"""The node's own sub-commands: ``serve``, ``config check``, ``jobs list|show|retry``.

``serve`` builds the settings and the enabled pipelines, then runs a
:class:`service.app.Node` until SIGTERM/SIGINT (orderly stop) and serves
SIGHUP (re-read the TLS files); the process edge: a bad configuration exits
2, a pipeline or a part that cannot start exits 1, saying why. Registered by
:mod:`service.cli`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from service import audit, memory
from service.app import COMPONENTS, Node, compose_pipelines
from service.config import ConfigError, Settings, describe, load_command_settings, load_settings

log = logging.getLogger(__name__)


def _settings_from(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None) or os.environ.get("DOPANODE_CONFIG")
    return load_settings(Path(path) if path else None)


def _parse_components(args: argparse.Namespace) -> tuple[str, ...]:
    chosen = list(COMPONENTS)
    if args.only:
        chosen = [c.strip() for c in args.only.split(",") if c.strip()]
    if args.without:
        dropped = {c.strip() for c in args.without.split(",")}
        chosen = [c for c in chosen if c not in dropped]
    unknown = set(chosen) - set(COMPONENTS)
    if unknown or not chosen:
        raise ConfigError(f"--only/--without: choose from {', '.join(COMPONENTS)}")
    return tuple(chosen)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings_from(args)
        components = _parse_components(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    memory.limit_arenas()  # before any thread starts (see service.memory)
    try:
        pipelines = compose_pipelines(settings) if "worker" in components else {}
    except Exception as exc:  # the process edge: refuse to start, say why
        log.exception("pipeline_load_failed")
        print(f"cannot load an analysis pipeline: {exc}", file=sys.stderr)
        return 1
    node = Node(settings, components, pipelines)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal_received", extra={"fields": {"signal": signal.Signals(signum).name}})
        node.request_stop()

    def on_hangup(signum: int, _frame: object) -> None:
        node.request_reload()  # no logging here: the main loop does the work

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        node.start()
    except Exception as exc:  # the process edge: say why, stop what started, exit non-zero
        log.exception("start_failed")
        audit.emit("application_start", audit.APPLICATION_ACTIVITY, audit.APPLICATION_START,
                   outcome=audit.Outcome.SERIOUS_FAILURE, outcome_text=type(exc).__name__)
        node.stop()
        return 1
    node.wait()
    node.stop()
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    path = args.file or os.environ.get("DOPANODE_CONFIG")
    settings = load_command_settings(path)
    if settings is None:
        return 2
    print(f"configuration OK ({path or 'embedded defaults'} + DOPANODE_* environment)")
    print(describe(settings))
    return 0


def _open_db(args: argparse.Namespace) -> Any:
    from service.store.rows import open_rows

    database = open_rows(_settings_from(args).storage)
    database.migrate()
    return database.connect()


def cmd_jobs(args: argparse.Namespace) -> int:
    from service.store import jobs as queue

    try:
        conn = _open_db(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.jobs_command == "list":
            for job in queue.list_jobs(conn, state=args.state, limit=args.limit,
                                       pipeline=args.pipeline):
                print(f"{job.id:6d}  {job.pipeline:12s}  {job.state:10s}"
                      f"  attempts {job.attempts}/{job.max_attempts}"
                      f"  {len(job.instance_uids):4d} inst  {job.reason or ''}")
            return 0
        job_found = queue.get(conn, args.id)
        if job_found is None:
            print(f"job {args.id} does not exist", file=sys.stderr)
            return 1
        if args.jobs_command == "show":
            print(json.dumps(job_found.to_dict(), indent=2, sort_keys=True))
            return 0
        if queue.retry(conn, args.id):
            print(f"job {args.id} queued again")
            return 0
        print(f"job {args.id} is {job_found.state}: only failed or done jobs can be retried",
              file=sys.stderr)
        return 1
    finally:
        conn.close()


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``serve``, ``config check`` and ``jobs list|show|retry``."""
    config_help = "TOML settings file (default: $DOPANODE_CONFIG, else embedded defaults)"
    serve = subparsers.add_parser("serve", help="run the node (SCP, worker, sender, API)")
    serve.add_argument("--config", type=Path, help=config_help)
    serve.add_argument("--only", help=f"comma list of parts to run ({','.join(COMPONENTS)})")
    serve.add_argument("--without", help="comma list of parts not to run")
    serve.set_defaults(func=cmd_serve)

    config = subparsers.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate settings and print a summary")
    check.add_argument("file", nargs="?", type=Path, help=config_help)
    check.set_defaults(func=cmd_config_check)

    jobs = subparsers.add_parser("jobs", help="inspect and retry analysis jobs")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    listing = jobs_sub.add_parser("list", help="jobs, newest first")
    listing.add_argument("--state", choices=("pending", "running", "done", "failed",
                                             "superseded"))
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--pipeline", help="only this pipeline's jobs (e.g. dat_spect)")
    for name, text in (("show", "one job as JSON"), ("retry", "queue a failed/done job again")):
        sub = jobs_sub.add_parser(name, help=text)
        sub.add_argument("id", type=int)
    for parser in jobs_sub.choices.values():
        parser.add_argument("--config", type=Path, help=config_help)
        parser.set_defaults(func=cmd_jobs)
