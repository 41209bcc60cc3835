"""A guest's serial console on this host: the last workload tick it printed.

Reads files only.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmshift.hypervisor.qemu.workload import Tick, parse_line

#: How much of the console's end ``last_tick`` reads.
CONSOLE_TAIL_BYTES = 4096


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
