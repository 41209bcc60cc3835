"""Fixtures for the conversion tests: where the shared real-world OVF descriptors live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_dir() -> Path:
    """``$VMSHIFT_SHARED`` if set, else the ``shared`` directory beside the repository (real-world test data)."""
    env = os.environ.get("VMSHIFT_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared"


@pytest.fixture(scope="session")
def ovf_dir() -> Path:
    path = shared_dir() / "testdata" / "ovf"
    if not path.is_dir():
        pytest.fail(f"the shared OVF test data is missing: expected {path} (set VMSHIFT_SHARED to the shared dir)")
    return path
