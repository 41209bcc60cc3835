"""The resync's clean-up on the agents: a guest two agents run, and a guest whose VirtualMachine is gone.

The agents are the truth about where guests run, so what no watch event announces (a switchover
settled wrongly, a host back from a partition, a VM deleted while the operator was down or its
agent unreachable) is found by comparing their reports with the VMs the API server holds. Each
pass of the fleet resync (virtualmachines.py) ends with both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from vmshift.controllers import events, indexes, kubeapi
from vmshift.controllers.indexes import GROUP, VERSION
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import VMEntry, uid_of
from vmshift.controllers.vmstatus import choose_copy, orphan_guests, running_copies
from vmshift.hypervisor.client import AgentError
from vmshift.hypervisor.protocol import VmState


async def resolve_duplicates(entries: Iterable[VMEntry], logger: logging.Logger) -> None:
    """Two agents run the same guest (a switchover settled wrongly, a host back from a partition): keep the
    copy the VM's last migration completed on (or the one status names) and stop the others."""
    rt = runtime()
    by_uid = {e.uid: e for e in entries}
    for vm_id, hosts in running_copies(rt.agents.reports()).items():
        entry = by_uid.get(vm_id)
        if entry is None or rt.gate.holder(entry.key) is not None:
            continue  # an orphan (collect_orphans) or a migration in flight (its switchover window)
        mine = indexes.migrations_by_vm.get(entry.key) or []
        if any(m.in_flight for m in mine):
            continue
        completed: str | None = None
        for m in sorted(mine, key=lambda m: (m.created, m.name), reverse=True):
            link = rt.agents.get(m.target or "")
            if m.target in hosts and link is not None:
                try:
                    if (await link.client.get_migration(m.uid)).committed:
                        completed = m.target
                        break
                except AgentError:
                    continue
        keep = choose_copy(hosts, completed, entry.host)
        if keep is None:
            logger.error("resync: %s runs on %s and nothing says which copy is right; a person must stop one",
                         entry.key, ", ".join(hosts))
            continue
        keeper = rt.agents.get(keep)
        try:
            if keeper is None or (await keeper.client.get_vm(vm_id)).state is not VmState.Running:
                continue  # the reports are a poll old: look again next pass
        except AgentError:
            continue
        for host in hosts:
            if host == keep:
                continue
            link = rt.agents.get(host)
            if link is None:
                continue
            try:
                info = await link.client.get_vm(vm_id)
                if info.state is not VmState.Running or info.migration_id is not None:
                    continue
                await link.client.delete_vm(vm_id, force=True)
            except AgentError as exc:
                if exc.status != 404:  # gone since the report (it was the source of a finished move): nothing to stop
                    logger.warning("resync: stopping the second copy of %s on %s failed: %s", entry.key, host, exc)
                continue
            why = "it completed the last migration" if keep == completed else "status names it"
            message = (f"{entry.name} ran on both {keep} and {host}; the copy on {host} was stopped and deleted and "
                       f"the one on {keep} kept ({why}).")
            logger.warning("resync: %s", message)
            events.warn(_ref(entry), reason="DuplicateStopped", message=message)
        if entry.host != keep:
            await kubeapi.patch_status("virtualmachines", entry.namespace, entry.name, {"host": keep})


async def collect_orphans(entries: Iterable[VMEntry], logger: logging.Logger) -> None:
    """Stop and delete guests whose VirtualMachine was deleted while their agent could not be reached."""
    rt = runtime()
    known = {e.uid for e in entries}
    reports = rt.agents.reports()
    # A VM deleted during its migration: the migration is cancelled at once, but the pass its end wakes
    # still finds the guest leaving in the last report. Until a later report shows it settled, the resync
    # comes back within DEFERRED_RESYNC_SECONDS, not a full period later (it ran 30 s more).
    orphans = orphan_guests(reports, known)
    rt.orphans_moving = bool(orphans.moving)
    for host, info in orphans.settled:
        body = await kubeapi.get("virtualmachines", info.namespace, info.name)
        if body is not None and uid_of(body) == info.id:
            continue  # the cache lags: the VM exists
        link = rt.agents.get(host)
        if link is None:
            continue
        try:
            await link.client.delete_vm(info.id, force=True)
        except AgentError as exc:
            if exc.status != 404:
                logger.warning("resync: deleting orphan guest %s on %s failed: %s", info.id, host, exc)
            continue
        logger.warning("resync: deleted guest %s (%s/%s) on %s: its VirtualMachine no longer exists", info.id,
                       info.namespace, info.name, host)


def _ref(entry: VMEntry) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
            "metadata": {"name": entry.name, "namespace": entry.namespace, "uid": entry.uid}}
