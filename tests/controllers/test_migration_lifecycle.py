"""The migration controller's lifecycle decisions: what stops it, what words its failures get."""

from __future__ import annotations

import kopf

from vmshift.api.reasons import FailureReason
from vmshift.controllers.migrations import Side, StopAction, agent_failure_reason, stop_action

R = kopf.DaemonStoppingReason


def test_only_a_deletion_cancels_a_migration() -> None:
    assert stop_action(R.RESOURCE_DELETED) is StopAction.Cancel
    assert stop_action(R.RESOURCE_DELETED | R.OPERATOR_EXITING) is StopAction.Cancel


def test_operator_exit_pause_and_filter_leave_the_migration_to_the_agents() -> None:
    for reason in (R.OPERATOR_EXITING, R.OPERATOR_PAUSING, R.FILTERS_MISMATCH, R.OPERATOR_EXITING | R.OPERATOR_PAUSING,
                   R.DAEMON_SIGNALLED, None):
        assert stop_action(reason) is StopAction.Leave, reason


def test_agent_refusals_get_words_from_the_closed_set_by_side() -> None:
    F = FailureReason
    assert agent_failure_reason("InvalidState", Side.source) is F.VirtualMachineNotRunning
    assert agent_failure_reason("NotFound", Side.source) is F.SourceLost
    assert agent_failure_reason("NotFound", Side.target) is F.TargetLost
    assert agent_failure_reason("Conflict", Side.target) is F.TargetUnschedulable
    assert agent_failure_reason("Conflict", Side.source) is F.AlreadyMigrating
    assert agent_failure_reason("InsufficientResources", Side.target) is F.InsufficientResources
    assert agent_failure_reason("IncompatibleProcessor", Side.target) is F.IncompatibleProcessor
    assert agent_failure_reason("AgentUnreachable", Side.source) is F.AgentUnreachable
    assert agent_failure_reason("Unauthorized", Side.target) is F.AgentUnreachable
    for code in ("InvalidState", "NotFound", "Conflict", "Internal", "PastCommitPoint"):
        for side in (Side.source, Side.target, None):
            assert agent_failure_reason(code, side) is not F.AgentUnreachable, (code, side)
