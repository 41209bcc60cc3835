"""The one supervisor of the operator's background loops (those Kopf does not own).

Each loop runs in a task that logs when the loop raises or returns, backs off, and starts it
again; a task nobody awaits is a failure nobody sees. No decisions about VMs or hosts here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

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


#: How often the event loop's lag is sampled.
LAG_SAMPLE_SECONDS = 0.25


async def watch_loop_lag(interval: float = LAG_SAMPLE_SECONDS) -> None:
    """Sleep ``interval`` again and again and record how much later than asked each sleep ended:
    the time any callback of this loop waits for its turn (a blocking call shows up here)."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval
        await asyncio.sleep(interval)
        metrics.EVENT_LOOP_LAG.observe(max(0.0, loop.time() - asked))
