"""The evacuation engine's planner: which VMs leave a host, in what order, where, how. Pure: no I/O.

Which VMs leave, in what order, to where, how fast and how many at once. Maintenance
(``spec.maintenance``) and remediation (``EvacuateCritical``, ``Maintenance``) both call
:func:`plan_drain`; the operator executes the plan (starting moves in order as slots free up),
retries a failed move with :func:`next_attempt`, and reports VMs it cannot move as blocked, with the
reason.

How the plan aims at a short drain (makespan), not just short moves:

* The source's outbound link is the bottleneck: whatever the order, the drain takes at least the
  bytes all moves send divided by that link's rate (:func:`drain_lower_bound`). The bytes are not
  fixed: a migration that gets less bandwidth runs longer, so its guest dirties more pages and the
  rounds resend more (``predict_precopy``). Splitting the link evenly among many moves, as a fixed
  parallelism of two does, inflates the bytes, and a guest that dirties memory faster than half the
  link may stop converging at all.
* So the plan runs few moves at once and gives the earliest in order most of the link (weights
  that fall off geometrically), while the others fill whatever that one cannot use (its target's
  link, a per-migration cap, a switchover gap). How many at once and which weights are chosen by
  simulating the candidates (``simulate.py``) and keeping the shortest drain.
* One migration stream may not fill the link: its sender and receiver are bound by their CPUs. The
  source's agent measures what one stream carried (``HostView.stream_mbps``); each move is capped
  at that, like a policy's cap, so the simulation finds that two or more at once finish sooner.
  Unmeasured, a stream is taken to fill the link. (Several streams on shared CPUs carry less than
  the sum of their rates; the agents report that figure too, but measured at other moments than
  the single stream's on a shared machine the two do not compare, so the plan does not use it: it
  would keep one stream at a time where two carry more, as every real run showed.)
* Order: most important first (priority, highest first), then the longest first (LPT: large and
  slow-converging guests start early so none is left alone at the end), then by name.
* Targets: the same filters and scores as placement, counting capacity already promised to
  earlier moves of the plan, plus a preference for fast target links and for targets not already
  receiving the moves likely to run at the same time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.precopy.model import mbps_to_mibps, quick_migration_seconds
from vmshift.scheduling.compatibility import Problem, check_target
from vmshift.scheduling.fleet import Fleet, HostView, VMView
from vmshift.scheduling.moves import Blocked, DrainLimits, DrainPlan, Failure, Move
from vmshift.scheduling.placement import HostChoice, rank_targets, summarize_refusal
from vmshift.scheduling.policy import DEFAULT_POLICY, MigrationPolicyView, choose_mode, predict_live
from vmshift.scheduling.simulate import SimResult, simulate_drain

__all__ = [
    "Blocked",
    "DrainLimits",
    "DrainPlan",
    "Failure",
    "Move",
    "drain_lower_bound",
    "estimate_move",
    "fills_link",
    "fixed_parallelism_plan",
    "most_at_once",
    "next_attempt",
    "plan_drain",
    "share_ratio",
    "simulate_drain",
]

#: Score points for a target whose inbound link is as fast as the source's (scaled down for slower).
LINK_WEIGHT = 20.0
#: Score points taken off a target per move among the last few planned to it (likely concurrent),
#: scaled by how much slower its path is than the source's link.
SPREAD_PENALTY = 15.0
#: How much more of the link each move gets than the next one in order, in the "priority" weighting.
PRIORITY_RATIO = 8.0
#: The share ratio of a plan that sends one move at a time: the move prepared ahead trickles (a
#: thousandth of the link) until the one before it ends, then takes the whole link at once.
READY_RATIO = 1000.0

#: Failures that end a move for good: retrying cannot help.
_FATAL = frozenset({FailureReason.SourceLost, FailureReason.Cancelled})
#: Failures worth retrying on the same target when no other is left (they pass by themselves).
_TRANSIENT = frozenset({FailureReason.Timeout, FailureReason.AgentUnreachable, FailureReason.AlreadyMigrating})


def _policy_of(vm: VMView, policy: MigrationPolicyView | None,
               vm_policies: Mapping[str, MigrationPolicyView] | None) -> MigrationPolicyView:
    return (vm_policies or {}).get(vm.key) or policy or DEFAULT_POLICY


def _cap_mbps(source: HostView, policy: MigrationPolicyView, limits: DrainLimits) -> float:
    """The most one move out of ``source`` can carry: its link, the policy's and the drain's caps, and
    what one migration stream really carries there (``HostView.stream_mbps``, when measured)."""
    caps = [c for c in (source.bandwidth_mbps, policy.bandwidth_mbps, limits.per_migration_mbps,
                        source.stream_mbps) if c]
    return min(caps)


def estimate_move(vm: VMView, policy: MigrationPolicyView, bandwidth_mbps: float, *,
                  quick: bool = False) -> tuple[float, float]:
    """(seconds, MiB sent) for moving ``vm`` alone at ``bandwidth_mbps``, from the pre-copy model."""
    if quick:
        size = vm.memory_mib + vm.local_disk_mib
        return quick_migration_seconds(size, bandwidth_mbps), float(size)
    prediction = predict_live(vm, policy, bandwidth_mbps)
    return prediction.total_seconds, prediction.transferred_mib


def drain_lower_bound(
    plan: DrainPlan,
    fleet: Fleet,
    *,
    limits: DrainLimits | None = None,
    policy: MigrationPolicyView | None = None,
    vm_policies: Mapping[str, MigrationPolicyView] | None = None,
    setup_seconds: float = 0.0,
) -> float:
    """No schedule of ``plan``'s moves can finish sooner than this (seconds).

    Each move sends at least what the pre-copy model predicts at the fastest rate it could ever get
    (the source's link, the fastest other host's link, the policy's cap, what one stream carries),
    and everything crosses the source's outbound link (or, if slower, the sum of every other host's
    inbound links, or as many streams as the source has migration slots). The bound is the larger of
    that total over that rate and the longest single move at its best rate, plus one
    ``setup_seconds`` (no byte crosses before the first move is set up); and never less than the
    slot-seconds all moves need (each holds one of the source's free migration slots for its setup
    and its whole transfer at its best rate) over those slots.
    """
    limits = limits or DrainLimits()
    source = fleet.hosts[plan.host]
    others = [h for h in fleet if h.name != plan.host]
    fastest = max((h.bandwidth_mbps for h in others), default=source.bandwidth_mbps)
    inbound_total = sum(h.bandwidth_mbps for h in others) or source.bandwidth_mbps
    total_mib = 0.0
    longest = 0.0
    busy = 0.0  # slot-seconds: each move holds one of the source's slots from its setup to its end
    for move in plan.moves:
        vm = fleet.vms[move.vm]
        vm_policy = _policy_of(vm, policy, vm_policies)
        rate = min(_cap_mbps(source, vm_policy, limits), fastest)
        seconds, mib = estimate_move(vm, vm_policy, rate, quick=move.mode is MigrationMode.Quick)
        total_mib += mib
        longest = max(longest, seconds)
        busy += setup_seconds + seconds
    slots = max(source.max_concurrent_migrations - source.migrations_in_flight, 1)
    carried = [source.bandwidth_mbps, inbound_total]
    if source.stream_mbps:
        carried.append(source.stream_mbps * max(source.max_concurrent_migrations, 1))
    aggregate = mbps_to_mibps(min(carried))
    return max(setup_seconds + max(total_mib / aggregate, longest), busy / slots)


def _blocked(vm: VMView, problems: dict[str, list[Problem]], fleet: Fleet, policy: MigrationPolicyView, source: str
             ) -> Blocked:
    """Why no host can take ``vm``; names the policy when only a quick migration would work."""
    if not policy.allows_quick:
        quick_ranked, _ = rank_targets(vm, fleet, quick=True, exclude={source})
        if quick_ranked:
            live_only = [p for ps in problems.values() for p in ps if p.live_only]
            choice = choose_mode(MigrationMode.Auto, vm, policy, live_only[:1])
            if choice.reason is not None:
                return Blocked(vm.key, choice.reason, choice.message)
    refusal = summarize_refusal(vm, problems, what="the drain of " + source)
    return Blocked(vm.key, refusal.reason, refusal.message)


def _drain_rank(
    p: HostChoice, fleet: Fleet, source: HostView, limits: DrainLimits, recent: list[str]
) -> tuple[bool, float, str]:
    """Sort key of a drain target: one with a free migration slot first; then the placement score,
    plus a fast path (the target's inbound link and any path cap, against the source's link), minus
    contention with the moves planned just before (likely concurrent). Sharing a target only costs
    when its path is slower than the source's link (else the moves share the source's link anyway)
    or when the target runs out of migration slots. A stream bound by its CPUs (``fills_link``) is
    such a slow path: streams into one target share its receiver's CPUs, so the migrations already
    coming in to a target count as sharing it too."""
    target = fleet.hosts[p.host]
    path = min(target.bandwidth_mbps, limits.link_mbps.get((source.name, p.host), float("inf")))
    planned_here = recent.count(p.host)
    sharing = planned_here
    if source.stream_mbps is not None and not fills_link(source):
        path = min(path, source.stream_mbps)
        sharing += target.inbound_migrations
    ratio = min(path / max(source.bandwidth_mbps, 1.0), 1.0)
    penalty = SPREAD_PENALTY * sharing * (1.0 - ratio)
    if planned_here >= target.free_migration_slots:
        penalty += SPREAD_PENALTY
    return (p.waits, -round(p.score + LINK_WEIGHT * ratio - penalty, 4), p.host)


def _assign_targets(
    order: Sequence[VMView],
    source: HostView,
    fleet: Fleet,
    limits: DrainLimits,
    policy: MigrationPolicyView | None,
    vm_policies: Mapping[str, MigrationPolicyView] | None,
    window: int,
) -> tuple[list[Move], list[Blocked]]:
    """Targets for ``order`` (in that order), each counting the capacity promised to the ones before."""
    planned = fleet
    recent: list[str] = []
    moves: list[Move] = []
    blocked: list[Blocked] = []
    for vm in order:
        vm_policy = _policy_of(vm, policy, vm_policies)
        ranked, problems = rank_targets(vm, planned, quick=vm_policy.allows_quick, exclude={source.name})
        if not ranked:
            blocked.append(_blocked(vm, problems, planned, vm_policy, source.name))
            continue
        recent_window = recent[-window:] if window > 0 else []
        ranked.sort(key=lambda p: _drain_rank(p, planned, source, limits, recent_window))
        target = ranked[0].host
        choice = choose_mode(MigrationMode.Auto, vm, vm_policy, check_target(vm, target, planned, moving=True))
        if choice.mode is None:
            assert choice.reason is not None
            blocked.append(Blocked(vm.key, choice.reason, choice.message))
            continue
        moves.append(
            Move(
                vm=vm.key,
                source=source.name,
                target=target,
                mode=choice.mode,
                order=len(moves),
                priority=vm.priority,
                alternates=tuple(p.host for p in ranked[1 : 1 + limits.alternates]),
                why=choice.message,
            )
        )
        planned = planned.with_planned(vm, target, inbound=0)
        recent.append(target)
    return moves, blocked


def _weighted(moves: Sequence[Move], weighting: str) -> tuple[Move, ...]:
    if weighting == "priority":
        # Geometric weights by order; rescaled by the smallest so they never underflow to zero.
        n = len(moves)
        return tuple(replace(m, weight=PRIORITY_RATIO ** min(n - 1 - i, 300)) for i, m in enumerate(moves))
    return tuple(replace(m, weight=1.0) for m in moves)


def _with_expectations(moves: Sequence[Move], result: SimResult) -> tuple[Move, ...]:
    return tuple(
        replace(
            m,
            expected_start=result.start.get(m.vm, 0.0),
            expected_finish=result.finish.get(m.vm, 0.0),
            bandwidth_mbps=round(result.first_rate_mbps.get(m.vm, 0.0), 1),
            expected_transfer_mib=round(result.transferred_mib.get(m.vm, 0.0), 1),
        )
        for m in moves
    )


def _candidates(
    host: str, fleet: Fleet, only: Callable[[VMView], bool] | None
) -> tuple[list[VMView], list[str]]:
    movable: list[VMView] = []
    skipped: list[str] = []
    for vm in fleet.vms_on(host):
        if (only is not None and not only(vm)) or vm.migrating:
            skipped.append(vm.key)
        else:
            movable.append(vm)
    return movable, skipped


def _source(host: str, fleet: Fleet) -> HostView:
    source = fleet.host(host)
    if source is None:
        raise ValueError(f"cannot drain {host}: there is no Host named {host}")
    return source


def plan_drain(
    host: str,
    fleet: Fleet,
    limits: DrainLimits | None = None,
    *,
    only: Callable[[VMView], bool] | None = None,
    policy: MigrationPolicyView | None = None,
    vm_policies: Mapping[str, MigrationPolicyView] | None = None,
    setup_seconds: float = 0.0,
) -> DrainPlan:
    """Plan moving every VM off ``host`` (or those ``only`` accepts, e.g. ``priority >= 100``).

    Every movable VM appears exactly once, in ``moves`` or ``blocked``; VMs ``only`` rejects or
    already migrating are ``skipped``. ``policy`` applies to every VM unless ``vm_policies`` (by VM
    key) names another. ``setup_seconds``: time a migration needs before its first byte (the
    simulation uses it to decide how many moves overlap).
    """
    limits = limits or DrainLimits()
    source = _source(host, fleet)
    movable, skipped = _candidates(host, fleet, only)

    def lpt_key(vm: VMView) -> tuple[int, float, str]:
        vm_policy = _policy_of(vm, policy, vm_policies)
        local = bool(vm.local_disks)
        seconds, _ = estimate_move(vm, vm_policy, _cap_mbps(source, vm_policy, limits), quick=local)
        return (-vm.priority, -round(seconds, 6), vm.key)

    order = sorted(movable, key=lpt_key)
    k_max = most_at_once(source, limits)
    moves, blocked = _assign_targets(order, source, fleet, limits, policy, vm_policies, window=k_max - 1)
    base = DrainPlan(host=host, moves=tuple(moves), blocked=tuple(blocked), skipped=tuple(sorted(skipped)))
    best: tuple[tuple[int, float, int, int, int], DrainPlan, SimResult] | None = None
    weightings = ("equal", "priority") if fills_link(source) else ("equal",)
    for k in range(1, min(k_max, max(len(moves), 1)) + 1):
        for ahead in (0, 1) if setup_seconds > 0 and k < k_max else (0,):
            for w_index, weighting in enumerate(weightings):
                if k == 1 and weighting != "equal":
                    continue
                label = f"{k} at once{' +1 ready' if ahead else ''}, {weighting} shares"
                candidate = replace(
                    base, moves=_weighted(moves, weighting), parallelism=k, prepare_ahead=ahead, strategy=label,
                    share_ratio=share_ratio(k, weighting),
                )
                result = simulate_drain(
                    candidate, fleet, limits=limits, policy=policy, vm_policies=vm_policies,
                    setup_seconds=setup_seconds,
                )
                key = (len(result.failed), round(result.makespan_seconds, 6), k + ahead, k, w_index)
                if best is None or key < best[0]:
                    best = (key, candidate, result)
    if best is None:
        return replace(base, parallelism=k_max, strategy="nothing to move")
    _, chosen, result = best
    chosen = replace(
        chosen,
        moves=_with_expectations(chosen.moves, result),
        expected_makespan_seconds=result.makespan_seconds,
    )
    bound = drain_lower_bound(
        chosen, fleet, limits=limits, policy=policy, vm_policies=vm_policies, setup_seconds=setup_seconds
    )
    return replace(chosen, lower_bound_seconds=bound)


def most_at_once(source: HostView, limits: DrainLimits) -> int:
    """How many moves a drain of ``source`` may run at once: its free migration slots, the drain's and
    the cluster's limits; at least one."""
    slots = source.max_concurrent_migrations - source.migrations_in_flight
    bounds = [slots] + [x for x in (limits.max_parallel, limits.cluster_available) if x is not None]
    return max(min(bounds), 1)


def fills_link(source: HostView) -> bool:
    """Whether one migration stream out of ``source`` fills its link (or nothing says it does not).

    The source's agent shares its link among the moves sending at once by their weights; that pays
    only while the link is what limits them. Streams bound by their CPUs leave the link unfull, and
    uneven weights would only hold the later moves back below what their CPUs could carry, so the
    plan then shares equally."""
    return source.stream_mbps is None or source.stream_mbps >= source.bandwidth_mbps


def share_ratio(parallelism: int, weighting: str) -> float:
    """The ``linkShare`` ratio that makes the agents share the link as the plan was simulated: geometric
    weights for the "priority" weighting; one move at a time (any move prepared ahead only trickles); else
    equal shares."""
    if weighting == "priority":
        return PRIORITY_RATIO
    return READY_RATIO if parallelism == 1 else 1.0


def fixed_parallelism_plan(
    host: str,
    fleet: Fleet,
    limits: DrainLimits | None = None,
    *,
    parallelism: int = 2,
    only: Callable[[VMView], bool] | None = None,
    policy: MigrationPolicyView | None = None,
    vm_policies: Mapping[str, MigrationPolicyView] | None = None,
) -> DrainPlan:
    """The usual default, for comparison: first come first served (by ``namespace/name``), at most
    ``parallelism`` migrations per host (source and target, as KubeVirt's and Hyper-V's default of
    two), sharing links equally. Targets come from the same filters and scores as :func:`plan_drain`.
    """
    limits = limits or DrainLimits()
    source = _source(host, fleet)
    movable, skipped = _candidates(host, fleet, only)
    order = sorted(movable, key=lambda vm: vm.key)
    moves, blocked = _assign_targets(order, source, fleet, limits, policy, vm_policies, window=parallelism - 1)
    plan = DrainPlan(
        host=host,
        moves=_weighted(moves, "equal"),
        blocked=tuple(blocked),
        skipped=tuple(sorted(skipped)),
        parallelism=parallelism,
        per_host_limit=parallelism,
        strategy=f"fixed: {parallelism} per host, first come first served, equal shares",
    )
    bound = drain_lower_bound(plan, fleet, limits=limits, policy=policy, vm_policies=vm_policies)
    return replace(plan, lower_bound_seconds=bound)


def next_attempt(move: Move, failures: Sequence[Failure], *, max_attempts: int = 3) -> Move | Blocked:
    """What to do after ``move`` failed (``failures``: every failed attempt so far, oldest first).

    Give up (:class:`Blocked`) after ``max_attempts`` attempts or on a failure no retry can fix
    (the source is lost, the user cancelled). Otherwise try the next alternate target that has not
    failed yet; with none left, retry the same target only for failures that pass by themselves
    (timeouts, an unreachable agent). The operator re-checks the new target with ``check_target``
    before it starts, since the fleet has changed since the plan was made.
    """
    if not failures:
        return move
    last = failures[-1]
    tried = ", ".join(f"{f.target} ({f.reason.value})" for f in failures)
    name = move.vm.split("/", 1)[-1]
    if last.reason in _FATAL:
        return Blocked(move.vm, last.reason, f"{name} stays on {move.source}: {last.message or last.reason.value}.")
    if len(failures) >= max_attempts:
        return Blocked(
            move.vm,
            last.reason,
            f"{name} stays on {move.source} after {len(failures)} failed attempts ({tried}); last: "
            f"{last.message or last.reason.value}. Fix the cause and restart the drain.",
        )
    failed = {f.target for f in failures}
    for alternate in move.alternates:
        if alternate not in failed:
            return replace(
                move,
                target=alternate,
                attempt=len(failures) + 1,
                failed_targets=tuple(f.target for f in failures),
                alternates=tuple(a for a in move.alternates if a != alternate and a not in failed),
            )
    if last.reason in _TRANSIENT:
        return replace(move, target=last.target, attempt=len(failures) + 1,
                       failed_targets=tuple(f.target for f in failures))
    return Blocked(
        move.vm,
        last.reason,
        f"{name} stays on {move.source}: every target tried failed ({tried}); last: "
        f"{last.message or last.reason.value}.",
    )
