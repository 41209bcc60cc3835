"""Session fixtures: the real embedded control plane, brought up once per test run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.kube import Kube
from vmshift.devcluster.cluster import ControlPlane, _alive, default_dir


def _sweep_dead_runs() -> None:
    """Remove the control planes of earlier test runs whose pytest process is gone."""
    parent = default_dir("x").parent
    for directory in parent.glob("pytest-*"):
        owner = directory.name.removeprefix("pytest-")
        if owner.isdigit() and not _alive(int(owner)):
            ControlPlane(directory).sweep()
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """A real etcd + kube-apiserver + kube-controller-manager, started fresh for this run.

    Each pytest process gets its own cluster directory, so parallel runs do not collide; the ones
    of crashed runs are swept at the next start.
    """
    _sweep_dead_runs()
    directory = default_dir(f"pytest-{os.getpid()}")
    plane = ControlPlane(directory, tie_to_parent=True)
    state = plane.up(fresh=True)
    try:
        yield Kube(state)
    finally:
        plane.down()
        shutil.rmtree(directory, ignore_errors=True)
