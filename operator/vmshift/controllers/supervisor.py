"""The one supervisor of the operator's background loops (those Kopf does not own).

Each loop runs in a task that logs when the loop raises or returns, backs off, and starts it
again; a task nobody awaits is a failure nobody sees. No decisions about VMs or hosts here.
"""

from __future__ import annotations

import asyncio
import logging
import time
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


async def watch_loop_lag(interval: float = LAG_SAMPLE_SECONDS, *, record: Path | None = None) -> None:
    """Sleep ``interval`` again and again and record how much later than asked each sleep ended:
    the time any callback of this loop waits for its turn (a blocking call shows up here).

    Every sample goes into the ``vmshift_event_loop_lag_seconds`` histogram; with ``record``, also
    appended to that file as a line ``<monotonic seconds at wake-up> <lag seconds>`` (flushed about
    once a second), so a benchmark can take the exact quantiles of any time window.
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
