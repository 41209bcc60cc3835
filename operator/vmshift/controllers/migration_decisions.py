"""What the migration controller decides and writes, as plain functions: no I/O.

The checks of one move (:func:`decide_move`), the closed-set reason of an agent's refusal, the
target's word on a switchover in doubt, the progress timeout, and the status the daemon writes
(progress, rounds with the strategy each ran under, conditions). ``migrations`` drives the agents
and the API with them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import kopf

from vmshift.api import conditions as cond
from vmshift.api.migration import MAX_ROUND_HISTORY
from vmshift.api.migrationpolicy import MigrationStrategy
from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.client import AgentError
from vmshift.hypervisor.protocol import MigrationStatus
from vmshift.scheduling.compatibility import blocking, check_target
from vmshift.scheduling.fleet import Fleet, VMView
from vmshift.scheduling.placement import Refusal, pick_target
from vmshift.scheduling.policy import MigrationPolicyView, choose_mode


class StopAction(StrEnum):
    """What a migration's daemon does when Kopf sets ``stopped``."""

    Cancel = "Cancel"  # the object is being deleted: cancel on the agents, end as Cancelled
    Leave = "Leave"  # the operator exits or pauses: stop following, write nothing; the next one resumes


def stop_action(reason: kopf.DaemonStoppingReason | None) -> StopAction:
    """Only a deletion cancels a migration (pure).

    Kopf stops a daemon for several reasons, possibly combined: the resource was deleted, the
    operator exits (SIGTERM in a rolling update) or pauses (a peer with higher priority), the
    filter stopped matching (the daemon wrote a final phase). Anything but a deletion leaves the
    migration to the agents, which carry on; the operator that runs next follows it again.
    """
    if reason is not None and kopf.DaemonStoppingReason.RESOURCE_DELETED in reason:
        return StopAction.Cancel
    return StopAction.Leave


def withdrawn_before_admission(written: Mapping[str, Any] | None) -> bool:
    """Whether the migration was deleted before its admission was written (pure): ``written`` is the
    object as the API server answered that write (None when it was gone already).

    A drain withdraws a queued migration by a delete conditional on the version it saw queued, and
    the admission is a write that changes that version, so the API server orders the two: when the
    answer to the write already carries a deletion time, the withdrawal came first and no agent may
    be asked to move anything. Kopf's own stop flag comes later, with the watch event.
    """
    return written is None or bool((written.get("metadata") or {}).get("deletionTimestamp"))


def as_sentence(text: str) -> str:
    """``text`` ending as a sentence does (pure): an agent's message may lack the final stop, and the
    controller appends its own sentence after it."""
    text = text.rstrip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def leaving(stopped: kopf.DaemonStopped) -> bool:
    """True once the operator exits or pauses (pure): what the daemon concludes from then on may
    come from the shutdown itself (agent links closed, the session gone), so it writes nothing."""
    return bool(stopped) and stop_action(stopped.reason) is StopAction.Leave


class Leaving(Exception):
    """The operator exits or pauses: the daemon stops following and changes nothing."""


class MigrationFailedError(Exception):
    """The migration cannot go on; ``reason`` is from the closed set, ``message`` a sentence to act on."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Side(StrEnum):
    source = "source"
    target = "target"


def agent_failure_reason(code: str, side: Side | None) -> FailureReason:
    """The closed-set reason for an agent's refusal (pure).

    Codes that are failure reasons already (InsufficientResources, IncompatibleProcessor, ...) pass
    through. The others say what went wrong on which side: a source that does not hold the VM or
    holds it in a state that cannot move, a target that already holds a copy, a migration id one of
    them already knows; only an agent that did not answer (or refused our token) is AgentUnreachable.
    """
    if code in FailureReason.__members__:
        return FailureReason(code)
    if code == "InvalidState":
        return FailureReason.VirtualMachineNotRunning if side is not Side.target else FailureReason.TargetUnschedulable
    if code == "NotFound":
        return FailureReason.TargetLost if side is Side.target else FailureReason.SourceLost
    if code == "Conflict":
        return FailureReason.TargetUnschedulable if side is Side.target else FailureReason.AlreadyMigrating
    if code == "PastCommitPoint":
        return FailureReason.TargetLost if side is Side.target else FailureReason.SourceLost
    if code == "Internal":
        return FailureReason.TargetLost if side is Side.target else FailureReason.SourceLost
    return FailureReason.AgentUnreachable


class AgentRefusedError(Exception):
    """An agent refused a call of the migration; ``side`` says which."""

    def __init__(self, side: Side, host: str | None, error: AgentError) -> None:
        super().__init__(str(error))
        self.side = side
        self.host = host
        self.error = error


def target_verdict(status: MigrationStatus | None, error_code: str | None,
                   target_holds_vm: bool | None) -> bool | None:
    """What the target states about a switchover in doubt, from its answer to a cancel (pure).

    True: it resumed the guest (the cancel came past its commit point, or its record is committed).
    False: it did not and never will (its record ended uncommitted, or it knows no such migration
    and holds no copy of the VM: it restarted). None: nothing can be concluded yet (unreachable, or
    the cancel is still being applied).
    """
    if error_code == "PastCommitPoint":
        return True
    if error_code == "NotFound":
        return False if target_holds_vm is False else None
    if error_code is not None or status is None:
        return None
    if status.committed or status.phase is MigrationPhase.Succeeded:
        return True
    if status.phase.finished:
        return False
    return None


@dataclass
class ProgressWatch:
    """progressTimeoutSeconds as documented: the remaining memory has not shrunk for that long (pure).

    Bytes sent are no measure: a guest that re-dirties its hot set keeps the link busy forever
    while the remaining set stays where it was.
    """

    timeout: float
    best: float = float("inf")
    since: float | None = None

    def stalled(self, remaining_mib: float, now: float) -> bool:
        """Record one report; True once ``remaining_mib`` has not gone below its lowest for ``timeout`` s."""
        if self.since is None or remaining_mib < self.best - 0.01:
            self.best = min(self.best, remaining_mib)
            self.since = now
            return False
        return now - self.since > self.timeout


def strategy_of(report: MigrationStatus) -> MigrationStrategy:
    """The ladder rung a migration runs under now, from its agent's report (pure): Quick once it
    fell back (or was asked for), PostCopy once it switched to post-copy, AutoConverge while the guest is
    throttled, else PreCopy."""
    if report.postcopy:
        return MigrationStrategy.PostCopy
    if report.mode is MigrationMode.Quick:
        return MigrationStrategy.Quick
    if report.throttle_percent > 0:
        return MigrationStrategy.AutoConverge
    return MigrationStrategy.PreCopy


@dataclass
class RoundLedger:
    """The strategy each pre-copy round ran under, as the reports show it (pure).

    The agent reports the strategy in force now (its mode and throttle), not one per round; the
    throttle changes only between rounds and the ladder only climbs. So the round under way gets
    the report's strategy, and a round that ended between two reports gets the earlier report's
    (the rung it was on when last seen; a climb after it is credited to the rounds that follow).
    """

    by_round: dict[int, MigrationStrategy] = field(default_factory=dict)
    last: MigrationStrategy | None = None

    def record(self, report: MigrationStatus) -> None:
        now = strategy_of(report)
        for r in report.rounds:
            self.by_round.setdefault(r.round, self.last or now)
        self.by_round.setdefault(report.round, now)
        self.last = now

    def strategy(self, round_index: int) -> MigrationStrategy | None:
        return self.by_round.get(round_index)


def progress_status(agent: MigrationStatus, ledger: RoundLedger | None = None) -> dict[str, Any]:
    """The API's progress, strategy and rounds from an agent's report (pure); the last
    MAX_ROUND_HISTORY rounds are kept, as the API's description of status.rounds says."""
    if ledger is None:
        ledger = RoundLedger()
    ledger.record(agent)
    eta = None
    if agent.throughput_mbps > 0:
        eta = round(agent.remaining_mib * 8 * 1.048576 / agent.throughput_mbps, 2)
    return {
        "strategy": strategy_of(agent).value,
        "progress": {
            "round": agent.round,
            "transferredMiB": round(agent.transferred_mib, 2),
            "remainingMiB": round(agent.remaining_mib, 2),
            "dirtyRateMiBps": round(agent.dirty_rate_mib_ps, 2),
            "throughputMbps": round(agent.throughput_mbps, 1),
            "percent": int(min(max(agent.percent, 0), 100)),
            "etaSeconds": eta,
            "throttlePercent": int(agent.throttle_percent),
        },
        "rounds": [
            {"round": r.round, "strategy": _value(ledger.strategy(r.round)), "sentMiB": round(r.sent_mib, 3),
             "durationMs": round(r.seconds * 1000, 2), "dirtiedMiB": round(r.dirty_mib, 3)}
            for r in agent.rounds[-MAX_ROUND_HISTORY:]
        ],
    }


def shown_phase(report: MigrationStatus, cancelling: bool = False) -> MigrationPhase:
    """The phase an unfinished migration's status shows for its source's report (pure): SwitchingOver
    from the moment the source holds its converged switchover for the operator's go, so the phase is
    written before the guest pauses (and is seen every time, not by chance), unless the migration is
    being cancelled (it gets no go); else Transferring."""
    if report.phase is MigrationPhase.SwitchingOver or (report.ready_to_switch_over and not cancelling):
        return MigrationPhase.SwitchingOver
    return MigrationPhase.Transferring


def switchover_go_due(report: MigrationStatus, written_phase: str | None, cancelling: bool) -> bool:
    """Whether the operator gives the source its go now (pure): the source holds its switchover, the
    status already says SwitchingOver (the write comes first), and nobody is cancelling the migration
    (a cancel before the go leaves the VM running on the source)."""
    return report.ready_to_switch_over and written_phase == MigrationPhase.SwitchingOver.value and not cancelling


def switchover_message(vm: str, source: str | None, target: str | None, report: MigrationStatus) -> str:
    """The SwitchingOver condition's message."""
    if report.postcopy:
        return (f"Pre-copy did not converge after round {report.round}: {vm} switched to post-copy and runs on "
                f"{target}, which pulls the {report.remaining_mib:.2f} MiB it still lacks from {source}.")
    return (f"Pre-copy converged after round {report.round} with {report.remaining_mib:.2f} MiB left: {vm} is "
            f"paused on {source} for the final copy and resumed on {target}.")


def where_it_is_left(vm: str, source: str | None, target: str | None, report: MigrationStatus | None) -> str:
    """What a Failed migration's message adds about where the guest is (pure). Before the switchover the
    guest keeps running on its source; after a switch to post-copy it ran on the target and its memory
    is split between the hosts, so it runs on neither (the source's agent said how it is left)."""
    if report is not None and report.postcopy:
        return f" {vm} runs on neither {source} nor {target}: a person must decide, as said above."
    return f" {vm} keeps running on {source}."


def unacknowledged_note(report: MigrationStatus, wait_seconds: float) -> str:
    """What a Succeeded message adds when the source switched over without the operator's go (pure)."""
    if report.switchover_acknowledged is not False:
        return ""
    return (f" The source heard no go from the operator within {wait_seconds:g} s and switched over without it, "
            f"so SwitchingOver may not have been shown before the pause.")


def _value(strategy: MigrationStrategy | None) -> str | None:
    return strategy.value if strategy is not None else None


def migration_conditions(previous: Mapping[str, Any], phase: MigrationPhase, reason: str, message: str,
                generation: int) -> list[dict[str, Any]]:
    conditions = list(previous.get("conditions") or [])
    if phase is MigrationPhase.Succeeded:
        conditions = cond.ready(conditions, True, reason, message, observed_generation=generation)
        conditions = cond.reconciling(conditions, False, reason, message, observed_generation=generation)
        conditions = cond.stalled(conditions, False, reason, message, observed_generation=generation)
    elif phase.finished:
        conditions = cond.ready(conditions, False, reason, message, observed_generation=generation)
        conditions = cond.stalled(conditions, True, reason, message, observed_generation=generation)
    else:
        conditions = cond.ready(conditions, False, reason, message, observed_generation=generation)
        conditions = cond.reconciling(conditions, True, reason, message, observed_generation=generation)
    return cond.dump(conditions)


@dataclass(frozen=True)
class ChosenMove:
    """Where and how a migration goes, and why (the sentence for status)."""

    target: str
    mode: MigrationMode
    why: str


def decide_move(view: VMView, now: Fleet, policy: MigrationPolicyView, requested: MigrationMode,
                target: str | None) -> ChosenMove:
    """Every compatibility check for one move (pure); raises MigrationFailedError when it cannot happen.

    ``target``: the host asked for (spec.targetHost) or the one already admitted. Given a target, only
    that host is checked: a second look never picks another one (status, the queue's slots and the
    target's reservation all name the first).
    """
    if target:
        problems = check_target(view, target, now, moving=True)
    else:
        choice = pick_target(view, now, quick=requested is not MigrationMode.Live and policy.allows_quick)
        if isinstance(choice, Refusal):
            raise MigrationFailedError(choice.reason, choice.message)
        target = choice.host
        problems = check_target(view, target, now, moving=True)
    source = now.host(view.host) if view.host else None
    target_view = now.host(target)
    links = [h.bandwidth_mbps for h in (source, target_view) if h is not None]
    mode = choose_mode(requested, view, policy, problems, bandwidth_mbps=min(links) if links else None)
    if mode.mode is None:
        raise MigrationFailedError(mode.reason or FailureReason.TargetUnschedulable, mode.message)
    hard = blocking(problems, quick=mode.mode is MigrationMode.Quick)
    if hard:
        raise MigrationFailedError(hard[0].reason, hard[0].message)
    return ChosenMove(target, mode.mode, mode.message)
