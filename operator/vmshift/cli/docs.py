"""``vmshift docs``: write or check the files generated from the code: the API reference
(``docs/api.md``, from the pydantic models), the ``kubectl vmshift`` command reference
(``docs/kubectl-vmshift-reference.md``, from its parser), its krew manifest (``manifests/krew``) and Argo CD's
health checks (``manifests/gitops/argocd``).

Reads and writes only those files of the source checkout; the generation lives in
``vmshift.apidocs`` and ``vmshift.gitops``.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

from vmshift import apidocs, gitops
from vmshift.cli.crds import default_directory
from vmshift.kubectl import krew, reference


def generated(root: Path) -> dict[Path, str]:
    """Every generated file, relative to the checkout ``root``, with its content."""
    return {**apidocs.generate(), **reference.generate(), **krew.generate(), **gitops.generate(root)}


def check(root: Path) -> list[str]:
    """Unified diffs of the files that differ from what the code generates (empty: up to date)."""
    diffs: list[str] = []
    for path, text in generated(root).items():
        current = (root / path).read_text() if (root / path).exists() else ""
        if current != text:
            diffs.extend(difflib.unified_diff(current.splitlines(keepends=True), text.splitlines(keepends=True),
                                              f"a/{path}", f"b/{path}"))
    return diffs


def run(args: argparse.Namespace) -> int:
    root: Path = args.root or default_directory().parent
    if args.krew_archive is not None:
        args.krew_archive.mkdir(parents=True, exist_ok=True)
        target = args.krew_archive / krew.ARCHIVE
        target.write_bytes(krew.archive())
        print(f"wrote {target}")
    if args.write:
        for path, text in generated(root).items():
            target = root / path
            if not target.exists() or target.read_text() != text:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
                print(f"wrote {target}")
        return 0
    diffs = check(root)
    if diffs:
        sys.stdout.write("".join(diffs))
        print("generated files differ from the code: run `vmshift docs --write` and commit the result",
              file=sys.stderr)
        return 1
    print("generated docs: up to date")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "docs", help="write or check the API reference and the Argo CD health checks generated from the code",
        description="Without --write, exit 1 and print a diff when a generated file is out of date.")
    parser.add_argument("--write", action="store_true", help="write the generated docs and Argo CD health checks")
    parser.add_argument("--krew-archive", type=Path, default=None, metavar="DIR",
                        help="also write the kubectl plugin's krew archive into DIR")
    parser.add_argument("--root", type=Path, default=None, help="the source checkout (default: this one)")
    parser.set_defaults(func=run)
