"""Which Hosts have a supervisor: started and stopped by the operator from its Host informer, not by Kopf.

The supervisors used to be a ``kopf.daemon`` on Hosts. For that Kopf wrote its finalizer on every
Host (1,000 PATCHes at a first start, each echoed back), opened a second list-and-watch of every
Host beside the informer's, kept a diff base of each, and started the daemons one Host at a time.
The informer already delivers every Host: its listener hands each event to :func:`decide` (pure),
and :class:`HostSupervisors` does what it says: start a supervisor for a new Host, stop one whose
Host is deleted (and do what a deleted Host leaves to do), and take a legacy finalizer off.

What Kopf gave and this keeps: one supervisor per Host at a time (a Host deleted and made again
under the same name gets a new one only after the old one's end); a supervisor stopped when its
Host is marked for deletion, with the deleted Host's end run then; every supervisor asked to stop
when the operator stops, and the cleanup waiting for them (cancelling, after a short grace, a pass
that does not end by itself, so that the operator's exit stays prompt).

No finalizer: what a deleted Host leaves to do (delete the migrations its drains made; forget its
alerts and its agent link, both in memory only) needs nothing of the Host itself. The informer's
DELETED event starts it; a Host deleted while the operator was down leaves drain migrations whose
host no longer exists, and the start's collection (:func:`orphaned_drain_hosts`) removes those.
Hosts written by an earlier release still carry the finalizer Kopf kept on them: it is taken off
when such a Host is being deleted (one write, on that Host only), after its supervisor's end, as
Kopf did; a Host not being deleted keeps it, which costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from vmshift.controllers import drains, hostsupervisor, indexes
from vmshift.controllers.hostsupervisor import Stop
from vmshift.controllers.indexes import HOSTS, MIGRATIONS
from vmshift.controllers.informer import wait_synced
from vmshift.controllers.legacyfinalizer import holds_legacy_finalizer, release_legacy_finalizer
from vmshift.controllers.views import uid_of

log = logging.getLogger("vmshift.hosts")

#: How many agents are asked their first poll at once (at a start every Host's supervisor asks).
FIRST_POLLS_IN_FLIGHT = 64
#: How long a stopping operator lets each supervisor finish the pass it is in before cancelling it.
STOP_GRACE_SECONDS = 2.0

Body = Mapping[str, Any]
Supervise = Callable[[str, Body, Stop, asyncio.Semaphore], Awaitable[None]]
End = Callable[[str], Awaitable[None]]
Release = Callable[[str, Body], Awaitable[None]]


@dataclass(frozen=True)
class SupervisorDecision:
    """What one Host event asks of the supervisors (:func:`decide`)."""

    #: Stop the supervisor running for this name as for a deleted Host (its Host is being deleted, or
    #: was replaced by a new Host of the same name).
    end_running: bool = False
    #: Start a supervisor for the event's Host (after the end of the one before it, if any).
    start: bool = False
    #: The event's Host is being deleted and no supervisor of it runs: do its end without one.
    end_without_supervisor: bool = False
    #: Take the legacy finalizer off the Host (after its end).
    release_finalizer: bool = False


@dataclass
class Slot:
    """The Host a name's supervisor (or end) is for, as far as the events have said."""

    uid: str
    stop: Stop
    #: Its end has been asked for (deleted, or replaced by a new Host of the same name).
    ending: bool = False
    #: Taking the legacy finalizer off has been asked for.
    releasing: bool = False


def deleting(kind: str, body: Body) -> bool:
    """Whether the event shows its Host gone or marked for deletion (pure)."""
    return kind == "DELETED" or bool((body.get("metadata") or {}).get("deletionTimestamp"))


def decide(kind: str, body: Body, slot: Slot | None) -> SupervisorDecision:
    """What a Host event asks of the supervisors, given what runs for its name (pure).

    A new uid under a known name is a new Host (the old one's DELETED event can be lost when the
    watch had to list again): the old supervisor ends as for a deletion, the new one starts after it.
    A deletion of a uid other than the one a live supervisor runs for is not that Host's, and ends
    nothing (a deleted Host's end is by name: it would remove the live one's drains)."""
    uid = uid_of(body)
    same = slot is not None and slot.uid == uid
    if deleting(kind, body):
        if slot is not None and not same and not slot.ending:
            return SupervisorDecision()
        return SupervisorDecision(
            end_running=same and slot is not None and not slot.ending,
            end_without_supervisor=not same,
            release_finalizer=(kind != "DELETED" and holds_legacy_finalizer(body)
                               and not (same and slot is not None and slot.releasing)))
    if same:
        return SupervisorDecision()
    return SupervisorDecision(end_running=slot is not None and not slot.ending, start=True)


def orphaned_drain_hosts(drained: Iterable[str], known: Collection[str]) -> list[str]:
    """Hosts named by drain migrations that no Host object carries any more (pure): the Host was
    deleted while the operator did not run, and what its end would have removed is still there."""
    return sorted(set(drained) - set(known))


async def release_finalizer(name: str, body: Body) -> None:
    """Take the legacy finalizer off Host ``name`` (a vanished Host is not an error)."""
    await release_legacy_finalizer("hosts", None, name, body)


async def _supervise(name: str, body: Body, stop: Stop, first_polls: asyncio.Semaphore) -> None:
    await hostsupervisor.supervise(name, body, stop, first_polls=first_polls)


async def _end(name: str) -> None:
    await hostsupervisor.host_ended(name, None, log)


class HostSupervisors:
    """The running supervisors, by Host name, and the tasks that end them."""

    def __init__(self, *, supervise: Supervise = _supervise, end: End = _end,
                 release: Release = release_finalizer, grace: float = STOP_GRACE_SECONDS) -> None:
        self._supervise = supervise
        self._end = end
        self._release = release
        self.grace = grace
        self._slots: dict[str, Slot] = {}
        #: The newest task of each name (a supervisor, an end, a release): the next one waits for it.
        self._last: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.first_polls = asyncio.Semaphore(FIRST_POLLS_IN_FLIGHT)
        self.closed = False

    # --- from the informer (on the event loop) -------------------------------------------------

    def observe(self, kind: str, body: Body) -> None:
        """One Host event: start, end, release as :func:`decide` says."""
        if self.closed:
            return  # the operator stops: nothing new starts (its links are about to close)
        meta = body.get("metadata") or {}
        name, uid = str(meta.get("name") or ""), uid_of(body)
        if not name or uid is None:
            log.warning("a Host event without metadata.name or metadata.uid is ignored: %s", dict(meta))
            return
        slot = self._slots.get(name)
        decision = decide(kind, body, slot)
        if decision.end_running and slot is not None:
            slot.ending = True
            slot.stop.set(deleted=True)
        if decision.start:
            stop = Stop()
            self._slots[name] = Slot(uid, stop)
            self._spawn(name, "supervisor", partial(self._supervise, name, body, stop, self.first_polls))
        elif decision.end_without_supervisor:
            stop = Stop()
            stop.set(deleted=True)
            self._slots[name] = Slot(uid, stop, ending=True)
            self._spawn(name, "end", partial(self._end, name))
        if decision.release_finalizer:
            self._slots[name].releasing = True
            self._spawn(name, "release", partial(self._release, name, body))
        if kind == "DELETED":
            self._slots.pop(name, None)

    def relisted(self, present: Collection[str]) -> None:
        """The informer listed every Host again (its watch lost its place): a Host it no longer holds
        went without a DELETED event, and ends as if one had come."""
        for name, slot in list(self._slots.items()):
            if name not in present:
                self.observe("DELETED", {"metadata": {"name": name, "uid": slot.uid}})

    def _spawn(self, name: str, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` after the name's task before it has ended (one thing at a time per Host name)."""
        before = self._last.get(name)
        task = asyncio.get_running_loop().create_task(self._after(before, name, what, work),
                                                      name=f"host-{what}-{name}")
        self._last[name] = task
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if self._last.get(name) is t:
                del self._last[name]

        task.add_done_callback(done)

    async def _after(self, before: asyncio.Task[None] | None, name: str, what: str,
                     work: Callable[[], Awaitable[None]]) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:  # a failure must not stop the next task of the name
            log.exception("Host %s: the %s failed", name, what)

    # --- the operator's start and stop -----------------------------------------------------------

    def running(self) -> list[str]:
        """The names with a supervisor that has not been asked to stop."""
        return sorted(name for name, slot in self._slots.items() if not slot.stop)

    def busy(self) -> int:
        """Tasks under way (supervisors, ends, releases)."""
        return len(self._tasks)

    async def collect(self) -> None:
        """At a start, once Hosts and migrations are listed: the end of each Host deleted while the
        operator did not run (its drains' migrations are still there); then sleep (a supervised loop
        that returned would be started again)."""
        await wait_synced([HOSTS, MIGRATIONS])
        for name in orphaned_drain_hosts(drains.evacuation_index.keys(), set(indexes.host_names()) | set(self._slots)):
            log.info("Host %s is gone but its drains' migrations are still there: removing them", name)
            self._spawn(name, "end", partial(self._end, name))
        await asyncio.Event().wait()

    async def stop(self) -> None:
        """Stop every supervisor (the operator exits): each is asked to, given ``grace`` seconds to end
        the pass it is in, then cancelled; returns once every task has ended."""
        self.closed = True
        for slot in self._slots.values():
            slot.stop.set(deleted=False)
        tasks = set(self._tasks)
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self.grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if late:
            log.info("%d Host task(s) did not end within %.1f s of the stop and were cancelled: %s", len(late),
                     self.grace, ", ".join(sorted(t.get_name() for t in late)[:10]))


#: The operator process's supervisors (made at its start; None before, and in tests that make their own).
_current: HostSupervisors | None = None


def start() -> HostSupervisors:
    """The process's supervisors, made before the informers start (so that no Host event goes missing)."""
    global _current
    _current = HostSupervisors()
    return _current


async def stop() -> None:
    """From the operator's cleanup, before the agent links and the API session close."""
    if _current is not None:
        await _current.stop()


@HOSTS.listen
def follow_host(kind: str, body: Body) -> None:
    if _current is not None:
        _current.observe(kind, body)


@HOSTS.on_listed
def follow_listing() -> None:
    if _current is not None:
        _current.relisted(set(indexes.host_names()))
