"""The operator process's in-memory state: agent links, the migration gate, placements in progress.

No Kubernetes calls here. Everything in it can be re-derived from the API server (the indexes) and
the agents after a restart: the gate is seeded from migrations in flight, the agents are polled
again, and the expectations (``expectations``) only bridge the moment between a write and its echo
in the caches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from vmshift.controllers.agents import AgentDirectory
from vmshift.controllers.expectations import Expectations
from vmshift.controllers.views import MigrationEntry
from vmshift.controllers.workqueue import WorkQueue
from vmshift.scheduling.fleet import Fleet, HostView
from vmshift.scheduling.queue import QueuedMigration, admit


@dataclass
class Ticket:
    """A migration waiting for (or holding) its slots."""

    request: QueuedMigration
    admitted: asyncio.Event = field(default_factory=asyncio.Event)
    waiting_for: str = ""


class AlreadyMigratingError(Exception):
    """Another migration of the same VM holds it."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


class MigrationGate:
    """Admission of migrations: one per VM, per-host slots on source and target, a cluster limit,
    and the target capacity each admitted migration holds until it ends.

    The decision is :func:`vmshift.scheduling.queue.admit`; this class only keeps the waiting and
    admitted tickets and wakes the daemons whose turn came.
    """

    def __init__(self) -> None:
        self.claims: dict[str, str] = {}  # vm key -> migration key holding it
        self.pending: dict[str, Ticket] = {}
        self.in_flight: dict[str, QueuedMigration] = {}
        #: Migrations that ended in this process (the newest 10,000): the indexes may not show it yet.
        self.finished: Expectations[str, None] = Expectations(capacity=10_000)
        self.seeded = False
        #: Bumped by every change of the waiting or admitted tickets.
        self.version = 0
        #: The fleet, cluster limit and version of the last pass of :meth:`admit_fleet`.
        self._last_pass: tuple[Fleet, int | None, int] | None = None

    def seed(self, migrations: Iterable[MigrationEntry], sizes: dict[str, tuple[int, int]]) -> None:
        """After a restart: migrations already in flight hold their VM and slots again."""
        if self.seeded:
            return
        self.seeded = True
        self.version += 1
        for m in migrations:
            if not m.in_flight:
                continue
            cpus, memory = sizes.get(m.vm_key, (0, 0))
            self.claims.setdefault(m.vm_key, m.key)
            self.in_flight[m.key] = QueuedMigration(
                key=m.key, namespace=m.namespace, vm=m.vm_key, source=m.source or "", target=m.target,
                created=0.0, cpus=cpus, memory_mib=memory,
            )

    def claim(self, vm_key: str, migration_key: str) -> None:
        holder = self.claims.get(vm_key)
        if holder is not None and holder != migration_key:
            raise AlreadyMigratingError(holder)
        self.claims[vm_key] = migration_key

    def holder(self, vm_key: str) -> str | None:
        return self.claims.get(vm_key)

    def moving(self, vm_key: str, in_flight_keys: Iterable[str]) -> bool:
        """Whether a migration holds the VM: one this process admitted, or one the index shows in
        flight that has not ended here already."""
        return self.holder(vm_key) is not None or any(k not in self.finished for k in in_flight_keys)

    def enqueue(self, request: QueuedMigration) -> Ticket:
        if request.key in self.in_flight:
            ticket = Ticket(request)
            ticket.admitted.set()
            return ticket
        ticket = self.pending.get(request.key) or Ticket(request)
        ticket.request = request
        self.pending[request.key] = ticket
        self.version += 1
        return ticket

    def admit_fleet(self, fleet_now: Fleet, cluster_limit: int | None) -> None:
        """:meth:`admit` against a fleet's hosts, unless the last pass had this very fleet, limit and
        queue: it would decide the same. Every waiting migration runs a pass when woken, and each
        pass copies every host (at 1,000 hosts and 100 migrations waiting, the passes alone held the
        event loop for seconds, delaying every first status)."""
        last = self._last_pass
        if last is not None and last[0] is fleet_now and last[1:] == (cluster_limit, self.version):
            return
        self.admit(fleet_now.hosts, cluster_limit)
        self._last_pass = (fleet_now, cluster_limit, self.version)

    def admit(self, hosts: Mapping[str, HostView], cluster_limit: int | None) -> None:
        """One admission pass over the waiting tickets against ``hosts``.

        ``hosts`` must not count the reservations of migrations in flight: the gate counts them
        itself from what it admitted, which is ahead of the indexes. Only the hosts the waiting
        requests name are read (a pass that adjusted every host cost 4 % of the operator's CPU
        with 1,000 hosts while migrations were requested at 20 a second).
        """
        if not self.pending:
            return
        held: dict[str, list[int]] = {}
        for r in self.in_flight.values():
            if r.target:
                h = held.setdefault(r.target, [0, 0])
                h[0] += r.cpus
                h[1] += r.memory_mib
        named = {name for t in self.pending.values() for name in (t.request.source, t.request.target) if name}
        adjusted: dict[str, HostView] = {}
        for name in named:
            host = hosts.get(name)
            if host is None:
                continue
            cpus, memory = held.get(name, (0, 0))
            if (host.reserved_cpus, host.reserved_memory_mib) != (cpus, memory):
                host = replace(host, reserved_cpus=cpus, reserved_memory_mib=memory)
            adjusted[name] = host
        answer = admit([t.request for t in self.pending.values()], list(self.in_flight.values()), adjusted,
                       cluster_limit=cluster_limit)
        for request in answer.admitted:
            ticket = self.pending.pop(request.key)
            self.in_flight[request.key] = request
            ticket.admitted.set()
            self.version += 1
        for key, why in answer.waiting.items():
            if key in self.pending:
                self.pending[key].waiting_for = why

    def release(self, migration_key: str, vm_key: str | None = None) -> None:
        """A migration ended (any outcome) or gave up waiting: free its VM, slots and capacity."""
        self.version += 1
        self.pending.pop(migration_key, None)
        if self.in_flight.pop(migration_key, None) is not None or migration_key in self.claims.values():
            self.finished.expect(migration_key, None)
        for vm, holder in list(self.claims.items()):
            if holder == migration_key and (vm_key is None or vm == vm_key):
                del self.claims[vm]


#: How long a VM whose status was just written is left out of the resync while its echo is awaited.
#: An echo comes within a second or two, even at a 10,000-VM adoption; one that came before the
#: write's answer is never matched, and the VM stays out until this expires. At 30 s (the resync's
#: period) a guest lost with its host just after a status write was missed by a whole pass (seed 13043
#: of the fault campaign: the VM stayed on no host for over 50 s).
ECHO_SECONDS = 5.0


@dataclass
class Runtime:
    agents: AgentDirectory = field(default_factory=AgentDirectory)
    gate: MigrationGate = field(default_factory=MigrationGate)
    #: Placements made (VM key -> host, cpus, memory MiB) until the VM's status shows the host.
    placements: Expectations[str, tuple[str, int, int]] = field(default_factory=Expectations)
    #: Each VM's body (its fingerprint) as a reconcile last found it in order: its echo costs a comparison.
    settled: Expectations[str, tuple[Any, ...]] = field(default_factory=Expectations)
    #: VMs whose status a reconcile wrote and whose watch echo has not reached the cache yet (30 s at
    #: most: an echo that came before the write's answer must not hide a VM from the resync for long).
    #: The resync leaves them be: the cache shows them as before the write.
    echo_pending: Expectations[str, None] = field(default_factory=lambda: Expectations(ttl=ECHO_SECONDS))
    placement_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set (and replaced) when a migration gives its slots back: see :meth:`gate_released`.
    gate_changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: One lock per VM key: one reconcile of a VM at a time.
    vm_locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: VMs whose last reconcile could not finish (an agent did not answer): the resync retries them.
    deferred: set[str] = field(default_factory=set)
    #: Whether the last resync pass found guests of deleted VMs still in a migration (it comes back soon).
    orphans_moving: bool = False
    #: Why each deferred VM waits, as last logged (a reason is logged once, not at every pass).
    deferral_told: dict[str, str] = field(default_factory=dict)
    #: VMs whose watch event this process has handled: the resync looks only at those. One the work
    #: queue has not reached yet (its first event still queued after a start) belongs to that event.
    handled: set[str] = field(default_factory=set)
    #: The VM controller's events, from the VM informer (vmevents.py); None until the operator starts.
    vm_events: WorkQueue | None = None
    #: Ask the VM resync loop for a pass now (a Host's labels changed under its VMs).
    resync_wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Each Host's supervisor sleeps on its event: the agent's poll, the remediation and the drain
    #: pass, and the status they make, all run again when it is set.
    host_wakers: dict[str, asyncio.Event] = field(default_factory=dict)
    #: Set by the operator's cleanup before it closes the agent links: a daemon Kopf spawned while the
    #: operator was already stopping never gets its stop flag, yet sees the links closed under it.
    stopping: bool = False

    def gate_released(self) -> None:
        """A migration gave its slots back: wake every migration waiting in the queue now, so the next
        one is admitted at once rather than at its next poll. Waiters take ``gate_changed`` before they
        look at the queue; a fresh event serves the waits that start after this."""
        self.gate_changed.set()
        self.gate_changed = asyncio.Event()

    def wake_host(self, name: str) -> None:
        """Ask the supervisor of Host ``name`` for a pass now (no-op when it does not run)."""
        event = self.host_wakers.get(name)
        if event is not None:
            event.set()

    def wake_all_hosts(self) -> None:
        for event in self.host_wakers.values():
            event.set()
    started_at: float = field(default_factory=time.monotonic)
    poll_interval: float = 2.0
    #: The longest wait between two polls of an unreachable agent (they back off from poll_interval).
    poll_backoff_cap: float = 16.0
    keep_finished_migrations: int = 5


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process's Runtime, created on first use (inside the operator's event loop)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime()
    return _runtime


def reset_runtime() -> None:
    """Forget all in-memory state (tests that run several operators in one process)."""
    global _runtime
    _runtime = None


class StopFlag(Protocol):
    """What a loop is asked to stop by: Kopf's ``stopped`` for a daemon, a ``Stop`` for a Host's supervisor."""

    def wait(self) -> Awaitable[object]: ...


async def until_woken(event: asyncio.Event, stopped: StopFlag, seconds: float) -> None:
    """A loop's sleep: return when ``event`` is set, the loop is asked to stop, or ``seconds`` passed."""
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
    try:
        await asyncio.wait(waiters, timeout=max(seconds, 0.05), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
