"""The VM controller's lifecycle decisions: a start whose outcome is unknown, a VM that ever had a host."""

from __future__ import annotations

from vmshift.controllers.vmstatus import ever_placed, start_outcome_unknown
from vmshift.hypervisor.client import AgentError, AgentUnreachableError


def test_an_unanswered_or_failed_inside_start_may_have_started_the_guest() -> None:
    assert start_outcome_unknown(AgentUnreachableError("timed out"))
    assert start_outcome_unknown(AgentError("Internal", "boom", 500))
    assert not start_outcome_unknown(AgentError("InsufficientResources", "full", 409))
    assert not start_outcome_unknown(AgentError("Invalid", "bad", 422))


def test_a_vm_that_ever_had_a_host_is_known() -> None:
    assert not ever_placed({})
    assert not ever_placed({"phase": "Pending", "host": None})
    assert ever_placed({"host": "h1"})
    assert ever_placed({"host": None, "startedAt": "2026-01-01T00:00:00Z"})
    assert ever_placed({"lastMigration": {"result": "Succeeded"}})
