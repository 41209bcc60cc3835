"""Benchmark: what a fresh scheduler fleet costs the event loop per change, kept vs rebuilt.

Pure computation, no cluster: the operator's three informers (Hosts, VMs, migrations) are fed
objects directly, with the LiveFleet the operator keeps following them. Each step changes one VM
and then reads a fresh fleet, the way validating a migration does after every event; measured:
  * kept: LiveFleet after a VM moved host (its view, both hosts' allocation, the copies handed out);
  * kept, no capacity change: after a status change the fleet does not show (a VM's progress);
  * rebuilt: ``build_fleet`` over every cached object, what each fresh read cost before.

    .venv/bin/python bench/fleet.py [--sizes 100:1000,1000:10000] [--steps 500]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

from vmshift.controllers.expectations import Expectations
from vmshift.controllers.informer import Informer, Store, values
from vmshift.controllers.livefleet import follow
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


def per_step(steps: int, change: Callable[[], None], read: Callable[[], Fleet]) -> float:
    """Milliseconds per (change, fresh read)."""
    t = time.perf_counter()
    for _ in range(steps):
        change()
        read()
    return (time.perf_counter() - t) / steps * 1000


def run(hosts: int, vms: int, steps: int) -> tuple[float, float, float]:
    rng = random.Random(1)
    host_informer, vm_informer, migration_informer = (Informer("hosts"), Informer("virtualmachines"),
                                                      Informer("virtualmachinemigrations"))
    host_store: Store[HostEntry] = host_informer.index(lambda b: {b["metadata"]["name"]: index_host(b)})
    vm_store: Store[VMEntry] = vm_informer.index(lambda b: {(e := index_vm(b)).key: e})
    migration_store: Store[MigrationEntry] = migration_informer.index(lambda b: {(e := index_migration(b)).key: e})
    live = follow(host_informer, vm_informer, migration_informer, host_store, vm_store, migration_store)
    facts = {}
    names = [f"h-{i:04d}" for i in range(hosts)]
    for name in names:
        host_informer.apply("ADDED", {"metadata": {"name": name, "uid": f"u-{name}", "generation": 1, "labels": {}},
                                      "spec": {"cpu": {"model": "icelake", "cores": 64}, "memoryMiB": 262144}})
        facts[name] = AgentFacts(reachable=True, cpu_model="icelake")
    bodies: list[dict[str, Any]] = []
    for i in range(vms):
        body = {"metadata": {"name": f"vm-{i:05d}", "namespace": f"ns-{i % 10}", "uid": f"u-{i}", "generation": 1},
                "spec": {"cpus": 2, "memoryMiB": 4096}, "status": {"phase": "Running", "host": names[i % hosts]}}
        bodies.append(body)
        vm_informer.apply("ADDED", body)
    placements: Expectations[str, tuple[str, int, int]] = Expectations()

    def move() -> None:
        body = rng.choice(bodies)
        body["status"] = {**body["status"], "host": rng.choice(names)}
        vm_informer.apply("MODIFIED", body)

    def progress() -> None:
        body = rng.choice(bodies)
        body["status"] = {**body["status"], "migration": {"progress": rng.randrange(100)}}
        vm_informer.apply("MODIFIED", body)

    def kept() -> Fleet:
        return live.fleet(facts, 1, placements)

    def rebuilt() -> Fleet:
        return build_fleet(values(host_store), values(vm_store), values(migration_store), facts,
                           dict(placements.items()))

    kept()
    return (per_step(steps, move, kept), per_step(steps, progress, kept),
            per_step(max(steps // 20, 3), move, rebuilt))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100:1000,1000:10000", help="hosts:VMs, separated by commas")
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    print(f"{'hosts':>6} {'VMs':>7} {'kept, VM moved':>15} {'kept, progress':>15} {'rebuilt':>10} {'ratio':>7}")
    for size in args.sizes.split(","):
        hosts, vms = (int(n) for n in size.split(":"))
        moved, progress, rebuilt = run(hosts, vms, args.steps)
        print(f"{hosts:>6} {vms:>7} {moved:>12.3f} ms {progress:>12.3f} ms {rebuilt:>7.1f} ms "
              f"{rebuilt / moved:>6.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
