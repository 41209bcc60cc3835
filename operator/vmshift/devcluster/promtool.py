"""Finds or builds Prometheus' ``promtool``, which checks and unit-tests the alerting rules vmshift ships.

Talks to the file system and runs ``go``; starts nothing. Lookup order: ``$VMSHIFT_PROMTOOL`` (a
path to a binary you already have), then the build cache ``~/.cache/vmshift/promtool/<version>/promtool``;
when neither exists, ``go install github.com/prometheus/prometheus/cmd/promtool@<version>`` takes
the module from the Go module proxy and builds it into the cache, under a lock so that concurrent
runs build once. The build tag ``remove_all_sd`` leaves out the service-discovery plugins (cloud
SDKs that rule checks never use), which roughly halves the build. A few minutes of CPU on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vmshift.devcluster.cachedbuild import CachedBinary

MODULE = "github.com/prometheus/prometheus"
#: Prometheus 3.x tags its Go module v0.3xx.y (v0.316.0 is Prometheus 3.16.0).
VERSION = "v0.316.0"


BINARY = CachedBinary("promtool", VERSION, "VMSHIFT_PROMTOOL", "a few minutes on 2 cores")


def _build(out: Path) -> None:
    env = dict(os.environ, CGO_ENABLED="0", GOBIN=str(out), GOFLAGS="")
    proc = subprocess.run(
        ["go", "install", "-trimpath", "-tags", "remove_all_sd", "-ldflags",
         f"-s -w -X github.com/prometheus/common/version.Version={VERSION.lstrip('v')}",
         f"{MODULE}/cmd/promtool@{VERSION}"],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go install {MODULE}/cmd/promtool@{VERSION} failed:\n{proc.stderr.strip()}")


def ensure() -> Path:
    """The promtool binary, built first when it is found nowhere."""
    return BINARY.ensure(_build)
