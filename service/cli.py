"""The ``dopanode`` command line: one entry point, sub-commands per area.

Each area module defines ``register(subparsers)``, which adds its
sub-commands and sets ``func`` (a callable taking the parsed namespace and
returning an exit code) on each. Heavy imports (torch, SimpleITK,
highdicom) happen inside those functions, so ``dopanode --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from service import __version__

#: The node's own sub-command modules; each registered pipeline adds its own
#: (:attr:`service.pipelines.registry.PipelineSpec.command_modules`), e.g. the DaT
#: pipeline's analyze, label, build-template, build-normals, train, evaluate, export.
COMMAND_MODULES: tuple[str, ...] = (
    "service.node_commands",  # serve, config, jobs
    "service.db_commands",  # db migrate
    "service.audit_commands",  # audit verify
    "service.sim.commands",  # simulate, benchmark
    "service.sim.fdopa.commands",  # fdopa generate|describe|validate|simulate
)


def command_modules() -> tuple[str, ...]:
    """The node's sub-command modules, then every registered pipeline's."""
    from service.pipelines.registry import specs

    extra = tuple(m for spec in specs().values() for m in spec.command_modules)
    return COMMAND_MODULES + extra


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dopanode",
        description="DICOM inference node for nuclear medicine (research use, not for diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"dopanode {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules():
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from service import logs

    parser = build_parser()
    args = parser.parse_args(argv)
    logs.configure(args.log_level)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
