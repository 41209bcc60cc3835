"""check_target: every compatibility check a migration target must pass, with messages a person can act on."""

from __future__ import annotations

from vmshift.api.common import Selector
from vmshift.api.reasons import FailureReason
from vmshift.scheduling.compatibility import Problem, blocking, check_target
from vmshift.scheduling.fleet import Disk, Fleet

from .strategies import host, vm


def reasons(problems: list[Problem]) -> list[FailureReason]:
    return [p.reason for p in problems]


def test_compatible_target_has_no_problems() -> None:
    src, dst = host("h1", "icelake"), host("h2", "sapphirerapids")
    web = vm("web-1", on=src)
    assert check_target(web, "h2", Fleet([src, dst], [web]), moving=True) == []


def test_missing_features_message_names_them_and_the_fix() -> None:
    src, dst = host("h1", "icelake"), host("host-h3", "haswell")
    web = vm("web-1", on=src)
    [problem] = check_target(web, "host-h3", Fleet([src, dst], [web]), moving=True)
    assert problem.reason is FailureReason.IncompatibleProcessor
    msg = problem.message
    assert msg.startswith("Migration web-1 -> host-h3 refused: host-h3 lacks ")
    assert "avx512f" in msg and "avx512bw" in msg
    assert "the guest was started on icelake without processor compatibility" in msg
    assert "Turn on spec.processor.compatibility and restart the VM" in msg
    assert "(such as h1)" not in msg  # the VM's own host is not a suggestion


def test_compatibility_mode_crosses_generations_not_vendors() -> None:
    src, old, amd = host("h1", "icelake"), host("h2", "haswell"), host("h3", "zen3")
    web = vm("web-1", on=src, compatibility=True)
    fleet = Fleet([src, old, amd], [web])
    assert check_target(web, "h2", fleet, moving=True) == []
    [problem] = check_target(web, "h3", fleet, moving=True)
    assert problem.reason is FailureReason.IncompatibleProcessor
    assert "cannot move between processor vendors" in problem.message
    assert "Choose an Intel host" in problem.message


def test_not_started_vm_fits_any_vendor() -> None:
    amd = host("h3", "zen4")
    assert check_target(vm("new"), "h3", Fleet([amd]), moving=False) == []


def test_resources_count_reservations() -> None:
    dst = host("h2", memory_mib=16_384, allocated_memory_mib=8192, reserved_memory_mib=6144, cores=8,
               allocated_cpus=7)
    src = host("h1")
    web = vm("web-1", on=src, memory_mib=4096, cpus=2)
    [problem] = check_target(web, "h2", Fleet([src, dst], [web]), moving=True)
    assert problem.reason is FailureReason.InsufficientResources
    assert "2048 MiB of memory free" in problem.message and "6144 reserved" in problem.message
    assert "needs 2 " not in problem.message or "cpus" in problem.message


def test_storage_shared_volume_lun_and_local_disk() -> None:
    src = host("h1", shared_volumes=frozenset({"csv-1", "csv-2"}), passthrough_luns=frozenset({"lun-7"}))
    dst = host("h2", shared_volumes=frozenset({"csv-1"}))
    data = vm("db", on=src, disks=(Disk("data", 10, volume="csv-2"), Disk("logs", 5, passthrough_lun="lun-7"),
                                   Disk("scratch", 5, local=True)))
    fleet = Fleet([src, dst], [data])
    problems = check_target(data, "h2", fleet, moving=True)
    assert reasons(problems) == [FailureReason.StorageNotShared] * 3
    assert "does not mount shared volume csv-2" in problems[0].message
    assert "does not see pass-through LUN lun-7" in problems[1].message
    assert problems[2].live_only and "cannot move live" in problems[2].message
    assert blocking(problems, quick=True) == problems[:2]


def test_unplaced_vm_with_local_disk_goes_anywhere() -> None:
    dst = host("h2")
    new = vm("scratchy", disks=(Disk("scratch", 5, local=True),))
    assert check_target(new, "h2", Fleet([dst]), moving=False) == []


def test_unschedulable_unhealthy_unreachable() -> None:
    src = host("h1")
    dst = host("h2", schedulable=False, unschedulable_reason="in maintenance", healthy=False, reachable=False)
    web = vm("web-1", on=src)
    problems = check_target(web, "h2", Fleet([src, dst], [web]), moving=True)
    assert reasons(problems) == [FailureReason.AgentUnreachable, FailureReason.TargetUnschedulable,
                                 FailureReason.TargetUnschedulable]
    assert "(in maintenance)" in problems[2].message


def test_selector_and_anti_affinity_are_placement_constraints() -> None:
    src = host("h1", labels={"zone": "a"})
    dst = host("h2", labels={"zone": "b"})
    peer = vm("db-2", on=dst, anti_affinity_group="db")
    web = vm("db-1", on=src, host_selector=Selector.from_labels({"zone": "a"}), anti_affinity_group="db")
    problems = check_target(web, "h2", Fleet([src, dst], [web, peer]), moving=True)
    assert reasons(problems) == [FailureReason.PlacementConstraint] * 2
    assert "hostSelector zone=a (it has zone=b)" in problems[0].message
    assert "already runs db-2 of anti-affinity group db" in problems[1].message


def test_concurrency_limit_on_source_and_target_is_transient() -> None:
    src = host("h1", max_concurrent_migrations=2, outbound_migrations=2)
    dst = host("h2", max_concurrent_migrations=1, inbound_migrations=1)
    web = vm("web-1", on=src)
    problems = check_target(web, "h2", Fleet([src, dst], [web]), moving=True)
    assert [p.transient for p in problems] == [True, True]
    assert "the source h1 already runs 2 of its 2" in problems[0].message
    assert blocking(problems) == []
    # placement (not a migration) ignores migration slots
    assert check_target(vm("new"), "h2", Fleet([src, dst]), moving=False) == []


def test_unknown_target_and_same_host_and_already_migrating() -> None:
    src = host("h1")
    web = vm("web-1", on=src, migration_target="h9")
    fleet = Fleet([src], [web])
    assert "no Host named nope" in check_target(web, "nope", fleet, moving=True)[0].message
    problems = check_target(web, "h1", fleet, moving=True)
    assert FailureReason.AlreadyMigrating in reasons(problems)
    assert any("already runs on h1" in p.message for p in problems)
