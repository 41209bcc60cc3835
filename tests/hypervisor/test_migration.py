"""Live and quick migration between real agent processes on loopback, and every way it can break.

The invariant under test: a VM runs on exactly one host, with the memory it had, whatever happens
to the stream or to either agent before the commit point; after it, on the target only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests.hypervisor.helpers import BreakingProxy, Clients, finished, heartbeat_grows, poll, running_vm, vm_state
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.client import AgentError, HypervisorClient, begin_migration, incoming_vm
from vmshift.hypervisor.launcher import AgentProcess
from vmshift.hypervisor.migration.wire import (
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    Abort,
    Frame,
    Hello,
    control_frame,
    decode,
    encode,
)
from vmshift.hypervisor.protocol import (
    AutoConvergeSettings,
    IncomingMigrationRequest,
    MigrationRequest,
    MigrationRole,
    MigrationStatus,
    MigrationTarget,
    VmState,
)
from vmshift.precopy.model import quick_migration_seconds

pytestmark = pytest.mark.timeout(180)



async def assert_only_on(owner: HypervisorClient, other: HypervisorClient, vm_id: str) -> None:
    """The VM runs on ``owner`` (its heartbeat moves there) and nowhere on ``other``."""
    await heartbeat_grows(owner, vm_id)
    assert await vm_state(other, vm_id) in (None, VmState.MigratedAway), f"{vm_id} is also on {other.endpoint}"


async def wait_transferred(client: HypervisorClient, migration_id: str, mib: float) -> MigrationStatus:
    async def enough() -> MigrationStatus | None:
        status = await client.get_migration(migration_id)
        assert not status.phase.finished, f"migration ended early: {status.model_dump_json()}"
        return status if status.transferred_mib >= mib else None

    return await poll(enough, f"migration {migration_id} to copy {mib} MiB", 60)


async def test_live_migration_under_dirtying_moves_exact_memory_and_keeps_time(clients: Clients) -> None:
    h1, h2 = clients
    started = await running_vm(h1, "live", memory_mib=128, dirty=30, working_set=4, prefill=128)
    await begin_migration(h1, h2, "live", "mig-live", bandwidth_mbps=1500)
    events: list[MigrationStatus] = []

    async def watch() -> None:
        async for status in h1.watch_migration("mig-live"):
            events.append(status)

    watcher = asyncio.create_task(watch())
    beats: list[int] = []
    while True:
        vm = await h1.get_vm("live")
        if vm.state is VmState.MigratedAway:
            break
        beats.append(vm.heartbeat)
        if (await h1.get_migration("mig-live")).phase.finished:
            break
    arrived = await h2.get_vm("live")
    beats.append(arrived.heartbeat)
    assert beats == sorted(beats), f"the guest's heartbeat went backwards: {beats}"

    source = await finished(h1, "mig-live")
    target = await finished(h2, "mig-live")
    await asyncio.wait_for(watcher, 30)
    assert source.phase is MigrationPhase.Succeeded, source.model_dump_json()
    assert (source.role, target.role) == (MigrationRole.source, MigrationRole.target)
    assert target.phase is MigrationPhase.Succeeded and source.committed and target.committed
    assert source.mode is MigrationMode.Live and len(source.rounds) >= 2
    assert source.source_digest == source.target_digest == target.source_digest == target.target_digest
    assert source.downtime_ms is not None and 0 < source.downtime_ms < 1000
    assert source.rounds[0].sent_mib == 128 and source.transferred_mib > 128
    assert [e.transferred_mib for e in events] == sorted(e.transferred_mib for e in events)
    assert events[-1].phase is MigrationPhase.Succeeded and len(events) >= 3

    assert arrived.state is VmState.Running and arrived.features == started.features
    await assert_only_on(h2, h1, "live")
    assert (await h1.get_vm("live")).state is VmState.MigratedAway
    assert (await h2.host()).reserved.memory_mib == 0

    await begin_migration(h2, h1, "live", "mig-live-back", bandwidth_mbps=4000)
    back = await finished(h2, "mig-live-back")
    assert back.phase is MigrationPhase.Succeeded and back.source_digest == back.target_digest
    await assert_only_on(h1, h2, "live")


async def test_repeat_is_idempotent_a_second_migration_is_refused_and_cancel_keeps_the_vm(
        clients: Clients) -> None:
    h1, h2 = clients
    await running_vm(h1, "busy", memory_mib=256, dirty=5, working_set=2, prefill=256)
    first = await begin_migration(h1, h2, "busy", "mig-busy", bandwidth_mbps=200)
    assert first.phase is MigrationPhase.Transferring and first.role is MigrationRole.source
    repeat = await h1.start_migration(MigrationRequest(
        migration_id="mig-busy", vm_id="busy",
        target=MigrationTarget(host="127.0.0.1", port=9, ticket="t", bandwidth_mbps=1)))
    assert repeat.migration_id == "mig-busy" and repeat.phase is MigrationPhase.Transferring
    with pytest.raises(AgentError) as second:
        await begin_migration(h1, h2, "busy", "mig-busy-2")
    assert (second.value.status, second.value.code) == (409, "AlreadyMigrating")
    for action in (h1.stop_vm, h1.save_vm, h1.delete_vm):
        with pytest.raises(AgentError) as refused:
            await action("busy")
        assert refused.value.code == "AlreadyMigrating"

    await wait_transferred(h1, "mig-busy", 4)
    await h1.cancel_migration("mig-busy")
    source = await finished(h1, "mig-busy")
    target = await finished(h2, "mig-busy")
    assert source.phase is MigrationPhase.Cancelled and source.failure is not None
    assert source.failure.reason is FailureReason.Cancelled
    assert target.phase is MigrationPhase.Cancelled, target.model_dump_json()
    await assert_only_on(h1, h2, "busy")
    assert (await h2.host()).reserved.memory_mib == 0
    assert (await h1.get_vm("busy")).throttle_percent == 0


async def non_converging_vm(client: HypervisorClient, vm_id: str) -> None:
    """A guest whose 16 MiB hot set, written at 150 MiB/s, cannot fit a 1 ms threshold at 400 Mbit/s."""
    await running_vm(client, vm_id, memory_mib=64, dirty=150, working_set=16, prefill=64)


async def test_non_converging_workload_fails_and_the_vm_stays(clients: Clients) -> None:
    h1, h2 = clients
    await non_converging_vm(h1, "hot")
    before = await h1.get_vm("hot")
    await begin_migration(h1, h2, "hot", "mig-hot", bandwidth_mbps=400)
    source = await finished(h1, "mig-hot")
    assert source.phase is MigrationPhase.Failed and source.failure is not None, source.model_dump_json()
    assert source.failure.reason is FailureReason.NotConverging
    assert "threshold" in source.failure.message and "keeps running on the source" in source.failure.message
    target = await finished(h2, "mig-hot")
    assert target.failure is not None and target.failure.reason is FailureReason.NotConverging
    await assert_only_on(h1, h2, "hot")
    after = await h1.get_vm("hot")
    assert after.state is VmState.Running and after.throttle_percent == 0 and after.features == before.features


async def test_a_ladder_ending_in_postcopy_fails_on_the_simulated_driver_and_says_why(clients: Clients) -> None:
    h1, h2 = clients
    await non_converging_vm(h1, "hot-pc")
    await begin_migration(h1, h2, "hot-pc", "mig-hot-pc", bandwidth_mbps=400, fallback_to_postcopy=True)
    source = await finished(h1, "mig-hot-pc")
    assert source.phase is MigrationPhase.Failed and source.failure is not None, source.model_dump_json()
    assert source.failure.reason is FailureReason.NotConverging and not source.postcopy
    assert "PostCopy, which only the QEMU driver offers" in source.failure.message
    await assert_only_on(h1, h2, "hot-pc")
    await heartbeat_grows(h1, "hot-pc")


async def test_auto_converge_throttles_the_guest_until_it_converges(clients: Clients) -> None:
    h1, h2 = clients
    await non_converging_vm(h1, "throttled")
    await begin_migration(h1, h2, "throttled", "mig-throttled", bandwidth_mbps=400,
                          auto_converge=AutoConvergeSettings(enabled=True, step_percent=30, max_percent=99))
    source = await finished(h1, "mig-throttled")
    assert source.phase is MigrationPhase.Succeeded, source.model_dump_json()
    assert source.mode is MigrationMode.Live and source.throttle_percent >= 30
    assert source.source_digest == source.target_digest
    await assert_only_on(h2, h1, "throttled")
    assert (await h2.get_vm("throttled")).throttle_percent == 0, "the throttle stays behind"


async def test_fallback_to_quick_when_allowed_and_within_the_downtime_budget(clients: Clients) -> None:
    h1, h2 = clients
    await non_converging_vm(h1, "fallback")
    await begin_migration(h1, h2, "fallback", "mig-fallback-tight", bandwidth_mbps=400, fallback_to_quick=True,
                          max_downtime_ms=5)
    tight = await finished(h1, "mig-fallback-tight")
    assert tight.failure is not None and tight.failure.reason is FailureReason.NotConverging
    assert "maxDowntimeMs" in tight.failure.message
    await heartbeat_grows(h1, "fallback")

    await begin_migration(h1, h2, "fallback", "mig-fallback", bandwidth_mbps=400, fallback_to_quick=True)
    source = await finished(h1, "mig-fallback")
    assert source.phase is MigrationPhase.Succeeded, source.model_dump_json()
    assert source.mode is MigrationMode.Quick and source.source_digest == source.target_digest
    assert source.downtime_ms is not None and source.downtime_ms > 20, "the pause covers the dirty set"
    await assert_only_on(h2, h1, "fallback")


async def test_quick_migration_pauses_for_the_whole_copy(clients: Clients) -> None:
    h1, h2 = clients
    await running_vm(h1, "quick", memory_mib=64, dirty=10, working_set=4, prefill=64)
    await begin_migration(h1, h2, "quick", "mig-quick", MigrationMode.Quick, bandwidth_mbps=800)

    async def saved_or_gone() -> bool:
        return (await h1.get_vm("quick")).state in (VmState.Saved, VmState.MigratedAway)

    await poll(saved_or_gone, "the source to save the guest for the copy")
    source = await finished(h1, "mig-quick")
    assert source.phase is MigrationPhase.Succeeded and source.mode is MigrationMode.Quick
    assert len(source.rounds) == 1 and source.source_digest == source.target_digest
    expected_ms = quick_migration_seconds(64, 800) * 1000
    assert source.downtime_ms is not None
    assert 0.9 * expected_ms < source.downtime_ms < 2.5 * expected_ms, (source.downtime_ms, expected_ms)
    assert (await h2.get_migration("mig-quick")).downtime_ms == source.downtime_ms
    await assert_only_on(h2, h1, "quick")


async def test_wrong_and_reused_tickets_are_refused(clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    h1, h2 = clients
    await running_vm(h1, "ticketed", memory_mib=16)
    vm = await h1.get_vm("ticketed")
    grant = await h2.prepare_incoming(IncomingMigrationRequest(migration_id="mig-ticket", vm=incoming_vm(vm)))

    async def attempt(migration_id: str, ticket: str) -> MigrationStatus:
        await h1.start_migration(MigrationRequest(
            migration_id=migration_id, vm_id="ticketed",
            target=MigrationTarget(host=grant.host, port=grant.port, ticket=ticket, bandwidth_mbps=1000)))
        return await finished(h1, migration_id)

    forged = grant.ticket[:-4] + ("0000" if not grant.ticket.endswith("0000") else "1111")
    for migration_id, ticket in (("mig-ticket", forged), ("mig-ticket-other", grant.ticket)):
        refused = await attempt(migration_id, ticket)
        assert refused.failure is not None and refused.failure.reason is FailureReason.AgentUnreachable
        assert "ticket" in refused.failure.message
        await heartbeat_grows(h1, "ticketed")
    again = await attempt("mig-ticket", grant.ticket)
    assert again.failure is not None and "ticket" in again.failure.message, "a repeated id answers what it did"
    assert (await h2.cancel_migration("mig-ticket")).phase is MigrationPhase.Cancelled
    grant = await h2.prepare_incoming(IncomingMigrationRequest(migration_id="mig-ticket-2", vm=incoming_vm(vm)))
    assert (await attempt("mig-ticket-2", grant.ticket)).phase is MigrationPhase.Succeeded

    reader, writer = await asyncio.open_connection(grant.host, grant.port)
    writer.write(MAGIC + encode(Hello(migration_id="mig-ticket-2", vm_id="ticketed", ticket=grant.ticket,
                                      mode=MigrationMode.Live, pages=16 * 256)))
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10) == b"", "a used ticket must be dropped"
    writer.close()
    await assert_only_on(h2, h1, "ticketed")
    assert pair[1].alive


async def test_a_stream_of_another_protocol_version_is_refused_with_the_versions_named(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    """A HELLO of a version the target does not speak gets an ABORT that says which versions met,
    before the ticket is even looked at; the reservation stays for a source that speaks it."""
    h1, h2 = clients
    vm = await running_vm(h1, "versioned", memory_mib=16)
    grant = await h2.prepare_incoming(IncomingMigrationRequest(migration_id="mig-version", vm=incoming_vm(vm)))
    for version, said in ((PROTOCOL_VERSION + 1, f"version {PROTOCOL_VERSION + 1!r}"), (None, "no protocol version")):
        hello = {"migrationId": "mig-version", "vmId": "versioned", "ticket": grant.ticket, "mode": "Live",
                 "pages": 16 * 256}
        if version is not None:
            hello["version"] = version
        reader, writer = await asyncio.open_connection(grant.host, grant.port)
        writer.write(MAGIC + control_frame(Frame.HELLO, hello))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        kind, _flags, _reserved, length = HEADER.unpack_from(answer)
        abort = decode(kind, answer[HEADER.size:HEADER.size + length])
        assert isinstance(abort, Abort), abort
        assert said in abort.message and f"speaks version {PROTOCOL_VERSION} only" in abort.message, abort.message
        assert abort.reason == FailureReason.AgentUnreachable.value
    assert (await h2.get_migration("mig-version")).phase is MigrationPhase.Pending
    await h1.start_migration(MigrationRequest(
        migration_id="mig-version", vm_id="versioned",
        target=MigrationTarget(host=grant.host, port=grant.port, ticket=grant.ticket, bandwidth_mbps=1000)))
    assert (await finished(h1, "mig-version")).phase is MigrationPhase.Succeeded
    await assert_only_on(h2, h1, "versioned")
    assert pair[1].alive


async def test_targets_refuse_incompatible_processors_and_unreachable_storage(
        clients: Clients, spawn: Callable[..., AgentProcess]) -> None:
    h1, h2 = clients
    haswell = spawn("mig-haswell", cpu_model="haswell", shared_volumes=("csv1",))
    zen3 = spawn("mig-zen3", cpu_model="zen3", shared_volumes=("csv1",))
    await running_vm(h1, "native", memory_mib=16)
    await running_vm(h1, "compat", memory_mib=16, compatibility=True)
    async with haswell.client() as old, zen3.client() as amd:
        native = incoming_vm(await h1.get_vm("native"), "Intel")
        with pytest.raises(AgentError) as refused:
            await old.prepare_incoming(IncomingMigrationRequest(migration_id="mig-native", vm=native))
        assert refused.value.code == "IncompatibleProcessor" and "avx512f" in refused.value.message
        compat = incoming_vm(await h1.get_vm("compat"), "Intel")
        await old.prepare_incoming(IncomingMigrationRequest(migration_id="mig-compat", vm=compat))
        assert (await old.host()).reserved.memory_mib == 16
        cancelled = await old.cancel_migration("mig-compat")
        assert cancelled.phase is MigrationPhase.Cancelled and (await old.host()).reserved.memory_mib == 0
        with pytest.raises(AgentError) as vendor:
            await amd.prepare_incoming(IncomingMigrationRequest(migration_id="mig-amd", vm=compat))
        assert vendor.value.code == "IncompatibleProcessor" and "vendor" in vendor.value.message

    native_vm = incoming_vm(await h1.get_vm("native"), "Intel").model_dump()
    for disk, problem in [({"name": "d", "sizeGiB": 1, "volume": "csv9"}, "csv9"),
                          ({"name": "d", "sizeGiB": 1, "local": True}, "local")]:
        body = IncomingMigrationRequest.model_validate({
            "migrationId": "mig-disk", "vm": {**native_vm, "disks": [disk]}})
        with pytest.raises(AgentError) as storage:
            await h2.prepare_incoming(body)
        assert storage.value.code == "StorageNotShared" and problem in storage.value.message
    assert await vm_state(h2, "native") is None


async def test_a_reservation_without_a_stream_expires(clients: Clients) -> None:
    h1, h2 = clients
    await running_vm(h1, "never", memory_mib=32)
    await h2.prepare_incoming(IncomingMigrationRequest(
        migration_id="mig-never", vm=incoming_vm(await h1.get_vm("never")), reservation_seconds=1))
    assert (await h2.get_vm("never")).state is VmState.Incoming
    target = await finished(h2, "mig-never", within=30)
    assert target.failure is not None and target.failure.reason is FailureReason.Timeout
    assert await vm_state(h2, "never") is None and (await h2.host()).reserved.memory_mib == 0


async def test_target_killed_mid_copy_leaves_the_vm_on_the_source(
        clients: Clients, spawn: Callable[..., AgentProcess]) -> None:
    h1, _ = clients
    doomed = spawn("mig-doomed-target")
    await running_vm(h1, "survivor", memory_mib=256, dirty=20, working_set=4, prefill=256)
    async with doomed.client() as target:
        await begin_migration(h1, target, "survivor", "mig-doomed", bandwidth_mbps=100)
        await wait_transferred(h1, "mig-doomed", 4)
        doomed.kill()
    source = await finished(h1, "mig-doomed")
    assert source.phase is MigrationPhase.Failed and source.failure is not None
    assert source.failure.reason is FailureReason.TargetLost, source.model_dump_json()
    await heartbeat_grows(h1, "survivor")
    assert (await h1.get_vm("survivor")).migration_id is None


async def test_target_stopped_mid_copy_fails_the_migration_saying_the_target_went_away(
        clients: Clients, spawn: Callable[..., AgentProcess]) -> None:
    """A target agent stopped gracefully (SIGTERM: its pod deleted) is a lost target, not a cancel by anyone."""
    h1, _ = clients
    leaving = spawn("mig-leaving-target")
    await running_vm(h1, "stays", memory_mib=256, dirty=20, working_set=4, prefill=256)
    async with leaving.client() as target:
        await begin_migration(h1, target, "stays", "mig-leaving", bandwidth_mbps=100)
        await wait_transferred(h1, "mig-leaving", 4)
        leaving.stop()
    source = await finished(h1, "mig-leaving")
    assert source.phase is MigrationPhase.Failed and source.failure is not None, source.model_dump_json()
    assert source.failure.reason is FailureReason.TargetLost, source.model_dump_json()
    assert "shutting down" in source.failure.message, source.failure.message
    await heartbeat_grows(h1, "stays")
    assert (await h1.get_vm("stays")).migration_id is None


async def test_source_stopped_mid_copy_is_reported_as_a_lost_source(
        clients: Clients, spawn: Callable[..., AgentProcess]) -> None:
    _, h2 = clients
    leaving = spawn("mig-leaving-source")
    async with leaving.client() as source:
        await running_vm(source, "goes", memory_mib=256, dirty=20, working_set=4, prefill=256)
        await begin_migration(source, h2, "goes", "mig-goes", bandwidth_mbps=100)
        await wait_transferred(source, "mig-goes", 4)
        leaving.stop()
    target = await finished(h2, "mig-goes")
    assert target.phase is MigrationPhase.Failed and target.failure is not None, target.model_dump_json()
    assert target.failure.reason is FailureReason.SourceLost, target.model_dump_json()
    assert await vm_state(h2, "goes") is None


async def test_a_cut_stream_leaves_the_vm_on_the_source(clients: Clients,
                                                        pair: tuple[AgentProcess, AgentProcess]) -> None:
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, cut_after_bytes=8 * 1024 * 1024)
    port = await proxy.start()
    try:
        await running_vm(h1, "cut", memory_mib=128, dirty=20, working_set=4, prefill=128)
        await begin_migration(h1, h2, "cut", "mig-cut", bandwidth_mbps=200, target_address=("127.0.0.1", port))
        source = await finished(h1, "mig-cut")
        target = await finished(h2, "mig-cut")
    finally:
        await proxy.close()
    assert source.failure is not None and source.failure.reason is FailureReason.TargetLost
    assert target.failure is not None and target.failure.reason is FailureReason.SourceLost
    assert "discarded" in target.failure.message
    await assert_only_on(h1, h2, "cut")


async def test_source_killed_mid_copy_is_reported_by_the_target(
        clients: Clients, spawn: Callable[..., AgentProcess]) -> None:
    _, h2 = clients
    doomed = spawn("mig-doomed-source")
    async with doomed.client() as source:
        await running_vm(source, "lost", memory_mib=256, dirty=20, working_set=4, prefill=256)
        await begin_migration(source, h2, "lost", "mig-lost", bandwidth_mbps=100)
        await wait_transferred(source, "mig-lost", 4)
        doomed.kill()
    target = await finished(h2, "mig-lost")
    assert target.phase is MigrationPhase.Failed and target.failure is not None
    assert target.failure.reason is FailureReason.SourceLost and "discarded" in target.failure.message
    assert await vm_state(h2, "lost") is None
    assert (await h2.host()).reserved.memory_mib == 0


async def test_a_lost_resumed_message_is_resolved_by_asking_the_target(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    """The target resumed, but the source never heard it: it asks, then releases its paused copy."""
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, close_on_target_frame=Frame.RESUMED)
    port = await proxy.start()
    try:
        await running_vm(h1, "in-doubt", memory_mib=32, dirty=5, working_set=1, prefill=32)
        await begin_migration(h1, h2, "in-doubt", "mig-in-doubt", bandwidth_mbps=2000,
                              target_address=("127.0.0.1", port))
        source = await finished(h1, "mig-in-doubt")
        target = await finished(h2, "mig-in-doubt")
    finally:
        await proxy.close()
    assert proxy.target_kinds[-1] == Frame.RESUMED, "the stream broke where intended"
    assert source.phase is MigrationPhase.Succeeded and source.committed, source.model_dump_json()
    assert target.phase is MigrationPhase.Succeeded, target.model_dump_json()
    await assert_only_on(h2, h1, "in-doubt")


async def test_a_switchover_that_never_arrives_keeps_the_vm_on_the_source(
        clients: Clients, pair: tuple[AgentProcess, AgentProcess]) -> None:
    """The source paused and sent the switchover into a dead stream: the target never resumed."""
    h1, h2 = clients
    proxy = BreakingProxy("127.0.0.1", pair[1].migration_port, close_on_source_frame=Frame.SWITCHOVER)
    port = await proxy.start()
    try:
        await running_vm(h1, "kept", memory_mib=32, dirty=5, working_set=1, prefill=32)
        await begin_migration(h1, h2, "kept", "mig-kept", bandwidth_mbps=2000, target_address=("127.0.0.1", port))
        source = await finished(h1, "mig-kept")
        target = await finished(h2, "mig-kept")
    finally:
        await proxy.close()
    assert source.phase is MigrationPhase.Failed and not source.committed, source.model_dump_json()
    assert source.failure is not None and source.failure.reason is FailureReason.TargetLost
    assert "had not resumed" in source.failure.message
    assert target.phase is MigrationPhase.Failed and target.failure is not None, target.model_dump_json()
    assert target.failure.reason is FailureReason.SourceLost
    await assert_only_on(h1, h2, "kept")


async def test_an_unshaped_migration_sends_bulk_frames_and_moves_exact_memory(
        spawn: Callable[..., AgentProcess]) -> None:
    """Hosts without a link rate and no bandwidth asked: the source sends BULK_CHUNK_PAGES frames (the
    target takes them whole and checks every page), under dirtying, and the memory arrives exact."""
    first, second = spawn("bulk-h1", bandwidth_mbps=0), spawn("bulk-h2", bandwidth_mbps=0)
    async with first.client() as h1, second.client() as h2:
        await running_vm(h1, "bulk", memory_mib=64, dirty=30, working_set=4, prefill=64)
        await begin_migration(h1, h2, "bulk", "mig-bulk")
        source = await finished(h1, "mig-bulk")
        target = await finished(h2, "mig-bulk")
        assert source.phase is MigrationPhase.Succeeded and target.phase is MigrationPhase.Succeeded, \
            source.model_dump_json()
        assert source.source_digest == source.target_digest == target.target_digest
        assert source.rounds[0].sent_mib == 64
        await assert_only_on(h2, h1, "bulk")
