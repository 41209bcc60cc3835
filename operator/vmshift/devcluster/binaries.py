"""Finds or builds the control plane's binaries: etcd, kube-apiserver, kube-controller-manager, kubectl.

Talks to the file system and runs ``go build``; starts nothing. Lookup order for each binary:
``$KUBEBUILDER_ASSETS``, then the build cache ``~/.cache/vmshift/<version>/bin``, then ``PATH``
(an etcd older than 3.5.13 there, such as Debian's 3.4, is passed over); when a binary is found
nowhere, the wrapper Go module beside this file builds all four once from the Go
module proxy, under a lock so that concurrent runs build once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.5"
BUILD_ID = f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"
NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
GO_MODULE_DIR = Path(__file__).with_name("gobuild")
_PACKAGES = {
    "etcd": "./cmd/etcd",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}


def cache_root() -> Path:
    """Where vmshift keeps build outputs and cluster state, outside any repository."""
    return Path(os.environ.get("VMSHIFT_CACHE", Path.home() / ".cache" / "vmshift"))


def build_dir() -> Path:
    return cache_root() / BUILD_ID / "bin"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kubectl: Path

    @property
    def bin_dirs(self) -> list[Path]:
        """Directories to put on PATH so that ``kubectl`` is the one matching the server."""
        return sorted({self.kubectl.parent})


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.gitCommit={KUBERNETES_VERSION}",
            f"-X {pkg}.buildDate=2026-01-01T00:00:00Z",
        ]
    return " ".join(flags)


def _candidates(name: str) -> list[Path]:
    found: list[Path] = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        found.append(Path(assets) / name)
    found.append(build_dir() / name)
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    return found


def _etcd_recent_enough(path: Path) -> bool:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            parts = [int(p) for p in line.split(":", 1)[1].strip().split(".")[:3]]
            return parts >= [3, 5, 13]
    return False


def find(name: str) -> Path | None:
    """The first usable executable ``name`` in lookup order, or None."""
    for path in _candidates(name):
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        if name == "etcd" and path.parent != build_dir() and not _etcd_recent_enough(path):
            continue
        return path
    return None


def build(log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Build every binary missing from the cache with ``go build``; return the cache's bin dir."""
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod")
        for name in NAMES:
            target = out / name
            if target.exists():
                continue
            log(f"building {name} ({BUILD_ID}) with Go; the first build takes 10-20 minutes on 2 cores")
            started = time.monotonic()
            tmp = target.with_suffix(".tmp")
            subprocess.run(
                ["go", "build", "-trimpath", "-ldflags", _version_ldflags(), "-o", str(tmp), _PACKAGES[name]],
                cwd=GO_MODULE_DIR,
                env=env,
                check=True,
            )
            tmp.rename(target)
            log(f"built {name} in {time.monotonic() - started:.0f}s")
    return out


def ensure(log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Binaries:
    """Find all four binaries, building the missing ones first."""
    if any(find(name) is None for name in NAMES):
        build(log)
    paths: dict[str, Path] = {}
    for name in NAMES:
        path = find(name)
        if path is None:
            raise RuntimeError(f"control plane binary {name} is missing after the build in {build_dir()}")
        paths[name.replace("-", "_")] = path
    return Binaries(**paths)
