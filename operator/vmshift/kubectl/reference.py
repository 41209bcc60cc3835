"""The command reference of ``kubectl vmshift`` (``docs/kubectl-vmshift-reference.md``), generated from
its argument parser so the page always says what ``--help`` says. Pure text generation.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vmshift.kubectl.completion import _subparsers
from vmshift.kubectl.main import build_parser

REFERENCE_MD = Path("docs/kubectl-vmshift-reference.md")
#: Help is wrapped at a fixed width, so the page does not depend on the terminal that wrote it.
WIDTH = 100


def _help(parser: argparse.ArgumentParser) -> str:
    kind = parser.formatter_class

    def fixed(prog: str) -> argparse.HelpFormatter:
        # The parsers' own formatters, at a fixed width (the plugin's descriptions are wrapped by hand).
        return argparse.RawDescriptionHelpFormatter(prog, width=WIDTH)

    parser.formatter_class = fixed
    try:
        return parser.format_help().rstrip()
    finally:
        parser.formatter_class = kind


def generate() -> dict[Path, str]:
    parser = build_parser()
    parts = ["# kubectl vmshift: command reference", "",
             "Generated from the plugin's parser (`vmshift docs --write`); a test fails when it differs. The guide "
             "is [kubectl-vmshift.md](kubectl-vmshift.md).", "", "```text", _help(parser), "```"]
    seen: set[int] = set()
    for name, sub in _subparsers(parser).items():
        if id(sub) in seen:  # an alias (status) shares its command's parser
            continue
        seen.add(id(sub))
        parts += ["", f"## {name}", "", "```text", _help(sub), "```"]
    return {REFERENCE_MD: "\n".join(parts) + "\n"}
