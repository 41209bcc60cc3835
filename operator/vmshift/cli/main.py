"""The ``vmshift`` command: one entry point, one subcommand module per area.

Each subcommand lives in its own module under ``vmshift.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
namespace and returning an exit code. This module only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

#: Subcommand modules, in the order ``vmshift --help`` lists them.
SUBCOMMANDS = ("dev", "crds", "docs", "agent", "operator", "demo")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``only`` when it names one: each subcommand module
    imports what it runs, and the operator's start (which a restart waits for) need not import the
    demo's, the agent's and the dev cluster's."""
    parser = argparse.ArgumentParser(prog="vmshift", description=__doc__.splitlines()[0] if __doc__ else None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in (only,) if only in SUBCOMMANDS else SUBCOMMANDS:
        try:
            module = importlib.import_module(f"vmshift.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"vmshift.cli.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
