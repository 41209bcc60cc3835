"""Lifecycle defects between real agents on loopback: the words failures get, reservations that must not
leak, a switchover in doubt that must never leave two running copies."""

from __future__ import annotations

import socket
import struct

import kopf
import pytest

from tests.hypervisor.conftest import TOKEN
from tests.hypervisor.helpers import BreakingProxy, Clients, finished, heartbeat_grows, poll, running_vm, vm_state
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase as Phase
from vmshift.api.virtualmachine import VirtualMachineSpec
from vmshift.controllers import kubeapi, migrations
from vmshift.controllers.agents import AGENT_HOSTS_ANNOTATION
from vmshift.controllers.migrationrun import Run
from vmshift.controllers.runtime import reset_runtime, runtime
from vmshift.controllers.views import VMEntry
from vmshift.hypervisor.client import AgentError, HypervisorClient, begin_migration, incoming_vm
from vmshift.hypervisor.launcher import AgentProcess
from vmshift.hypervisor.migration.stream import FrameStream, open_stream
from vmshift.hypervisor.migration.wire import CHUNK_PAGES, Frame, Hello
from vmshift.hypervisor.protocol import AutoConvergeSettings, IncomingMigrationRequest, MigrationStatus, VmState

pytestmark = pytest.mark.timeout(180)



async def assert_only_on(owner: HypervisorClient, other: HypervisorClient, vm_id: str) -> None:
    """The VM runs on ``owner`` (its heartbeat moves there) and nowhere on ``other``."""
    await heartbeat_grows(owner, vm_id)
    assert await vm_state(other, vm_id) in (None, VmState.MigratedAway), f"{vm_id} is also on {other.endpoint}"


async def test_memory_that_arrives_different_fails_as_memory_mismatch(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    """A PAGES frame lost on the way: the target's digest differs at switchover. That is MemoryMismatch
    (not TargetLost: the target is fine), the target discards its copy and the VM runs on at the source."""
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, drop_source_frame=(Frame.PAGES, 1))
    port = await proxy.start()
    try:
        await running_vm(h1, "mismatch", memory_mib=32, prefill=32)
        await begin_migration(h1, h2, "mismatch", "mig-mismatch", bandwidth_mbps=2000,
                              target_address=("127.0.0.1", port))
        source = await finished(h1, "mig-mismatch")
        target = await finished(h2, "mig-mismatch")
    finally:
        await proxy.close()
    assert proxy.source_frames.get(Frame.PAGES, 0) > 1, "the proxy dropped a frame and forwarded the rest"
    assert target.phase is MigrationPhase.Failed and target.failure is not None, target.model_dump_json()
    assert target.failure.reason is FailureReason.MemoryMismatch, target.model_dump_json()
    assert source.phase is MigrationPhase.Failed and source.failure is not None, source.model_dump_json()
    assert source.failure.reason is FailureReason.MemoryMismatch, source.model_dump_json()
    await heartbeat_grows(h1, "mismatch")
    assert await vm_state(h2, "mismatch") is None
    assert (await h1.get_vm("mismatch")).state is VmState.Running


async def test_a_page_damaged_on_the_way_in_a_run_of_round_0_is_named_and_the_copy_refused(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    """Round 0 crosses in frames of consecutive pages, each checked a stretch (up to a block) at a time: one bit
    flipped in the last page of the second frame fails the migration as MemoryMismatch naming that page, the
    target keeps nothing and the VM runs on at the source. (These agents' 10 Gbit/s links make the frames
    CHUNK_PAGES long; an unshaped migration's BULK_CHUNK_PAGES frames take the same check.)"""
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, corrupt_source_frame=(Frame.PAGES, 2, -5))
    port = await proxy.start()
    try:
        await running_vm(h1, "damaged", memory_mib=32, prefill=32)
        await begin_migration(h1, h2, "damaged", "mig-damaged", target_address=("127.0.0.1", port))
        target = await finished(h2, "mig-damaged")
        source = await finished(h1, "mig-damaged")
    finally:
        await proxy.close()
    last_page = 2 * CHUNK_PAGES - 1  # the second frame of round 0 ends with this page
    assert target.failure is not None and target.failure.reason is FailureReason.MemoryMismatch, \
        target.model_dump_json()
    assert f"page {last_page} does not hold the bytes of version 1" in target.failure.message, target.failure.message
    assert source.phase is MigrationPhase.Failed and source.failure is not None, source.model_dump_json()
    assert source.failure.reason is FailureReason.MemoryMismatch, source.model_dump_json()
    await heartbeat_grows(h1, "damaged")
    assert await vm_state(h2, "damaged") is None
    assert (await h2.host()).reserved.memory_mib == 0


async def _hello(h1: HypervisorClient, h2: HypervisorClient, vm_id: str, migration_id: str) -> tuple[FrameStream, int]:
    """Reserve on h2 for ``vm_id`` (which runs on h1), open its migration port and say HELLO as a source would."""
    vm = await h1.get_vm(vm_id)
    grant = await h2.prepare_incoming(IncomingMigrationRequest(migration_id=migration_id, vm=incoming_vm(vm)))
    assert (await h2.host()).reserved.memory_mib == vm.memory_mib
    stream = await open_stream("127.0.0.1", grant.port)
    await stream.send_message(Hello(migration_id=migration_id, vm_id=vm_id, ticket=grant.ticket,
                                    mode=MigrationMode.Live, pages=vm.memory_mib * 256,
                                    resolve_token="0123456789abcdef0123"))
    return stream, vm.memory_mib


async def _released(h2: HypervisorClient, vm_id: str, migration_id: str) -> None:
    target = await finished(h2, migration_id, within=30)
    assert target.phase is MigrationPhase.Failed, target.model_dump_json()
    assert await vm_state(h2, vm_id) is None
    assert (await h2.host()).reserved.memory_mib == 0, "the Incoming reservation leaked"


async def test_an_overflowing_number_in_round_end_releases_the_reservation(clients: Clients) -> None:
    h1, h2 = clients
    await running_vm(h1, "overflow", memory_mib=16)
    stream, _ = await _hello(h1, h2, "overflow", "mig-overflow")
    try:
        welcome = await stream.read_frame(5.0, 4096)
        assert welcome.kind == Frame.WELCOME
        body = b'{"round":0,"pages":1,"seconds":0.1,"dirtyPages":1e400}'
        await stream.send(struct.pack("<BBHI", Frame.ROUND_END, 0, 0, len(body)) + body)
        await _released(h2, "overflow", "mig-overflow")
    finally:
        stream.close()


async def test_a_source_gone_at_welcome_releases_the_reservation(clients: Clients) -> None:
    """The source says HELLO and resets the connection: whether the target notices while sending WELCOME
    or while reading the first frame, the reservation is given back."""
    h1, h2 = clients
    await running_vm(h1, "gone", memory_mib=16)
    for attempt in range(5):
        stream, _ = await _hello(h1, h2, "gone", f"mig-gone-{attempt}")
        stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.close()  # RST: the WELCOME the target is about to send has nowhere to go
        await _released(h2, "gone", f"mig-gone-{attempt}")


async def test_a_hot_guest_ends_not_converging_within_a_few_rounds_not_at_the_timeout(clients: Clients) -> None:
    """A guest writing 400 MiB/s in a 4 MiB hot set against a 20 Mbit/s link (~2.4 MiB/s), a 1 ms downtime
    budget, the default ladder's throttle (20 % + 10 % up to 99 %), quick allowed, a 60 s timeout. Even at
    99 % the guest writes faster than the link, and quick would pause far over 1 ms: it must fail
    NotConverging after the stall rounds, not climb the throttle round after round into Timeout."""
    h1, h2 = clients
    await running_vm(h1, "scorching", memory_mib=8, dirty=400, working_set=4, prefill=8)
    try:
        await begin_migration(h1, h2, "scorching", "mig-scorching", bandwidth_mbps=20, stall_rounds=3,
                              auto_converge=AutoConvergeSettings(enabled=True, initial_percent=20, step_percent=10,
                                                         max_percent=99),
                              fallback_to_quick=True, max_downtime_ms=1, timeout_seconds=60)
        source = await finished(h1, "mig-scorching", within=75)
        assert source.phase is MigrationPhase.Failed and source.failure is not None, source.model_dump_json()
        assert source.failure.reason is FailureReason.NotConverging, source.model_dump_json()
        assert source.round <= 5, f"{source.round} rounds before giving up"
        assert "maxDowntimeMs" in source.failure.message and "throttle" in source.failure.message
        await heartbeat_grows(h1, "scorching")
        assert (await h1.get_vm("scorching")).throttle_percent == 0
    finally:
        await h1.delete_vm("scorching", force=True)


async def test_a_guest_that_throttling_can_tame_climbs_the_throttle_every_stalled_round(clients: Clients) -> None:
    """Auto-converge that can help (100 MiB/s at 99 % is 1 MiB/s, under the link's 4.8): after the stall
    rounds the throttle rises a step after each round that still does not shrink, and it converges."""
    h1, h2 = clients
    await running_vm(h1, "warm", memory_mib=8, dirty=100, working_set=2, prefill=8)
    await begin_migration(h1, h2, "warm", "mig-warm", bandwidth_mbps=40, stall_rounds=2,
                          auto_converge=AutoConvergeSettings(enabled=True, initial_percent=20, step_percent=10,
                                                     max_percent=99), timeout_seconds=90)
    source = await finished(h1, "mig-warm", within=100)
    assert source.phase is MigrationPhase.Succeeded, source.model_dump_json()
    assert source.throttle_percent >= 20 and source.source_digest == source.target_digest
    await h2.delete_vm("warm", force=True)


def _closed_port() -> int:
    """A loopback port nobody listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _in_doubt(h1: HypervisorClient, migration_id: str) -> MigrationStatus:
    async def check() -> MigrationStatus | None:
        status = await h1.get_migration(migration_id)
        assert not status.phase.finished, f"the source decided alone: {status.model_dump_json()}"
        return status if status.in_doubt else None
    return await poll(check, f"migration {migration_id} to be reported in doubt", 40)


async def test_a_switchover_in_doubt_never_resumes_the_source_while_the_target_runs_it(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    """The target resumed; its RESUMED is lost and the source cannot reach it again (refused: a partition).
    The source must keep its copy paused and report the migration in doubt, not resume it (two running
    copies); once told what the target said, it releases its copy."""
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, close_on_target_frame=Frame.RESUMED,
                          resolve_port=_closed_port())
    port = await proxy.start()
    try:
        await running_vm(h1, "doubt-resumed", memory_mib=32, dirty=5, working_set=1, prefill=32)
        await begin_migration(h1, h2, "doubt-resumed", "mig-doubt-resumed", bandwidth_mbps=2000,
                              target_address=("127.0.0.1", port))
        target = await finished(h2, "mig-doubt-resumed")
        assert target.phase is MigrationPhase.Succeeded and target.committed, target.model_dump_json()
        source = await _in_doubt(h1, "mig-doubt-resumed")
    finally:
        await proxy.close()
    assert source.phase is MigrationPhase.SwitchingOver and not source.committed, source.model_dump_json()
    assert await vm_state(h1, "doubt-resumed") is VmState.Paused, "the source resumed a copy the target runs"
    with pytest.raises(AgentError) as refused:
        await h1.cancel_migration("mig-doubt-resumed")
    assert refused.value.code == "PastCommitPoint"
    await h1.resolve_migration("mig-doubt-resumed", target_resumed=True)
    source = await finished(h1, "mig-doubt-resumed")
    assert source.phase is MigrationPhase.Succeeded and source.committed and not source.in_doubt
    await assert_only_on(h2, h1, "doubt-resumed")
    await h2.delete_vm("doubt-resumed", force=True)


async def test_a_switchover_in_doubt_resumes_the_source_only_on_the_targets_word(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    """The SWITCHOVER never reached the target and the source cannot ask it: in doubt, paused. The target,
    asked by someone who can reach it, cancels (it never resumed and now never will); passed on, the source
    resumes its copy."""
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, close_on_source_frame=Frame.SWITCHOVER,
                          resolve_port=_closed_port())
    port = await proxy.start()
    try:
        await running_vm(h1, "doubt-kept", memory_mib=32, dirty=5, working_set=1, prefill=32)
        await begin_migration(h1, h2, "doubt-kept", "mig-doubt-kept", bandwidth_mbps=2000,
                              target_address=("127.0.0.1", port))
        await _in_doubt(h1, "mig-doubt-kept")
    finally:
        await proxy.close()
    assert await vm_state(h1, "doubt-kept") is VmState.Paused
    target = await h2.cancel_migration("mig-doubt-kept")
    assert not target.committed
    target = await finished(h2, "mig-doubt-kept")
    assert target.phase in (MigrationPhase.Failed, MigrationPhase.Cancelled) and not target.committed
    await h1.resolve_migration("mig-doubt-kept", target_resumed=False)
    source = await finished(h1, "mig-doubt-kept")
    assert source.phase is MigrationPhase.Failed and source.failure is not None, source.model_dump_json()
    assert source.failure.reason is FailureReason.TargetLost and not source.committed
    await assert_only_on(h1, h2, "doubt-kept")
    await h1.delete_vm("doubt-kept", force=True)


async def test_the_operator_settles_a_switchover_in_doubt_with_the_targets_word(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess], monkeypatch: pytest.MonkeyPatch) -> None:
    """The source cannot reach the target, the operator can: it asks the target (which had resumed) and
    passes its word on; the source releases its paused copy."""
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, close_on_target_frame=Frame.RESUMED,
                          resolve_port=_closed_port())
    port = await proxy.start()
    try:
        await running_vm(h1, "settled", memory_mib=32, dirty=5, working_set=1, prefill=32)
        await begin_migration(h1, h2, "settled", "mig-settled", bandwidth_mbps=2000,
                              target_address=("127.0.0.1", port))
        report = await _in_doubt(h1, "mig-settled")
    finally:
        await proxy.close()
    async def read_secret(namespace: str, name: str, key: str) -> tuple[str | None, dict[str, str]]:
        return TOKEN, {AGENT_HOSTS_ANNOTATION: "*"}  # the fleet's agent token Secret, as the install makes it

    monkeypatch.setattr(kubeapi, "read_secret", read_secret)
    reset_runtime()
    agents = runtime().agents
    try:
        for name, agent in (("h1", pair[0]), ("h2", pair[1])):
            spec = {"agent": {"endpoint": agent.endpoint, "tokenSecretRef": {"name": "vmshift-agent-token"}}}
            await agents.poll(await agents.link(name, spec))
        vm = VMEntry(namespace="tests", name="settled", uid="settled", labels={},
                     spec=VirtualMachineSpec(cpus=1, memoryMiB=256), host="h1", phase=Phase.Migrating,
                     processor=None, generation=1)
        run = Run(name="m", namespace="tests", uid="mig-settled", vm_name="settled", generation=1,
                  body=kopf.Body({}), source="h1", target="h2", vm=vm)
        await migrations._in_doubt(run, report, migrations._Doubt(reported=True))
        source = await finished(h1, "mig-settled")
    finally:
        await agents.close()
        reset_runtime()
    assert source.phase is MigrationPhase.Succeeded and source.committed, source.model_dump_json()
    await assert_only_on(h2, h1, "settled")
    await h2.delete_vm("settled", force=True)
