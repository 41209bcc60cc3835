"""The plugin's fleet, rebuilt from API objects, gives the operator's own answers: why, and a drain's plan."""

from __future__ import annotations

from vmshift.api.reasons import FailureReason
from vmshift.kubectl import fleetview, render
from vmshift.scheduling.placement import migratable

from .objects import host, migration, vm


def _fleet_objects() -> tuple[list[dict], list[dict]]:
    hosts = [host("ice-1"), host("ice-2"), host("has-1", "haswell"), host("zen-1", "zen3"),
             host("off", phase="Unreachable"), host("full", memory=512)]
    hosts[-1]["spec"]["memoryMiB"] = 512
    vms = [vm("db", "ice-1", compatibility=False), vm("web", "ice-1", compatibility=True, memory=2048)]
    return hosts, vms


def test_agent_facts_come_from_host_status() -> None:
    h = host("h", "zen3", conditions=[{"type": "HardwareHealthy", "status": "False"}])
    facts = fleetview.agent_facts(h)
    assert facts.reachable and not facts.healthy and facts.vendor == "AMD" and "avx2" in facts.features
    assert not fleetview.agent_facts(host("h", phase="Unreachable")).reachable
    assert facts.stream_mbps is None  # no migration measured yet
    measured = fleetview.agent_facts(host("h", migrations={"inbound": 0, "outbound": 0, "streamMbps": 12330,
                                                           "streamsTogetherMbps": 15100}))
    assert measured.stream_mbps == 12330.0
    fleet = fleetview.fleet_of([host("h", migrations={"streamMbps": 12330})], [], [])
    assert fleet.hosts["h"].stream_mbps == 12330.0


def test_why_gives_each_hosts_verdict_and_the_migratable_answer() -> None:
    hosts, vms = _fleet_objects()
    fleet = fleetview.fleet_of(hosts, vms, [])
    answer = fleetview.why("ns", "db", fleet)
    assert answer.host == "ice-1"
    assert answer.migratable == migratable(fleet.vms["ns/db"], fleet)
    verdicts = {v.host: v for v in answer.verdicts}
    assert set(verdicts) == {"ice-2", "has-1", "zen-1", "off", "full"}
    assert verdicts["ice-2"].ok and not verdicts["ice-2"].problems
    assert verdicts["has-1"].reasons == [FailureReason.IncompatibleProcessor]
    assert FailureReason.IncompatibleProcessor in verdicts["zen-1"].reasons
    assert not verdicts["off"].ok and FailureReason.AgentUnreachable in verdicts["off"].reasons
    assert verdicts["full"].reasons == [FailureReason.InsufficientResources]
    rows = {r[0]: r for r in render.why_rows(answer)}
    assert rows["ice-2"][1:3] == ["yes", "-"]
    assert rows["has-1"][1:3] == ["no", "IncompatibleProcessor"] and "lacks" in rows["has-1"][3]
    assert not rows["has-1"][3].startswith("Migration "), "the row repeats the prefix the table already says"
    lines = render.why_lines(answer)
    assert lines[0] == "ns/db runs on ice-1." and lines[1].startswith("Migratable=True (TargetsAvailable): ")


def test_why_marks_a_host_with_busy_slots_as_waiting() -> None:
    hosts, vms = _fleet_objects()
    hosts[1]["spec"]["maxConcurrentMigrations"] = 1
    vms.append(vm("other", "ice-2", compatibility=True))
    moving = [migration("m", "other", phase="Transferring", source="ice-2", target="has-1")]
    answer = fleetview.why("ns", "web", fleetview.fleet_of(hosts, vms, moving))
    verdict = next(v for v in answer.verdicts if v.host == "ice-2")
    assert verdict.ok and verdict.waits
    assert render.why_rows(answer)[[r[0] for r in render.why_rows(answer)].index("ice-2")][1] == "yes, waits for a slot"


def test_dry_run_is_the_planners_plan_with_blocked_vms() -> None:
    hosts, vms = _fleet_objects()
    hosts = [h for h in hosts if h["metadata"]["name"] in ("ice-1", "has-1")]
    plan = fleetview.dry_run_drain("ice-1", hosts, vms, [], [])
    assert [(m.vm, m.target) for m in plan.moves] == [("ns/web", "has-1")]
    assert [(b.vm, b.reason) for b in plan.blocked] == [("ns/db", FailureReason.IncompatibleProcessor)]
    assert plan.expected_makespan_seconds >= plan.lower_bound_seconds > 0


def test_drain_limits_count_other_hosts_migrations_against_the_strictest_policy() -> None:
    policies = fleetview.policies_of([{"metadata": {"name": "p"}, "spec": {"parallelMigrationsPerCluster": 3}}])
    moving = [migration("a", "x", phase="Transferring", source="other", target="t"),
              migration("b", "y", phase="Transferring", source="h1", target="t"),
              migration("c", "z", phase="Succeeded", source="other", target="t")]
    assert fleetview.drain_limits(moving, policies, "h1").cluster_available == 2
