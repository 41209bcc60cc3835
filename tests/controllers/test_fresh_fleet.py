"""A fresh fleet for validation is built off the event loop, once for a burst of callers, and never
from a snapshot older than the caller's request."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from vmshift.controllers import indexes
from vmshift.scheduling.fleet import Fleet

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Each build as (the change counter it was snapshotted at, the builder's thread id)."""
    made: list[tuple[int, int]] = []
    monkeypatch.setattr(indexes, "_cached", None)
    monkeypatch.setattr(indexes, "_building", None)
    counter = indexes._changes

    def slow_build(*snapshot: Any) -> Fleet:
        made.append((counter_at_start[-1], threading.get_ident()))
        time.sleep(0.2)
        return Fleet([])

    counter_at_start = [counter]
    real_start = indexes._start_build

    def start() -> indexes._Build:
        counter_at_start.append(indexes._changes)
        return real_start()

    monkeypatch.setattr(indexes, "build_fleet", slow_build)
    monkeypatch.setattr(indexes, "_start_build", start)
    return made


async def test_a_burst_of_callers_shares_one_build_made_off_the_loop(builds: list[tuple[int, int]]) -> None:
    fleets = await asyncio.gather(*(indexes.fresh_fleet() for _ in range(20)))
    assert len(builds) == 1, builds
    assert all(f is fleets[0] for f in fleets)
    assert builds[0][1] != threading.get_ident(), "the build ran on the event loop's thread"
    assert await indexes.fresh_fleet() is fleets[0], "nothing changed: the built fleet is fresh"


async def test_a_caller_after_a_change_never_gets_the_older_snapshot(
        builds: list[tuple[int, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    early = asyncio.ensure_future(indexes.fresh_fleet())
    await asyncio.sleep(0.05)  # the first build is under way
    monkeypatch.setattr(indexes, "_changes", indexes._changes + 1)
    late = await asyncio.gather(*(indexes.fresh_fleet() for _ in range(5)))
    first = await early
    assert len(builds) == 2, builds
    assert builds[1][0] == indexes._changes, "the second build must start from the changed caches"
    assert all(f is late[0] for f in late) and late[0] is not first
