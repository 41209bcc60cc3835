"""How the plugin shows migrations, history, the fleet, drain plans and the answer of ``why``."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from rich.console import Console

from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.kubectl import render
from vmshift.kubectl.render import MigrationView
from vmshift.scheduling.moves import Blocked, DrainPlan, Move

from .objects import host, migration

PROGRESS = {"round": 3, "transferredMiB": 812.0, "remainingMiB": 40.25, "dirtyRateMiBps": 60.0,
            "throughputMbps": 9410.0, "percent": 64, "etaSeconds": 4.2}


def _moving() -> dict:
    return migration("web-1-abc", "web-1", phase="Transferring", source="h1", target="h2", mode="Live",
                     progress=PROGRESS)


def test_units_read_naturally() -> None:
    assert render.seconds(0.42) == "0.4 s" and render.seconds(42.4) == "42 s" and render.seconds(185) == "3m 05s"
    assert render.seconds(3725) == "1h 02m" and render.seconds(None) == "-"
    assert render.mib(40.25) == "40.2 MiB" and render.mib(20480) == "20.00 GiB"
    now = datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    assert render.age("2026-01-01T00:59:30Z", now) == "30s" and render.age("2026-01-01T00:00:00Z", now) == "60m"


def test_progress_line_has_round_sent_left_rates_and_eta() -> None:
    line = render.progress_line(MigrationView.of(_moving()))
    assert line == ("Transferring   64%  round 3 · 812.0 MiB sent · 40.2 MiB left · dirty 60.0 MiB/s · "
                    "link 9.41 Gbps  ETA 4.2 s")
    pending = render.progress_line(MigrationView.of(migration("m", "web-1")))
    assert pending == "Pending         0%"


def test_progress_view_renders_a_bar_the_percentage_and_eta() -> None:
    buffer = io.StringIO()
    Console(file=buffer, width=100, force_terminal=False, color_system=None).print(
        render.progress_renderable(MigrationView.of(_moving())))
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "web-1  h1 → h2  Live  Transferring"
    assert "━" in lines[1] and lines[1].rstrip().endswith("64% ETA 4.2 s"), lines[1]
    assert lines[2] == "round 3 · 812.0 MiB sent · 40.2 MiB left · dirty 60.0 MiB/s · link 9.41 Gbps"


def test_outcome_of_a_success_names_downtime_and_the_memory_check() -> None:
    done = migration("web-1-abc", "web-1", phase="Succeeded", source="h1", target="h2", mode="Live",
                     downtimeMs=8.25, durationMs=12400, memoryVerified=True, rounds=[{"round": 0}, {"round": 1}])
    assert render.outcome_lines(done) == [
        "Succeeded: web-1 now runs on h2 (Live migration from h1, 2 rounds, 12 s).",
        "Downtime 8.2 ms; memory verified (digests match)."]


def test_outcome_of_a_failure_gives_the_reason_the_message_and_what_to_run() -> None:
    failed = migration("db-1-x", "db-1", phase="Failed", source="h1", target="h3",
                       failure={"reason": "IncompatibleProcessor", "message": "h3 lacks avx512f. Choose an icelake."})
    assert render.outcome_lines(failed) == [
        "Failed (IncompatibleProcessor): migration ns/db-1-x of db-1 did not complete; the VM stays on h1.",
        "h3 lacks avx512f. Choose an icelake.",
        "See which hosts could take it: kubectl vmshift why db-1"]


def test_history_is_newest_first() -> None:
    now = datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    rows = render.history_rows([
        migration("old", "web", phase="Succeeded", source="h1", target="h2", mode="Live", downtimeMs=5.0,
                  durationMs=3000, created="2026-01-01T00:00:00Z"),
        migration("new", "web", phase="Failed", source="h2", target="h3", created="2026-01-01T00:09:00Z",
                  failure={"reason": "Timeout"})], now)
    assert rows == [["new", "Failed", "h2", "h3", "-", "-", "-", "Timeout", "60s"],
                    ["old", "Succeeded", "h1", "h2", "Live", "5.0 ms", "3.0 s", "-", "10m"]]


def test_host_rows_show_use_and_migrations() -> None:
    h = host("h1", vms=3, allocated={"cpus": 6, "memoryMiB": 16384}, migrations={"inbound": 1, "outbound": 0},
             drain={"state": "Running", "moved": 1, "total": 3, "trigger": "spec.maintenance"})
    assert render.host_rows([h]) == [["h1", "Ready", "icelake", "3", "6/32", "16.00 GiB of 64.00 GiB (25%)", "1",
                                      "0", "Running 1/3"]]
    assert render.moving_rows([_moving(), migration("done", "x", phase="Succeeded")]) == [
        ["ns", "web-1", "web-1-abc", "Transferring", "h1", "h2", "64%", "4.2 s"]]


def test_plan_rows_show_order_targets_shares_and_times() -> None:
    plan = DrainPlan(host="h1", parallelism=2, strategy="2 at once, priority shares", expected_makespan_seconds=30.0,
                     lower_bound_seconds=24.0, moves=(
                         Move("ns/a", "h1", "h2", MigrationMode.Live, 0, priority=9, weight=8.0, bandwidth_mbps=8889,
                              expected_finish=12.0, expected_transfer_mib=1100),
                         Move("ns/b", "h1", "h3", MigrationMode.Live, 1, weight=1.0, bandwidth_mbps=1111,
                              expected_start=0.0, expected_finish=30.0, expected_transfer_mib=2048)),
                     blocked=(Blocked("ns/c", FailureReason.IncompatibleProcessor, "h2 lacks avx512f."),))
    assert render.plan_rows(plan) == [
        ["1", "ns/a", "9", "h2", "Live", "89%", "8889 Mbps", "1100.0 MiB", "0.0 s", "12 s"],
        ["2", "ns/b", "0", "h3", "Live", "11%", "1111 Mbps", "2048.0 MiB", "0.0 s", "30 s"]]
    assert render.plan_summary(plan) == [
        "Drain plan for h1 (dry run: nothing was changed): 2 to move, 1 blocked.",
        "Strategy: 2 at once, priority shares. Expected makespan 30 s; no schedule can beat 24 s (lower bound; "
        "plan at 1.25x).",
        "Blocked ns/c (IncompatibleProcessor): h2 lacks avx512f."]
    data = render.plan_data(plan)
    assert data["moves"][0]["order"] == 1 and data["blocked"][0]["reason"] == "IncompatibleProcessor"


def test_drain_line_and_blocked_lines() -> None:
    h = host("h1", phase="Draining", drain={"state": "Blocked", "moved": 1, "total": 2, "inFlight": 0, "failed": 0,
                                            "trigger": "spec.maintenance",
                                            "blocked": [{"vm": "ns/c", "reason": "StorageNotShared", "message": "m."}]})
    assert render.drain_line(h) == ("h1: Draining, drain Blocked: 1 of 2 moved, 0 in flight, 0 failed attempt(s), "
                                    "1 blocked")
    assert render.blocked_lines(h) == ["Blocked ns/c (StorageNotShared): m."]
    assert render.drain_line(host("h2")) == "h2: Ready, the drain has not started yet"
