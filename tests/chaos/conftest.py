"""The chaos campaign's own installation: a control plane started here (so the API server can be
restarted under the operator), the operator process, and the proxies. Not the e2e fleet's: trials
kill and restart the operator, which must not disturb the other end-to-end tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.chaos.harness import Campaign
from vmshift.devcluster.cluster import ControlPlane, default_dir


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    directory = default_dir(f"pytest-chaos-{os.getpid()}")
    plane = ControlPlane(directory, tie_to_parent=True)
    c = Campaign(plane, tmp_path_factory.mktemp("chaos"), log=lambda line: print(line, flush=True))
    try:
        yield c
    finally:
        c.close()
        plane.down()
        shutil.rmtree(directory, ignore_errors=True)
