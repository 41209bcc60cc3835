"""Expectations: what this process wrote that the watch has not echoed yet (pure: no I/O).

A controller that reads its caches right after a write sees the world before the write: a guest
just placed is on no host, a migration just created does not exist, one just finished is still in
flight. KubeVirt's ``UIDTrackingControllerExpectations`` bridges that gap for all its controllers
with one helper; this is vmshift's. An expectation is a key, the value the process knows ahead of
the cache, and optionally a deadline; the controller drops it when the cache shows the write
(:meth:`Expectations.observed`), and a deadline drops it when the echo never comes (the write
failed without our knowing, or the object went). ``version`` moves with every change, so a view
built from the caches plus these expectations (the scheduler's fleet) knows when it is stale.

The four uses: placements made (VM -> host, size) until the VM's status shows the host; the
migrations a drain created until the migration cache shows them (30 s at most); the migrations that
ended here until the cache stops showing them in flight (the newest 10,000); and each VM's body as a
reconcile last found it in order, so the echo of its own write costs a comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Expectations(Generic[K, V]):
    """Values this process knows ahead of its caches, by key, each until observed or expired."""

    def __init__(self, *, ttl: float | None = None, capacity: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        self._items: dict[K, tuple[float, V]] = {}
        #: Bumped by every change: a view built before it is known to be stale.
        self.version = 0

    def expect(self, key: K, value: V) -> None:
        """The process wrote ``value`` for ``key``; the cache will show it later."""
        self._items.pop(key, None)  # a renewed expectation is the newest
        self._items[key] = (self._clock(), value)
        self.version += 1
        if self._capacity is not None:
            while len(self._items) > self._capacity:
                del self._items[next(iter(self._items))]

    def observed(self, key: K) -> None:
        """The cache shows the write (or it no longer matters): forget it."""
        if self._items.pop(key, None) is not None:
            self.version += 1

    def get(self, key: K) -> V | None:
        self._expire()
        hit = self._items.get(key)
        return hit[1] if hit is not None else None

    def __contains__(self, key: object) -> bool:
        self._expire()
        return key in self._items

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def items(self) -> Iterator[tuple[K, V]]:
        self._expire()
        return iter([(k, v) for k, (_, v) in self._items.items()])

    def _expire(self) -> None:
        if self._ttl is None or not self._items:
            return
        deadline = self._clock() - self._ttl
        stale = [k for k, (at, _) in self._items.items() if at < deadline]
        for key in stale:
            del self._items[key]
        if stale:
            self.version += 1
