"""Which finished migrations the garbage collector deletes (pure, views.migrations_to_collect)."""

from __future__ import annotations

from typing import Any

from vmshift.api.reasons import MigrationMode, MigrationPhase
from vmshift.api.virtualmachine import VirtualMachinePhase as Phase
from vmshift.api.virtualmachine import VirtualMachineSpec
from vmshift.controllers.drains import migration_body
from vmshift.controllers.views import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    VMEntry,
    index_migration,
    migrations_to_collect,
)
from vmshift.scheduling.evacuation import Create
from vmshift.scheduling.moves import Move


def _body(name: str, phase: str, created: str, *, ours: bool) -> dict[str, Any]:
    labels = {MANAGED_BY_LABEL: MANAGED_BY} if ours else {"app": "from-git"}
    return {"metadata": {"namespace": "ns", "name": name, "uid": name, "creationTimestamp": created,
                         "labels": labels},
            "spec": {"vmName": "vm"}, "status": {"phase": phase}}


def test_a_finished_migration_applied_by_a_person_is_never_collected() -> None:
    mine = [index_migration(_body("git-1", "Succeeded", "2026-01-01T00:00:00Z", ours=False)),
            index_migration(_body("git-2", "Failed", "2026-01-01T00:00:01Z", ours=False)),
            index_migration(_body("op-1", "Succeeded", "2026-01-01T00:00:02Z", ours=True)),
            index_migration(_body("op-2", "Succeeded", "2026-01-01T00:00:03Z", ours=True)),
            index_migration(_body("op-3", "Succeeded", "2026-01-01T00:00:04Z", ours=True))]
    collected = [m.name for m in migrations_to_collect(mine, keep=2, current="op-3")]
    assert collected == ["op-1"], collected


def test_unfinished_and_current_migrations_are_never_collected() -> None:
    mine = [index_migration(_body("op-1", "Transferring", "2026-01-01T00:00:00Z", ours=True)),
            index_migration(_body("op-2", "Succeeded", "2026-01-01T00:00:01Z", ours=True))]
    assert migrations_to_collect(mine, keep=0, current="op-2") == []
    assert mine[0].phase is MigrationPhase.Transferring


def test_an_unlabelled_migration_is_not_the_operators() -> None:
    entry = index_migration(_body("x", "Succeeded", "2026-01-01T00:00:00Z", ours=False))
    assert not entry.made_by_operator


def test_a_drains_migration_is_the_operators_and_collected_once_finished() -> None:
    vm = VMEntry("ns", "vm", "uid-1", {}, VirtualMachineSpec(cpus=1, memoryMiB=256), "h1", Phase.Running, None, 1)
    move = Move("ns/vm", "h1", "h2", MigrationMode.Live, order=0)
    body = migration_body(Create(move, "vm-evac-1", 1, 1), "h1", "ep1", "spec.maintenance", vm)
    body["metadata"] |= {"uid": "u", "creationTimestamp": "2026-01-01T00:00:00Z"}
    body["status"] = {"phase": "Succeeded"}
    entry = index_migration(body)
    assert entry.made_by_operator
    assert migrations_to_collect([entry], keep=1, current="later") == [entry]


def _moved(name: str, created: str, source: str, target: str) -> dict[str, Any]:
    body = _body(name, "Succeeded", created, ours=True)
    body["spec"]["targetHost"] = target
    body["status"] |= {"sourceHost": source, "targetHost": target}
    return body


def test_a_finished_migration_naming_a_silent_host_is_kept_past_the_newest_few() -> None:
    """The oldest record is the only one naming h-gone (a copy may still run there); while h-gone's
    agent does not answer it stays, however many later migrations there were. Once h-gone answers
    it is collected like the others."""
    mine = [index_migration(_moved("op-1", "2026-01-01T00:00:00Z", "h-gone", "h2")),
            index_migration(_moved("op-2", "2026-01-01T00:00:01Z", "h2", "h3")),
            index_migration(_moved("op-3", "2026-01-01T00:00:02Z", "h3", "h2")),
            index_migration(_moved("op-4", "2026-01-01T00:00:03Z", "h2", "h3"))]
    assert (mine[0].source, mine[0].target) == ("h-gone", "h2")
    assert [m.name for m in migrations_to_collect(mine, keep=2, current="op-4", silent={"h-gone"})] == ["op-2"]
    assert [m.name for m in migrations_to_collect(mine, keep=2, current="op-4", silent={"h3"})] == ["op-1"]
    assert [m.name for m in migrations_to_collect(mine, keep=2, current="op-4")] == ["op-2", "op-1"]
