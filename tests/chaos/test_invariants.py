"""The campaign's invariant checker catches what it is there to catch (pure; no processes)."""

from __future__ import annotations

from typing import Any

from tests.chaos.harness import KINDS, Kind, plan_trial
from tests.chaos.invariants import AgentView, ExpectedVM, settled_problems, two_running
from vmshift.hypervisor.protocol import HostInfo, MigrationStatus, VmInfo, VmState


def vm(uid: str, state: VmState, migration_id: str | None = None, memory: int = 64) -> VmInfo:
    return VmInfo.model_validate({
        "id": uid, "name": uid, "namespace": "ns", "state": state.value, "features": [], "digest": "0" * 16,
        "heartbeat": 1, "drivers": [], "ioCeilings": {"networkMbps": 1, "diskMBps": 1}, "memoryMiB": memory,
        "cpus": 1, "compatibility": True, "disks": [],
        "workload": {"dirtyRateMiBps": 0, "workingSetMiB": 1, "hotFraction": 0.1},
        "throttlePercent": 0, "migrationId": migration_id})


def host(name: str, reserved_mib: int = 0, reserved_cpus: int = 0) -> HostInfo:
    return HostInfo.model_validate({
        "name": name, "cpuModel": "icelake", "vendor": "Intel", "features": [], "cores": 4, "memoryMiB": 1024,
        "migrationBandwidthMbps": 1000, "sharedVolumes": [], "passthroughLuns": [],
        "allocated": {"cpus": 0, "memoryMiB": 0}, "reserved": {"cpus": reserved_cpus, "memoryMiB": reserved_mib},
        "vms": 0, "sensors": {"fans": [], "powerSupplies": [], "temperatureC": 20, "correctedMemoryErrors": 0},
        "health": {"healthy": True, "problems": []}, "bootId": "b", "migrationPort": 1})


def migration(mid: str, phase: str, *, committed: bool = False, digests: tuple[str, str] | None = None,
              role: str = "source") -> MigrationStatus:
    body: dict[str, Any] = {"migrationId": mid, "vmId": "v1", "role": role, "mode": "Live", "phase": phase,
                            "committed": committed}
    if digests:
        body["sourceDigest"], body["targetDigest"] = digests
    return MigrationStatus.model_validate(body)


def view(name: str, *vms: VmInfo, migrations: tuple[MigrationStatus, ...] = (), reserved: int = 0) -> AgentView:
    return AgentView(name, True, vms, host(name, reserved, 1 if reserved else 0), migrations)


def test_one_running_copy_named_in_status_passes() -> None:
    views = [view("a", vm("v1", VmState.MigratedAway)), view("b", vm("v1", VmState.Running))]
    assert settled_problems(views, [ExpectedVM("web", "v1", status={"host": "b"})]) == []


def test_two_copies_none_at_all_and_a_stale_status_are_caught() -> None:
    two = [view("a", vm("v1", VmState.Running)), view("b", vm("v1", VmState.Running))]
    assert "not on exactly one host" in settled_problems(two, [ExpectedVM("web", "v1", status={"host": "a"})])[0]
    paused_and_running = [view("a", vm("v1", VmState.Paused)), view("b", vm("v1", VmState.Running))]
    assert settled_problems(paused_and_running, [ExpectedVM("web", "v1", status={"host": "b"})])
    assert "not on exactly one host" in settled_problems([view("a")], [ExpectedVM("web", "v1")])[0]
    stale = [view("a", vm("v1", VmState.Running))]
    assert "status says host 'b'" in settled_problems(stale, [ExpectedVM("web", "v1", status={"host": "b"})])[0]


def test_a_paused_copy_passes_only_when_reported_in_doubt() -> None:
    paused = [view("a", vm("v1", VmState.Paused))]
    assert settled_problems(paused, [ExpectedVM("web", "v1", status={"host": "a"})])
    doubt = {"host": "a", "conditions": [{"type": "Ready", "status": "False", "reason": "MigrationInDoubt"}]}
    assert settled_problems(paused, [ExpectedVM("web", "v1", status=doubt)]) == []


def test_deleted_vms_orphans_leaks_and_corruption_are_caught() -> None:
    left = [view("a", vm("v1", VmState.Running))]
    assert "was deleted" in settled_problems(left, [ExpectedVM("web", "v1", deleted=True)])[0]
    orphan = [view("a", vm("v1", VmState.Running), vm("zz", VmState.Defined))]
    assert "orphan guest zz" in settled_problems(orphan, [ExpectedVM("web", "v1", status={"host": "a"})])[0]
    leak = [view("a", vm("v1", VmState.Running)), view("b", vm("v1", VmState.Incoming, "m1"), reserved=64)]
    problems = settled_problems(leak, [ExpectedVM("web", "v1", status={"host": "a"})])
    assert any("reserves 1 cpus / 64 MiB" in p for p in problems), problems
    assert any("Incoming copy" in p for p in problems), problems
    flying = [view("a", vm("v1", VmState.Running), migrations=(migration("m1", "Transferring"),))]
    assert "still Transferring" in settled_problems(flying, [ExpectedVM("web", "v1", status={"host": "a"})])[0]
    bad = [view("b", vm("v1", VmState.Running),
                migrations=(migration("m1", "Succeeded", committed=True, digests=("aa", "bb")),))]
    assert "corrupted" in settled_problems(bad, [ExpectedVM("web", "v1", status={"host": "b"})])[0]


def test_two_running_needs_both_sweeps() -> None:
    a_run, b_run = view("a", vm("v1", VmState.Running)), view("b", vm("v1", VmState.Running))
    a_gone = view("a", vm("v1", VmState.MigratedAway))
    # a correct switchover seen by one sweep only: a read before its pause, b after its resume
    assert two_running([a_run, b_run], [b_run, a_gone], {"v1": "web"}) == []
    assert two_running([a_run, b_run], [b_run, a_run], {"v1": "web"}) == ["VM web ran on two hosts at once: a, b"]


def test_plans_replay_from_their_seed_and_cover_every_kind() -> None:
    assert plan_trial(4711) == plan_trial(4711)
    assert {plan_trial(s).kind for s in range(100, 100 + len(KINDS))} == set(KINDS)
    assert all(plan_trial(s).phase is not None for s in range(0, 200) if plan_trial(s).kind in
               (Kind.Partition, Kind.Blackhole))
