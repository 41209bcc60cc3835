"""The migration gate (admission, claims, release) and the expectations helper, without an API server."""

from __future__ import annotations

import pytest

from vmshift.api.reasons import MigrationPhase
from vmshift.controllers.expectations import Expectations
from vmshift.controllers.runtime import AlreadyMigratingError, MigrationGate
from vmshift.controllers.views import MigrationEntry
from vmshift.scheduling.queue import QueuedMigration

from ..scheduling.strategies import host


def request(key: str, vm: str, source: str = "h1", target: str = "h2", created: float = 0.0,
            memory: int = 1024) -> QueuedMigration:
    return QueuedMigration(key=key, namespace="ns", vm=vm, source=source, target=target, created=created,
                            cpus=1, memory_mib=memory)


def hosts(**memory: int) -> dict[str, object]:
    return {name: host(name, max_concurrent_migrations=1, memory_mib=mib) for name, mib in memory.items()}


def test_one_migration_per_vm_holds_the_claim_until_released() -> None:
    gate = MigrationGate()
    gate.claim("ns/vm", "ns/m-1")
    gate.claim("ns/vm", "ns/m-1")  # the holder again: fine
    with pytest.raises(AlreadyMigratingError) as err:
        gate.claim("ns/vm", "ns/m-2")
    assert err.value.holder == "ns/m-1"
    gate.release("ns/m-1")
    assert gate.holder("ns/vm") is None
    gate.claim("ns/vm", "ns/m-2")


def test_admission_respects_host_slots_in_creation_order_and_release_frees_them() -> None:
    gate = MigrationGate()
    first, second = gate.enqueue(request("ns/a", "ns/va", created=1)), gate.enqueue(request("ns/b", "ns/vb", created=2))
    fleet = hosts(h1=65536, h2=65536)
    gate.admit(fleet, cluster_limit=None)  # type: ignore[arg-type]
    assert first.admitted.is_set() and not second.admitted.is_set()
    assert second.waiting_for  # says what it waits for
    gate.release("ns/a")
    gate.admit(fleet, cluster_limit=None)  # type: ignore[arg-type]
    assert second.admitted.is_set()


def test_the_target_capacity_an_admitted_migration_holds_counts_until_it_ends() -> None:
    gate = MigrationGate()
    roomy = {name: host(name, max_concurrent_migrations=4, memory_mib=2048) for name in ("h1", "h2")}
    big = gate.enqueue(request("ns/a", "ns/va", memory=1536, created=1))
    other = gate.enqueue(request("ns/b", "ns/vb", memory=1024, created=2))
    gate.admit(roomy, cluster_limit=None)  # type: ignore[arg-type]
    assert big.admitted.is_set() and not other.admitted.is_set()  # h2 has 2048 MiB: not both


def test_the_cluster_limit_holds() -> None:
    gate = MigrationGate()
    many = {name: host(name, max_concurrent_migrations=8, memory_mib=65536) for name in ("h1", "h2", "h3", "h4")}
    a = gate.enqueue(request("ns/a", "ns/va", "h1", "h2", created=1))
    b = gate.enqueue(request("ns/b", "ns/vb", "h3", "h4", created=2))
    gate.admit(many, cluster_limit=1)  # type: ignore[arg-type]
    assert a.admitted.is_set() and not b.admitted.is_set()


def test_a_released_migration_stops_holding_its_vm_while_the_cache_still_shows_it() -> None:
    gate = MigrationGate()
    gate.enqueue(request("ns/a", "ns/va"))
    gate.claim("ns/va", "ns/a")
    gate.admit(hosts(h1=65536, h2=65536), cluster_limit=None)  # type: ignore[arg-type]
    assert gate.moving("ns/va", ["ns/a"])
    gate.release("ns/a")
    assert not gate.moving("ns/va", ["ns/a"])  # ended here; the index's "in flight" is an old echo
    assert gate.moving("ns/va", ["ns/other"])  # one the index shows that did not end here still holds it


def test_seeding_after_a_restart_holds_what_is_in_flight_once() -> None:
    gate = MigrationGate()
    flying = MigrationEntry("ns", "m", "uid", "vm", MigrationPhase.Transferring, "h1", "h2", "2026-01-01T00:00:00Z")
    queued = MigrationEntry("ns", "q", "uid2", "vm2", MigrationPhase.Pending, "h1", "h2", "2026-01-01T00:00:00Z")
    gate.seed([flying, queued], {"ns/vm": (2, 4096)})
    assert gate.holder("ns/vm") == "ns/m" and gate.holder("ns/vm2") is None
    assert gate.in_flight["ns/m"].memory_mib == 4096
    gate.seed([], {})  # only once
    assert "ns/m" in gate.in_flight


def test_expectations_are_dropped_when_observed_or_expired_and_move_the_version() -> None:
    now = [0.0]
    placed: Expectations[str, str] = Expectations(ttl=30.0, clock=lambda: now[0])
    placed.expect("ns/a", "h1")
    version = placed.version
    assert placed.get("ns/a") == "h1" and "ns/a" in placed
    placed.observed("ns/a")
    assert placed.get("ns/a") is None and placed.version > version
    placed.expect("ns/b", "h2")
    now[0] = 31.0
    assert "ns/b" not in placed and len(placed) == 0  # the echo never came: expired


def test_expectations_with_a_capacity_keep_the_newest() -> None:
    finished: Expectations[str, None] = Expectations(capacity=2)
    for key in ("a", "b", "c"):
        finished.expect(key, None)
    assert [k for k, _ in finished.items()] == ["b", "c"]
    finished.expect("b", None)  # renewed: now the newest
    finished.expect("d", None)
    assert [k for k, _ in finished.items()] == ["b", "d"]


def test_an_admission_pass_over_the_same_fleet_and_queue_is_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every waiting migration runs a pass when woken; passes that would decide the same (same fleet
    object, same limit, nothing enqueued, admitted or released since) are skipped (bench/scale.py:
    100 waiting migrations each copying 1,000 hosts held the event loop for seconds)."""
    from vmshift.controllers import runtime as runtime_module
    from vmshift.scheduling.fleet import Fleet

    passes: list[int] = []
    real = runtime_module.admit

    def counted(*args: object, **kwargs: object) -> object:
        passes.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime_module, "admit", counted)
    gate = MigrationGate()
    one_slot = Fleet(hosts(h1=65536, h2=65536).values())  # type: ignore[arg-type]
    first, second = gate.enqueue(request("ns/a", "ns/va", created=1)), gate.enqueue(request("ns/b", "ns/vb", created=2))
    gate.admit_fleet(one_slot, cluster_limit=None)
    assert first.admitted.is_set() and not second.admitted.is_set() and len(passes) == 1
    for _ in range(5):  # the other waiters woken: nothing changed
        gate.admit_fleet(one_slot, cluster_limit=None)
    assert len(passes) == 1 and not second.admitted.is_set()
    gate.admit_fleet(one_slot, cluster_limit=3)  # another limit: another pass
    assert len(passes) == 2
    gate.release("ns/a")  # slots given back: the next pass runs and admits the second
    gate.admit_fleet(one_slot, cluster_limit=3)
    assert len(passes) == 3 and second.admitted.is_set()
    third = gate.enqueue(request("ns/c", "ns/vc", created=3))
    gate.admit_fleet(one_slot, cluster_limit=3)  # a new ticket: a pass (it waits for the slot)
    assert len(passes) == 4 and not third.admitted.is_set()
    gate.admit_fleet(Fleet(hosts(h1=65536, h2=65536).values()), cluster_limit=3)  # type: ignore[arg-type]
    assert len(passes) == 5  # a newer fleet (a host changed) is looked at


def test_an_admission_pass_reads_only_the_hosts_its_requests_name() -> None:
    """A pass adjusted (and so copied) every host of the fleet for the gate's own reservations: with
    1,000 hosts and migrations requested at 20 a second that was 4 % of the operator's CPU (py-spy).
    It reads the source and target of each waiting request and nothing else, and still counts what
    the gate holds on them."""
    from collections.abc import Iterator, Mapping

    class Recording(Mapping[str, object]):
        def __init__(self, hosts: dict[str, object]) -> None:
            self.hosts = hosts
            self.read: set[str] = set()

        def __getitem__(self, name: str) -> object:
            self.read.add(name)
            return self.hosts[name]

        def __iter__(self) -> Iterator[str]:
            self.read.update(self.hosts)
            return iter(self.hosts)

        def __len__(self) -> int:
            return len(self.hosts)

    fleet = Recording({f"h{i}": host(f"h{i}", max_concurrent_migrations=4, memory_mib=8192) for i in range(1, 201)})
    gate = MigrationGate()
    first = gate.enqueue(request("ns/a", "ns/va", source="h1", target="h2", memory=6144, created=1))
    gate.admit(fleet, cluster_limit=None)  # type: ignore[arg-type]
    assert first.admitted.is_set()
    # h2 has 8192 MiB; the admitted migration holds 6144 of them: a second one of 4096 MiB must wait
    second = gate.enqueue(request("ns/b", "ns/vb", source="h3", target="h2", memory=4096, created=2))
    fleet.read.clear()
    gate.admit(fleet, cluster_limit=None)  # type: ignore[arg-type]
    assert not second.admitted.is_set() and "h2 has" in second.waiting_for, second.waiting_for
    assert fleet.read == {"h2", "h3"}, f"the pass read {len(fleet.read)} hosts"
