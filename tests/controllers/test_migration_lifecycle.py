"""The migration controller's lifecycle decisions: what stops it, what words its failures get."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from tests.scheduling.strategies import host, vm
from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.controllers.migration_decisions import (
    ProgressWatch,
    Side,
    StopAction,
    agent_failure_reason,
    as_sentence,
    decide_move,
    leaving,
    stop_action,
    target_verdict,
    withdrawn_before_admission,
)
from vmshift.hypervisor.protocol import MigrationStatus
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.policy import DEFAULT_POLICY

R = kopf.DaemonStoppingReason


def test_only_a_deletion_cancels_a_migration() -> None:
    assert stop_action(R.RESOURCE_DELETED) is StopAction.Cancel
    assert stop_action(R.RESOURCE_DELETED | R.OPERATOR_EXITING) is StopAction.Cancel


def test_operator_exit_pause_and_filter_leave_the_migration_to_the_agents() -> None:
    for reason in (R.OPERATOR_EXITING, R.OPERATOR_PAUSING, R.FILTERS_MISMATCH, R.OPERATOR_EXITING | R.OPERATOR_PAUSING,
                   R.DAEMON_SIGNALLED, None):
        assert stop_action(reason) is StopAction.Leave, reason


async def test_what_a_stopping_operator_sees_is_not_recorded_unless_the_migration_was_deleted() -> None:
    # Seen in the chaos campaign (seed 501): SIGTERM made the host daemons drop their agent links,
    # and a migration still being validated then found its healthy target "unreachable" and failed.
    from kopf._cogs.aiokits.aioenums import AsyncFlagWaiter, FlagSetter

    def flag(reason: kopf.DaemonStoppingReason | None) -> AsyncFlagWaiter[kopf.DaemonStoppingReason]:
        setter: FlagSetter[kopf.DaemonStoppingReason] = FlagSetter()
        if reason is not None:
            setter.set(reason)
        return setter.async_waiter

    assert not leaving(flag(None)), "a running daemon records its verdicts"
    assert leaving(flag(R.OPERATOR_EXITING))
    assert leaving(flag(R.OPERATOR_PAUSING))
    assert not leaving(flag(R.RESOURCE_DELETED | R.OPERATOR_EXITING)), "a deletion is the user's word: it ends"


def test_a_migration_withdrawn_before_its_admission_was_written_moves_nothing() -> None:
    # Seen in a CI run (test_turning_maintenance_off_mid_drain_stops_it_cleanly: 4 VMs moved, the
    # drain counted 3): the drain withdrew a queued migration as the queue admitted it; Kopf's stop
    # flag came after the admission was written, the VM moved, and its migration object was gone.
    admitted = {"metadata": {"name": "m", "resourceVersion": "12"}, "status": {"phase": "Validating"}}
    assert not withdrawn_before_admission(admitted)
    deleting = {"name": "m", "deletionTimestamp": "2026-11-30T10:00:00Z", "finalizers": ["vmshift.io/finalizer"]}
    assert withdrawn_before_admission({**admitted, "metadata": deleting})
    assert withdrawn_before_admission(None), "a migration gone before the write is not admitted either"


def test_agent_refusals_get_words_from_the_closed_set_by_side() -> None:
    F = FailureReason
    assert agent_failure_reason("InvalidState", Side.source) is F.VirtualMachineNotRunning
    assert agent_failure_reason("NotFound", Side.source) is F.SourceLost
    assert agent_failure_reason("NotFound", Side.target) is F.TargetLost
    assert agent_failure_reason("Conflict", Side.target) is F.TargetUnschedulable
    assert agent_failure_reason("Conflict", Side.source) is F.AlreadyMigrating
    assert agent_failure_reason("InsufficientResources", Side.target) is F.InsufficientResources
    assert agent_failure_reason("IncompatibleProcessor", Side.target) is F.IncompatibleProcessor
    assert agent_failure_reason("AgentUnreachable", Side.source) is F.AgentUnreachable
    assert agent_failure_reason("Unauthorized", Side.target) is F.AgentUnreachable
    for code in ("InvalidState", "NotFound", "Conflict", "Internal", "PastCommitPoint"):
        for side in (Side.source, Side.target, None):
            assert agent_failure_reason(code, side) is not F.AgentUnreachable, (code, side)


def test_the_progress_timeout_watches_the_remaining_memory_not_bytes_sent() -> None:
    watch = ProgressWatch(timeout=10)
    # A hot guest: the link stays busy (bytes sent grow) but the remaining set hovers at its hot set.
    assert not watch.stalled(64.0, now=0)
    assert not watch.stalled(16.0, now=1)
    for t in range(2, 12):
        assert not watch.stalled(16.0 + (t % 2), now=t)
    assert watch.stalled(16.5, now=12), "11 s without shrinking below 16 MiB"


def test_a_remaining_set_that_keeps_shrinking_never_times_out() -> None:
    watch = ProgressWatch(timeout=10)
    remaining = 1024.0
    for t in range(0, 100, 5):
        assert not watch.stalled(remaining, now=t)
        remaining *= 0.9


def _status(phase: str, committed: bool = False) -> MigrationStatus:
    return MigrationStatus.model_validate({"migrationId": "m", "vmId": "v", "role": "target", "mode": "Live",
                                           "phase": phase, "committed": committed})


def test_only_the_targets_own_word_settles_a_switchover_in_doubt() -> None:
    assert target_verdict(None, "PastCommitPoint", None) is True
    assert target_verdict(_status("Succeeded", committed=True), None, None) is True
    assert target_verdict(_status("Failed"), None, None) is False
    assert target_verdict(_status("Cancelled"), None, None) is False
    assert target_verdict(None, "NotFound", False) is False, "a restarted target holds no copy"
    # Nothing proves anything yet: no answer, a cancel still being applied, an unknown migration with a copy.
    assert target_verdict(None, "AgentUnreachable", None) is None
    assert target_verdict(_status("Transferring"), None, None) is None
    assert target_verdict(None, "NotFound", True) is None
    assert target_verdict(None, "NotFound", None) is None


def test_a_second_look_checks_the_admitted_target_and_never_picks_another() -> None:
    a = host("a", allocated_memory_mib=65_536)
    b = host("b")  # emptiest: the scheduler's pick
    c = host("c", allocated_memory_mib=131_072)  # admitted earlier, when it was the emptiest
    moving = vm("web", on=a, compatibility=True)
    fleet_now = Fleet([a, b, c])
    assert decide_move(moving, fleet_now, DEFAULT_POLICY, MigrationMode.Auto, None).target == "b"
    assert decide_move(moving, fleet_now, DEFAULT_POLICY, MigrationMode.Auto, "c").target == "c"


def test_an_agent_message_without_a_stop_still_reads_as_a_sentence_before_the_controllers_own() -> None:
    assert as_sentence("pre-copy did not converge; migrate when the guest is quieter") == \
        "pre-copy did not converge; migrate when the guest is quieter."
    assert as_sentence("The target refused. ") == "The target refused."


async def test_a_source_without_the_vm_because_the_vm_is_deleted_is_not_a_lost_source(monkeypatch: Any) -> None:
    # Seen in the chaos campaign (seed 1008, CI of stop 11): the VM was deleted 30 ms after its
    # migration was created; the deletion stopped the guest, the source answered NotFound, and the
    # migration failed SourceLost although every agent was healthy.
    from vmshift.controllers import migrationrun
    from vmshift.controllers.migration_decisions import AgentRefusedError, MigrationFailedError
    from vmshift.controllers.migrationrun import Run
    from vmshift.hypervisor.client import AgentError

    bodies: dict[str, dict[str, Any] | None] = {}

    async def get(plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        assert (plural, namespace) == ("virtualmachines", "ns")
        return bodies[name]

    monkeypatch.setattr(migrationrun.kubeapi, "get", get)
    run = Run(name="m", namespace="ns", uid="u", vm_name="vm1", generation=1, body=kopf.Body({}), source="a")
    gone = AgentRefusedError(Side.source, "a", AgentError("NotFound", "host a has no VM 'u'", 404))

    async def verdict(exc: Exception) -> MigrationFailedError:
        return await migrationrun.unless_deleted(run, exc, migrationrun.as_failure(run, exc))  # type: ignore[arg-type]

    for body in (None, {"metadata": {"name": "vm1", "deletionTimestamp": "2026-11-30T07:00:00Z"}}):
        bodies["vm1"] = body
        deleted = await verdict(gone)
        assert deleted.reason is FailureReason.VirtualMachineNotRunning
        assert "vm1 was deleted" in deleted.message

    bodies["vm1"] = {"metadata": {"name": "vm1"}}
    assert (await verdict(gone)).reason is FailureReason.SourceLost, "a live VM the source lost is SourceLost"
    refused = AgentRefusedError(Side.target, "b", AgentError("NotFound", "no such migration", 404))
    bodies["vm1"] = None
    assert (await verdict(refused)).reason is FailureReason.TargetLost, "only the source's NotFound is explained"


async def test_a_vm_the_cache_has_on_no_host_is_read_from_the_api_before_a_refusal(monkeypatch: Any) -> None:
    # Seen in the chaos campaign (seed 7001, the first trial): a migration created as its VM reported
    # Running failed VirtualMachineNotRunning at once, its informer one watch event behind.
    from vmshift.controllers import migrationrun
    from vmshift.controllers.migrationrun import Run
    from vmshift.controllers.views import index_vm

    def body(host: str | None) -> dict[str, Any]:
        return {"metadata": {"namespace": "ns", "name": "vm1", "uid": "u-1", "generation": 1},
                "spec": {"memoryMiB": 128}, "status": {"phase": "Running", "host": host} if host else {}}

    live: list[dict[str, Any] | None] = []

    async def get(plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return live[-1]

    monkeypatch.setattr(migrationrun.kubeapi, "get", get)
    run = Run(name="m", namespace="ns", uid="m-1", vm_name="vm1", generation=1, body=kopf.Body({}))
    live.append(body("h1"))
    newest = await migrationrun.newest_vm(run, index_vm(body(None)))
    assert newest is not None and newest.host == "h1"
    newest = await migrationrun.newest_vm(run, None)
    assert newest is not None and newest.host == "h1", "a VM the cache has not seen yet is read too"
    live.append(None)
    assert await migrationrun.newest_vm(run, index_vm(body(None))) is None, "a VM the API has not: none"
    cached = index_vm(body("h2"))
    assert await migrationrun.newest_vm(run, cached) is cached, "a cached host is not looked up again"


async def test_the_operator_says_it_stops_before_it_closes_the_agent_links(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen in the chaos campaign (seed 7071): SIGTERM 40 ms after two migrations were created. Their
    # daemons, started as the operator stopped, never saw Kopf's stop flag; the cleanup closed the
    # agent links under them ("Connector is closed") and they failed both migrations AgentUnreachable.
    # A daemon records no verdict once runtime().stopping is set, and the cleanup sets it first.
    from vmshift.controllers import startup
    from vmshift.controllers.runtime import runtime

    seen: list[bool] = []

    async def nothing() -> None:
        return None

    async def close() -> None:
        seen.append(runtime().stopping)

    monkeypatch.setattr(startup.background, "stop", nothing)
    monkeypatch.setattr(startup.indexes, "INFORMERS", [])
    monkeypatch.setattr(runtime().agents, "close", close)
    monkeypatch.setattr(startup.kubeapi, "close", nothing)
    monkeypatch.setattr(runtime(), "stopping", False)
    await startup.close_agents()
    assert seen == [True], "the links were closed before the operator said it stops"
