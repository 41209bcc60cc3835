"""Lifecycle defects between real agents on loopback: the words failures get, reservations that must not
leak, a switchover in doubt that must never leave two running copies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.hypervisor.helpers import BreakingProxy, finished, heartbeat_grows, running_vm, vm_state
from vmshift.api.reasons import FailureReason, MigrationPhase
from vmshift.hypervisor.client import HypervisorClient, begin_migration
from vmshift.hypervisor.launcher import AgentProcess
from vmshift.hypervisor.migration import Frame
from vmshift.hypervisor.protocol import VmState

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
