"""What a migration's daemon does when Kopf stops it: only a deletion cancels."""

from __future__ import annotations

import kopf

from vmshift.controllers.migrations import StopAction, stop_action

R = kopf.DaemonStoppingReason


def test_only_a_deletion_cancels_a_migration() -> None:
    assert stop_action(R.RESOURCE_DELETED) is StopAction.Cancel
    assert stop_action(R.RESOURCE_DELETED | R.OPERATOR_EXITING) is StopAction.Cancel


def test_operator_exit_pause_and_filter_leave_the_migration_to_the_agents() -> None:
    for reason in (R.OPERATOR_EXITING, R.OPERATOR_PAUSING, R.FILTERS_MISMATCH, R.OPERATOR_EXITING | R.OPERATOR_PAUSING,
                   R.DAEMON_SIGNALLED, None):
        assert stop_action(reason) is StopAction.Leave, reason
