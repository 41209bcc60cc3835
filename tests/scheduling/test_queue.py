"""Admission: per-host slots on source and target, cluster limit, capacity, one move per VM, fairness."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.scheduling.queue import QueuedMigration, Reservations, admit

from .strategies import host

HOSTS = {h.name: h for h in (host(f"h{i}", max_concurrent_migrations=2, memory_mib=65_536) for i in range(4))}


def req(key: str, ns: str, src: str, dst: str | None, t: float, *, vm_name: str | None = None,
        mem: int = 4096) -> QueuedMigration:
    return QueuedMigration(key=f"{ns}/{key}", namespace=ns, vm=f"{ns}/{vm_name or key}", source=src, target=dst,
                            created=t, cpus=2, memory_mib=mem)


def test_round_robin_across_namespaces() -> None:
    pending = [req(f"a{i}", "a", "h0", "h1", i) for i in range(5)] + [req("b0", "b", "h2", "h3", 10)]
    result = admit(pending, [], HOSTS, cluster_limit=3)
    assert [r.key for r in result.admitted] == ["a/a0", "b/b0", "a/a1"]
    assert "the cluster already runs 3 of its 3" in result.waiting["a/a2"]


def test_slots_counted_on_source_and_target_and_backfill() -> None:
    in_flight = [req("x", "z", "h0", "h1", 0), req("y", "z", "h2", "h1", 0)]
    pending = [req("p1", "a", "h3", "h1", 1), req("p2", "a", "h3", "h0", 2)]
    result = admit(pending, in_flight, HOSTS)
    assert [r.key for r in result.admitted] == ["a/p2"]  # h1 is full as a target; p2 goes past it
    assert "the target h1 already runs 2 of its 2" in result.waiting["a/p1"]


def test_capacity_reserved_across_one_pass() -> None:
    small = {**HOSTS, "h1": host("h1", memory_mib=16_384, allocated_memory_mib=8192, max_concurrent_migrations=4)}
    pending = [req("p1", "a", "h0", "h1", 1, mem=6144), req("p2", "b", "h2", "h1", 2, mem=6144)]
    result = admit(pending, [], small)
    assert [r.key for r in result.admitted] == ["a/p1"]
    assert "2048 MiB" in result.waiting["b/p2"]
    assert result.reservations.memory_mib["h1"] == 6144


def test_one_migration_per_vm_and_no_target_waits() -> None:
    in_flight = [req("m0", "a", "h0", "h1", 0, vm_name="web")]
    pending = [req("m1", "a", "h0", "h2", 1, vm_name="web"), req("m2", "a", "h2", None, 2)]
    result = admit(pending, in_flight, HOSTS)
    assert result.admitted == ()
    assert "already has a migration in flight" in result.waiting["a/m1"]
    assert "no target host" in result.waiting["a/m2"]


def test_reservations_release() -> None:
    r = req("m", "a", "h0", "h1", 0)
    booked = Reservations().add(r)
    assert booked.slots == {"h0": 1, "h1": 1} and booked.total == 1
    free = booked.release(r)
    assert free.slots == {"h0": 0, "h1": 0} and free.memory_mib["h1"] == 0 and free.total == 0


@settings(max_examples=80, deadline=None)
@given(
    pending=st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(list(HOSTS)), st.sampled_from(list(HOSTS)),
                  st.integers(0, 5), st.integers(1, 24)),
        max_size=25,
    ),
    flying=st.lists(st.tuples(st.sampled_from(list(HOSTS)), st.sampled_from(list(HOSTS))), max_size=3),
    cluster=st.one_of(st.none(), st.integers(0, 6)),
)
def test_admission_never_exceeds_limits(
    pending: list[tuple[str, str, str, int, int]], flying: list[tuple[str, str]], cluster: int | None
) -> None:
    in_flight = [req(f"f{i}", "z", s, t, -1) for i, (s, t) in enumerate(flying) if s != t]
    requests = [req(f"p{i}", ns, s, t, float(i % 7), vm_name=f"vm{v}", mem=m * 1024)
                for i, (ns, s, t, v, m) in enumerate(pending) if s != t]
    result = admit(requests, in_flight, HOSTS, cluster_limit=cluster)
    used: Counter[str] = Counter()
    for r in [*in_flight, *result.admitted]:
        used[r.source] += 1
        used[r.target or ""] += 1
    overbooked_before = {h for h in HOSTS if Counter(x for r in in_flight for x in (r.source, r.target))[h] > 2}
    for name, count in used.items():
        if name not in overbooked_before:
            assert count <= HOSTS[name].max_concurrent_migrations
    assert not any({r.source, r.target} & overbooked_before for r in result.admitted)
    if cluster is not None:
        assert len(result.admitted) <= max(cluster - len(in_flight), 0)
    assert len({r.vm for r in result.admitted}) == len(result.admitted)
    memory: Counter[str] = Counter()
    for r in result.admitted:
        memory[r.target or ""] += r.memory_mib
    for name, mib in memory.items():
        assert mib <= HOSTS[name].free_memory_mib
    assert set(result.waiting) | {r.key for r in result.admitted} == {r.key for r in requests}


def test_a_policys_outbound_limit_per_host_holds_its_vms_back() -> None:
    """parallelOutboundMigrationsPerHost: at most that many of the policy's VMs leave one host at once."""
    terms = dict(policy="databases", outbound_limit=1, policy_cluster_limit=5)
    wide = {n: replace(h, max_concurrent_migrations=8) for n, h in HOSTS.items()}
    pending = [replace(req(f"db{i}", "a", "h0", f"h{1 + i}", i), **terms) for i in range(3)]
    pending.append(req("web", "a", "h0", "h3", 9))  # another policy's VM leaves h0 freely
    result = admit(pending, [], wide)
    assert [r.key for r in result.admitted] == ["a/db0", "a/web"]
    assert "already leave h0, its parallelOutboundMigrationsPerHost of 1" in result.waiting["a/db1"]
    # a VM of the same policy leaving another host is not held back
    other = replace(req("db9", "a", "h2", "h3", 10), **terms)
    assert "a/db9" in [r.key for r in admit([*pending, other], [], wide).admitted]
    # the policy's cluster limit counts its migrations in flight
    in_flight = [replace(req(f"f{i}", "z", f"h{i}", "h3", 0), policy="databases", policy_cluster_limit=2)
                 for i in (1, 2)]
    capped = admit([replace(other, policy_cluster_limit=2)], in_flight, wide)
    assert not capped.admitted and "its parallelMigrationsPerCluster of 2" in capped.waiting["a/db9"]


def test_evacuations_go_before_older_user_migrations() -> None:
    users = [req(f"u{i}", "a", "h2", "h1", i) for i in range(3)]
    evacuation = replace(req("evac", "b", "h0", "h1", 100), evacuation=True)
    result = admit([*users, evacuation], [], HOSTS, cluster_limit=2)
    assert [r.key for r in result.admitted] == ["b/evac", "a/u0"]


def test_a_waiting_evacuation_keeps_its_hosts_from_user_migrations() -> None:
    """An evacuation waiting for its source's slot keeps its target's last slot from a user migration."""
    hosts = {**HOSTS, "h0": replace(HOSTS["h0"], max_concurrent_migrations=1)}
    in_flight = [req("x", "z", "h2", "h1", 0), req("y", "z", "h0", "h3", 0)]  # h1: 1 of 2 used; h0 full
    evacuation = replace(req("evac", "b", "h0", "h1", 100), evacuation=True)
    user = req("u", "a", "h3", "h1", 1)
    result = admit([user, evacuation], in_flight, hosts)
    assert not result.admitted
    assert "the source h0 already runs 1 of its 1" in result.waiting["b/evac"]
    assert "the evacuation b/evac waits for h1 and goes first" in result.waiting["a/u"]
    # without the evacuation the user migration takes the slot; one between other hosts still backfills
    assert [r.key for r in admit([user], in_flight, hosts).admitted] == ["a/u"]
    free = req("v", "a", "h3", "h2", 2)
    assert [r.key for r in admit([user, evacuation, free], in_flight, hosts).admitted] == ["a/v"]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans(), st.integers(1, 2)),
                min_size=1, max_size=14))
def test_policy_limits_and_slots_are_never_exceeded(moves: list[tuple[int, int, bool, int]]) -> None:
    pending = [replace(req(f"m{i}", f"ns{i % 2}", f"h{s}", f"h{(d if d != s else (s + 1) % 4)}", i, mem=512),
                       evacuation=evac, policy=f"p{limit}", outbound_limit=limit, policy_cluster_limit=3)
               for i, (s, d, evac, limit) in enumerate(moves)]
    result = admit(pending, [], HOSTS, cluster_limit=4)
    leaving = Counter((r.policy, r.source) for r in result.admitted)
    assert all(n <= int(policy[1:]) for (policy, _), n in leaving.items())
    assert all(n <= 3 for n in Counter(r.policy for r in result.admitted).values())
    slots = Counter(h for r in result.admitted for h in (r.source, r.target))
    assert all(n <= 2 for n in slots.values()) and len(result.admitted) <= 4
    evacuations = sorted((r for r in pending if r.evacuation), key=lambda r: r.order)
    users = [r for r in result.admitted if not r.evacuation]
    if evacuations and users:  # evacuations come before every user migration admitted
        assert result.admitted.index(users[0]) == sum(1 for r in result.admitted if r.evacuation)
