"""A deterministic discrete-event simulator of drains. Pure: no I/O, no clocks, no randomness.

When does each migration of a drain end, and the whole drain? Each migration is the fluid pre-copy
model of ``vmshift.precopy.model``, played round by round while its rate changes: round 0 sends
the whole memory; each next round sends what the guest dirtied while the last one was on the wire
(``distinct_dirtied_mib``). After each round the agents' own convergence rule decides
(``vmshift.precopy.convergence.next_action``, with the policy's parameters as the agent receives
them): switch over (the guest pauses and the rest crosses: the downtime), go on, throttle the guest
(AutoConverge, by the policy's initial, step and maximum percent), fall back to Quick (pause and
send the remaining set) or fail (the VM stays). At a constant rate this reproduces
``predict_precopy`` exactly. A quick move pauses the guest and copies its memory and local disks.

Concurrent migrations share links by weighted max-min fairness (progressive filling): every
migration crosses the source's outbound link, its target's inbound link and any configured path
cap, and none exceeds the per-migration cap. A move starts, in plan order, as soon as the source
has a free slot, its target has one, and the cluster has one; it first spends ``setup_seconds``
(creating the VM on the target) without using the link. At most ``parallelism`` moves send bytes
at once; ``prepare_ahead`` more may be set up meanwhile and wait, ready, to start sending the
moment a sender finishes (so setups do not leave the link idle). Every started move, sending,
setting up or ready, holds a migration slot on its source and its target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from vmshift.api.reasons import MigrationMode
from vmshift.precopy.convergence import MIB, ActionKind, RoundStats, next_action
from vmshift.precopy.model import distinct_dirtied_mib, mbps_to_mibps
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.moves import DrainLimits, DrainPlan
from vmshift.scheduling.policy import DEFAULT_POLICY, MigrationPolicyView

_EPS = 1e-9


@dataclass(frozen=True)
class SimMigration:
    """One migration to simulate: the guest's memory behaviour, where it goes, its share."""

    vm: str
    source: str
    target: str
    memory_mib: float
    dirty_rate_mibps: float = 0.0
    working_set_mib: float = 0.0
    quick: bool = False
    extra_copy_mib: float = 0.0
    weight: float = 1.0
    policy: MigrationPolicyView = DEFAULT_POLICY


@dataclass(frozen=True)
class SimResult:
    """What the simulation saw. Times are seconds from the start of the drain."""

    makespan_seconds: float
    start: Mapping[str, float]
    finish: Mapping[str, float]
    transferred_mib: Mapping[str, float]
    downtime_ms: Mapping[str, float]
    first_rate_mbps: Mapping[str, float]
    outcome: Mapping[str, str]
    failed: tuple[str, ...] = ()
    peak_outbound: int = 0
    peak_cluster: int = 0
    peak_inbound: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def total_transferred_mib(self) -> float:
        return sum(self.transferred_mib.values())


class _Flow:
    """The state of one running migration."""

    __slots__ = (
        "convergence", "elapsed", "final_outcome", "final_started", "idle", "left", "m", "rate", "resources",
        "round", "rung_started", "sent", "size", "stalled", "throttle", "transferring_final",
    )

    def __init__(self, m: SimMigration, resources: tuple[str, ...], setup_seconds: float) -> None:
        self.m = m
        self.resources = resources
        self.rate = 0.0
        self.sent = 0.0
        self.idle = setup_seconds  # seconds of setup before the first byte
        self.round = 0
        self.stalled = self.rung_started = 0
        self.throttle = 0.0  # percent, as the agent applies it
        self.convergence = m.policy.convergence()
        self.elapsed = 0.0
        self.final_started: float | None = None
        self.final_outcome = "Quick"
        self.transferring_final = False
        if m.quick:
            self.size = self.left = m.memory_mib + m.extra_copy_mib
            self.transferring_final = True
        else:
            self.size = self.left = m.memory_mib

    @property
    def ready(self) -> bool:
        return self.idle <= 0


def allocate(
    flows: Sequence[tuple[float, float, tuple[str, ...]]], capacity: Mapping[str, float]
) -> list[float]:
    """Weighted max-min fair rates for ``flows`` given as (weight, cap, resources) (progressive filling)."""
    rates = [0.0] * len(flows)
    remaining = dict(capacity)
    unfrozen = {i for i, f in enumerate(flows) if f[0] > 0}
    while unfrozen:
        level = math.inf
        weight_on: dict[str, float] = {}
        for i in unfrozen:
            weight, cap, resources = flows[i]
            level = min(level, cap / weight)
            for r in resources:
                weight_on[r] = weight_on.get(r, 0.0) + weight
        for r, w in weight_on.items():
            level = min(level, max(remaining.get(r, math.inf), 0.0) / w)
        if math.isinf(level):
            break
        tight = {r for r, w in weight_on.items() if max(remaining.get(r, math.inf), 0.0) / w <= level * (1 + 1e-12)}
        frozen = {
            i for i in unfrozen
            if flows[i][1] / flows[i][0] <= level * (1 + 1e-12) or any(r in tight for r in flows[i][2])
        }
        for i in frozen:
            rates[i] = flows[i][0] * level
            for r in flows[i][2]:
                if r in remaining:
                    remaining[r] -= rates[i]
        unfrozen -= frozen
    return rates


def simulate(
    migrations: Sequence[SimMigration],
    *,
    parallelism: int,
    prepare_ahead: int = 0,
    capacity_mibps: Mapping[str, float],
    resources: Callable[[SimMigration], tuple[str, ...]],
    target_slots: Mapping[str, int],
    cluster_slots: int | None = None,
    per_migration_mibps: float | None = None,
    setup_seconds: float = 0.0,
    switchover_overhead_ms: float = 0.0,
) -> SimResult:
    """Play ``migrations`` (in start order) to the end; see the module docstring for the model."""
    pending = list(migrations)
    active: list[_Flow] = []
    start: dict[str, float] = {}
    finish: dict[str, float] = {}
    sent: dict[str, float] = {}
    downtime: dict[str, float] = {}
    first_rate: dict[str, float] = {}
    outcome: dict[str, str] = {}
    failed: list[str] = []
    inbound: dict[str, int] = {}
    peak_inbound: dict[str, int] = {}
    peak_outbound = peak_cluster = 0
    cap = per_migration_mibps if per_migration_mibps and per_migration_mibps > 0 else math.inf
    now = 0.0

    def end(flow: _Flow, result: str) -> None:
        m = flow.m
        active.remove(flow)
        inbound[m.target] -= 1
        overhead = switchover_overhead_ms / 1000 if result != "Failed" else 0.0
        finish[m.vm] = now + overhead
        sent[m.vm] = flow.sent
        outcome[m.vm] = result
        if result == "PostCopy":  # the guest ran on the target while the rest crossed
            downtime[m.vm] = switchover_overhead_ms
        elif flow.final_started is not None and result != "Failed":
            downtime[m.vm] = (now - flow.final_started) * 1000 + switchover_overhead_ms
        if result == "Failed":
            failed.append(m.vm)

    def pause(flow: _Flow, left: float) -> None:
        flow.transferring_final = True
        flow.final_started = now
        flow.left = flow.size = left

    def round_ended(flow: _Flow) -> str | None:
        """Advance ``flow`` past the end of a pre-copy round; the outcome if it is done."""
        m = flow.m
        if flow.transferring_final:
            return flow.final_outcome
        write_rate = m.dirty_rate_mibps * (1 - flow.throttle / 100)
        dirtied = distinct_dirtied_mib(flow.elapsed, write_rate, m.working_set_mib, m.memory_mib)
        flow.elapsed = 0.0
        action = next_action(RoundStats(
            round_index=flow.round, remaining_bytes=dirtied * MIB, sent_bytes=flow.size * MIB,
            link_rate=flow.rate * MIB, write_rate=write_rate * MIB, throttle_percent=flow.throttle,
            stalled=flow.stalled, rung_started=flow.rung_started), flow.convergence)
        flow.stalled, flow.rung_started = action.stalled, action.rung_started
        if action.kind is ActionKind.SwitchOver:
            flow.final_outcome = "AutoConverge" if flow.throttle > 0 else "Live"
            pause(flow, dirtied)
            return None
        if action.kind in (ActionKind.Quick, ActionKind.PostCopy):
            # Post-copy runs the guest on the target at once, but the rest still crosses the link.
            flow.final_outcome = action.kind.value
            pause(flow, dirtied)
            return None
        if action.kind is ActionKind.Fail:
            return "Failed"
        flow.throttle = action.throttle_percent
        flow.round += 1
        flow.left = flow.size = dirtied
        return None

    def can_start(m: SimMigration) -> bool:
        if len(active) >= parallelism + prepare_ahead:
            return False
        if cluster_slots is not None and len(active) >= cluster_slots:
            return False
        return inbound.get(m.target, 0) < target_slots.get(m.target, 0)

    while pending or active:
        for m in list(pending):
            if can_start(m):
                pending.remove(m)
                flow = _Flow(m, resources(m), setup_seconds)
                if m.quick:
                    flow.final_started = now + setup_seconds
                active.append(flow)
                inbound[m.target] = inbound.get(m.target, 0) + 1
                peak_inbound[m.target] = max(peak_inbound.get(m.target, 0), inbound[m.target])
                start[m.vm] = now
        if not active:  # nothing can ever start: a target with no slot at all
            for m in pending:
                failed.append(m.vm)
                outcome[m.vm] = "Failed"
            break
        peak_outbound = max(peak_outbound, len(active))
        peak_cluster = max(peak_cluster, len(active))
        moving = [f for f in active if f.ready][:parallelism]
        rates = allocate([(f.m.weight, cap, f.resources) for f in moving], capacity_mibps)
        for f in active:
            f.rate = 0.0
        for f, r in zip(moving, rates, strict=True):
            f.rate = r
            first_rate.setdefault(f.m.vm, r)
        steps = [f.idle for f in active if f.idle > 0]
        steps += [f.left / f.rate for f in moving if f.rate > 0]
        if not steps:  # bytes to move and no bandwidth anywhere
            for f in list(active):
                end(f, "Failed")
            continue
        dt = min(steps)
        now += dt
        done: list[_Flow] = []
        senders = set(map(id, moving))
        for f in active:
            if f.idle > 0:
                f.idle -= dt
                if f.idle <= _EPS:
                    f.idle = 0.0
                    if f.left <= _EPS:
                        done.append(f)
                continue
            if id(f) not in senders:  # ready, waiting for a sender to finish
                continue
            moved = f.rate * dt
            f.sent += moved
            f.elapsed += dt
            f.left -= moved
            if f.left <= _EPS * max(f.size, 1.0):
                f.left = 0.0
                done.append(f)
        for f in done:
            result = round_ended(f)
            while result is None and f.left <= 0:  # an empty round or final set: nothing to send
                result = round_ended(f)
            if result is not None:
                end(f, result)
    return SimResult(
        makespan_seconds=max(finish.values(), default=0.0),
        start=MappingProxyType(start),
        finish=MappingProxyType(finish),
        transferred_mib=MappingProxyType(sent),
        downtime_ms=MappingProxyType(downtime),
        first_rate_mbps=MappingProxyType({k: v * 8 * 1024 * 1024 / 1_000_000 for k, v in first_rate.items()}),
        outcome=MappingProxyType(outcome),
        failed=tuple(failed),
        peak_outbound=peak_outbound,
        peak_cluster=peak_cluster,
        peak_inbound=MappingProxyType(peak_inbound),
    )


def link_capacities(fleet: Fleet, source: str, targets: Sequence[str], limits: DrainLimits) -> dict[str, float]:
    """Link capacities in MiB/s: the source's outbound, each target's inbound, any path caps."""
    capacity = {f"out:{source}": mbps_to_mibps(fleet.hosts[source].bandwidth_mbps)}
    for t in targets:
        capacity[f"in:{t}"] = mbps_to_mibps(fleet.hosts[t].bandwidth_mbps)
    for (s, t), mbps in limits.link_mbps.items():
        capacity[f"link:{s}>{t}"] = mbps_to_mibps(mbps)
    return capacity


def path_of(limits: DrainLimits) -> Callable[[SimMigration], tuple[str, ...]]:
    """The links a migration crosses, by resource name (see :func:`link_capacities`)."""

    def resources(m: SimMigration) -> tuple[str, ...]:
        path: tuple[str, ...] = (f"out:{m.source}", f"in:{m.target}")
        if (m.source, m.target) in limits.link_mbps:
            path += (f"link:{m.source}>{m.target}",)
        return path

    return resources


def simulate_drain(
    plan: DrainPlan,
    fleet: Fleet,
    *,
    limits: DrainLimits | None = None,
    policy: MigrationPolicyView | None = None,
    vm_policies: Mapping[str, MigrationPolicyView] | None = None,
    setup_seconds: float = 0.0,
    switchover_overhead_ms: float = 0.0,
) -> SimResult:
    """Simulate ``plan`` on ``fleet``: its order, targets, weights and parallelism; each target's free
    migration slots (or the plan's ``per_host_limit``); the cluster's slots; the policy's cap and what
    one migration stream out of the source carries (``HostView.stream_mbps``), whichever is lower.
    """
    limits = limits or DrainLimits()
    migrations: list[SimMigration] = []
    for move in plan.moves:
        vm = fleet.vms[move.vm]
        vm_policy = (vm_policies or {}).get(move.vm) or policy or DEFAULT_POLICY
        migrations.append(
            SimMigration(
                vm=move.vm,
                source=move.source,
                target=move.target,
                memory_mib=vm.memory_mib,
                dirty_rate_mibps=vm.dirty_rate_mibps,
                working_set_mib=vm.working_set_mib,
                quick=move.mode is MigrationMode.Quick,
                extra_copy_mib=vm.local_disk_mib,
                weight=move.weight,
                policy=vm_policy,
            )
        )
    targets = sorted({m.target for m in migrations})
    if plan.per_host_limit is not None:
        slots = {t: plan.per_host_limit for t in targets}
    else:
        slots = {t: fleet.hosts[t].free_migration_slots for t in targets}
    caps = [c for c in (limits.per_migration_mbps, (policy or DEFAULT_POLICY).bandwidth_mbps,
                        fleet.hosts[plan.host].stream_mbps) if c]
    return simulate(
        migrations,
        parallelism=max(plan.parallelism, 1),
        prepare_ahead=plan.prepare_ahead,
        capacity_mibps=link_capacities(fleet, plan.host, targets, limits),
        resources=path_of(limits),
        target_slots=slots,
        cluster_slots=limits.cluster_available,
        per_migration_mibps=mbps_to_mibps(min(caps)) if caps else None,
        setup_seconds=setup_seconds,
        switchover_overhead_ms=switchover_overhead_ms,
    )
