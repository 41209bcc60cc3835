"""A runc wrapper for machines whose capability bounding set lacks CAP_SYS_RESOURCE.

The development node's containerd calls this file instead of runc (its runtime ``BinaryName``).
Before ``create``/``run`` it edits the bundle's ``config.json``, before ``exec`` the ``--process``
file: it removes CAP_SYS_RESOURCE from every capability set and raises a negative
``oomScoreAdj`` to 0 (the kubelet asks -998 for pod sandboxes, and lowering the score needs that
capability), then replaces itself with the real runc. Every other command passes through
untouched. Standard library only: it runs as ``python3 -I -S`` for each runc call.

Users' machines need nothing of the kind; the node uses it only where the capability is missing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

DROPPED_CAPABILITY = "CAP_SYS_RESOURCE"
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
#: runc's global options that take a value (``runc --root X create ...``).
_GLOBAL_WITH_VALUE = {"--root", "--log", "--log-format", "--criu", "--rootless"}
_SPEC_OPTION = {"create": ("--bundle", "-b"), "run": ("--bundle", "-b"), "exec": ("--process", "-p")}


def soften_process(process: dict[str, Any]) -> bool:
    """Drop the capability and raise a negative OOM score adjustment in an OCI process; True if changed."""
    changed = False
    caps = process.get("capabilities") or {}
    for name in CAPABILITY_SETS:
        values = caps.get(name)
        if isinstance(values, list) and DROPPED_CAPABILITY in values:
            caps[name] = [c for c in values if c != DROPPED_CAPABILITY]
            changed = True
    score = process.get("oomScoreAdj")
    if isinstance(score, int) and score < 0:
        process["oomScoreAdj"] = 0
        changed = True
    return changed


def soften_spec(spec: dict[str, Any]) -> bool:
    """The same for a bundle's whole ``config.json``: its process."""
    process = spec.get("process")
    return isinstance(process, dict) and soften_process(process)


def spec_file(argv: list[str]) -> tuple[str, Path] | None:
    """The command and the JSON file to edit for a runc command line, or None when nothing needs editing."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _GLOBAL_WITH_VALUE:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        break
    if i >= len(argv) or argv[i] not in _SPEC_OPTION:
        return None
    command, rest = argv[i], argv[i + 1:]
    long, short = _SPEC_OPTION[command]
    value: str | None = None
    for j, arg in enumerate(rest):
        if arg in (long, short) and j + 1 < len(rest):
            value = rest[j + 1]
            break
        if arg.startswith(long + "="):
            value = arg.split("=", 1)[1]
            break
    if command == "exec":
        return (command, Path(value)) if value else None
    return command, Path(value or ".") / "config.json"


def rewrite(command: str, path: Path) -> None:
    document = json.loads(path.read_text())
    changed = soften_process(document) if command == "exec" else soften_spec(document)
    if changed:
        tmp = path.with_name(path.name + ".vmshift")
        tmp.write_text(json.dumps(document))
        os.replace(tmp, path)


def main() -> None:
    real = os.environ.get("VMSHIFT_REAL_RUNC", "/usr/bin/runc")
    argv = sys.argv[1:]
    found = spec_file(argv)
    if found is not None:
        rewrite(*found)
    os.execv(real, [real, *argv])


if __name__ == "__main__":
    main()
