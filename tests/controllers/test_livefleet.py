"""The fleet kept change by change equals the fleet built from scratch over the same caches, and
reading it after a change that moves no capacity assembles nothing."""

from __future__ import annotations

import random
from typing import Any

from vmshift.controllers.expectations import Expectations
from vmshift.controllers.informer import Informer, Store, values
from vmshift.controllers.livefleet import LiveFleet, follow
from vmshift.controllers.views import (
    AgentFacts,
    HostEntry,
    MigrationEntry,
    VMEntry,
    build_fleet,
    index_host,
    index_migration,
    index_vm,
)
from vmshift.scheduling.fleet import Fleet

MODELS = ["icelake", "haswell", "zen3"]
PHASES = ["Pending", "Validating", "Transferring", "SwitchingOver", "Succeeded", "Failed"]


class Caches:
    """The three informers and stores the operator keeps, fed directly, with a LiveFleet following them."""

    def __init__(self) -> None:
        self.hosts, self.vms, self.migrations = (Informer("hosts"), Informer("virtualmachines"),
                                                 Informer("virtualmachinemigrations"))
        self.host_store: Store[HostEntry] = self.hosts.index(lambda b: {b["metadata"]["name"]: index_host(b)})
        self.vm_store: Store[VMEntry] = self.vms.index(lambda b: {(e := index_vm(b)).key: e})
        self.migration_store: Store[MigrationEntry] = self.migrations.index(
            lambda b: {(e := index_migration(b)).key: e})
        self.live: LiveFleet = follow(self.hosts, self.vms, self.migrations, self.host_store, self.vm_store,
                                      self.migration_store)
        self.facts: dict[str, AgentFacts] = {}
        self.facts_version = 0
        self.placements: Expectations[str, tuple[str, int, int]] = Expectations()

    def kept(self, *, max_age: float = 0.0) -> Fleet:
        return self.live.fleet(self.facts, self.facts_version, self.placements, max_age=max_age)

    def built(self) -> Fleet:
        return build_fleet(values(self.host_store), values(self.vm_store), values(self.migration_store),
                           self.facts, dict(self.placements.items()))


def host(name: str, rng: random.Random) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1,
                         "labels": {"zone": rng.choice("ab")}},
            "spec": {"cpu": {"model": rng.choice(MODELS), "cores": rng.choice([8, 16, 32])},
                     "memoryMiB": 65536, "unschedulable": rng.random() < 0.2},
            "status": {"remediation": {"action": "Quarantine"}} if rng.random() < 0.1 else {}}


def vm(name: str, uid: str, rng: random.Random, hosts: list[str]) -> dict[str, Any]:
    placement: dict[str, Any] = {"antiAffinityGroup": rng.choice(["g1", "g2"])} if rng.random() < 0.4 else {}
    on = rng.choice([*hosts, None, "gone-host"])
    status: dict[str, Any] = {"phase": rng.choice(["Running", "Migrating"]), "host": on} if on else {}
    if rng.random() < 0.3:
        status["migration"] = {"progress": rng.randrange(100)}  # progress only: moves no capacity
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "generation": 1, "labels": {}},
            "spec": {"cpus": rng.choice([1, 2, 4]), "memoryMiB": rng.choice([512, 1024]), "placement": placement},
            "status": status}


def migration(name: str, vm_name: str, rng: random.Random, hosts: list[str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"vmName": vm_name},
            "status": {"phase": rng.choice(PHASES), "sourceHost": rng.choice(hosts),
                       "targetHost": rng.choice([*hosts, None])}}


def same(kept: Fleet, built: Fleet) -> None:
    assert dict(kept.hosts) == dict(built.hosts)
    assert dict(kept.vms) == dict(built.vms)
    for name in {*kept.hosts, *built.hosts, "gone-host"}:
        assert kept.vms_on(name) == built.vms_on(name)
        for group in ("g1", "g2"):
            assert kept.group_members_on(group, name) == built.group_members_on(group, name)


def test_the_kept_fleet_equals_a_fresh_build_after_every_kind_of_change() -> None:
    rng = random.Random(15)
    caches = Caches()
    names = [f"h{i}" for i in range(6)]
    vms: dict[str, dict[str, Any]] = {}
    flights: list[str] = []
    for step in range(600):
        roll = rng.random()
        if roll < 0.1:
            name = rng.choice(names)
            caches.hosts.apply(rng.choice(["ADDED", "MODIFIED", "MODIFIED", "DELETED"]), host(name, rng))
        elif roll < 0.55:
            name = f"vm{rng.randrange(30)}"
            if name in vms and rng.random() < 0.15:
                caches.vms.apply("DELETED", vms.pop(name))
            else:
                uid = vms[name]["metadata"]["uid"] if name in vms else f"u-{name}-{step}"
                vms[name] = vm(name, uid, rng, names)
                caches.vms.apply("MODIFIED", vms[name])
        elif roll < 0.75 and vms:
            m = f"m{rng.randrange(12)}"
            kind = "DELETED" if rng.random() < 0.2 else "MODIFIED"
            caches.migrations.apply(kind, migration(m, rng.choice(sorted(vms)), rng, names))
            flights.append(m)
        elif roll < 0.85:
            name = rng.choice(names)
            caches.facts[name] = AgentFacts(reachable=rng.random() < 0.8, healthy=rng.random() < 0.9,
                                            cpu_model=rng.choice([*MODELS, None]))
            caches.facts_version += 1
        elif roll < 0.95 and vms:
            key = f"ns/{rng.choice(sorted(vms))}"
            if rng.random() < 0.6:
                caches.placements.expect(key, (rng.choice(names), 1, 512))
            else:
                caches.placements.observed(key)
        else:  # a re-listing that lost some objects without their DELETED events
            kept = {n: b for n, b in vms.items() if rng.random() < 0.8}
            caches.vms.listed({b["metadata"]["uid"] for b in kept.values()})
            vms = kept
        if rng.random() < 0.5:  # readers come between some changes, not all
            same(caches.kept(), caches.built())
    same(caches.kept(), caches.built())
    assert flights, "the run exercised migrations"


def test_a_change_that_moves_no_capacity_reuses_the_fleet_and_the_host_answers() -> None:
    rng = random.Random(7)
    caches = Caches()
    caches.hosts.apply("ADDED", host("h1", rng))
    body = vm("a", "u-a", rng, ["h1"])
    body["status"] = {"phase": "Running", "host": "h1"}
    caches.vms.apply("ADDED", body)
    first = caches.kept()
    memo = first.per_hosts("answer", lambda: object())
    progress = {**body, "status": {**body["status"], "migration": {"progress": 40}}}
    caches.vms.apply("MODIFIED", progress)
    assert caches.kept() is first  # nothing the fleet shows changed
    other = {**body, "metadata": {**body["metadata"], "name": "b", "uid": "u-b"}}
    caches.vms.apply("ADDED", other)
    second = caches.kept()
    assert second is not first and second.host("h1") != first.host("h1")  # b's share is allocated
    assert caches.kept().per_hosts("answer", lambda: object()) is not memo  # the host changed: asked again
    unplaced = {**body, "metadata": {**body["metadata"], "name": "c", "uid": "u-c"}, "status": {}}
    caches.vms.apply("ADDED", unplaced)
    third = caches.kept()
    assert third is not second and third.vm("ns/c") is not None
    assert third.per_hosts("answer", lambda: object()) is second.per_hosts("answer", lambda: object())
    assert caches.live.assembled == 3
