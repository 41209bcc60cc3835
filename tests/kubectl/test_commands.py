"""The commands' flow against a scripted cluster: following a migration, Ctrl-C's question, cancel.

The real API server is in tests/e2e/test_kubectl_plugin.py; here the cluster is a stand-in that
replays statuses, so each branch (success, failure, deletion, detach, cancel) runs in milliseconds.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from typing import Any

import pytest

from vmshift.kubectl import commands
from vmshift.kubectl.decide import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from vmshift.kubectl.output import Output

from .objects import migration, vm


class ScriptedCluster:
    """Answers ``get`` for the migration from a script of states; None means it is gone."""

    namespace = "ns"

    def __init__(self, states: list[dict[str, Any] | None], vm_body: dict[str, Any] | None = None,
                 interrupt_at: int | None = None) -> None:
        self.states: Iterator[dict[str, Any] | None] = iter(states)
        self.last: dict[str, Any] | None = None
        self.vm_body = vm_body
        self.deleted: list[str] = []
        self.reads = 0
        self.interrupt_at = interrupt_at

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        if kind == "VirtualMachine":
            return self.vm_body
        self.reads += 1
        if self.reads == self.interrupt_at:
            raise KeyboardInterrupt
        self.last = next(self.states, self.last)
        return self.last

    def delete(self, kind: str, name: str, namespace: str | None = None) -> bool:
        self.deleted.append(name)
        return True


def _ctx(cluster: ScriptedCluster) -> tuple[commands.Context, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    ctx = commands.Context(cluster=cluster, out=Output(stdout=out, stderr=err, force_terminal=False),  # type: ignore[arg-type]
                           args=argparse.Namespace())
    return ctx, out, err


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "POLL_SECONDS", 0.0)


def _moving(percent: int) -> dict[str, Any]:
    return migration("web-x", "web", phase="Transferring", source="h1", target="h2", mode="Live",
                     progress={"round": 1, "transferredMiB": 10.0 * percent, "remainingMiB": 5.0,
                               "dirtyRateMiBps": 1.0, "throughputMbps": 1000.0, "percent": percent,
                               "etaSeconds": 3.0})


def test_following_prints_each_change_once_then_the_outcome() -> None:
    done = migration("web-x", "web", phase="Succeeded", source="h1", target="h2", mode="Live", downtimeMs=4.0,
                     durationMs=2000, memoryVerified=True)
    cluster = ScriptedCluster([_moving(10), _moving(10), _moving(55), done])
    ctx, out, _ = _ctx(cluster)
    assert commands.follow_migration(ctx, "web-x") == EXIT_OK
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines[:3]] == ["10%", "55%", "100%"]
    assert lines[-1] == "Downtime 4.0 ms; memory verified (digests match)."


def test_a_failed_migration_exits_1() -> None:
    failed = migration("web-x", "web", phase="Failed", source="h1", target="h2",
                       failure={"reason": "Timeout", "message": "It took too long."})
    ctx, out, _ = _ctx(ScriptedCluster([_moving(5), failed]))
    assert commands.follow_migration(ctx, "web-x") == EXIT_FAILED
    assert "Failed (Timeout): migration ns/web-x of web did not complete" in out.getvalue()


def test_a_migration_deleted_while_followed_is_an_error() -> None:
    ctx, _, _ = _ctx(ScriptedCluster([_moving(5), None]))
    with pytest.raises(commands.ApiServerError, match="was deleted before it ended"):
        commands.follow_migration(ctx, "web-x")


def test_ctrl_c_without_a_terminal_to_ask_stops_watching_and_leaves_it_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    cluster = ScriptedCluster([_moving(5)], interrupt_at=2)
    ctx, out, _ = _ctx(cluster)
    assert commands.follow_migration(ctx, "web-x") == EXIT_OK
    assert cluster.deleted == []
    assert "Stopped watching; migration ns/web-x goes on." in out.getvalue()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("answer", "status", "deleted"), [("d\n", EXIT_OK, []), ("c\n", EXIT_INTERRUPTED, ["web-x"])])
def test_ctrl_c_asks_cancel_or_detach(monkeypatch: pytest.MonkeyPatch, answer: str, status: int,
                                      deleted: list[str]) -> None:
    monkeypatch.setattr("sys.stdin", _Tty(answer))
    cluster = ScriptedCluster([_moving(5), _moving(5), None], vm_body=vm("web", "h1"), interrupt_at=2)
    ctx, out, _ = _ctx(cluster)
    assert commands.follow_migration(ctx, "web-x") == status
    assert cluster.deleted == deleted
    text = out.getvalue()
    assert "Cancel migration web-x (c) or stop watching and leave it running (d)?" in text
    assert ("Cancelled: web stays on h1." in text) == bool(deleted)


def test_cancel_that_comes_too_late_says_so() -> None:
    body = vm("web", "h2")
    body["status"]["lastMigration"] = {"name": "web-x", "result": "Succeeded", "targetHost": "h2"}
    cluster = ScriptedCluster([_moving(99), None], vm_body=body)
    ctx, out, _ = _ctx(cluster)
    assert commands._cancel_and_report(ctx, "web-x") == EXIT_FAILED
    assert out.getvalue().splitlines()[-1] == "Too late: web had already moved to h2 (Succeeded)."
