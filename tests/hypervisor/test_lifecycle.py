"""Lifecycle defects between real agents on loopback: the words failures get, reservations that must not
leak, a switchover in doubt that must never leave two running copies."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator

import pytest

from tests.hypervisor.helpers import BreakingProxy, finished, heartbeat_grows, running_vm, vm_state
from vmshift.api.reasons import FailureReason, MigrationPhase
from vmshift.hypervisor.client import HypervisorClient, begin_migration, incoming_vm
from vmshift.hypervisor.launcher import AgentProcess
from vmshift.hypervisor.migration import Frame, FrameStream, open_stream
from vmshift.hypervisor.protocol import IncomingMigrationRequest, VmState

pytestmark = pytest.mark.timeout(180)

Clients = tuple[HypervisorClient, HypervisorClient]


@pytest.fixture
async def clients(pair: tuple[AgentProcess, AgentProcess]) -> AsyncIterator[Clients]:
    async with pair[0].client() as first, pair[1].client() as second:
        yield first, second


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


async def _hello(h1: HypervisorClient, h2: HypervisorClient, vm_id: str, migration_id: str) -> tuple[FrameStream, int]:
    """Reserve on h2 for ``vm_id`` (which runs on h1), open its migration port and say HELLO as a source would."""
    vm = await h1.get_vm(vm_id)
    grant = await h2.prepare_incoming(IncomingMigrationRequest(migration_id=migration_id, vm=incoming_vm(vm)))
    assert (await h2.host()).reserved.memory_mib == vm.memory_mib
    stream = await open_stream("127.0.0.1", grant.port)
    await stream.send_control(Frame.HELLO, {"migrationId": migration_id, "vmId": vm_id, "ticket": grant.ticket,
                                            "mode": "Live", "pages": vm.memory_mib * 256,
                                            "resolveToken": "0123456789abcdef0123"})
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
