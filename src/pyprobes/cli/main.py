"""The ``pyprobes`` command: argparse, one module per subcommand, ``main(argv) -> int``."""

from __future__ import annotations

import argparse
import platform
import sys

from pyprobes import __version__
from pyprobes.cli import attach, check, list_command, ps, run
from pyprobes.cli.options import UsageError
from pyprobes.cli.program import ProgramError
from pyprobes.engine.errors import ProbeError, SpecError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="pyprobes",
        description="Linux kprobes for Python: probe any function or line of a program.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"pyprobes {__version__} (CPython {platform.python_version()})",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in (run, check, attach, list_command, ps):
        module.add_parser(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``run``, the program's own arguments are set aside first."""
    if not argv or argv[0] != "run":
        return parser.parse_args(argv)
    sub = run.subparser(parser)
    ours, module, script, rest = run.split_program_args(sub, argv[1:])
    args = parser.parse_args([argv[0], *ours])
    if module is not None:
        args.module = module
    if script is not None:
        args.target = script
    if module is not None or script is not None:
        args.args = rest
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; errors are one line on stderr and a non-zero status, not a traceback."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parse(parser, argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return exc.code if isinstance(exc.code, int) else 2
    try:
        status: int = args.func(args)
        return status
    except UsageError as exc:
        print(f"pyprobes: error: {exc}", file=sys.stderr)
        return 2
    except SpecError as exc:
        print(f"pyprobes: error: {exc}", file=sys.stderr)
        return 2
    except ProgramError as exc:
        print(f"pyprobes: {exc}", file=sys.stderr)
        return exc.status
    except ProbeError as exc:
        print(f"pyprobes: error: {exc}", file=sys.stderr)
        return 1


def main_entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
