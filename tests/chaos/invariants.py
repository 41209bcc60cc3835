"""The invariants a fault-injection trial checks, as plain functions over what the agents report.

Pure: no I/O. The agents are the truth about where a guest runs; the API objects only say what the
operator believes, and are checked against the agents. Each check returns sentences that name the
VM, the hosts and what was seen, so a violation reads on its own in the campaign's table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmshift.hypervisor.protocol import HostInfo, MigrationStatus, VmInfo, VmState

#: States in which a host holds a copy of the guest (a tombstone, MigratedAway, does not count;
#: Incoming is a reservation, checked separately).
RESIDENT = frozenset({VmState.Running, VmState.Paused, VmState.Saved, VmState.Defined, VmState.Stopped})
_IN_DOUBT = re.compile(r"doubt", re.IGNORECASE)


@dataclass(frozen=True)
class AgentView:
    """One agent as read over its HTTP API (``vms`` empty and ``info`` None when it did not answer)."""

    host: str
    answered: bool
    vms: tuple[VmInfo, ...] = ()
    info: HostInfo | None = None
    migrations: tuple[MigrationStatus, ...] = ()


@dataclass(frozen=True)
class ExpectedVM:
    """What the trial knows about one VM: its uid, whether it was deleted, and its API status."""

    name: str
    uid: str
    deleted: bool = False
    exists: bool = True  # the API object is still there
    status: Mapping[str, Any] = field(default_factory=dict)
    migrations: tuple[Mapping[str, Any], ...] = ()  # its VirtualMachineMigration objects

    @property
    def reported_in_doubt(self) -> bool:
        """The operator said, in a condition or a migration's failure, that the VM's place is in doubt."""
        texts = [str(c.get("reason", "")) for c in self.status.get("conditions") or []]
        texts.append(str(self.status.get("phase", "")))
        for migration in self.migrations:
            status = migration.get("status") or {}
            texts.append(str((status.get("failure") or {}).get("reason", "")))
            texts.append(str(status.get("phase", "")))
        return any(_IN_DOUBT.search(t) for t in texts)


def running_hosts(views: Iterable[AgentView]) -> dict[str, set[str]]:
    """uid -> the hosts whose agent reports the guest Running."""
    found: dict[str, set[str]] = {}
    for view in views:
        for vm in view.vms:
            if vm.state is VmState.Running:
                found.setdefault(vm.id, set()).add(view.host)
    return found


def two_running(forward: Iterable[AgentView], backward: Iterable[AgentView], names: Mapping[str, str]) -> list[str]:
    """Guests Running on two hosts in both of two sweeps read in opposite host orders.

    One sweep alone can see a correct live migration as two copies (the source read before its
    pause, the target after its resume); two sweeps in opposite orders cannot, because the source
    pauses before the target resumes: a guest seen on both hosts in both sweeps ran twice.
    """
    first, second = running_hosts(forward), running_hosts(backward)
    problems = []
    for uid, hosts in first.items():
        both = hosts & second.get(uid, set())
        if len(both) > 1:
            problems.append(f"VM {names.get(uid, uid)} ran on two hosts at once: {', '.join(sorted(both))}")
    return problems


def settled_problems(views: Iterable[AgentView], expected: Iterable[ExpectedVM]) -> list[str]:
    """Everything that is wrong once a trial has had time to settle (empty: the trial passed).

    - a VM that exists runs on exactly one host, and its status names that host; a VM with no
      running copy is accepted only if the operator reported it in doubt and exactly one host
      holds it (paused);
    - a deleted VM has no copy left on any agent;
    - no agent holds a guest that no VM of the trial owns;
    - no migration is still in flight on any agent, and no reservation is held (nothing is in flight);
    - every migration that committed carries equal source and target digests.
    """
    views = list(views)
    problems: list[str] = []
    copies: dict[str, dict[str, VmState]] = {}
    for view in views:
        if not view.answered:
            problems.append(f"the agent of {view.host} does not answer")
        for vm in view.vms:
            if vm.state in RESIDENT:
                copies.setdefault(vm.id, {})[view.host] = vm.state
    known = set()
    for vm in expected:
        known.add(vm.uid)
        held = copies.get(vm.uid, {})
        where = ", ".join(f"{h} ({s.value})" for h, s in sorted(held.items())) or "no host"
        if vm.deleted or not vm.exists:
            if held:
                problems.append(f"VM {vm.name} was deleted but agents still hold it: {where}")
            continue
        running = [h for h, s in held.items() if s is VmState.Running]
        if len(running) == 1 and len(held) == 1:
            host = vm.status.get("host")
            if host != running[0]:
                problems.append(f"VM {vm.name} runs on {running[0]} but its status says host {host!r}")
            continue
        if not running and len(held) == 1 and next(iter(held.values())) is VmState.Paused and vm.reported_in_doubt:
            continue  # stays paused and said so: the explicit in-doubt outcome
        problems.append(f"VM {vm.name} is not on exactly one host: agents hold it on {where}"
                        + (" (reported in doubt)" if vm.reported_in_doubt else ""))
    for uid, held in copies.items():
        if uid not in known:
            where = ", ".join(f"{h} ({s.value})" for h, s in sorted(held.items()))
            problems.append(f"an orphan guest {uid} that no VM of the trial owns runs on {where}")
    for view in views:
        problems += _agent_problems(view)
    return problems


def _agent_problems(view: AgentView) -> list[str]:
    problems = []
    flying = [m for m in view.migrations if not m.phase.finished]
    for m in flying:
        problems.append(f"migration {m.migration_id} ({m.role.value}) is still {m.phase.value} on {view.host}")
    incoming = [vm for vm in view.vms if vm.state is VmState.Incoming]
    if view.info is not None:
        reserved = view.info.reserved
        wanted_cpus = sum(vm.cpus for vm in incoming if vm.migration_id in {m.migration_id for m in flying})
        wanted_mib = sum(vm.memory_mib for vm in incoming if vm.migration_id in {m.migration_id for m in flying})
        if (reserved.cpus, reserved.memory_mib) != (wanted_cpus, wanted_mib):
            problems.append(f"{view.host} reserves {reserved.cpus} cpus / {reserved.memory_mib} MiB while its "
                            f"in-flight incoming migrations need {wanted_cpus} / {wanted_mib}")
    for vm in incoming:
        if vm.migration_id not in {m.migration_id for m in flying}:
            problems.append(f"{view.host} still holds an Incoming copy of {vm.name} for migration "
                            f"{vm.migration_id}, which is not in flight")
    for m in view.migrations:
        if m.committed and m.source_digest and m.target_digest and m.source_digest != m.target_digest:
            problems.append(f"migration {m.migration_id} committed with digests {m.source_digest} (source) != "
                            f"{m.target_digest} (target): memory arrived corrupted")
    return problems


def api_migration_problems(migrations: Iterable[Mapping[str, Any]]) -> list[str]:
    """Migration objects that claim verified memory falsely, or succeeded without a verification."""
    problems = []
    for m in migrations:
        status = m.get("status") or {}
        name = m.get("metadata", {}).get("name")
        if status.get("memoryVerified") is False:
            problems.append(f"migration {name} reports memoryVerified=false")
    return problems
