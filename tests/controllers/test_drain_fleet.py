"""A drain pass plans on a fleet that shows every change the caches hold when the pass runs.

``bench/drain.py --real`` planned a drain right after its warm-up migrations ended: the fleet the pass
read had been assembled less than a second before (a reader that tolerates a stale fleet is served
the last one for up to ``FLEET_MAX_AGE``), so it still counted a warm-up migration in one of the
source's two slots. The planner, seeing one free slot, planned "1 at once", where two streams that
each carry a third of the link finish in about half the time.
"""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from vmshift.controllers import drains, kubeapi
from vmshift.controllers.drains import Evacuator
from vmshift.controllers.informer import Store
from vmshift.controllers.views import AgentFacts
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.policy import MigrationPolicyView

from .test_livefleet import Caches

SOURCE = "src"
TARGETS = ("t0", "t1", "t2")
#: What one stream out of the source carried in the bench (966 MiB/s), a third of its 25 Gbit/s link.
STREAM_MBPS = 8_104.0


def host(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1, "labels": {}},
            "spec": {"cpu": {"model": "icelake", "cores": 64}, "memoryMiB": 262_144,
                     "migrationBandwidthMbps": 25_000, "maxConcurrentMigrations": 2}}


def vm(name: str, on: str, memory_mib: int = 2048) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1, "labels": {}},
            "spec": {"cpus": 1, "memoryMiB": memory_mib, "workload": {"dirtyRateMiBps": 20}},
            "status": {"phase": "Running", "host": on}}


def migration(name: str, vm_name: str, phase: str, target: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"vmName": vm_name, "targetHost": target},
            "status": {"phase": phase, "sourceHost": SOURCE, "targetHost": target}}


async def test_a_drain_planned_just_after_a_migration_ended_does_not_count_it(monkeypatch: pytest.MonkeyPatch) -> None:
    caches = Caches()
    for name in (SOURCE, *TARGETS):
        caches.hosts.apply("ADDED", host(name))
    caches.facts[SOURCE] = AgentFacts(reachable=True, stream_mbps=STREAM_MBPS)
    for name in TARGETS:
        caches.facts[name] = AgentFacts(reachable=True)
    caches.facts_version += 1
    guests = [f"g{i}" for i in range(6)]
    for name in guests:
        caches.vms.apply("ADDED", vm(name, SOURCE))
    # A migration out of the source is under way, and some reader assembles the fleet meanwhile.
    caches.vms.apply("ADDED", vm("warm", SOURCE))
    caches.migrations.apply("ADDED", migration("warm-m", "warm", "Transferring", "t0"))
    assert caches.kept().hosts[SOURCE].outbound_migrations == 1

    def fleet(*, fresh: bool = False) -> Fleet:  # the operator's accessor: the same rule over these caches
        return caches.kept(max_age=0.0 if fresh else drains.indexes.FLEET_MAX_AGE)

    created: list[dict[str, Any]] = []

    async def create(plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        if plural == "virtualmachinemigrations":
            created.append(body)
        return body

    async def flush() -> None:
        pass

    monkeypatch.setattr(drains, "fleet", fleet)
    monkeypatch.setattr(kubeapi, "create", create)
    # It ends; at once (well within a second) the source is put in maintenance.
    caches.vms.apply("MODIFIED", vm("warm", "t0"))
    caches.migrations.apply("MODIFIED", migration("warm-m", "warm", "Succeeded", "t0"))
    spec = {**host(SOURCE)["spec"], "maintenance": True}
    caches.hosts.apply("MODIFIED", {**host(SOURCE), "spec": spec})
    evacuator = Evacuator(SOURCE, kopf.Body({"metadata": {"name": SOURCE}}), None, flush)
    policies: Store[MigrationPolicyView] = Store(lambda body: {})
    await evacuator.run_pass(spec, {}, caches.vm_store, caches.migration_store, policies, [])

    # Both of the source's slots are free: one stream carries a third of the link, so two go at once.
    assert evacuator.drain["strategy"].startswith("2 at once"), evacuator.drain["strategy"]
    assert len(created) == 2, [c["spec"]["vmName"] for c in created]
    assert {c["spec"]["linkShare"]["ratio"] for c in created} == {1.0}
