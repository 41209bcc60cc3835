"""The one supervisor of the operator's background loops (those Kopf does not own), and the watch
on the event loop's health: its lag, and the garbage collector's pauses that cause the longest of it.

Each loop runs in a task that logs when the loop raises or returns, backs off, and starts it
again; a task nobody awaits is a failure nobody sees. No decisions about VMs or hosts here.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from vmshift import metrics

#: Seconds to wait before restart number 1, 2, ...; the last one repeats.
BACKOFF_SECONDS: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0)
#: A loop that ran this long before failing counts as healthy again: its backoff starts over.
HEALTHY_AFTER_SECONDS = 60.0

log = logging.getLogger("vmshift.supervisor")


def backoff(failures: int, delays: Sequence[float] = BACKOFF_SECONDS) -> float:
    """Seconds before the restart that follows ``failures`` failures in a row (pure)."""
    return delays[min(max(failures, 1), len(delays)) - 1]


async def supervise(name: str, loop: Callable[[], Awaitable[None]], *,
                    delays: Sequence[float] = BACKOFF_SECONDS, healthy_after: float = HEALTHY_AFTER_SECONDS,
                    logger: logging.Logger = log) -> None:
    """Run ``loop()`` forever: whenever it raises (or returns), log it, wait, and run it again.

    Only cancellation (the operator stopping) ends the supervision.
    """
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            what = f"failed: {exc!r}"
            logger.exception("background loop %s failed", name)
        else:
            what = "returned"
        metrics.RECONCILE_ERRORS.labels(kind=f"loop/{name}").inc()
        failures = 1 if time.monotonic() - started >= healthy_after else failures + 1
        delay = backoff(failures, delays)
        logger.warning("background loop %s %s; restarting in %.0f s (failure %d in a row)", name, what, delay,
                       failures)
        await asyncio.sleep(delay)


class Supervisor:
    """The background loops of one operator process, started and stopped together."""

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, loop: Callable[[], Awaitable[None]], *,
              delays: Sequence[float] = BACKOFF_SECONDS, healthy_after: float = HEALTHY_AFTER_SECONDS,
              logger: logging.Logger = log) -> asyncio.Task[None]:
        """Run ``loop`` under :func:`supervise` (a second start of the same name is ignored)."""
        task = self.tasks.get(name)
        if task is None or task.done():
            task = asyncio.create_task(
                supervise(name, loop, delays=delays, healthy_after=healthy_after, logger=logger),
                name=f"supervised-{name}")
            self.tasks[name] = task
        return task

    async def stop(self) -> None:
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


#: How often the event loop's lag is sampled: often enough that a phase of a few seconds has hundreds
#: of samples (a p99 over a dozen is the worst one), rarely enough to cost nothing (a timer and a wake-up).
LAG_SAMPLE_SECONDS = 0.01
#: How often the samples recorded to a file (``record``) are flushed to it.
LAG_FLUSH_SECONDS = 1.0


class GcPauses:
    """Keeps the garbage collector's full collections short, and times every collection.

    A full (generation 2) collection walks every tracked object: with thousands of VMs cached that
    is millions of objects, and one pass held the event loop for 0.6-1 s (3,000 VMs, loaded
    machine): the longest stalls of the operator. Almost all of those objects live as long as the
    process (the caches, the models, the code). So when a full collection takes more than
    ``freeze_after`` seconds of CPU, what survived it is moved to the permanent generation (``gc.freeze``, done in
    the collector's own callback, where the young generations are empty and every survivor was
    just found reachable: nothing that is garbage gets frozen), and later collections walk only
    what was allocated since. One collection right after (:meth:`tick`, on the loop; a few objects
    only) resets the collector's idea of the old generation's size, so the next full collection
    comes as soon as it is worth doing and stays short.

    The price: a frozen object that later becomes part of a garbage *cycle* is not reclaimed (one
    freed by its reference count is, as usual). So every ``thaw_seconds`` the frozen objects are
    given back (``gc.unfreeze``): the next full collection walks everything once (one long pause
    then, instead of one every few seconds under load), reclaims such cycles, and freezes again.

    Pauses are kept in a bounded deque by the callback (which runs on whichever thread allocated,
    inside an allocation: no locks there) and moved into ``vmshift_gc_pause_seconds`` by :meth:`tick`.
    """

    def __init__(self, *, freeze_after: float = 0.01, thaw_seconds: float = 3600.0) -> None:
        self.freeze_after = freeze_after
        self.thaw_seconds = thaw_seconds
        self.pauses: deque[tuple[int, float]] = deque(maxlen=10_000)
        self.freezes = 0
        self._started: tuple[float, float] | None = None
        self._collect_due = False
        self._thaw_at: float | None = None
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = (time.perf_counter(), time.thread_time())
            return
        if self._started is None:
            return
        took = time.perf_counter() - self._started[0]
        worked = time.thread_time() - self._started[1]
        self._started = None
        generation = info.get("generation", 0)
        self.pauses.append((generation, took))
        # By the collector's CPU time: on a loaded machine the wall time says as much about the neighbours.
        if generation == 2 and worked > self.freeze_after:
            gc.freeze()
            self.freezes += 1
            self._collect_due = True

    def tick(self) -> None:
        """On the event loop, now and then: record the pauses; after a freeze, one (short) collection
        of what is not frozen; every ``thaw_seconds``, thaw."""
        while self.pauses:
            generation, took = self.pauses.popleft()
            metrics.GC_PAUSES.labels(generation=str(generation)).observe(took)
        if self._collect_due:
            self._collect_due = False
            metrics.GC_FREEZES.inc()
            gc.collect()
            if self._thaw_at is None:
                self._thaw_at = time.monotonic() + self.thaw_seconds
        elif self._thaw_at is not None and time.monotonic() >= self._thaw_at:
            self._thaw_at = None
            gc.unfreeze()


#: The operator's one collector watch (installed at start-up).
GC_PAUSES = GcPauses()


async def watch_loop_lag(interval: float = LAG_SAMPLE_SECONDS, *, record: Path | None = None,
                         collector: GcPauses | None = None) -> None:
    """Sleep ``interval`` again and again and record how much later than asked each sleep ended:
    the time any callback of this loop waits for its turn (a blocking call shows up here).

    Every sample goes into the ``vmshift_event_loop_lag_seconds`` histogram; with ``record``, also
    appended to that file as a line ``<monotonic seconds at wake-up> <lag seconds>`` (flushed about
    once a second), so a benchmark can take the exact quantiles of any time window. ``collector``
    is ticked once a sample.
    """
    loop = asyncio.get_running_loop()
    out = record.open("a", encoding="ascii") if record is not None else None
    flushed = loop.time()
    try:
        while True:
            asked = loop.time() + interval
            await asyncio.sleep(interval)
            now = loop.time()
            lag = max(0.0, now - asked)
            metrics.EVENT_LOOP_LAG.observe(lag)
            if out is not None:
                out.write(f"{now:.6f} {lag:.6f}\n")
                if now - flushed >= LAG_FLUSH_SECONDS:
                    out.flush()
                    flushed = now
            if collector is not None:
                collector.tick()
    finally:
        if out is not None:
            out.close()


def read_lag_record(path: Path, start: float, end: float) -> list[float]:
    """The lags (seconds) a :func:`watch_loop_lag` ``record`` holds for wake-ups between the
    monotonic times ``start`` and ``end`` (a last line still being written is skipped)."""
    lags: list[float] = []
    for line in path.read_text(encoding="ascii").splitlines():
        fields = line.split()
        if len(fields) != 2:
            continue
        try:
            at, lag = float(fields[0]), float(fields[1])
        except ValueError:
            continue
        if start <= at <= end:
            lags.append(lag)
    return lags
