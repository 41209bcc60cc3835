"""The scheduler's fleet kept current change by change: reading it costs what changed, not a rebuild.

:func:`~vmshift.controllers.views.build_fleet` makes the same :class:`Fleet` from every cached Host,
VM and migration, which at 10,000 VMs took ~0.25 s, and validating each migration asked for a fresh
one. :class:`LiveFleet` is told which Host, VM key or migration changed (by the informers'
listeners) and, when a fleet is asked for, re-derives only those: a VM's view and what it charges
its host, the VMs on a host, an anti-affinity group's members on a host, the reservations and slots
of migrations in flight, and the views of the hosts any of that touched. Placements in progress and
the agents' facts are compared with what it last saw when their version moved.

Pure: no I/O, only called on the event loop. Its answer equals ``build_fleet`` over the same inputs
(tests/controllers/test_livefleet.py checks it over random changes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from vmshift.controllers.expectations import Expectations
from vmshift.controllers.informer import Informer, Store, values
from vmshift.controllers.views import (
    AgentFacts,
    HostEntry,
    MigrationEntry,
    VMEntry,
    host_view,
    in_flight_targets,
    index_migration,
)
from vmshift.scheduling.fleet import Fleet, HostView, VMView

Placement = tuple[str, int, int]
_NO_FACTS = AgentFacts()


class LiveFleet:
    """The fleet, updated by the changes it is told of.

    ``vms_of(key)``: every cached VM object with that ``namespace/name`` (one but for a moment
    around a re-creation), in the cache's order; ``host_of(name)``: the cached Host of that name.
    """

    def __init__(self, vms_of: Callable[[str], Sequence[VMEntry]], host_of: Callable[[str], HostEntry | None]) -> None:
        self._vms_of = vms_of
        self._host_of = host_of
        # inputs
        self._host_entries: dict[str, HostEntry] = {}
        self._flights: dict[str, MigrationEntry] = {}  # migrations in flight, by uid
        self._placed: dict[str, Placement] = {}
        self._facts: dict[str, AgentFacts] = {}
        #: The facts map and placements (and their versions) last looked at: a new process state
        #: (tests run several operators in one process) is looked at whole.
        self._facts_seen: tuple[Mapping[str, AgentFacts] | None, int] = (None, -1)
        self._placed_seen: tuple[Expectations[str, Placement] | None, int] = (None, -1)
        # derived
        self._views: dict[str, VMView] = {}
        self._charges: dict[str, tuple[tuple[str, int, int], ...]] = {}  # what each VM key's objects use, by host
        self._allocated: dict[str, list[int]] = {}
        self._on_host: dict[str, set[str]] = {}
        self._on_host_sorted: dict[str, tuple[str, ...]] = {}
        self._groups: dict[str, dict[str, set[str]]] = {}
        self._group_hosts: dict[str, dict[str, frozenset[str]]] = {}
        self._targets: dict[str, str] = {}
        self._flight_vms: set[str] = set()
        self._reserved: dict[str, tuple[int, int]] = {}
        self._inbound: dict[str, int] = {}
        self._outbound: dict[str, int] = {}
        self._host_views: dict[str, HostView] = {}
        # pending work
        self._dirty_vms: set[str] = set()
        self._dirty_host_entries: set[str] = set()
        self._dirty_hosts: set[str] = set()
        self._dirty_on_host: set[str] = set()
        self._dirty_groups: set[tuple[str, str]] = set()
        self._flights_dirty = False
        #: Something changed since the last fleet was assembled (versions aside).
        self._stale = True
        #: A derived part changed since the last fleet was assembled.
        self._changed = False
        self._last: Fleet | None = None
        self._last_at = 0.0
        #: How many fleets were assembled (each a copy of the maps, never a rebuild of the views).
        self.assembled = 0

    # --- told by the informers' listeners (O(1) each) ------------------------------------------

    def vm_changed(self, key: str) -> None:
        self._dirty_vms.add(key)
        self._stale = True

    def host_changed(self, name: str) -> None:
        self._dirty_host_entries.add(name)
        self._stale = True

    def migration_changed(self, uid: str, entry: MigrationEntry | None) -> None:
        """A migration changed (``entry``) or went (None); only one in flight counts."""
        before = self._flights.get(uid)
        if entry is not None and entry.in_flight:
            self._flights[uid] = entry
        else:
            self._flights.pop(uid, None)
        if self._flights.get(uid) != before:
            self._flights_dirty = True
            self._stale = True

    def reset(self, hosts: Iterable[str], vm_keys: Iterable[str], migrations: Iterable[MigrationEntry]) -> None:
        """A listing completed: look at everything it holds again, and forget what it no longer does."""
        self._dirty_host_entries.update(hosts)
        self._dirty_host_entries.update(self._host_entries)
        self._dirty_vms.update(vm_keys)
        self._dirty_vms.update(self._views)
        self._dirty_vms.update(self._charges)
        self._flights = {m.uid: m for m in migrations if m.in_flight}
        self._flights_dirty = True
        self._stale = True

    # --- read -----------------------------------------------------------------------------------

    def fleet(self, facts: Mapping[str, AgentFacts], facts_version: int, placements: Expectations[str, Placement],
              *, max_age: float = 0.0) -> Fleet:
        """The fleet as of now: the caches, ``facts`` (what each host's agent reports, which changes
        only with ``facts_version``), ``placements`` in progress. ``max_age``: a fleet assembled that
        recently serves as is, even when something changed since (for readers that tolerate it)."""
        facts_seen = (facts, facts_version)
        placed_seen = (placements, placements.version)
        if self._last is not None and (
                (not self._stale and _same(facts_seen, self._facts_seen) and _same(placed_seen, self._placed_seen))
                or time.monotonic() - self._last_at < max_age):
            return self._last
        if not _same(placed_seen, self._placed_seen):
            self._placed_seen = placed_seen
            now = dict(placements.items())
            for key in now.keys() | self._placed.keys():
                if now.get(key) != self._placed.get(key):
                    self._dirty_vms.add(key)
            self._placed = now
        if not _same(facts_seen, self._facts_seen):
            self._facts_seen = facts_seen
            for name in facts.keys() | self._facts.keys():
                if facts.get(name) is not self._facts.get(name):
                    self._dirty_hosts.add(name)
            self._facts = dict(facts)
        for name in self._dirty_host_entries:
            entry = self._host_of(name)
            if entry is None:
                self._host_entries.pop(name, None)
            else:
                self._host_entries[name] = entry
            self._dirty_hosts.add(name)
        self._dirty_host_entries.clear()
        for key in self._dirty_vms:
            self._review(key)
        self._dirty_vms.clear()
        if self._flights_dirty:
            self._account_flights()
        return self._assemble()

    # --- derivation -----------------------------------------------------------------------------

    def _review(self, key: str) -> None:
        """Re-derive one VM key: its view, its charges, its place on hosts and in its group. An event
        that changed none of it (a VM's progress in status) changes nothing here either."""
        placed = self._placed.get(key)
        target = self._targets.get(key)
        view: VMView | None = None
        charges: list[tuple[str, int, int]] = []
        for entry in self._vms_of(key):
            host: str | None = entry.host or (placed[0] if placed is not None else None)
            view = entry.view if host == entry.host and target is None else replace(
                entry.view, host=host, migration_target=target)
            if host is not None:
                charges.append((host, view.cpus, view.memory_mib))
        old = self._views.get(key)
        if view == old and tuple(charges) == self._charges.get(key, ()):
            return
        self._changed = True
        for host, cpus, memory in self._charges.pop(key, ()):
            used = self._allocated[host]
            used[0] -= cpus
            used[1] -= memory
            self._dirty_hosts.add(host)
        for host, cpus, memory in charges:
            used = self._allocated.setdefault(host, [0, 0])
            used[0] += cpus
            used[1] += memory
            self._dirty_hosts.add(host)
        if charges:
            self._charges[key] = tuple(charges)
        if old is not None:
            del self._views[key]
            self._place(old, add=False)
        if view is not None:
            self._views[key] = view
            self._place(view, add=True)
        if key in self._flight_vms and (old is None or view is None or old.cpus != view.cpus
                                        or old.memory_mib != view.memory_mib):
            self._flights_dirty = True  # the target's reservation is this VM's size

    def _place(self, view: VMView, *, add: bool) -> None:
        if view.host is not None:
            self._member(self._on_host, view.host, view.key, add)
            self._dirty_on_host.add(view.host)
        group = view.anti_affinity_group
        if group is not None:
            by_host = self._groups.setdefault(group, {})
            for where in (view.host, view.migration_target):
                if where is not None:
                    self._member(by_host, where, view.key, add)
                    self._dirty_groups.add((group, where))

    @staticmethod
    def _member(sets: dict[str, set[str]], where: str, key: str, add: bool) -> None:
        if add:
            sets.setdefault(where, set()).add(key)
            return
        members = sets.get(where)
        if members is not None:
            members.discard(key)
            if not members:
                del sets[where]

    def _account_flights(self) -> None:
        """Targets, reservations and slots of the migrations in flight (a handful: recounted whole)."""
        targets = in_flight_targets(self._flights.values())
        now = {k: t for k, t in targets.items() if t is not None}
        changed = {k for k in now.keys() | self._targets.keys() if now.get(k) != self._targets.get(k)}
        self._targets = now
        self._flight_vms = set(targets)
        for key in changed:
            self._review(key)
        reserved: dict[str, tuple[int, int]] = {}
        inbound: dict[str, int] = {}
        outbound: dict[str, int] = {}
        for m in self._flights.values():
            vm = self._views.get(m.vm_key)
            if m.target:
                inbound[m.target] = inbound.get(m.target, 0) + 1
                if vm is not None:
                    cpus, memory = reserved.get(m.target, (0, 0))
                    reserved[m.target] = (cpus + vm.cpus, memory + vm.memory_mib)
            if m.source:
                outbound[m.source] = outbound.get(m.source, 0) + 1
        self._dirty_hosts.update(_differ(self._reserved, reserved) | _differ(self._inbound, inbound)
                                 | _differ(self._outbound, outbound))
        self._reserved, self._inbound, self._outbound = reserved, inbound, outbound
        self._flights_dirty = False  # the re-derived VMs above changed no size that is not counted here

    def _assemble(self) -> Fleet:
        hosts_changed = False
        for name in self._dirty_hosts:
            entry = self._host_entries.get(name)
            before = self._host_views.get(name)
            if entry is None:
                if before is not None:
                    del self._host_views[name]
                    hosts_changed = True
                continue
            view = host_view(entry, self._facts.get(name, _NO_FACTS), self._allocated.get(name, (0, 0)),
                             self._reserved.get(name, (0, 0)), self._inbound.get(name, 0),
                             self._outbound.get(name, 0))
            if view != before:
                self._host_views[name] = view
                hosts_changed = True
        self._dirty_hosts.clear()
        if self._last is not None and not hosts_changed and not self._changed:
            self._stale = False
            self._last_at = time.monotonic()
            return self._last  # what changed changed nothing the fleet shows
        for name in self._dirty_on_host:
            members = self._on_host.get(name)
            if members:
                self._on_host_sorted[name] = tuple(sorted(members))
            else:
                self._on_host_sorted.pop(name, None)
        self._dirty_on_host.clear()
        for group, where in self._dirty_groups:
            # A new inner map per change: fleets handed out before keep the one they were given.
            by_host = dict(self._group_hosts.get(group, {}))
            members = self._groups.get(group, {}).get(where)
            if members:
                by_host[where] = frozenset(members)
            else:
                by_host.pop(where, None)
            if by_host:
                self._group_hosts[group] = by_host
            else:
                self._group_hosts.pop(group, None)
            if not self._groups.get(group):
                self._groups.pop(group, None)
        self._dirty_groups.clear()
        # Answers that depend on the hosts alone (Fleet.per_hosts) stay good while no host view changed.
        self._last = Fleet.assembled(dict(self._host_views), dict(self._views), dict(self._on_host_sorted),
                                     dict(self._group_hosts), memo_of=None if hosts_changed else self._last)
        self._last_at = time.monotonic()
        self._stale = False
        self._changed = False
        self.assembled += 1
        return self._last


def _same(a: tuple[object, int], b: tuple[object, int]) -> bool:
    return a[0] is b[0] and a[1] == b[1]


def _differ(before: Mapping[str, object], after: Mapping[str, object]) -> set[str]:
    """The keys whose values differ between two maps (pure)."""
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def follow(hosts: Informer, vms: Informer, migrations: Informer, host_store: Store[HostEntry],
           vm_store: Store[VMEntry], migration_store: Store[MigrationEntry]) -> LiveFleet:
    """A LiveFleet told of every change the three informers apply (their stores keyed by Host name,
    VM key and migration key), and of each complete listing."""

    def host_of(name: str) -> HostEntry | None:
        entries = host_store.get(name)
        return entries[-1] if entries else None

    live = LiveFleet(lambda key: vm_store.get(key) or [], host_of)

    def meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
        return body.get("metadata") or {}

    hosts.listen(lambda type, body: live.host_changed(str(meta(body).get("name", ""))))
    vms.listen(lambda type, body: live.vm_changed(f"{meta(body).get('namespace')}/{meta(body).get('name')}"))
    migrations.listen(lambda type, body: live.migration_changed(
        str(meta(body).get("uid", "")), None if type == "DELETED" else index_migration(body)))

    def relisted() -> None:
        live.reset(host_store.keys(), vm_store.keys(), values(migration_store))

    for informer in (hosts, vms, migrations):
        informer.on_listed(relisted)
    return live
