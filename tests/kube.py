"""Test helpers for the real embedded control plane: a kubectl runner and polling with deadlines.

Used by the pytest fixtures in conftest.py; talks to the API server only through kubectl and the
official client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vmshift.devcluster.cluster import ClusterState, ControlPlane, default_dir
from vmshift.devcluster.stack import wait_until

REPO = Path(__file__).resolve().parents[1]
T = TypeVar("T")


@contextlib.contextmanager
def own_control_plane(label: str = "") -> Iterator[Kube]:
    """A real etcd + kube-apiserver + kube-controller-manager of this pytest process, started fresh and
    removed after. Its directory is named ``pytest-<pid>[-label]``, so the ones of crashed runs are
    swept at the next start (``conftest``)."""
    directory = default_dir(f"pytest-{os.getpid()}" + (f"-{label}" if label else ""))
    plane = ControlPlane(directory, tie_to_parent=True)
    state = plane.up(fresh=True)
    try:
        yield Kube(state)
    finally:
        plane.down()
        shutil.rmtree(directory, ignore_errors=True)


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 60.0, interval: float = 0.2,
             describe: Callable[[], str] | None = None) -> T:
    """Poll ``check`` until it returns something truthy; fail the test saying what was expected and seen."""
    try:
        result: T = wait_until(check, what, timeout, interval, describe)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None
    return result


@dataclass
class Kube:
    """A running control plane as tests see it."""

    state: ClusterState
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {**os.environ, **self.state.env()}

    @property
    def kubeconfig(self) -> Path:
        return Path(self.state.kubeconfig)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True,
                              env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply_crds(self) -> None:
        """Install every CRD in crds/ and wait until each is Established."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
