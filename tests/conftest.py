"""Session fixtures: the real embedded control plane, brought up once per test run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube import Kube
from vmshift.devcluster.cluster import ControlPlane, default_dir


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """A real etcd + kube-apiserver + kube-controller-manager, started fresh for this run."""
    plane = ControlPlane(default_dir("pytest"), tie_to_parent=True)
    state = plane.up(fresh=True)
    try:
        yield Kube(state)
    finally:
        plane.down()
