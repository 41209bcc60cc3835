"""The pure status builders: what they write is what the status models accept, and it says the right thing."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vmshift.api.migrationpolicy import MigrationStrategy
from vmshift.api.reasons import MigrationMode, MigrationPhase
from vmshift.api.statuspatch import StatusPatchError, status_patch
from vmshift.api.virtualmachine import VirtualMachineSpec
from vmshift.controllers.agents import AgentLink
from vmshift.controllers.hosts import HostInputs, heartbeat, host_status
from vmshift.controllers.migration_decisions import (
    RoundLedger,
    migration_conditions,
    progress_status,
    shown_phase,
    strategy_of,
    switchover_message,
    where_it_is_left,
)
from vmshift.controllers.views import VMEntry, index_vm, parse_host_spec, parse_vm_spec, vm_view
from vmshift.controllers.vmstatus import (
    POSTCOPY_LOST,
    failed_start_status,
    label_rechecks,
    migration_name,
    running_status,
    selector_candidates,
)
from vmshift.hypervisor.host import HypervisorHost
from vmshift.hypervisor.hostconfig import HostConfig
from vmshift.hypervisor.migration.streamrate import MAX_AGE_SECONDS, RoundSample, StreamRates
from vmshift.hypervisor.protocol import GuestIoCeilings, MigrationRole, MigrationStatus, RoundInfo, VmInfo, VmState
from vmshift.scheduling.fleet import Fleet

from ..scheduling.strategies import host

HOST_SPEC = {"cpu": {"model": "icelake", "cores": 32}, "memoryMiB": 65536}


def report(round_: int, throttle: float = 0.0, mode: MigrationMode = MigrationMode.Live, rounds: int = 0,
           phase: MigrationPhase = MigrationPhase.Transferring) -> MigrationStatus:
    return MigrationStatus.model_construct(
        migration_id="m", vm_id="v", role=MigrationRole.source, mode=mode, phase=phase, round=round_,
        transferred_mib=100.0, remaining_mib=10.0, dirty_rate_mib_ps=50.0, throughput_mbps=8000.0, percent=90.0,
        throttle_percent=throttle, rounds=[RoundInfo(round=i, sent_mib=5.0, seconds=0.01, dirty_mib=1.0)
                                           for i in range(rounds)])


def test_a_status_key_outside_the_model_fails_at_any_depth() -> None:
    with pytest.raises(StatusPatchError, match="lastHeartbeat"):
        status_patch("hosts", {"lastHeartbeat": "2026-01-01T00:00:00Z"})
    with pytest.raises(StatusPatchError, match="migrations"):
        status_patch("hosts", {"migrations": {"incoming": 1}})
    with pytest.raises(StatusPatchError, match="phase"):
        status_patch("virtualmachines", {"phase": "Moving"})
    # None clears a field in a merge patch: kept as None
    assert status_patch("virtualmachines", {"migration": None, "phase": "Running"}) == {"migration": None,
                                                                                       "phase": "Running"}


def test_a_move_switched_to_postcopy_shows_switching_over_and_says_the_guest_runs_on_the_target() -> None:
    postcopy = report(3, phase=MigrationPhase.SwitchingOver).model_copy(update={"postcopy": True})
    assert shown_phase(postcopy) is MigrationPhase.SwitchingOver
    assert progress_status(postcopy)["strategy"] == "PostCopy"
    message = switchover_message("vm-1", "h1", "h2", postcopy)
    assert "switched to post-copy and runs on h2" in message and "paused" not in message, message
    assert "paused on h1" in switchover_message("vm-1", "h1", "h2", report(3, phase=MigrationPhase.SwitchingOver))


def test_the_strategy_follows_the_report_and_each_round_keeps_the_one_it_ran_under() -> None:
    assert strategy_of(report(0)) is MigrationStrategy.PreCopy
    assert strategy_of(report(3, throttle=20)) is MigrationStrategy.AutoConverge
    assert strategy_of(report(3, mode=MigrationMode.Quick)) is MigrationStrategy.Quick
    assert strategy_of(report(3).model_copy(update={"postcopy": True})) is MigrationStrategy.PostCopy
    ledger = RoundLedger()
    progress_status(report(2, rounds=2), ledger)  # rounds 0, 1 done, 2 under way, no throttle
    out = progress_status(report(4, throttle=20, rounds=4), ledger)  # round 3 ended unseen, 4 throttled
    assert out["strategy"] == "AutoConverge"
    assert [r["strategy"] for r in out["rounds"]] == ["PreCopy", "PreCopy", "PreCopy", "PreCopy"]
    out = progress_status(report(6, throttle=40, rounds=6), ledger)
    assert [r["strategy"] for r in out["rounds"]][4:] == ["AutoConverge", "AutoConverge"]
    status_patch("virtualmachinemigrations", {**out, "phase": "Transferring",
                                              "conditions": migration_conditions({}, MigrationPhase.Transferring,
                                                                                 "Transferring", "moving", 1)})


def test_rounds_kept_are_the_number_the_api_describes() -> None:
    from vmshift.api.migration import MAX_ROUND_HISTORY, VirtualMachineMigrationStatus

    out = progress_status(report(70, rounds=64))
    assert len(out["rounds"]) == min(64, MAX_ROUND_HISTORY)
    assert str(MAX_ROUND_HISTORY) in (VirtualMachineMigrationStatus.model_fields["rounds"].description or "")
    assert out["rounds"][-1]["round"] == 63


def test_host_status_counts_migrations_and_carries_the_heartbeat_with_every_change() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    first = host_status("h1", HostInputs.of(HOST_SPEC, 1, inbound=2, outbound=1, answered=now), {}, None, None)
    assert first["migrations"] == {"inbound": 2, "outbound": 1}
    assert first["lastHeartbeatTime"] == "2026-01-01T12:00:00Z"
    status_patch("hosts", first)
    same = host_status("h1", HostInputs.of(HOST_SPEC, 1, inbound=2, outbound=1, answered=now + timedelta(seconds=90)),
                       first, None, None)
    assert same == first  # an answer alone is no reason to write: an idle fleet costs nothing
    moved = host_status("h1", HostInputs.of(HOST_SPEC, 1, inbound=1, outbound=1,
                                            answered=now + timedelta(seconds=91)), first, None, None)
    assert moved["lastHeartbeatTime"] == "2026-01-01T12:01:31Z"  # a write carries the newest answer
    assert heartbeat(None, None, changed=True) is None
    assert heartbeat("2026-01-01T12:00:00Z", None, changed=True) == "2026-01-01T12:00:00Z"  # unreachable


def test_a_host_spec_the_model_refuses_cordons_and_says_why() -> None:
    _, problem = parse_host_spec({"cpu": {"model": "icelake", "cores": 0}, "memoryMiB": 1})
    assert problem is not None and "cores" in problem
    s = host_status("h1", HostInputs.of({"cpu": {"model": "icelake", "cores": 0}, "memoryMiB": 1}, 1), {},
                    None, None)
    conditions = {c["type"]: c for c in s["conditions"]}
    assert conditions["Stalled"]["reason"] == "InvalidSpec" and "cores" in conditions["Stalled"]["message"]
    assert conditions["Schedulable"]["status"] == "False"
    status_patch("hosts", s)


def test_defaults_live_in_the_model_once() -> None:
    spec, problem = parse_vm_spec({"cpus": 2, "memoryMiB": 512})
    assert problem is None
    assert spec.running is True and spec.priority == 0 and spec.disks == []
    refused, why = parse_vm_spec({"cpus": 2, "memoryMiB": 512, "workload": {"workingSetMiB": 4096}})
    assert why is not None and "workingSetMiB" in why
    assert (refused.cpus, refused.memoryMiB) == (2, 512)  # counted at its size


def _entry(**spec: Any) -> VMEntry:
    return index_vm({"metadata": {"namespace": "ns", "name": "vm", "uid": "u", "generation": 3},
                     "spec": {"cpus": 1, "memoryMiB": 256, **spec}, "status": {"host": "h1", "phase": "Running"}})


def test_running_and_failed_start_statuses_are_what_the_model_accepts() -> None:
    fleet = Fleet([host("h1"), host("h2")], [])
    entry = _entry(disks=[{"name": "root", "sizeGiB": 10, "volume": "csv-1"}])
    info = VmInfo.model_construct(state=VmState.Running, features=["sse2"], drivers=["vmbus"],
                                  io_ceilings=GuestIoCeilings(network_mbps=100, diskMBps=100), compatibility=False)
    s = running_status(vm_view(entry), info, "h1", fleet, 3, {})
    assert s["phase"] == "Running"
    status_patch("virtualmachines", s)
    failed = failed_start_status({}, 3, "Starting vm on h1 failed.")
    assert failed["phase"] == "Failed" and failed["reason"] == "FailedStart" and failed["host"] is None
    assert {c["type"]: c["status"] for c in failed["conditions"]}["Stalled"] == "True"
    status_patch("virtualmachines", failed)


def test_a_relabelled_host_rechecks_its_vms_and_those_stuck_elsewhere() -> None:
    selected = {"placement": {"hostSelector": {"matchLabels": {"zone": "blue"}}}}
    on_h1 = _entry(**selected)
    labels = {"h1": {"zone": "green"}, "h2": {"zone": "blue"}}
    assert label_rechecks([on_h1], "h2", labels) == ["ns/vm"]  # h1 no longer matches; h2 may take it
    assert label_rechecks([on_h1], "h2", {"h1": {"zone": "blue"}}) == []  # matches where it is
    assert label_rechecks([on_h1], "h1", {"h1": {"zone": "blue"}}) == ["ns/vm"]  # its own host changed
    view = vm_view(on_h1)
    fleet = Fleet([host("h1", labels={"zone": "green"}), host("h2", labels={"zone": "blue"}), host("h3")], [])
    assert selector_candidates(view, fleet) == ["h2"]
    assert migration_name("vm", None, 3, ["h2"]) != migration_name("vm", None, 3, ["h3"])
    assert migration_name("vm", None, 3) == migration_name("vm", None, 3, [])


def test_a_vm_spec_is_read_typed() -> None:
    entry = _entry(running=False, migration={"policy": "fast"})
    assert isinstance(entry.spec, VirtualMachineSpec)
    assert entry.spec.running is False and entry.spec.migration.policy == "fast"


def test_alertmanager_alerts_make_the_host_hardware_unhealthy_but_not_its_phase() -> None:
    info = None  # also without an agent report
    s = host_status("h1", HostInputs.of(HOST_SPEC, 1, alerts=("HostPsuRedundancyLost (critical)",)), {}, info, None)
    hardware = {c["type"]: c for c in s["conditions"]}["HardwareHealthy"]
    assert (hardware["status"], hardware["reason"]) == ("False", "AlertFiring")
    assert "HostPsuRedundancyLost (critical)" in hardware["message"]
    assert s["phase"] == "Unreachable"  # the phase follows the agent, not the alert
    status_patch("hosts", s)


def test_a_guest_left_paused_by_a_lost_post_copy_is_failed_stalled_and_never_said_to_run() -> None:
    fleet = Fleet([host("h1"), host("h2")], [])
    entry = _entry()
    paused = VmInfo.model_construct(state=VmState.Paused, features=[], drivers=["vmbus"],
                                    io_ceilings=GuestIoCeilings(network_mbps=100, diskMBps=100), compatibility=False)
    lost = "the target's QEMU was lost during post-copy: its memory was split between the hosts"
    kept = running_status(vm_view(entry), paused, "h1", fleet, 3, {"reason": POSTCOPY_LOST, "message": lost})
    assert kept["phase"] == "Failed" and kept["reason"] == POSTCOPY_LOST and kept["message"] == lost, kept
    conditions = {c["type"]: c for c in kept["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == POSTCOPY_LOST
    assert conditions["Stalled"]["status"] == "True" and conditions["Stalled"]["message"] == lost
    status_patch("virtualmachines", kept)
    other = running_status(vm_view(entry), paused, "h1", fleet, 3, {})
    assert other["phase"] == "Failed" and other["reason"] == "GuestPaused" and "does not run" in other["message"]
    assert "runs on h1" not in str(other["conditions"])
    before = report(3)
    after = before.model_copy(update={"postcopy": True})
    assert where_it_is_left("vm", "h1", "h2", before) == " vm keeps running on h1."
    note = where_it_is_left("vm", "h1", "h2", after)
    assert "runs on neither h1 nor h2" in note and "keeps running" not in note


def test_what_the_agent_measured_its_migration_streams_carry_reaches_the_host_status_and_the_planner() -> None:
    agent = HypervisorHost(HostConfig(name="h1", cpu_model="icelake", cores=32, memory_mib=65536,
                                      bandwidth_mbps=25_000.0))
    link = AgentLink("h1", "http://127.0.0.1:1", "token", client=None, info=agent.host_info(),  # type: ignore[arg-type]
                     reachable=True)
    unmeasured = host_status("h1", HostInputs.of(HOST_SPEC, 1), {}, link, None)
    assert "streamMbps" not in unmeasured["migrations"] and link.facts().stream_mbps is None

    def measured(at: float) -> None:  # one stream alone and two at once, ending at ``at`` (monotonic)
        agent.stream_rates = StreamRates()
        agent.stream_rates.round_started(at - 1.0)
        agent.stream_rates.round_started(at - 1.0)
        agent.stream_rates.sent(1800 * 2**20)
        agent.stream_rates.round_ended(at)
        agent.stream_rates.round_ended(at)
        agent.stream_rates.record(RoundSample(1470 * 2**20, 1.0), at)
        link.info = agent.host_info()

    measured(time.monotonic())
    s = host_status("h1", HostInputs.of(HOST_SPEC, 1), {}, link, None)
    assert s["migrations"]["streamMbps"] == round(1470 * 2**20 * 8 / 1e6)
    assert s["migrations"]["streamsTogetherMbps"] == round(1800 * 2**20 * 8 / 1e6)
    status_patch("hosts", s)  # the model knows both fields
    assert link.facts().stream_mbps == s["migrations"]["streamMbps"]
    # Figures too old to count any more leave the status (null clears them in the merge patch) and the planner.
    measured(time.monotonic() - MAX_AGE_SECONDS - 10)
    aged = host_status("h1", HostInputs.of(HOST_SPEC, 1), s, link, None)
    assert aged["migrations"]["streamMbps"] is None and aged["migrations"]["streamsTogetherMbps"] is None
    assert status_patch("hosts", aged)["migrations"]["streamMbps"] is None
    assert link.facts().stream_mbps is None
