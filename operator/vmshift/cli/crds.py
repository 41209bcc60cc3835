"""``vmshift crds``: write, check or print the CustomResourceDefinitions generated from the API models.

Reads and writes only the crds/ directory (or prints to stdout); the generation itself lives in
``vmshift.api.crdgen``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vmshift.api import crdgen


def default_directory() -> Path:
    """crds/ of the source checkout this package runs from, else crds/ under the working directory."""
    checkout = Path(__file__).resolve().parents[3]
    if (checkout / "pyproject.toml").exists() and (checkout / "operator" / "vmshift").is_dir():
        return checkout / "crds"
    return Path.cwd() / "crds"


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir or default_directory()
    if args.write:
        changed = crdgen.write(directory)
        for path in changed:
            print(f"wrote {path}" if path.exists() else f"removed {path}")
        if not changed:
            print(f"{directory}: up to date")
        return 0
    if args.check:
        diffs = crdgen.check(directory)
        if diffs:
            sys.stdout.write("".join(diffs))
            print(f"{directory} differs from the API models: run `vmshift crds --write` and commit the result",
                  file=sys.stderr)
            return 1
        print(f"{directory}: up to date")
        return 0
    sys.stdout.write("---\n".join(crdgen.generate().values()))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "crds",
        help="generate the CustomResourceDefinitions from the API models",
        description="Generate the CustomResourceDefinitions from the API models. Without --write or "
        "--check, print them (e.g. `vmshift crds | kubectl apply -f -`).",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="write crds/*.yaml (and remove stale ones)")
    action.add_argument("--check", action="store_true",
                        help="exit 1 and print a diff when crds/ differs from the generated output")
    parser.add_argument("--dir", type=Path, default=None,
                        help="the crds directory (default: crds/ of the source checkout)")
    parser.set_defaults(func=run)
