"""The evacuation engine's pass: what a drain does next, from what it sees now. Pure: no I/O, no clocks.

One engine serves maintenance (``Host.spec.maintenance``) and remediation (``EvacuateCritical``,
``Maintenance``). The operator runs one pass whenever something changes: it hands over the drain's
:class:`Goal` (which VMs must leave which host, and why), the fleet, and every migration this drain
has created so far (:class:`Attempt`, read back from the API server's index of migrations labelled
with the host); :func:`evacuation_step` answers with the progress to report and the migrations to
create or cancel. Nothing else is remembered between passes, so a pass after an operator restart
sees exactly what the last one saw.

The rules of a pass:

* A VM counts as moved once one of this drain's migrations of it succeeded; a VM of the goal still
  on the host is left to move. ``total`` is the two together.
* A VM with a migration under way (this drain's, or anyone's) waits for it.
* A VM whose attempts failed is tried again on a target not tried yet (``next_attempt``), up to
  ``limits.max_attempts``; then, or when the failure cannot pass (the user cancelled, the source is
  lost), it is reported blocked with the reason. So is a VM no host can take now
  (``plan_drain``'s blocked). A blocked VM costs nothing: no migration is created for it.
* The rest is planned by ``plan_drain`` (order: most important first, then longest; targets by the
  placement filters and scores) and started in plan order, never more at once than the plan's
  parallelism (plus the one it prepares ahead), and never more of this drain's migrations unfinished
  than the source's ``maxConcurrentMigrations`` plus one waiting in the queue: the migration queue
  then enforces each host's slots and the cluster limit, in the order the drain created them.
* The drain is Running while anything moves or is to start; Blocked when only blocked VMs are left;
  Completed when none is left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from vmshift.api.host import DrainState
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.api.remediationpolicy import RemediationAction
from vmshift.scheduling.drain import fills_link, most_at_once, next_attempt, plan_drain, share_ratio
from vmshift.scheduling.fleet import Fleet, HostView, VMView
from vmshift.scheduling.moves import Blocked, DrainLimits, DrainPlan, Failure, Move
from vmshift.scheduling.policy import MigrationPolicyView

_NO_POLICIES: Mapping[str, MigrationPolicyView] = MappingProxyType({})

#: Failures after which a VM is not tried again in the same drain (a person cancelled its move, or
#: its source lost it): retrying cannot help.
_GIVE_UP = frozenset({FailureReason.Cancelled, FailureReason.SourceLost})

#: Seconds a real migration spends before its first byte (validation, queueing, preparing the
#: target): the planner uses it to decide how many moves overlap. ``bench/drain.py --real`` measured
#: 0.1-0.3 s from one move's end to the next one's first byte (p50, two busy shared cores; p90 up to
#: 0.8 s): half a second is on the safe side, where a whole second made one stream at a time look
#: better than two when one stream carries half the link.
SETUP_SECONDS = 0.5


@dataclass(frozen=True)
class Goal:
    """What must leave ``host``: every VM, or (``min_priority``) those at or above a priority.

    ``trigger`` says why, for people: ``spec.maintenance`` or ``RemediationPolicy fan
    (EvacuateCritical)``.
    """

    host: str
    trigger: str
    min_priority: int | None = None

    def covers(self, vm: VMView) -> bool:
        return self.min_priority is None or vm.priority >= self.min_priority


@dataclass(frozen=True)
class Attempt:
    """One migration a drain created: which drain (``episode``), which VM, which try, how it stands."""

    namespace: str
    name: str
    vm: str
    episode: str
    attempt: int
    phase: MigrationPhase
    target: str | None = None
    reason: FailureReason | None = None
    message: str = ""
    #: The version this view was taken at: a withdrawal deletes only that version (not one admitted since).
    resource_version: str = ""

    @property
    def finished(self) -> bool:
        return self.phase.finished

    @property
    def admitted(self) -> bool:
        """Past the queue: it holds slots and may already be sending memory."""
        return self.phase is not MigrationPhase.Pending and not self.finished


@dataclass(frozen=True)
class Create:
    """A migration to create: the move, the object's name and attempt number, and its share of the
    source's link (``rank`` in the drain's order, ``ratio`` from the plan: see ``LinkShare``)."""

    move: Move
    name: str
    attempt: int
    total: int
    rank: int = 0
    ratio: float = 1.0

    @property
    def namespace(self) -> str:
        return self.move.vm.split("/", 1)[0]

    @property
    def vm_name(self) -> str:
        return self.move.vm.split("/", 1)[1]


@dataclass(frozen=True)
class Progress:
    """What ``Host.status.drain`` reports."""

    state: DrainState
    total: int = 0
    moved: int = 0
    in_flight: int = 0
    failed: int = 0
    blocked: tuple[Blocked, ...] = ()


@dataclass(frozen=True)
class Step:
    """One pass's answer: progress, migrations to create (in order) and to cancel (queued ones the goal no
    longer needs), the plan, and ``stale``: finished migrations of earlier drains of the host, to delete."""

    progress: Progress
    create: tuple[Create, ...] = ()
    cancel: tuple[Attempt, ...] = ()
    plan: DrainPlan | None = None
    stale: tuple[Attempt, ...] = ()


def episode_id(host: str, started_at: str) -> str:
    """A short id of one drain of ``host`` (its start time): the label that tells its migrations
    apart from those of earlier drains."""
    return hashlib.sha256(f"{host}@{started_at}".encode()).hexdigest()[:10]


def migration_name(vm_name: str, episode: str, attempt: int) -> str:
    """The migration object of one attempt: stable, so creating it twice is harmless."""
    return f"{vm_name[:220]}-evac-{episode[:6]}-{attempt}"


def _failures(attempts: Iterable[Attempt]) -> list[Failure]:
    out = []
    for a in sorted(attempts, key=lambda a: a.attempt):
        if a.phase is MigrationPhase.Failed:
            out.append(Failure(a.target or "", a.reason or FailureReason.TargetLost, a.message))
        elif a.phase is MigrationPhase.Cancelled:
            out.append(Failure(a.target or "", FailureReason.Cancelled,
                               a.message or "a person cancelled its migration"))
    return out


def _retry(move: Move, failures: Sequence[Failure], max_attempts: int) -> Move | Blocked:
    """The plan's move for a VM that failed before: its planned target first when not tried yet,
    then its alternates; ``next_attempt`` decides when to give up."""
    alternates = (move.target, *[a for a in move.alternates if a != move.target])
    return next_attempt(replace(move, alternates=alternates), failures, max_attempts=max_attempts)


def evacuation_step(
    goal: Goal,
    episode: str,
    fleet: Fleet,
    attempts: Sequence[Attempt],
    *,
    limits: DrainLimits | None = None,
    vm_policies: Mapping[str, MigrationPolicyView] = _NO_POLICIES,
    setup_seconds: float = SETUP_SECONDS,
) -> Step:
    """The next pass of the drain ``episode`` toward ``goal`` (see the module rules)."""
    limits = limits or DrainLimits()
    mine = [a for a in attempts if a.episode == episode]
    stale = tuple(a for a in attempts if a.episode != episode and a.finished)
    by_vm: dict[str, list[Attempt]] = {}
    for a in mine:
        by_vm.setdefault(a.vm, []).append(a)
    moved = {vm for vm, tries in by_vm.items() if any(a.phase is MigrationPhase.Succeeded for a in tries)}
    unfinished = {a.vm: a for a in mine if not a.finished}
    covered = [vm for vm in fleet.vms_on(goal.host) if goal.covers(vm) and vm.key not in moved]
    covered_keys = {vm.key for vm in covered}
    # Migrations queued for VMs the goal no longer covers (it narrowed) are withdrawn.
    cancel = tuple(a for a in unfinished.values() if not a.admitted and a.vm not in covered_keys)
    moving = {vm.key for vm in covered if vm.key in unfinished or vm.migrating}
    # Admitted migrations of VMs the fleet already shows elsewhere: the migration writes the VM's
    # new host before its own Succeeded, so between the two the VM is still this drain's, in flight.
    landing = {a.vm for a in unfinished.values() if a.admitted and a.vm not in covered_keys} - moved
    blocked: list[Blocked] = []
    candidates: set[str] = set()
    for vm in covered:
        if vm.key in moving:
            continue
        failures = _failures(by_vm.get(vm.key, ()))
        if failures and (len(failures) >= limits.max_attempts or failures[-1].reason in _GIVE_UP):
            stub = Move(vm.key, goal.host, failures[-1].target, MigrationMode.Auto, order=0)
            verdict = next_attempt(stub, failures, max_attempts=limits.max_attempts)
            if isinstance(verdict, Blocked):
                blocked.append(verdict)
                continue
        candidates.add(vm.key)
    plan: DrainPlan | None = None
    create: list[Create] = []
    waiting = 0
    total = len(moved) + len(covered) + len(landing)
    if candidates:
        fleet = _with_queued(fleet, [a for a in unfinished.values() if not a.admitted])
        plan = plan_drain(goal.host, fleet, limits, only=_member(candidates), vm_policies=vm_policies,
                          setup_seconds=setup_seconds)
        blocked.extend(plan.blocked)
        pending = sum(1 for a in unfinished.values() if not a.admitted and a.vm in covered_keys)
        # The plan's window counts the source's free slots from the migration index; this drain's own
        # migrations also cap it (all the source's slots plus one queued), so a pass that sees the
        # two indexes a moment apart never starts more.
        source = fleet.host(goal.host)
        ratio = _drain_share_ratio(plan, goal, fleet, source, sum(1 for a in mine if a.admitted), limits,
                                   _member(candidates), vm_policies, setup_seconds)
        withdrawn = {(a.namespace, a.name) for a in cancel}
        holding = sum(1 for a in mine if not a.finished and (a.namespace, a.name) not in withdrawn)
        cap = (source.max_concurrent_migrations if source else 1) + 1 - holding
        budget = max(min(plan.parallelism + plan.prepare_ahead - pending, cap), 0)
        for move in plan.moves:
            tries = by_vm.get(move.vm, [])
            failures = _failures(tries)
            if failures:
                verdict = _retry(move, failures, limits.max_attempts)
                if isinstance(verdict, Blocked):
                    blocked.append(verdict)
                    continue
                move = replace(verdict, order=move.order)
            if budget <= 0:
                waiting += 1
                continue
            attempt = max((a.attempt for a in tries), default=0) + 1
            # Ranks grow with every migration this drain creates, so one created later never takes the
            # link from one already sending (only differences of rank count on the agents).
            create.append(Create(move, migration_name(move.vm.split("/", 1)[1], episode, attempt), attempt, total,
                                 rank=len(mine) + len(create), ratio=ratio))
            budget -= 1
    in_flight = len(moving) + len(create) + len(landing)
    # Running while anything moves or waits for its turn; then Blocked if VMs are left that cannot
    # move, else Completed.
    state = (DrainState.Running if in_flight or waiting else DrainState.Blocked if blocked
             else DrainState.Completed)
    progress = Progress(
        state=state,
        total=total,
        moved=len(moved),
        in_flight=in_flight,
        failed=sum(1 for a in mine if a.phase is MigrationPhase.Failed),
        blocked=tuple(sorted(blocked, key=lambda b: b.vm)),
    )
    return Step(progress, tuple(create), cancel, plan, stale)


def wind_down(previous: DrainState | None, episode: str, fleet: Fleet, host: str,
              attempts: Sequence[Attempt], *, min_priority: int | None = None) -> Step:
    """The pass of a drain whose goal is gone (maintenance turned off, remediation ended).

    Migrations still queued are withdrawn (cancelled before they send a byte); those already
    admitted run to their end, so no VM is left half-moved. A completed drain stays Completed; any
    other ends Cancelled. ``min_priority`` is the scope the drain had (its VMs left count in total).
    """
    mine = [a for a in attempts if a.episode == episode]
    moved = {a.vm for a in mine if a.phase is MigrationPhase.Succeeded}
    cancel = tuple(a for a in mine if not a.finished and not a.admitted)
    running = [a for a in mine if a.admitted]
    state = DrainState.Completed if previous is DrainState.Completed else DrainState.Cancelled
    left = sum(1 for vm in fleet.vms_on(host)
               if vm.key not in moved and (min_priority is None or vm.priority >= min_priority))
    progress = Progress(
        state=state,
        total=len(moved) + left,
        moved=len(moved),
        in_flight=len(running),
        failed=sum(1 for a in mine if a.phase is MigrationPhase.Failed),
    )
    return Step(progress, (), cancel, None, tuple(a for a in attempts if a.episode != episode and a.finished))


def _with_queued(fleet: Fleet, queued: Sequence[Attempt]) -> Fleet:
    """``fleet`` with this drain's queued migrations counted as coming in to their targets: the migration
    index counts a migration only once admitted, and the next move planned meanwhile would go to the
    same target (two streams into one receiver share its CPUs and its migration slots)."""
    for a in queued:
        target = fleet.host(a.target) if a.target else None
        if target is not None:
            fleet = fleet.with_host(replace(target, inbound_migrations=target.inbound_migrations + 1))
    return fleet


def _drain_share_ratio(plan: DrainPlan, goal: Goal, fleet: Fleet, source: HostView | None, own: int,
                       limits: DrainLimits, only: Callable[[VMView], bool],
                       vm_policies: Mapping[str, MigrationPolicyView], setup_seconds: float) -> float:
    """How the migrations this pass creates share the source's link with the drain's own ones under way.

    ``plan`` sees the slots this drain's own ``own`` admitted migrations hold as taken, so once they
    fill them it plans one at a time, whose ratio would make the next migration only trickle beside
    them (its rank is after theirs) even where the drain runs two at once. The ratio is the one of
    the plan that counts the drain's own slots as its own. A plan of one move is one at a time
    whatever the streams carry: the drain's last move shares equally with its moves under way where
    the drain may run several at once and one stream cannot fill the link (two carry more)."""
    if own <= 0 or source is None:
        return plan.share_ratio
    freed = replace(source, outbound_migrations=max(source.outbound_migrations - own, 0))
    whole = plan_drain(goal.host, fleet.with_host(freed), limits, only=only, vm_policies=vm_policies,
                       setup_seconds=setup_seconds)
    if len(whole.moves) == 1 and most_at_once(freed, limits) > 1 and not fills_link(freed):
        return share_ratio(2, "equal")
    return whole.share_ratio


def _member(keys: set[str]) -> Callable[[VMView], bool]:
    return lambda vm: vm.key in keys



def goal_of(host: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> Goal | None:
    """What the Host asks to be moved away now: everything for ``spec.maintenance`` or a Maintenance
    remediation, the important VMs for an EvacuateCritical one; None when nothing must move."""
    remediation = status.get("remediation") or {}
    action = remediation.get("action")
    policy = remediation.get("policy")
    if spec.get("maintenance"):
        return Goal(host, "spec.maintenance")
    if action == RemediationAction.Maintenance:
        return Goal(host, f"RemediationPolicy {policy} (Maintenance)")
    if action == RemediationAction.EvacuateCritical:
        threshold = remediation.get("priorityThreshold")
        return Goal(host, f"RemediationPolicy {policy} (EvacuateCritical)",
                    min_priority=int(threshold) if threshold is not None else 0)
    return None
