"""The conditions helper: one condition per type, lastTransitionTime moves only on a status flip,
Reconciling and Stalled never both True, and there only while True."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from vmshift.api import conditions as cond
from vmshift.api.common import Condition

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def test_adds_a_new_condition_with_now_as_transition_time() -> None:
    result = cond.ready([], True, "Running", "web-1 runs on h-1.", observed_generation=3, now=T0)
    assert result == [Condition(type="Ready", status="True", reason="Running", message="web-1 runs on h-1.",
                                observedGeneration=3, lastTransitionTime=T0)]


def test_same_status_keeps_transition_time_but_updates_reason_message_generation() -> None:
    first = cond.ready([], False, "Starting", "starting", observed_generation=1, now=T0)
    second = cond.ready(first, False, "Scheduling", "no host fits", observed_generation=2, now=T1)
    assert second[0].lastTransitionTime == T0
    assert (second[0].reason, second[0].message, second[0].observedGeneration) == ("Scheduling", "no host fits", 2)


def test_status_flip_moves_transition_time() -> None:
    first = cond.ready([], False, "Starting", "starting", now=T0)
    second = cond.ready(first, True, "Running", "running", now=T1)
    assert second[0].lastTransitionTime == T1


def test_microseconds_are_dropped_and_time_is_utc() -> None:
    local = datetime(2025, 1, 1, 13, 0, 0, 123456, tzinfo=UTC).astimezone(timezone(timedelta(hours=1)))
    result = cond.ready([], True, "Running", "", now=local)
    assert result[0].lastTransitionTime == datetime(2025, 1, 1, 13, 0, 0, tzinfo=UTC)
    assert cond.dump(result)[0]["lastTransitionTime"] == "2025-01-01T13:00:00Z"


def test_other_conditions_keep_their_place_and_values() -> None:
    start = cond.set_condition([], "Placed", True, "Placed", "ok", now=T0)
    start = cond.ready(start, False, "Starting", "", now=T0)
    result = cond.set_condition(start, "Placed", False, "SelectorMismatch", "moved", now=T1)
    assert [c.type for c in result] == ["Placed", "Ready"]
    assert result[1] == start[1]


def test_input_list_is_not_changed_and_dicts_are_accepted() -> None:
    raw = [{"type": "Ready", "status": "False", "reason": "Starting", "message": "",
            "lastTransitionTime": "2025-01-01T12:00:00Z"}]
    result = cond.ready(raw, True, "Running", "", now=T1)
    assert raw[0]["status"] == "False"
    assert result[0].status == "True"


def test_stalled_true_removes_reconciling() -> None:
    start = cond.first_look([], "looking at web-1", observed_generation=1, now=T0)
    result = cond.stalled(start, True, "NoCompatibleHost", "no host has avx512f", now=T1)
    assert cond.is_true(result, "Stalled")
    assert cond.find_condition(result, "Reconciling") is None
    assert [c.type for c in result] == ["Ready", "Stalled"]


def test_reconciling_and_stalled_are_there_only_while_true() -> None:
    """kstatus's abnormal-true pair: False is written as absence (kstatus, Flux and the Argo CD health
    check read it so), and a condition that was True goes away."""
    start = cond.first_look([], "looking at web-1", observed_generation=1, now=T0)
    done = cond.reconciling(cond.ready(start, True, "Running", "web-1 runs on h-1.", now=T1), False, "Reconciled",
                            "web-1 is where its spec asks.", now=T1)
    assert [(c.type, c.status) for c in done] == [("Ready", "True")]
    assert cond.stalled(done, False, "Reconciled", "", now=T1) == done
    assert cond.set_condition([], "Stalled", False, "Reconciled", "", now=T0) == []
    unknown = cond.set_condition([], "Stalled", "Unknown", "NotChecked", "", now=T0)
    assert [(c.type, c.status) for c in unknown] == [("Stalled", "Unknown")]  # only False is absence


def test_reconciling_true_turns_stalled_false() -> None:
    start = cond.stalled([], True, "AgentUnreachable", "agent of h-1 silent", now=T0)
    result = cond.reconciling(start, True, "Retrying", "agent of h-1 answers again", now=T1)
    assert cond.is_true(result, "Reconciling")
    assert not cond.is_true(result, "Stalled")


def test_first_look_writes_ready_unknown_and_reconciling_true() -> None:
    result = cond.first_look([], "vmshift is looking at this object", observed_generation=7, now=T0)
    by_type = {c.type: c for c in result}
    assert by_type["Ready"].status == "Unknown"
    assert by_type["Reconciling"].status == "True"
    assert all(c.observedGeneration == 7 for c in result)


def test_dump_is_the_api_form() -> None:
    dumped = cond.dump(cond.ready([], True, "Running", "ok", observed_generation=2, now=T0))
    assert dumped == [{"type": "Ready", "status": "True", "reason": "Running", "message": "ok",
                       "observedGeneration": 2, "lastTransitionTime": "2025-01-01T12:00:00Z"}]


_TYPES = st.sampled_from(["Ready", "Reconciling", "Stalled", "Placed"])
_STATUS: st.SearchStrategy[bool | Literal["Unknown"]] = st.sampled_from([True, False, "Unknown"])


@given(st.lists(st.tuples(_TYPES, _STATUS, st.integers(min_value=0, max_value=100)), max_size=30))
def test_invariants_hold_after_any_sequence(steps: list[tuple[str, bool | Literal["Unknown"], int]]) -> None:
    conditions: list[Condition] = []
    for type_, status, minutes in steps:
        before = cond.find_condition(conditions, type_)
        now = T0 + timedelta(minutes=minutes)
        conditions = cond.set_condition(conditions, type_, status, "Because", "", now=now)
        after = cond.find_condition(conditions, type_)
        if type_ in ("Reconciling", "Stalled") and status is False:
            assert after is None  # abnormal-true: False is absence
            continue
        assert after is not None
        if before is not None and before.status == after.status:
            assert after.lastTransitionTime == before.lastTransitionTime
        types = [c.type for c in conditions]
        assert len(types) == len(set(types))
        assert not (cond.is_true(conditions, "Reconciling") and cond.is_true(conditions, "Stalled"))
