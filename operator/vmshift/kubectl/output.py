"""Where the plugin's output goes: a terminal gets colour, tables and a live progress view; a pipe or a
CI log gets the same words as plain lines; ``--output json|yaml`` gets data.

Uses ``rich``: colour only when stdout is a terminal (and ``NO_COLOR`` is unset, which rich honours).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml
from rich.console import Console
from rich.table import Table

#: Width used when stdout is not a terminal: wide enough that tables in logs are not wrapped.
PLAIN_WIDTH = 200


class Output:
    """The plugin's stdout and stderr."""

    def __init__(self, fmt: str | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None,
                 force_terminal: bool | None = None) -> None:
        self.format = fmt
        out = stdout or sys.stdout
        self.terminal = out.isatty() if force_terminal is None else force_terminal
        width = None if self.terminal else PLAIN_WIDTH
        self.console = Console(file=out, force_terminal=force_terminal, highlight=False, width=width,
                               soft_wrap=not self.terminal)
        self.err = Console(file=stderr or sys.stderr, highlight=False, soft_wrap=True,
                           width=None if self.terminal else PLAIN_WIDTH)

    @property
    def structured(self) -> bool:
        return self.format in ("json", "yaml")

    def line(self, text: str = "", style: str | None = None) -> None:
        """A line of text (never parsed as markup)."""
        self.console.print(text, style=style, markup=False)

    def error(self, text: str) -> None:
        self.err.print(f"error: {text}", style="red", markup=False)

    def warn(self, text: str) -> None:
        self.err.print(f"warning: {text}", style="yellow", markup=False)

    def data(self, value: Any) -> None:
        if self.format == "yaml":
            self.console.print(yaml.safe_dump(value, sort_keys=False).rstrip(), markup=False)
        else:
            self.console.print(json.dumps(value, indent=2, default=str), markup=False)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[str]], data: Any = None,
              empty: str = "") -> None:
        """A table like kubectl's (headings, aligned columns, no borders), or ``data`` as JSON/YAML."""
        if self.structured:
            self.data(data if data is not None else [dict(zip(columns, r, strict=True)) for r in rows])
            return
        if not rows and empty:
            self.line(empty)
            return
        table = Table(box=None, header_style="bold", pad_edge=False, show_edge=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.console.print(table)
