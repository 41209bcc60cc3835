"""A work queue of watch events, one object at a time, the way controller-runtime's workqueue runs them.

The VirtualMachine controller used to be a ``kopf.on.event`` handler: Kopf then opened a second
list-and-watch of every VM beside the informer's (each event's JSON parsed twice), and for each
event built a diff base of the whole body, copied it, matched every registered handler against it
and set up a logger, a patch and a state; at 1,000 VMs that machinery cost about as much CPU as the
reconciles it ran (py-spy, first adoption). The informer already holds every event: its listener
puts each here, and workers hand them to the handler.

What Kopf gave and this keeps: one handler call at a time per object (by uid), the newest event
of an object replacing one still waiting (the handler reads the latest body; an intermediate
one is skipped, as Kopf's batching skipped it), a bound on the objects handled at once, and a
handler's failure logged and counted without stopping the others.

Only touched on the event loop: ``put`` from the informer's listener (already on the loop),
``run`` as a task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Body = Mapping[str, Any]
Handler = Callable[[str, Body], Awaitable[None]]
#: Called with the event kind, the body and the exception when a handler call fails.
OnError = Callable[[str, Body, Exception], None]

log = logging.getLogger("vmshift.workqueue")


class WorkQueue:
    """Events by object uid: the newest waits, one handler call per object at a time, ``workers`` at once."""

    def __init__(self, handler: Handler, *, workers: int, on_error: OnError | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self._handler = handler
        self._workers = workers
        self._on_error = on_error
        self._latest: dict[str, tuple[str, Body]] = {}  # uid -> newest event not yet handed out
        #: uids with an event waiting and none in progress, oldest first (a get wakes one worker)
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._busy: set[str] = set()  # uids whose handler call is in progress

    def put(self, kind: str, body: Body) -> None:
        """An event arrived: it replaces the object's event still waiting, if any."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not uid:
            log.warning("an event without metadata.uid is ignored: %s", dict(body.get("metadata") or {}))
            return
        waiting = uid in self._latest
        self._latest[uid] = (kind, body)
        if not waiting and uid not in self._busy:
            self._ready.put_nowait(uid)

    def holds(self, uid: str) -> bool:
        """Whether an event of the object waits or is being handled."""
        return uid in self._latest or uid in self._busy

    def waiting(self) -> int:
        """Objects with an event not yet handed to the handler."""
        return len(self._latest)

    def idle(self) -> bool:
        """Nothing waits and nothing is in progress."""
        return not self._latest and not self._busy

    async def _worker(self) -> None:
        while True:
            uid = await self._ready.get()
            kind, body = self._latest.pop(uid)
            self._busy.add(uid)
            try:
                await self._handler(kind, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._on_error is not None:
                    self._on_error(kind, body, exc)
                else:
                    log.exception("handling a %s event of %s failed", kind, uid)
            finally:
                self._busy.discard(uid)
                if uid in self._latest:  # a newer event came while this one was handled: its turn
                    self._ready.put_nowait(uid)
            # A handler that returned without waiting (a skipped echo) did not let the loop run, nor
            # does a get from a queue that holds more: without this, a worker handled a whole burst
            # of events in one step while every timer, watch and handler waited.
            await asyncio.sleep(0)

    async def run(self) -> None:
        """The workers, until cancelled."""
        workers = [asyncio.create_task(self._worker(), name=f"workqueue-{i}") for i in range(self._workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
