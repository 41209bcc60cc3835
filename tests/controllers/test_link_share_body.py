"""The migration a drain creates carries its share of the source's link, in a spec the API accepts, and
the migration controller passes it to the source agent."""

from __future__ import annotations

from vmshift.api.migration import VirtualMachineMigrationSpec
from vmshift.api.reasons import MigrationMode
from vmshift.api.virtualmachine import VirtualMachinePhase as Phase
from vmshift.api.virtualmachine import VirtualMachineSpec
from vmshift.controllers.drains import migration_body
from vmshift.controllers.views import VMEntry
from vmshift.scheduling.evacuation import Create
from vmshift.scheduling.moves import Move


def test_the_drains_migration_carries_its_rank_and_ratio() -> None:
    vm = VMEntry("ns", "db", "uid-1", {}, VirtualMachineSpec(cpus=1, memoryMiB=256), "h1", Phase.Running, None, 1)
    move = Move("ns/db", "h1", "h2", MigrationMode.Live, order=3)
    body = migration_body(Create(move, "db-evac-abc123-1", 1, 5, rank=4, ratio=1000.0), "h1", "abc123xyz0",
                          "spec.maintenance", vm)
    spec = VirtualMachineMigrationSpec.model_validate(body["spec"])
    assert spec.linkShare is not None and (spec.linkShare.rank, spec.linkShare.ratio) == (4, 1000.0)
