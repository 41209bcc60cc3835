"""One supervisor per Host: poll its agent, run the remediation pass, run the drain pass, write one status.

Thin: the decisions are the passes' (``remediation.decide``, ``scheduling.evacuation``) and
:func:`~vmshift.controllers.hosts.host_status` (pure). The supervisor is the only writer of a
Host's status: the remediation pass and the drain pass hand it what they decided (the remediation
in force, the drain's progress) in memory, and it writes that together with what the agent
reported in one patch, only when something changed. Passes that coordinated through the Host's
stored status raced each other (the drain read a remediation a poll late; the Schedulable
condition flickered); here each pass reads the other's decision as made.

It sleeps until the earliest of: the agent's next poll (backing off while it does not answer),
the next remediation deadline, the next drain pass; or until woken (a change of the Host's spec,
labels or annotations, an alert, a migration of its drain, a migration entering or leaving flight
to or from it: see ``hosts``, ``drains``, ``remediation``).

Who starts and stops the supervisors is ``hostsupervisors`` (from the Host informer, not Kopf); this
module is one supervisor's loop, and what a Host's end leaves to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from vmshift import metrics
from vmshift.api import conditions as cond
from vmshift.controllers import drains, events, hosts, indexes, kubeapi, remediation
from vmshift.controllers.agents import AgentConfigError, AgentLink, poll_delay
from vmshift.controllers.indexes import host_index, one, values
from vmshift.controllers.runtime import runtime, until_woken
from vmshift.controllers.views import parse_host_spec, uid_of

log = logging.getLogger("vmshift.hosts")


def _answered(link: AgentLink | None) -> datetime | None:
    """When the agent last answered, on the wall clock (None: never)."""
    if link is None or not link.reported_at:
        return None
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - link.reported_at)


class Stop:
    """A supervisor's stop flag: set once, when the operator stops or the Host is deleted (then
    ``deleted``, which a later set does not take back)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.deleted = False

    def set(self, *, deleted: bool) -> None:
        self.deleted = self.deleted or deleted
        self._event.set()

    def __bool__(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()


class HostSupervisor:
    """The state of one Host's loop: what its status holds, and each pass's own memory."""

    def __init__(self, name: str, body: Mapping[str, Any]) -> None:
        self.name = name
        #: The Host as the supervisor started on it: the object its events name (its uid does not change).
        self.body = body
        status: Mapping[str, Any] = body.get("status") or {}
        #: The host part of the status as stored, then as this supervisor last wrote it.
        self.last: Mapping[str, Any] = dict(status)
        self.remediator = remediation.HostRemediator(name, body, status)
        self.evacuator = drains.Evacuator(name, body, status.get("drain"), self.flush)
        self.link: AgentLink | None = None
        self.config_error: AgentConfigError | None = None
        self.was_reachable: bool | None = None
        self.told = ""
        self.next_poll = 0.0
        #: Migrations in flight (inbound, outbound) when the agent was last asked.
        self.polled_flights: tuple[int, int] | None = None

    def current(self) -> Mapping[str, Any]:
        """The newest body of this Host the informer delivered (the one it started on, if none since)."""
        fresh = hosts.last_seen(self.name)
        if fresh is None or uid_of(fresh) != uid_of(self.body):
            return self.body  # gone, or already a new Host of the same name: this supervisor is ending
        return fresh

    def stored(self) -> dict[str, Any]:
        """The Host's status with the passes' decisions as made: the informer's copy of the stored
        status, overlaid with what the passes hold in memory."""
        stored = dict(self.current().get("status") or {})
        stored["drain"] = self.evacuator.drain or None
        stored["remediation"] = self.remediator.remediation
        stored["lastRemediation"] = self.remediator.last
        return stored

    def poll_due(self, now: float) -> bool:
        """Whether the pass asks the agent: at its interval, and also when a migration entered or left
        flight since the last answer, since the agent then holds other guests (a Host read right after
        a drain completed showed the moved guest and its memory until the next interval). An agent
        that does not answer keeps its back-off."""
        if now >= self.next_poll:
            return True
        reachable = self.link is not None and self.link.reachable
        return reachable and hosts.in_flight(self.name) != self.polled_flights

    async def poll(self, spec: Mapping[str, Any]) -> None:
        rt = runtime()
        self.config_error = None
        self.polled_flights = hosts.in_flight(self.name)
        try:
            self.link = await rt.agents.link(self.name, spec)
            await rt.agents.poll(self.link)
        except AgentConfigError as exc:
            self.config_error = exc
        failures = self.link.failures if self.link is not None else 0
        self.next_poll = time.monotonic() + poll_delay(rt.poll_interval, failures, rt.poll_backoff_cap)
        link = self.link
        if link is not None and self.was_reachable is not None and link.reachable != self.was_reachable:
            if link.reachable:
                events.info(self.body, reason="AgentReachable", message=f"The agent of {self.name} answers again.")
            else:
                events.warn(self.body, reason="AgentUnreachable",
                            message=f"The agent of {self.name} stopped answering: {link.last_error}")
        self.was_reachable = link.reachable if link is not None else self.was_reachable

    async def first_poll(self, spec: Mapping[str, Any]) -> None:
        """The agent's first poll, before the caches are in. A failure here is the first pass's to meet
        again (``next_poll`` stays due) and report."""
        with contextlib.suppress(Exception):
            await self.poll(spec)

    def host_part(self, spec: Mapping[str, Any], generation: int, stored: Mapping[str, Any]) -> dict[str, Any]:
        entry = one(host_index, self.name)
        problem = self.config_error.message if self.config_error is not None else entry.problem if entry else None
        if problem and problem != self.told:  # a person must fix the Host or its Secret: say it once, as an event
            events.warn(self.body, reason=self.config_error.reason if self.config_error is not None else "InvalidSpec",
                        message=problem)
        self.told = problem or ""
        inbound, outbound = hosts.in_flight(self.name)
        inputs = hosts.HostInputs(
            spec=entry.spec if entry is not None else parse_host_spec(spec)[0],
            generation=generation,
            spec_problem=entry.problem if entry is not None else None,
            inbound=inbound,
            outbound=outbound,
            answered=_answered(self.link),
            alerts=remediation.firing_from_alertmanager(self.name),
        )
        return hosts.host_status(self.name, inputs, stored, self.link, self.config_error)

    def patch(self, host_part: Mapping[str, Any] | None) -> dict[str, Any]:
        """The one status patch: the host part when it changed, the drain when it changed, and what
        the remediation pass decided since the last write (pure but for the state it reads)."""
        out: dict[str, Any] = {}
        if host_part is not None and not cond.changes_nothing(host_part, self.last):
            out.update(host_part)
        if self.evacuator.drain != self.evacuator.written:
            out["drain"] = self.evacuator.drain
        out.update(self.remediator.staged)
        return out

    async def write(self, host_part: Mapping[str, Any] | None) -> None:
        patch = self.patch(host_part)
        if not patch:
            return
        await kubeapi.patch_status("hosts", None, self.name, patch)
        if host_part is not None and any(key in patch for key in host_part):
            self.last = host_part
        self.evacuator.written = dict(self.evacuator.drain)
        self.remediator.staged.clear()

    async def run_pass(self, logger: logging.Logger) -> float:
        """Poll (when due), remediate, drain, write; returns how long to sleep unless woken.

        The passes read the Host as the informer delivered it last: its event is what woke the
        supervisor, so a maintenance turned off or a release annotation just set is seen in the pass
        it wakes."""
        body = self.current()
        spec: Mapping[str, Any] = body.get("spec") or {}
        meta: Mapping[str, Any] = body.get("metadata") or {}
        if self.poll_due(time.monotonic()):
            await self.poll(spec)
        remediation_due = await remediation.remediation_pass(self.remediator, meta.get("annotations") or {}, logger)
        drain_due = await drains.drain_pass(self.evacuator, spec, self.stored(), logger)
        new = self.host_part(spec, int(meta.get("generation") or 0), self.stored())
        hosts.record_phase(self.name, new["phase"])
        await self.write(new)
        return min(self.next_poll - time.monotonic(), remediation_due, drain_due)

    async def flush(self) -> None:
        """Write what the passes decided now (a drain's id before the migrations that carry it)."""
        await self.write(None)


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: Stop) -> None:
    """``work``, given up when the supervisor is asked to stop first (the operator exiting must not wait
    for an agent that is slow to answer, nor for the caches' first listing)."""
    doing, halt = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([doing, halt], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (doing, halt):
            task.cancel()
        await asyncio.gather(doing, halt, return_exceptions=True)


async def _gated(work: Coroutine[Any, Any, None], gate: asyncio.Semaphore | None) -> None:
    if gate is None:
        await work
        return
    async with gate:
        await work


async def supervise(name: str, body: Mapping[str, Any], stop: Stop, *,
                    first_polls: asyncio.Semaphore | None = None, logger: logging.Logger = log) -> None:
    """Poll, remediate, drain, write: one Host's loop, until ``stop``; then, for a deleted Host, its end.

    The agent's first answer needs only the Host's spec, and every VM waits for all of them (none is
    placed until every agent has said what it runs): it is asked before the caches' first listing
    is in, ``first_polls`` bounding how many agents are asked at once."""
    rt = runtime()
    wake = rt.host_wakers.setdefault(name, asyncio.Event())
    supervisor = HostSupervisor(name, body)
    try:
        await _unless_stopped(_gated(supervisor.first_poll(body.get("spec") or {}), first_polls), stop)
        await _unless_stopped(indexes.ready(), stop)
        if not stop:
            supervisor.remediator.seed({p.name: p for p in values(remediation.remediation_policy_index)})
        while not stop:
            wake.clear()
            try:
                sleep = await supervisor.run_pass(logger)
            except ApiException as exc:  # written again next pass: nothing is marked written
                metrics.RECONCILE_ERRORS.labels(kind="Host").inc()
                logger.warning(f"status of Host {name} not written, retrying: {exc.status} {exc.reason}")
                sleep = 2.0
            except Exception:  # a bug must not end the host's supervisor: log it and try again
                metrics.RECONCILE_ERRORS.labels(kind="Host").inc()
                logger.exception(f"pass of Host {name} failed, retrying")
                sleep = 5.0
            await until_woken(wake, stop, sleep)
    finally:
        if rt.host_wakers.get(name) is wake:
            del rt.host_wakers[name]
        hosts.forget_phase(name)
    if stop.deleted:
        await host_ended(name, supervisor.remediator, logger)


async def host_ended(name: str, remediator: remediation.HostRemediator | None, logger: logging.Logger) -> None:
    """What a deleted Host leaves to do: remove the migrations its drains made, forget its alerts
    and its agent. Only a deleted Host loses its link: while the operator stops, migration daemons
    may still ask this agent, and a dropped link would make a healthy host look unreachable to them.
    The migrations come from the cache: at a start, a Host listed already marked for deletion ends
    before the migrations' first listing is in."""
    await indexes.MIGRATIONS.synced.wait()
    await drains.host_deleted(name, logger)
    if remediator is not None:
        remediation.remediation_ended(remediator)
    else:
        remediation.receiver.book.forget_host(name)
    await runtime().agents.forget(name)
