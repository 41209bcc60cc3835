"""The migration controller shows SwitchingOver before the pause: it writes the phase, then gives the
source agent its go; it never gives the go to a migration being cancelled."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter

from vmshift.api.reasons import MigrationMode, MigrationPhase
from vmshift.controllers import kubeapi, migrations
from vmshift.controllers.migration_decisions import shown_phase, switchover_go_due, unacknowledged_note
from vmshift.controllers.migrationrun import Run
from vmshift.controllers.runtime import runtime
from vmshift.hypervisor.protocol import MigrationRole, MigrationStatus

pytestmark = pytest.mark.timeout(60)


def report(phase: MigrationPhase = MigrationPhase.Transferring, *, ready: bool = False,
           acknowledged: bool | None = None) -> MigrationStatus:
    return MigrationStatus(migration_id="uid-1", vm_id="vm-uid", role=MigrationRole.source, mode=MigrationMode.Live,
                           phase=phase, round=4, remaining_mib=0.25, ready_to_switch_over=ready,
                           switchover_acknowledged=acknowledged, downtime_ms=2.0 if phase.finished else None)


def test_a_held_switchover_shows_as_switching_over_and_the_go_follows_the_write() -> None:
    assert shown_phase(report()) is MigrationPhase.Transferring
    assert shown_phase(report(ready=True)) is MigrationPhase.SwitchingOver
    assert shown_phase(report(MigrationPhase.SwitchingOver)) is MigrationPhase.SwitchingOver
    assert shown_phase(report(ready=True), cancelling=True) is MigrationPhase.Transferring, "no go will come"
    assert shown_phase(report(MigrationPhase.SwitchingOver), cancelling=True) is MigrationPhase.SwitchingOver
    assert not switchover_go_due(report(ready=True), "Transferring", False), "the phase is written first"
    assert switchover_go_due(report(ready=True), "SwitchingOver", False)
    assert not switchover_go_due(report(ready=True), "SwitchingOver", True), "no go for a migration being cancelled"
    assert not switchover_go_due(report(), "SwitchingOver", False), "nothing held, no go"
    assert unacknowledged_note(report(MigrationPhase.Succeeded, acknowledged=True), 5) == ""
    assert unacknowledged_note(report(MigrationPhase.Succeeded), 5) == ""
    assert "within 5 s" in unacknowledged_note(report(MigrationPhase.Succeeded, acknowledged=False), 5)


class FakeSource:
    """A source agent that converges on its third report and holds its switchover until the go."""

    def __init__(self, journal: list[tuple[str, str]], on_poll: Any = None) -> None:
        self.journal = journal
        self.polls = 0
        self.went = False
        self.cancelled_at: int | None = None
        self.on_poll = on_poll

    async def get_migration(self, migration_id: str) -> MigrationStatus:
        self.polls += 1
        if self.on_poll is not None:
            self.on_poll(self.polls)
        if self.went:
            return report(MigrationPhase.Succeeded, acknowledged=True)
        if self.cancelled_at is not None and self.polls > self.cancelled_at + 1:
            return report(MigrationPhase.Cancelled)
        return report(ready=self.polls >= 3)

    async def switchover(self, migration_id: str) -> MigrationStatus:
        self.journal.append(("go", migration_id))
        self.went = True
        return report(ready=True)

    async def cancel_migration(self, migration_id: str) -> MigrationStatus:
        self.journal.append(("cancel", migration_id))
        self.cancelled_at = self.polls
        return report(ready=True)


async def follow(monkeypatch: pytest.MonkeyPatch, source: FakeSource, journal: list[tuple[str, str]],
                 stopped: Any) -> MigrationStatus:
    async def patch_status(plural: str, namespace: str | None, name: str, status: dict[str, Any]) -> None:
        kubeapi.checked_status(plural, status)  # a misspelt key fails here, as it would on the wire
        if "phase" in status:
            condition = next(c for c in status["conditions"] if c["type"] == "Reconciling")
            journal.append((status["phase"], condition["message"]))

    links = {"src": SimpleNamespace(client=source)}
    monkeypatch.setattr(kubeapi, "patch_status", patch_status)
    monkeypatch.setattr(runtime().agents, "get", lambda host: links.get(host))
    run = Run(name="mig", namespace="ns", uid="uid-1", vm_name="web", generation=1, body=kopf.Body({}),
              status={"phase": "Transferring"}, source="src", target="dst", mode=MigrationMode.Live)
    return await asyncio.wait_for(migrations._follow(run, stopped, 600.0), 30)


async def test_the_operator_writes_switching_over_then_gives_the_go(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[tuple[str, str]] = []
    source = FakeSource(journal)
    final = await follow(monkeypatch, source, journal, FlagSetter[kopf.DaemonStoppingReason]().async_waiter)
    assert final.phase is MigrationPhase.Succeeded
    kinds = [kind for kind, _ in journal]
    assert "go" in kinds and "SwitchingOver" in kinds, journal
    assert kinds.index("SwitchingOver") < kinds.index("go"), f"the go came before the phase was written: {journal}"
    assert kinds.count("go") == 1, journal
    message = dict(journal)["SwitchingOver"]
    assert "web is paused on src for the final copy and resumed on dst" in message, message


async def test_a_migration_deleted_before_the_go_is_cancelled_and_gets_no_go(monkeypatch: pytest.MonkeyPatch) -> None:
    journal: list[tuple[str, str]] = []
    setter: FlagSetter[kopf.DaemonStoppingReason] = FlagSetter()

    def delete_on_second_poll(polls: int) -> None:
        if polls == 2:
            setter.set(kopf.DaemonStoppingReason.RESOURCE_DELETED)

    source = FakeSource(journal, delete_on_second_poll)
    final = await follow(monkeypatch, source, journal, setter.async_waiter)
    assert final.phase is MigrationPhase.Cancelled
    assert ("cancel", "uid-1") in journal and not any(kind == "go" for kind, _ in journal), journal
    assert not any(kind == "SwitchingOver" for kind, _ in journal), f"a cancelled hold showed SwitchingOver: {journal}"
