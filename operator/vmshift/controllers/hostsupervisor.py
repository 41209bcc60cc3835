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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from vmshift import metrics
from vmshift.api import conditions as cond
from vmshift.controllers import drains, events, hosts, indexes, kubeapi, remediation
from vmshift.controllers.agents import AgentConfigError, AgentLink, poll_delay
from vmshift.controllers.indexes import GROUP, VERSION, host_index, one, values
from vmshift.controllers.runtime import runtime, until_woken
from vmshift.controllers.views import parse_host_spec


def _answered(link: AgentLink | None) -> datetime | None:
    """When the agent last answered, on the wall clock (None: never)."""
    if link is None or not link.reported_at:
        return None
    return datetime.now(UTC) - timedelta(seconds=time.monotonic() - link.reported_at)


def newer(informer: Mapping[str, Any], kopf_meta: Mapping[str, Any]) -> bool:
    """Whether the informer's copy of an object is newer than Kopf's (pure): resourceVersions of one
    object from one API server grow; an unreadable one counts as not newer."""
    try:
        return int((informer.get("metadata") or {}).get("resourceVersion") or 0) > int(
            kopf_meta.get("resourceVersion") or 0)
    except ValueError:
        return False


def newest_of(name: str, spec: Mapping[str, Any], meta: Mapping[str, Any]) -> tuple[Mapping[str, Any],
                                                                                     Mapping[str, Any]]:
    """The Host's spec and metadata: the informer's when newer than Kopf's, else Kopf's."""
    fresh = hosts.last_seen(name)
    if fresh is not None and newer(fresh, meta):
        return fresh.get("spec") or {}, fresh.get("metadata") or {}
    return spec, meta


class HostSupervisor:
    """The state of one Host's loop: what its status holds, and each pass's own memory."""

    def __init__(self, name: str, body: kopf.Body, status: Mapping[str, Any]) -> None:
        self.name = name
        self.body = body
        #: The host part of the status as stored, then as this supervisor last wrote it.
        self.last: Mapping[str, Any] = dict(status)
        self.remediator = remediation.HostRemediator(name, body, status)
        self.evacuator = drains.Evacuator(name, body, status.get("drain"), self.flush)
        self.link: AgentLink | None = None
        self.config_error: AgentConfigError | None = None
        self.was_reachable: bool | None = None
        self.told = ""
        self.next_poll = 0.0

    def stored(self, kopf_status: Mapping[str, Any]) -> dict[str, Any]:
        """The Host's status with the passes' decisions as made: the informer's copy of the stored
        status (Kopf's own view may lag behind it), overlaid with what the passes hold in memory."""
        fresh = hosts.last_seen(self.name)
        stored = dict((fresh or {}).get("status") or {}) if fresh is not None else dict(kopf_status)
        stored["drain"] = self.evacuator.drain or None
        stored["remediation"] = self.remediator.remediation
        stored["lastRemediation"] = self.remediator.last
        return stored

    async def poll(self, spec: Mapping[str, Any]) -> None:
        rt = runtime()
        self.config_error = None
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
        """The agent's first poll, before the caches are in, unless the start's :func:`first_round`
        has just asked it (Kopf starts the supervisors at its own pace: 1,000 took over 10 s). A
        failure here is the first pass's to meet again (``next_poll`` stays due) and report."""
        rt = runtime()
        known = rt.agents.get(self.name)
        if known is not None and known.reported_at and time.monotonic() - known.reported_at < rt.poll_interval:
            with contextlib.suppress(AgentConfigError):  # the first pass polls again and reports it
                self.link = await rt.agents.link(self.name, spec)
            if self.link is known:  # same endpoint and token as the round asked
                self.was_reachable = known.reachable
                self.next_poll = known.reported_at + rt.poll_interval
                return
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

    async def run_pass(self, spec: Mapping[str, Any], meta: Mapping[str, Any], kopf_status: Mapping[str, Any],
                       logger: kopf.Logger | logging.Logger) -> float:
        """Poll (when due), remediate, drain, write; returns how long to sleep unless woken.

        The passes read the newest of the Host as Kopf handed it and as the informer delivered it:
        the informer's event is what woke the supervisor, and Kopf's copy may not have caught up, so
        a maintenance turned off or a release annotation just set would otherwise be seen a pass late."""
        spec, meta = newest_of(self.name, spec, meta)
        if time.monotonic() >= self.next_poll:
            await self.poll(spec)
        remediation_due = await remediation.remediation_pass(self.remediator, meta.get("annotations") or {}, logger)
        drain_due = await drains.drain_pass(self.evacuator, spec, self.stored(kopf_status), logger)
        new = self.host_part(spec, int(meta.get("generation") or 0), self.stored(kopf_status))
        hosts.record_phase(self.name, new["phase"])
        await self.write(new)
        return min(self.next_poll - time.monotonic(), remediation_due, drain_due)

    async def flush(self) -> None:
        """Write what the passes decided now (a drain's id before the migrations that carry it)."""
        await self.write(None)


#: How many agents the start's first round asks at once.
FIRST_ROUND_IN_FLIGHT = 64


async def first_round() -> None:
    """At a start, ask every Host's agent once, as soon as the Host cache's first listing is in.

    No VM is placed or adopted until every agent has answered (any of them may run its guest), and
    the supervisors, which poll from then on, are Kopf daemons that Kopf starts one Host at a time
    (a finalizer write and its echo each): at 1,000 Hosts the last started over 10 s after the first.
    A Host whose agent settings are wrong is left to its supervisor, which reports it. Runs once
    under the operator's supervisor, then sleeps (returning would have it started again)."""
    await indexes.HOSTS.synced.wait()
    rt = runtime()
    gate = asyncio.Semaphore(FIRST_ROUND_IN_FLIGHT)

    async def ask(name: str) -> None:
        async with gate:
            body = hosts.last_seen(name)
            if body is None or rt.agents.get(name) is not None:
                return  # gone, or its supervisor (or an earlier round) has a link
            try:
                link = await rt.agents.link(name, body.get("spec") or {})
            except AgentConfigError:
                return
            await rt.agents.poll(link)
        if hosts.last_seen(name) is None and name not in rt.host_wakers:
            # Deleted meanwhile, with no supervisor to forget its link: a link left behind would be asked
            # by every live look for a guest (live_locate) and, unanswered, make every location unknown.
            await rt.agents.forget(name)

    await asyncio.gather(*(ask(name) for name in list(indexes.host_names())))
    await asyncio.Event().wait()


async def _unless_stopped(work: Coroutine[Any, Any, None], stopped: kopf.DaemonStopped) -> None:
    """``work``, given up when the daemon is asked to stop first (the operator exiting must not wait for
    an agent that is slow to answer, nor have Kopf cancel the daemon)."""
    doing, halt = asyncio.ensure_future(work), asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait([doing, halt], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (doing, halt):
            task.cancel()
        await asyncio.gather(doing, halt, return_exceptions=True)


@kopf.daemon(GROUP, VERSION, "hosts", cancellation_backoff=15.0, cancellation_timeout=10.0)
async def supervise_host(name: str, spec: kopf.Spec, meta: kopf.Meta, status: kopf.Status, body: kopf.Body,
                         stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any) -> None:
    """Poll, remediate, drain, write: one loop per Host."""
    rt = runtime()
    wake = rt.host_wakers.setdefault(name, asyncio.Event())
    supervisor = HostSupervisor(name, body, status)
    # The agent's first answer needs only the Host's spec, and every VM waits for all of them (none is
    # placed until every agent has said what it runs): ask before the caches' first listing is in.
    await _unless_stopped(supervisor.first_poll(spec), stopped)
    await indexes.ready()
    supervisor.remediator.seed({p.name: p for p in values(remediation.remediation_policy_index)})
    while not stopped:
        wake.clear()
        try:
            sleep = await supervisor.run_pass(spec, meta, status, logger)
        except ApiException as exc:  # written again next pass: nothing is marked written
            metrics.RECONCILE_ERRORS.labels(kind="Host").inc()
            logger.warning(f"status of Host {name} not written, retrying: {exc.status} {exc.reason}")
            sleep = 2.0
        except Exception:  # a bug must not end the host's supervisor: log it and try again
            metrics.RECONCILE_ERRORS.labels(kind="Host").inc()
            logger.exception(f"pass of Host {name} failed, retrying")
            sleep = 5.0
        await until_woken(wake, stopped, sleep)
    rt.host_wakers.pop(name, None)
    hosts.forget_phase(name)
    if stopped.reason is not None and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
        await drains.host_deleted(name, logger)
        remediation.remediation_ended(supervisor.remediator)
        # Only a deleted Host loses its link: while the operator stops, migration daemons may still
        # ask this agent, and a dropped link would make a healthy host look unreachable to them.
        await rt.agents.forget(name)
