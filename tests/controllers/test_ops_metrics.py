"""The metrics added for operations: in-flight migrations, blocked drains, build info (pure parts)."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY, generate_latest

from vmshift import __version__
from vmshift.api.host import DrainState
from vmshift.controllers.drains import blocked_drains
from vmshift.controllers.views import in_flight_summary, index_migration


def _migration(name: str, phase: str, created: str) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": name, "creationTimestamp": created},
            "spec": {"vmName": "vm"}, "status": {"phase": phase}}


def test_in_flight_counts_only_migrations_under_way_and_ages_the_oldest() -> None:
    now = datetime(2026, 1, 1, 1, 0, 0, tzinfo=UTC)
    entries = [index_migration(_migration("a", "Transferring", "2026-01-01T00:50:00Z")),
               index_migration(_migration("b", "SwitchingOver", "2026-01-01T00:59:00Z")),
               index_migration(_migration("c", "Succeeded", "2026-01-01T00:00:00Z")),
               index_migration(_migration("d", "Pending", "2026-01-01T00:10:00Z"))]
    assert in_flight_summary(entries, now) == (2, 600.0)
    assert in_flight_summary([], now) == (0, 0.0)


def test_blocked_drains_counts_hosts_whose_drain_is_blocked() -> None:
    assert blocked_drains({"h1": DrainState.Blocked, "h2": DrainState.Running, "h3": DrainState.Blocked}) == 2
    assert blocked_drains({}) == 0


def test_build_info_names_the_running_version() -> None:
    text = generate_latest(REGISTRY).decode()
    assert 'vmshift_build_info{python_version="' in text and f'version="{__version__}"}} 1.0' in text
