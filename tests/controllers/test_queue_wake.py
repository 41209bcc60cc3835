"""A migration waiting in the queue is woken the moment another gives its slots back, not at its
next poll (the per-migration overhead of a drain is mostly such waits)."""

from __future__ import annotations

import asyncio
import time

import kopf
from kopf._cogs.aiokits.aioenums import FlagSetter

from vmshift.controllers import migrations
from vmshift.controllers.runtime import Runtime


async def test_a_release_wakes_the_waiters_that_took_the_event_and_not_later_ones() -> None:
    rt = Runtime()
    taken = rt.gate_changed
    rt.gate_released()
    assert taken.is_set()
    assert not rt.gate_changed.is_set(), "a wait that starts after the release must not return at once"


async def test_a_queued_wait_ends_at_the_release_not_at_the_poll() -> None:
    rt = Runtime()
    stopped = FlagSetter[kopf.DaemonStoppingReason]().async_waiter
    released = rt.gate_changed
    began = time.monotonic()
    asyncio.get_running_loop().call_later(0.05, rt.gate_released)
    await migrations._released_or_stopped(released, stopped)
    waited = time.monotonic() - began
    assert waited < migrations.QUEUE_POLL_SECONDS * 0.8, f"woke after {waited:.3f} s, not at the release (0.05 s)"


async def test_with_no_release_the_wait_still_ends_at_the_poll() -> None:
    rt = Runtime()
    stopped = FlagSetter[kopf.DaemonStoppingReason]().async_waiter
    began = time.monotonic()
    await migrations._released_or_stopped(rt.gate_changed, stopped)
    assert time.monotonic() - began >= migrations.QUEUE_POLL_SECONDS * 0.9
