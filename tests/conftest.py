"""Session fixtures: the real embedded control plane, brought up once per test run."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.kube import Kube, own_control_plane
from vmshift.controllers.kubeapi import STRICT_STATUS_ENV
from vmshift.devcluster.cluster import ControlPlane, _alive, default_dir

# Every status patch of the operator, in this process and in the operators tests start, is checked
# by its kind's status model and refused when a key is not in it.
os.environ[STRICT_STATUS_ENV] = "1"


def _sweep_dead_runs() -> None:
    """Remove the control planes of earlier test runs whose pytest process is gone."""
    parent = default_dir("x").parent
    for directory in parent.glob("pytest-*"):
        owner = directory.name.removeprefix("pytest-").split("-")[0]
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
    with own_control_plane() as kube:
        yield kube
