"""Drain pass: each Host's supervisor runs the evacuation engine for maintenance and remediation.

Thin: the decisions are ``scheduling.evacuation`` (goal, next step) over the indexes; this module
creates and deletes VirtualMachineMigration objects, decides ``Host.status.drain`` (the supervisor
writes it, with the rest of the Host's status) and posts events.
The existing migration daemon and queue run the migrations it creates.

Each migration a drain creates carries the labels ``vmshift.io/evacuation=<host>`` and
``vmshift.io/evacuation-id=<drain id>`` (the drain id comes from ``status.drain.startedAt``), an
owner reference to its VM (a cluster-scoped Host cannot own namespaced objects), and its attempt
number in an annotation. Progress is derived from those objects through an index on every pass, so
an operator restart loses nothing: the next daemon reads ``status.drain`` and the index and goes
on. Finished migrations of a host's earlier drains are deleted when a later drain runs, and every
one of them when the Host is deleted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from vmshift import metrics, timestamps
from vmshift.api.host import DrainState
from vmshift.api.labels import ATTEMPT_ANNOTATION, EPISODE_LABEL, EVACUATION_LABEL, ORDER_ANNOTATION, VM_LABEL
from vmshift.api.reasons import FailureReason, MigrationPhase
from vmshift.controllers import events, indexes, kubeapi
from vmshift.controllers.expectations import Expectations
from vmshift.controllers.indexes import GROUP, MIGRATIONS, VERSION, Store, fleet, namespace_labels, one, values
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import MigrationEntry, VMEntry, operator_labels
from vmshift.scheduling.drain import plan_drain
from vmshift.scheduling.evacuation import (
    SETUP_SECONDS,
    Attempt,
    Create,
    Goal,
    Progress,
    Step,
    episode_id,
    evacuation_step,
    goal_of,
    wind_down,
)
from vmshift.scheduling.fleet import Fleet
from vmshift.scheduling.moves import DrainLimits
from vmshift.scheduling.policy import DEFAULT_POLICY, MigrationPolicyView, select_policy

#: Seconds between passes while a drain runs (events wake it sooner), and while nothing drains.
BUSY_SECONDS = 2.0
IDLE_SECONDS = 60.0
#: How long a created migration counts as queued while the index does not show it.
EXPECTATION_SECONDS = 30.0
#: Blocked VMs listed in an event or a condition message.
LISTED = 5

log = logging.getLogger("vmshift.drains")


def wake(host: str) -> None:
    """Ask the supervisor of ``host`` for a pass (its drain pass among them) now."""
    runtime().wake_host(host)


def attempt_of(body: Mapping[str, Any]) -> Attempt:
    """One drain migration as the engine sees it (pure)."""
    meta = body.get("metadata", {})
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    failure = status.get("failure") or {}
    reason = failure.get("reason")
    try:
        attempt = int((meta.get("annotations") or {}).get(ATTEMPT_ANNOTATION, "1"))
    except ValueError:
        attempt = 1
    return Attempt(
        namespace=meta["namespace"],
        name=meta["name"],
        vm=f"{meta['namespace']}/{spec.get('vmName', '')}",
        episode=(meta.get("labels") or {}).get(EPISODE_LABEL, ""),
        attempt=attempt,
        phase=MigrationPhase(status.get("phase") or MigrationPhase.Pending),
        target=status.get("targetHost") or spec.get("targetHost"),
        reason=FailureReason(str(reason)) if reason in FailureReason.__members__ else None,
        message=failure.get("message") or "",
        resource_version=str(meta.get("resourceVersion") or ""),
    )


@MIGRATIONS.index
def evacuation_index(body: Mapping[str, Any]) -> dict[str, Attempt]:
    """The migrations drains created (they carry the label), by the host they drain."""
    host = (body["metadata"].get("labels") or {}).get(EVACUATION_LABEL)
    return {host: attempt_of(body)} if host else {}


@MIGRATIONS.listen
def wake_drain_on_migration_event(_type: str, body: Mapping[str, Any]) -> None:
    host = (body["metadata"].get("labels") or {}).get(EVACUATION_LABEL)
    if host:
        wake(host)


def migration_body(create: Create, host: str, episode: str, trigger: str, vm: VMEntry) -> dict[str, Any]:
    """The VirtualMachineMigration one move of a drain creates (pure)."""
    move = create.move
    retry = f" (attempt {create.attempt}, after {', '.join(move.failed_targets)} failed)" if create.attempt > 1 else ""
    reason = (f"Drain of {host} ({trigger}): move {move.order + 1} of the plan, priority {move.priority}, to "
              f"{move.target}{retry}; planned rate {move.bandwidth_mbps:.0f} Mbps.")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "VirtualMachineMigration",
        "metadata": {
            "name": create.name,
            "namespace": create.namespace,
            "labels": operator_labels(**{EVACUATION_LABEL: host, EPISODE_LABEL: episode,
                                         VM_LABEL: create.vm_name}),
            "annotations": {ATTEMPT_ANNOTATION: str(create.attempt), ORDER_ANNOTATION: str(move.order)},
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine", "name": vm.name,
                                 "uid": vm.uid, "controller": False, "blockOwnerDeletion": False}],
        },
        "spec": {"vmName": create.vm_name, "targetHost": move.target, "mode": "Auto", "reason": reason[:1024],
                 "linkShare": {"rank": min(create.rank, 1_000_000), "ratio": create.ratio}},
    }


def drain_status(progress: Progress) -> dict[str, Any]:
    """The counters of ``status.drain`` from a pass (pure)."""
    return {
        "state": progress.state.value,
        "total": progress.total,
        "moved": progress.moved,
        "inFlight": progress.in_flight,
        "failed": progress.failed,
        "blocked": [{"vm": b.vm, "reason": b.reason.value, "message": b.message[:4096]} for b in progress.blocked],
    }


def describe_blocked(progress: Progress) -> str:
    shown = "; ".join(f"{b.vm} ({b.reason.value}): {b.message}" for b in progress.blocked[:LISTED])
    more = f"; and {len(progress.blocked) - LISTED} more" if len(progress.blocked) > LISTED else ""
    return shown + more


def _vm_policies(fleet_now: Fleet, host: str, vms: Store[VMEntry],
                 policies: list[MigrationPolicyView]) -> dict[str, MigrationPolicyView]:
    out = {}
    for view in fleet_now.vms_on(host):
        entry = one(vms, view.key)
        if entry is None:
            continue
        requested = entry.spec.migration.policy
        out[view.key] = select_policy(entry.labels, entry.namespace, policies, requested=requested,
                                      namespace_labels=namespace_labels(entry.namespace)) or DEFAULT_POLICY
    return out


def _limits(fleet_now: Fleet, migrations: Store[MigrationEntry], policies: list[MigrationPolicyView],
            host: str) -> DrainLimits:
    """The cluster limit the queue applies (the strictest policy's), less what other drains and
    requests hold now."""
    limit = min(p.parallel_migrations_per_cluster for p in [DEFAULT_POLICY, *policies])
    others = sum(1 for m in values(migrations) if m.in_flight and m.source != host)
    return DrainLimits(cluster_available=max(limit - others, 1))


class Evacuator:
    """The drain of one host: the last ``status.drain`` written, and the passes that advance it."""

    def __init__(self, host: str, body: Mapping[str, Any], drain: Mapping[str, Any] | None,
                 flush: Callable[[], Awaitable[None]]) -> None:
        self.host = host
        self.body = body
        self.drain: dict[str, Any] = dict(drain or {})
        #: What the Host's status holds: the supervisor's one patch carries ``drain`` when it differs.
        self.written: dict[str, Any] = dict(self.drain)
        #: Write the Host's status now (the supervisor's patch): a new drain's id must be stored
        #: before the migrations that carry it are created.
        self.flush = flush
        #: Migrations this process created that the index may not show yet (the watch lags the
        #: create), with when: counted as queued so a pass right after a create does not add more.
        self.expected: Expectations[tuple[str, str], Attempt] = Expectations(ttl=EXPECTATION_SECONDS)

    def seen(self, attempts: list[Attempt]) -> list[Attempt]:
        """``attempts`` from the index plus the ones created here that it does not show yet."""
        for a in attempts:
            self.expected.observed((a.namespace, a.name))
        return attempts + [a for _, a in self.expected.items()]

    @property
    def open(self) -> bool:
        return bool(self.drain.get("trigger"))

    @property
    def episode(self) -> str:
        return episode_id(self.host, str(self.drain.get("startedAt") or ""))

    async def run_pass(self, spec: Mapping[str, Any], status: Mapping[str, Any], vms: Store[VMEntry],
                       migrations: Store[MigrationEntry], policies: Store[MigrationPolicyView],
                       attempts: list[Attempt]) -> bool:
        """One observe-decide-act pass; True while the drain has work under way."""
        goal = goal_of(self.host, spec, status)
        attempts = self.seen(attempts)
        winding_down = (not self.open and self.drain.get("state") == DrainState.Cancelled
                        and not self.drain.get("finishedAt"))
        if goal is None and not self.open and not winding_down:
            await self._delete([a for a in attempts if a.finished and a.episode != self.episode])
            return False
        # Fresh: the plan counts the source's free slots from the fleet and the drain's own migrations
        # from the index, and both must show the same moment. A fleet up to FLEET_MAX_AGE old still
        # counted a migration that had just ended (the bench's warm-up): one slot looked taken and the
        # drain was planned one at a time.
        fleet_now = fleet(fresh=True)
        migration_policies = values(policies)
        if goal is not None and not self.open:
            await self._start(goal, fleet_now, vms, migrations, migration_policies)
        episode = self.episode
        if goal is not None:
            step = evacuation_step(goal, episode, fleet_now, attempts,
                                   limits=_limits(fleet_now, migrations, migration_policies, self.host),
                                   vm_policies=_vm_policies(fleet_now, self.host, vms, migration_policies))
        else:
            scope = self.drain.get("minPriority")
            step = wind_down(DrainState(self.drain["state"]) if self.drain.get("state") else None, episode,
                             fleet_now, self.host, attempts, min_priority=int(scope) if scope is not None else None)
        await self._act(step, goal, vms, episode)
        await self._report(step, goal)
        return (goal is not None and step.progress.state is DrainState.Running) or step.progress.in_flight > 0

    async def _start(self, goal: Goal, fleet_now: Fleet, vms: Store[VMEntry],
                     migrations: Store[MigrationEntry], policies: list[MigrationPolicyView]) -> None:
        """Open a new drain: its start time (hence its id), what the planner expects of it, an event."""
        plan = plan_drain(self.host, fleet_now, _limits(fleet_now, migrations, policies, self.host),
                          only=goal.covers, vm_policies=_vm_policies(fleet_now, self.host, vms, policies),
                          setup_seconds=SETUP_SECONDS)
        count = sum(1 for vm in fleet_now.vms_on(self.host) if goal.covers(vm))
        self.drain = {
            "state": DrainState.Running.value, "trigger": goal.trigger, "minPriority": goal.min_priority,
            "total": count, "moved": 0, "inFlight": 0, "failed": 0, "blocked": [],
            "startedAt": timestamps.rfc3339(micro=True), "finishedAt": None, "strategy": plan.strategy,
            "expectedSeconds": round(plan.expected_makespan_seconds, 2),
            "lowerBoundSeconds": round(plan.lower_bound_seconds, 2),
        }
        await self._write()
        scope = "every VM" if goal.min_priority is None else f"the VMs with priority >= {goal.min_priority}"
        events.info(self.body, reason="DrainStarted",
                    message=f"Draining {self.host} ({goal.trigger}): {scope}, {count} to move. Plan: {plan.strategy}; "
                            f"about {plan.expected_makespan_seconds:.1f} s (no schedule could take less than "
                            f"{plan.lower_bound_seconds:.1f} s).")
        metrics.DRAINS.labels(result="Started").inc()

    async def _act(self, step: Step, goal: Goal | None, vms: Store[VMEntry], episode: str) -> None:
        await self._withdraw(step.cancel)
        await self._delete(list(step.stale))
        if step.create and step.plan is not None:
            p = step.progress
            log.info(f"drain of {self.host}: {p.moved} of {p.total} moved, {p.in_flight - len(step.create)} under "
                     f"way; plan {step.plan.strategy}; starting "
                     + ", ".join(f"{c.move.vm} -> {c.move.target}" for c in step.create))
        for create in step.create:
            vm = one(vms, create.move.vm)
            if vm is None:
                continue
            trigger = goal.trigger if goal is not None else "spec.maintenance"
            created = await kubeapi.create("virtualmachinemigrations", create.namespace,
                                           migration_body(create, self.host, episode, trigger, vm))
            self.expected.expect((create.namespace, create.name), Attempt(
                create.namespace, create.name, create.move.vm, episode, create.attempt, MigrationPhase.Pending,
                create.move.target))
            if created is None:
                continue  # made by an earlier pass whose result the index does not show yet
            move = create.move
            if create.attempt > 1:
                events.warn(self.body, reason="DrainRetry",
                            message=f"Moving {move.vm} off {self.host} again, to {move.target} (attempt "
                                    f"{create.attempt}; {', '.join(move.failed_targets)} failed).")
            else:
                events.info(self.body, reason="DrainMove",
                            message=f"Moving {move.vm} (priority {move.priority}) off {self.host} to {move.target}: "
                                    f"{move.why or 'chosen by the drain planner.'}"[:1024])

    async def _delete(self, attempts: list[Attempt]) -> None:
        for a in attempts:
            await kubeapi.delete("virtualmachinemigrations", a.namespace, a.name)

    async def _withdraw(self, queued: Sequence[Attempt]) -> None:
        """Delete queued migrations, each only as it was seen queued: one the migration controller
        admitted meanwhile (it may already be sending memory) runs to its end and counts."""
        for a in queued:
            if not await kubeapi.delete("virtualmachinemigrations", a.namespace, a.name,
                                        resource_version=a.resource_version or None):
                log.info(f"drain of {self.host}: {a.name} was admitted before its withdrawal; it runs to its end")

    async def _report(self, step: Step, goal: Goal | None) -> None:
        """Write ``status.drain`` when it changed, and an event when the drain's state changed."""
        before, was_open = self.drain.get("state"), self.open
        progress = step.progress
        state = progress.state
        new = {**self.drain, **drain_status(progress)}
        if goal is not None:
            new["trigger"], new["minPriority"] = goal.trigger, goal.min_priority
            finished = state is not DrainState.Running
            new["finishedAt"] = (self.drain.get("finishedAt") or timestamps.rfc3339(micro=True)) if finished else None
        else:
            new["trigger"] = None
            if progress.in_flight == 0 and not new.get("finishedAt"):
                new["finishedAt"] = timestamps.rfc3339(micro=True)
        self.drain = new
        _record_drain_state(self.host, state)
        await self._write()
        if state.value == before and (goal is not None or not was_open):
            return
        if state is DrainState.Completed and goal is not None:
            events.info(self.body, reason="DrainCompleted",
                        message=f"{self.host} is drained ({goal.trigger}): {progress.moved} VM(s) moved in "
                                f"{self._seconds():.1f} s (planned {float(self.drain.get('expectedSeconds') or 0):.1f} "
                                f"s), {progress.failed} failed attempt(s).")
            metrics.DRAINS.labels(result="Completed").inc()
        elif state is DrainState.Completed:
            events.info(self.body, reason="DrainClosed",
                        message=f"Nothing asks {self.host} to stay drained any more; it takes VMs again once nothing "
                                f"else cordons it.")
        elif state is DrainState.Blocked:
            events.warn(self.body, reason="DrainBlocked",
                        message=f"The drain of {self.host} cannot finish: {len(progress.blocked)} VM(s) cannot move: "
                                f"{describe_blocked(progress)}"[:1024])
            metrics.DRAINS.labels(result="Blocked").inc()
        elif state is DrainState.Running and before == DrainState.Blocked.value:
            events.info(self.body, reason="DrainResumed", message=f"The drain of {self.host} can move VMs again.")
        elif state is DrainState.Cancelled and before != DrainState.Cancelled.value:
            events.info(self.body, reason="DrainCancelled",
                        message=f"The drain of {self.host} stopped: {progress.moved} of {progress.total} VM(s) moved; "
                                f"{progress.in_flight} migration(s) already under way finish, queued ones were "
                                f"withdrawn. {self.host} takes VMs again once nothing else cordons it.")
            metrics.DRAINS.labels(result="Cancelled").inc()

    def _seconds(self) -> float:
        try:
            started = timestamps.parse(str(self.drain.get("startedAt")))
        except ValueError:
            return 0.0
        return (timestamps.now() - started).total_seconds()

    async def _write(self) -> None:
        if self.drain != self.written:
            await self.flush()


async def drain_pass(evacuator: Evacuator, spec: Mapping[str, Any], status: Mapping[str, Any],
                     logger: kopf.Logger | logging.Logger) -> float:
    """One drain pass of a Host's supervisor; returns how long until the next one unless woken."""
    try:
        busy = await evacuator.run_pass(spec, status, indexes.vm_index, indexes.migration_index,
                                        indexes.policy_index, list(evacuation_index.get(evacuator.host) or []))
    except ApiException as exc:
        metrics.RECONCILE_ERRORS.labels(kind="Drain").inc()
        logger.warning(f"drain pass of {evacuator.host} failed, retrying: {exc.status} {exc.reason}")
        busy = True
    except Exception:  # a bug must not end the host's supervisor: log it and try again
        metrics.RECONCILE_ERRORS.labels(kind="Drain").inc()
        logger.exception(f"drain pass of {evacuator.host} failed, retrying")
        busy = True
    return BUSY_SECONDS if busy else IDLE_SECONDS


async def host_deleted(name: str, logger: kopf.Logger | logging.Logger) -> None:
    """The Host is gone: remove every migration its drains made, forget its drain state."""
    leftovers = list(evacuation_index.get(name) or [])
    for attempt in leftovers:
        with contextlib.suppress(ApiException):
            await kubeapi.delete("virtualmachinemigrations", attempt.namespace, attempt.name)
    if leftovers:
        logger.info(f"Host {name} deleted: removed {len(leftovers)} drain migration(s)")
    _drain_states.pop(name, None)
    metrics.DRAINS_BLOCKED.set(blocked_drains(_drain_states))


#: The last drain state of each host, for the vmshift_drains_blocked gauge.
_drain_states: dict[str, DrainState] = {}


def blocked_drains(states: Mapping[str, DrainState]) -> int:
    """How many hosts' drains are Blocked (pure)."""
    return sum(1 for s in states.values() if s is DrainState.Blocked)


def _record_drain_state(host: str, state: DrainState) -> None:
    _drain_states[host] = state
    metrics.DRAINS_BLOCKED.set(blocked_drains(_drain_states))

