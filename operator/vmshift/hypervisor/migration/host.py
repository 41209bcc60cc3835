"""What the migration code needs from the agent that runs it (``hypervisor/host.py`` implements it).

An interface only: the two sides of a migration reach the rest of their agent through it, so they
hold no HTTP and no host bookkeeping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from vmshift.hypervisor.guest import Guest
from vmshift.hypervisor.migration.priority import SwitchoverGate
from vmshift.hypervisor.migration.streamrate import StreamRates
from vmshift.hypervisor.protocol import VmState
from vmshift.hypervisor.ratelimit import TokenBucket

if TYPE_CHECKING:
    from vmshift.hypervisor.migration.source import SourceMigration
    from vmshift.hypervisor.migration.target import TargetMigration


class MigrationHost(Protocol):
    """What the migration code needs from its agent (host.py implements it)."""

    egress: TokenBucket
    ingress: TokenBucket
    migration_port: int
    #: Closed while a switchover of this agent's is in its critical section: other migrations' bulk waits.
    switchover_gate: SwitchoverGate
    #: What this agent's outgoing migration streams carried when the shaper did not hold them.
    stream_rates: StreamRates

    def release_source_vm(self, guest: Guest) -> None: ...

    def discard_incoming(self, guest: Guest) -> None: ...

    def activate_incoming(self, guest: Guest, state: VmState) -> None: ...

    def migration_ended(self, migration: SourceMigration | TargetMigration) -> None: ...

    def find_incoming(self, migration_id: str) -> TargetMigration | None: ...
