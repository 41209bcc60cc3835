"""Which hosts may hold a VM's guest, so only their agents' silence keeps a lost guest from being placed again.

A guest appears on a host only when the operator asks that host's agent for it, and the operator
writes the host into a record that outlives it (the API server) before it asks:

- a placement: ``status.host`` is written before define and start (``_place``); this process's
  ``rt.placements`` hint covers a body read before that write echoed;
- a guest found defined or stopped on a host status does not name: ``status.host`` is written
  before it is started there (``reconcile``);
- a live or quick migration: the migration's ``status.targetHost`` (and the VM's
  ``status.migration.targetHost``) before ``prepare_incoming``; its source is the VM's host then;
- a cold move: the migration's ``status.targetHost`` before ``define_vm`` on the target (``move_cold``);
- an import creates a VirtualMachine, which is placed as above; it defines nothing on an agent.

So the hosts below are every host that may hold the guest, also after an operator restart (the
in-memory hint is the only one lost then, and ``status.host`` was written before it mattered). An
agent that does not answer and is none of them cannot hold the guest: its silence does not keep the
guest from being placed again, as vSphere HA restarts a VM unless the host that may run it is
unreachable. A VM never placed is not looked for here (the reports after every agent answered or was
declared unreachable say it runs nowhere).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vmshift.controllers.views import MigrationEntry


def may_hold(status: Mapping[str, Any], hinted: str | None, migrations: Iterable[MigrationEntry],
             reported: Iterable[str]) -> frozenset[str]:
    """The hosts that may hold the guest of a VM (pure).

    ``status``: the VM's status (its host, the migration under way, the last migration);
    ``hinted``: the host a placement of this process chose; ``migrations``: the VM's migrations in the
    cache, whatever their phase (a failed one's target is kept too: it costs only its agent's answer);
    ``reported``: the hosts whose agent's last report lists the guest, in any state."""
    moving = status.get("migration") or {}
    last = status.get("lastMigration") or {}
    hosts: set[str | None] = {status.get("host"), hinted, moving.get("targetHost"), last.get("sourceHost"),
                              last.get("targetHost")}
    for m in migrations:
        hosts.update((m.source, m.target))
    hosts.update(reported)
    return frozenset(h for h in hosts if h)


def blocking(candidates: frozenset[str], silent: Iterable[str]) -> list[str]:
    """The silent hosts that may hold the guest, by name (pure): while any does not answer, nobody can
    say the guest runs nowhere. A silent host outside ``candidates`` does not count."""
    return sorted({h for h in silent if h in candidates})
