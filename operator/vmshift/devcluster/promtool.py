"""Finds or builds Prometheus' ``promtool``, which checks and unit-tests the alerting rules vmshift ships.

Talks to the file system and runs ``go``; starts nothing. Lookup order: ``$VMSHIFT_PROMTOOL`` (a
path to a binary you already have), then the build cache ``~/.cache/vmshift/promtool/<version>/promtool``;
when neither exists, ``go install github.com/prometheus/prometheus/cmd/promtool@<version>`` takes
the module from the Go module proxy and builds it into the cache, under a lock so that concurrent
runs build once. The build tag ``remove_all_sd`` leaves out the service-discovery plugins (cloud
SDKs that rule checks never use), which roughly halves the build. A few minutes of CPU on 2 cores.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vmshift.devcluster.binaries import cache_root

MODULE = "github.com/prometheus/prometheus"
#: Prometheus 3.x tags its Go module v0.3xx.y (v0.316.0 is Prometheus 3.16.0).
VERSION = "v0.316.0"


def build_dir(version: str = VERSION) -> Path:
    return cache_root() / "promtool" / version


def cached(version: str = VERSION) -> Path:
    return build_dir(version) / "promtool"


def find(version: str = VERSION) -> Path | None:
    """The usable promtool binary in lookup order, or None."""
    override = os.environ.get("VMSHIFT_PROMTOOL")
    for path in ([Path(override)] if override else []) + [cached(version)]:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


def build(version: str = VERSION, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Build promtool into the cache (once) and return its path."""
    target = cached(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        started = time.monotonic()
        log(f"building promtool {version} from the Go module proxy (a few minutes on 2 cores)")
        with tempfile.TemporaryDirectory(prefix="vmshift-promtool-", dir=target.parent) as gobin:
            env = dict(os.environ, CGO_ENABLED="0", GOBIN=gobin, GOFLAGS="")
            proc = subprocess.run(
                ["go", "install", "-trimpath", "-tags", "remove_all_sd", "-ldflags",
                 f"-s -w -X github.com/prometheus/common/version.Version={version.lstrip('v')}",
                 f"{MODULE}/cmd/promtool@{version}"],
                env=env, capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"go install {MODULE}/cmd/promtool@{version} failed:\n{proc.stderr.strip()}")
            (Path(gobin) / "promtool").rename(target)
        log(f"built promtool {version} in {time.monotonic() - started:.0f}s: {target}")
    return target


def ensure(version: str = VERSION, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """The promtool binary, built first when it is found nowhere."""
    return find(version) or build(version, log)
