"""A guest's serial console on this host: its last workload tick, and keeping it when the guest leaves.

Reads and moves files only.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from vmshift.hypervisor.qemu.workload import Tick, parse_line

#: How much of the console's end ``last_tick`` reads.
CONSOLE_TAIL_BYTES = 4096
#: Under the work directory: the consoles of guests that left this host or were deleted (keep_console).
CONSOLES = "consoles"


def keep_console(serial: Path, folder: Path) -> None:
    """Keep what a guest printed on this host after it left or was deleted, as ``<ns-since-epoch>.log``
    in ``folder`` (a person, or a test, reads a guest's whole life across hosts from these)."""
    if serial.exists() and serial.stat().st_size:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.move(serial, folder / f"{time.time_ns()}.log")


def last_tick(serial: Path) -> Tick | None:
    """The last complete workload line the guest printed on this host's console (None: none yet)."""
    try:
        with open(serial, "rb") as console:
            console.seek(max(0, console.seek(0, os.SEEK_END) - CONSOLE_TAIL_BYTES))
            text = console.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    for line in reversed(text.splitlines()[:-1] if not text.endswith("\n") else text.splitlines()):
        item = parse_line(line)
        if isinstance(item, Tick):
            return item
    return None


def console_tail(serial: Path, lines: int = 6) -> str:
    """The last lines the guest printed that are not workload ticks (a kernel's oops, a panic), joined by
    " | " for a log line; empty when there are none."""
    try:
        with open(serial, "rb") as console:
            console.seek(max(0, console.seek(0, os.SEEK_END) - 4 * CONSOLE_TAIL_BYTES))
            text = console.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    said = [line.strip() for line in text.splitlines() if line.strip() and parse_line(line) is None]
    return " | ".join(said[-lines:])
