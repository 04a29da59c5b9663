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

#: Modules that contribute sub-commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "service.app",  # serve, config, jobs
    "service.pipelines.commands",  # analyze, label, build-template, build-normals
    "service.sim.commands",  # simulate, benchmark
    "service.sim.fdopa.commands",  # fdopa generate|describe|validate
    "service.inference.commands",  # train, evaluate, export
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dopanode",
        description="DICOM inference node for DaT SPECT (research use, not for diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"dopanode {__version__}")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
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
