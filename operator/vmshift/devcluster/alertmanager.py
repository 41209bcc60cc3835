"""Finds or builds Prometheus Alertmanager, the real peer that the webhook receiver's tests send through.

Talks to the file system and runs ``go``; starts nothing. Lookup order: ``$VMSHIFT_ALERTMANAGER``
(a path to a binary you already have), then the build cache
``~/.cache/vmshift/alertmanager/<version>/alertmanager``; when neither exists, the module is taken
from the Go module proxy (``go mod download``), copied into a writable scratch directory (the
module cache is read-only), given the placeholder UI directory that the module zip lacks
(``ui/app/dist`` is built by npm upstream and embedded with ``//go:embed``; the web UI is not what
vmshift tests), and built with ``go build ./cmd/alertmanager``, under a lock so that concurrent
runs build once. About a minute of CPU on 2 cores once the modules are downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from vmshift.devcluster.cachedbuild import CachedBinary

MODULE = "github.com/prometheus/alertmanager"
VERSION = "v0.35.0"
#: Directories under ``ui/app/dist`` that ``ui/web.go`` opens with ``fs.Sub`` at start-up.
_UI_ROOTS = ("elm", "mantine")
_PLACEHOLDER_PAGE = "<!doctype html><title>Alertmanager</title><p>web UI not built (vmshift test build)</p>\n"


BINARY = CachedBinary("alertmanager", VERSION, "VMSHIFT_ALERTMANAGER", "about a minute on 2 cores")


def _module_dir(version: str, env: dict[str, str]) -> Path:
    """Download the module (a no-op when the module cache has it) and return its read-only directory."""
    out = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{version}"],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"go mod download {MODULE}@{version} failed: {out.stderr.strip() or out.stdout.strip()}")
    info = json.loads(out.stdout)
    if info.get("Error"):
        raise RuntimeError(f"go mod download {MODULE}@{version} failed: {info['Error']}")
    return Path(info["Dir"])


def _writable_copy(source: Path, scratch: Path) -> Path:
    tree = scratch / "alertmanager"
    shutil.copytree(source, tree, symlinks=True)
    for root, dirs, files in os.walk(tree):
        for name in dirs + files:
            path = Path(root) / name
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | stat.S_IWUSR)
    tree.chmod(tree.stat().st_mode | stat.S_IWUSR)
    return tree


def _add_ui_placeholder(tree: Path) -> None:
    for root in _UI_ROOTS:
        folder = tree / "ui" / "app" / "dist" / root
        folder.mkdir(parents=True, exist_ok=True)
        page = folder / "index.html"
        if not page.exists():
            page.write_text(_PLACEHOLDER_PAGE)


def _build(out: Path) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
    source = _module_dir(VERSION, env)
    with tempfile.TemporaryDirectory(prefix="vmshift-alertmanager-") as scratch:
        tree = _writable_copy(source, Path(scratch))
        _add_ui_placeholder(tree)
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags",
             f"-s -w -X github.com/prometheus/common/version.Version={VERSION.lstrip('v')}",
             "-o", str(out / "alertmanager"), "./cmd/alertmanager"],
            cwd=tree, env=env, check=True,
        )


def ensure() -> Path:
    """The alertmanager binary, built first when it is found nowhere."""
    return BINARY.ensure(_build)
