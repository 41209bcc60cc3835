"""A converged live migration holds its switchover for the caller's go, and never longer than its wait.

Between real agent processes on loopback: the source reports readyToSwitchOver while the guest runs
on, pauses only after POST /v1/migrations/{id}/switchover (or once the wait has run out, saying
so), and a cancel before the go leaves the guest running on the source.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from tests.hypervisor.helpers import Clients, finished, heartbeat_grows, poll, running_vm, vm_state
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.client import AgentError, HypervisorClient, begin_migration
from vmshift.hypervisor.migration.hold import WAIT_TIMEOUT_MARGIN, SwitchoverHold
from vmshift.hypervisor.migration.record import MigrationRecord
from vmshift.hypervisor.migration.target import IDLE_TIMEOUT
from vmshift.hypervisor.protocol import MigrationRequest, MigrationRole, MigrationStatus, VmState

pytestmark = pytest.mark.timeout(180)



async def converging_vm(client: HypervisorClient, vm_id: str) -> None:
    """A guest that keeps writing (10 MiB/s into a 1 MiB hot set) and converges at once on a fast link."""
    await running_vm(client, vm_id, memory_mib=32, dirty=10, working_set=1, prefill=32)


async def ready(client: HypervisorClient, migration_id: str) -> MigrationStatus:
    async def check() -> MigrationStatus | None:
        status = await client.get_migration(migration_id)
        assert not status.phase.finished, f"it switched over without the go: {status.model_dump_json()}"
        return status if status.ready_to_switch_over else None

    return await poll(check, f"migration {migration_id} to be ready to switch over", 60, interval=0.02)


async def test_the_source_holds_a_converged_switchover_until_the_go(clients: Clients) -> None:
    h1, h2 = clients
    await converging_vm(h1, "held")
    await begin_migration(h1, h2, "held", "mig-held", bandwidth_mbps=4000, switchover_wait_seconds=20)
    first = await ready(h1, "mig-held")
    assert first.phase is MigrationPhase.Transferring and first.switchover_acknowledged is None

    # Held: the guest runs on the source, and the source goes on sending what it dirties.
    await heartbeat_grows(h1, "held")
    await asyncio.sleep(1.0)
    held = await h1.get_migration("mig-held")
    assert held.phase is MigrationPhase.Transferring and held.ready_to_switch_over, held.model_dump_json()
    assert held.round > first.round, "no rounds were sent while the switchover was held"
    assert (await h1.get_vm("held")).state is VmState.Running
    assert await vm_state(h2, "held") is VmState.Incoming

    await h1.switchover("mig-held")
    source = await finished(h1, "mig-held")
    assert source.phase is MigrationPhase.Succeeded and source.switchover_acknowledged is True, \
        source.model_dump_json()
    assert not source.ready_to_switch_over, "a finished migration holds nothing"
    assert source.source_digest == source.target_digest
    # The pause after the go copies one small round's dirt, as a switchover without a wait does.
    assert source.downtime_ms is not None and source.downtime_ms < 1000
    assert source.duration_ms is not None and source.duration_ms > 1000, "the switchover waited for the go"
    await heartbeat_grows(h2, "held")
    assert (await h1.get_vm("held")).state is VmState.MigratedAway

    again = await h1.switchover("mig-held")  # a late go is harmless
    assert again.phase is MigrationPhase.Succeeded and again.switchover_acknowledged is True


async def test_without_a_go_the_source_switches_over_once_the_wait_has_run_out(clients: Clients) -> None:
    h1, h2 = clients
    await converging_vm(h1, "unheard")
    await begin_migration(h1, h2, "unheard", "mig-unheard", bandwidth_mbps=4000, switchover_wait_seconds=2)
    await ready(h1, "mig-unheard")
    source = await finished(h1, "mig-unheard")
    assert source.phase is MigrationPhase.Succeeded, source.model_dump_json()
    assert source.switchover_acknowledged is False, "the switchover went ahead without the go, and says so"
    assert source.duration_ms is not None and source.duration_ms >= 2000, "it did not wait out the bound"
    assert source.downtime_ms is not None and source.downtime_ms < 1000
    await heartbeat_grows(h2, "unheard")


async def test_a_cancel_before_the_go_leaves_the_guest_running_on_its_source(clients: Clients) -> None:
    h1, h2 = clients
    await converging_vm(h1, "stays")
    await begin_migration(h1, h2, "stays", "mig-stays", bandwidth_mbps=4000, switchover_wait_seconds=20)
    await ready(h1, "mig-stays")
    await h1.cancel_migration("mig-stays")
    source = await finished(h1, "mig-stays")
    assert source.phase is MigrationPhase.Cancelled and source.failure is not None
    assert source.failure.reason is FailureReason.Cancelled
    assert source.switchover_acknowledged is None and source.downtime_ms is None, "the guest never paused"
    assert (await finished(h2, "mig-stays")).phase is MigrationPhase.Cancelled
    await heartbeat_grows(h1, "stays")
    assert await vm_state(h2, "stays") is None
    assert (await h2.host()).reserved.memory_mib == 0


async def test_only_a_source_takes_the_go_and_an_early_go_means_no_wait(clients: Clients) -> None:
    h1, h2 = clients
    await converging_vm(h1, "early")
    await begin_migration(h1, h2, "early", "mig-early", bandwidth_mbps=4000, switchover_wait_seconds=20)
    with pytest.raises(AgentError) as refused:
        await h2.switchover("mig-early")
    assert (refused.value.status, refused.value.code) == (409, "InvalidState")
    assert "only its source switches over" in str(refused.value)
    await h1.switchover("mig-early")
    started = time.monotonic()
    source = await finished(h1, "mig-early")
    assert source.phase is MigrationPhase.Succeeded and source.switchover_acknowledged is True
    assert time.monotonic() - started < 10, "an early go was forgotten: the source waited out its bound"
    with pytest.raises(AgentError) as unknown:
        await h1.switchover("mig-nobody")
    assert unknown.value.status == 404


async def test_the_hold_marks_the_record_once_and_ends_before_the_migrations_timeout() -> None:
    record = MigrationRecord("m", "vm", MigrationRole.source, MigrationMode.Live, 256)
    assert not SwitchoverHold(record, 0.0, None).holding(True), "no wait asked: switch over at once"
    hold = SwitchoverHold(record, 5.0, None)
    assert not hold.holding(False) and not record.ready_to_switch_over, "not converged: no hold, no mark"
    assert hold.holding(True) and record.ready_to_switch_over
    assert hold.holding(False), "a burst of writes does not take back the hold"
    hold.go()
    assert not hold.holding(True) and record.switchover_acknowledged is True

    record = MigrationRecord("t", "vm", MigrationRole.source, MigrationMode.Live, 256)
    record.started = time.monotonic()
    tight = SwitchoverHold(record, 30.0, 3.0)
    assert tight.holding(True)
    assert tight.deadline() <= record.started + 3.0 - WAIT_TIMEOUT_MARGIN + 1e-6
    record.started -= 3.0  # the migration's timeout is near: the hold ends without a go
    assert not tight.holding(True) and record.switchover_acknowledged is False
    await tight.wait(1.0)  # returns at once past the deadline


def test_the_longest_wait_is_shorter_than_a_targets_patience_with_a_silent_stream() -> None:
    # An idle guest dirties nothing while the switchover is held, so the stream stays silent.
    request = {"migrationId": "m", "vmId": "vm", "target": {"host": "h", "port": 1, "ticket": "t", "bandwidthMbps": 0}}
    assert MigrationRequest.model_validate({**request, "switchoverWaitSeconds": 20}).switchover_wait_seconds == 20
    with pytest.raises(ValidationError) as refused:
        MigrationRequest.model_validate({**request, "switchoverWaitSeconds": IDLE_TIMEOUT})
    assert "switchoverWaitSeconds" in str(refused.value)
