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
#: What a node adds (``vmshift dev node``), built by the same module at the same version.
NODE_NAMES = ("kubelet", "kube-scheduler", "kube-proxy")
_PACKAGES = {
    "etcd": "./cmd/etcd",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
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


def go_build(module_dir: Path, package: str, target: Path, ldflags: str, log: Callable[[str], None],
             note: str) -> None:
    """``go build`` one package of ``module_dir`` into ``target`` (atomically) unless it exists.

    Holds a lock beside ``target`` so that concurrent runs build once.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return
        log(f"building {target.name} ({note}) with Go")
        started = time.monotonic()
        tmp = target.with_suffix(".tmp")
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package],
            cwd=module_dir, env=dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod"), check=True,
        )
        tmp.rename(target)
        log(f"built {target.name} in {time.monotonic() - started:.0f}s")


def build(log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
          names: tuple[str, ...] = NAMES) -> Path:
    """Build every binary of ``names`` missing from the cache with ``go build``; return the cache's bin dir.

    The first build of the control plane takes 10-20 minutes on 2 cores; the node's three binaries
    add about 5 more (most packages are shared and come from Go's build cache).
    """
    out = build_dir()
    for name in names:
        go_build(GO_MODULE_DIR, _PACKAGES[name], out / name, _version_ldflags(), log, BUILD_ID)
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
