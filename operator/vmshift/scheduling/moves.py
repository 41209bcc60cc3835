"""The data of a drain: limits, moves, blocked VMs, the plan, failures. Pure: no I/O.

Shared by the planner (``drain.py``) and the simulator (``simulate.py``); the evacuation engine in
the operator executes a :class:`DrainPlan` and reports ``Host.status.drain`` from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vmshift.api.reasons import FailureReason, MigrationMode

_NO_LINKS: Mapping[tuple[str, str], float] = MappingProxyType({})


@dataclass(frozen=True)
class DrainLimits:
    """What a drain may use.

    ``max_parallel``: migrations out of the drained host at once (None: the host's free migration
    slots). ``cluster_available``: migrations the cluster may still start (None: no limit).
    ``per_migration_mbps``: a cap on one migration's rate (a policy's ``bandwidthMbps``).
    ``link_mbps``: extra caps on (source, target) paths, e.g. a rack uplink.
    ``max_attempts``: attempts per VM before it is reported blocked. ``alternates``: how many
    fallback targets each move carries for retries.
    """

    max_parallel: int | None = None
    cluster_available: int | None = None
    per_migration_mbps: float | None = None
    link_mbps: Mapping[tuple[str, str], float] = field(default_factory=lambda: _NO_LINKS, hash=False)
    max_attempts: int = 3
    alternates: int = 3


@dataclass(frozen=True)
class Move:
    """One planned migration of a drain.

    ``order`` is the position in the plan (the engine starts moves in this order when slots free
    up); ``weight`` the move's relative share of the source's link while it runs next to others;
    ``bandwidth_mbps`` the rate the plan expects it to get when it starts; ``expected_*`` are
    seconds from the start of the drain, from the simulation the planner ran.
    """

    vm: str
    source: str
    target: str
    mode: MigrationMode
    order: int
    priority: int = 0
    weight: float = 1.0
    bandwidth_mbps: float = 0.0
    expected_start: float = 0.0
    expected_finish: float = 0.0
    expected_transfer_mib: float = 0.0
    alternates: tuple[str, ...] = ()
    attempt: int = 1
    failed_targets: tuple[str, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class Blocked:
    """A VM the drain cannot move, with the reason and a message a person can act on."""

    vm: str
    reason: FailureReason
    message: str


@dataclass(frozen=True)
class Failure:
    """One failed attempt of a move: the target it tried and why it failed."""

    target: str
    reason: FailureReason
    message: str = ""


@dataclass(frozen=True)
class DrainPlan:
    """What a drain will do: moves in start order, VMs it cannot move, and what it expects.

    ``parallelism`` is how many moves send bytes at once; ``prepare_ahead`` how many more may be set
    up on their targets meanwhile, to start sending the moment a sender ends (each started move holds
    a migration slot on source and target); ``per_host_limit`` (None: each host's
    own ``max_concurrent_migrations``) caps migrations per target; ``share_ratio`` is how the agents
    weigh the moves sending at once, in order (see ``Move.weight``). ``skipped`` are VMs left alone
    (filtered out by ``only``, or already migrating).
    """

    host: str
    moves: tuple[Move, ...]
    blocked: tuple[Blocked, ...] = ()
    skipped: tuple[str, ...] = ()
    parallelism: int = 1
    prepare_ahead: int = 0
    per_host_limit: int | None = None
    expected_makespan_seconds: float = 0.0
    lower_bound_seconds: float = 0.0
    strategy: str = ""
    #: How the source's agent shares its link among this plan's moves that send at once (``linkShare``):
    #: each move gets this many times the share of the one after it in order (1: equal shares).
    share_ratio: float = 1.0

    @property
    def total(self) -> int:
        return len(self.moves) + len(self.blocked)

    def move_of(self, vm: str) -> Move | None:
        for move in self.moves:
            if move.vm == vm:
                return move
        return None
