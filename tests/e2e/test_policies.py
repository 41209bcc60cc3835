"""MigrationPolicy and placement selectors end to end: matchExpressions, namespaceSelector, the policy's
status, its downtime budget and its outbound limit reaching the agents, and hostSelector expressions.

Every policy here selects only labels made for the test (a random suffix), so the policies never
govern another test's VMs; each is deleted at the end.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for

pytestmark = pytest.mark.e2e

FINISHED = {"Succeeded", "Failed", "Cancelled"}


@pytest.fixture
def policies(fleet: Fleet) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    if made:
        fleet.kube.kubectl("delete", "migrationpolicy", *made, "--wait=false", check=False)


def migration_policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "vmshift.io/v1alpha1", "kind": "MigrationPolicy", "metadata": {"name": name},
            "spec": spec}


def policy_status(fleet: Fleet, name: str, count: int, timeout: float = 30) -> dict[str, Any]:
    """Wait until the policy's status counts ``count`` governed VMs and is Ready."""
    def check() -> dict[str, Any] | None:
        status = fleet.status("migrationpolicy", name)
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
        return status if status.get("selectedVirtualMachines") == count and ready.get("status") == "True" else None
    return wait_for(check, f"MigrationPolicy {name} to govern {count} VM(s)", timeout,
                    describe=lambda: json.dumps(fleet.status("migrationpolicy", name))[:1500])


def test_match_expressions_and_namespace_labels_choose_the_policy_and_its_status_says_so(
        fleet: Fleet, policies: list[str]) -> None:
    tag = uuid.uuid4().hex[:6]
    batch, by_ns = f"batch-{tag}", f"by-ns-{tag}"
    ns = fleet.namespace()
    fleet.apply(
        migration_policy(batch, {"precedence": 10, "ladder": ["PreCopy", "AutoConverge", "Quick"], "allowQuick": True,
                                 "selector": {"vmSelector": {"matchExpressions": [
                                     {"key": "app", "operator": "In", "values": [f"batch-{tag}", f"etl-{tag}"]}]}}}),
        migration_policy(by_ns, {"selector": {"namespaceSelector": {"matchLabels": {f"team-{tag}": "data"}}}}),
    )
    policies += [batch, by_ns]
    # w starts on an Intel host: the fleet has one AMD host, from which a running guest could go nowhere
    fleet.apply(fleet.vm(ns, "b", labels={"app": f"batch-{tag}"}),
                fleet.vm(ns, "w", host="h-icelake-1", labels={"app": f"web-{tag}"}, compatibility=True))
    # matchExpressions select the batch VM only (they were ignored: the policy took every VM in the cluster)
    status = policy_status(fleet, batch, 1)
    assert status["selected"] == [f"{ns}/b"], status
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "Accepted" and f"{ns}/b" in ready["message"], ready
    # the namespace has no label yet: the namespace policy governs nothing, and says so
    empty = policy_status(fleet, by_ns, 0)
    ready = next(c for c in empty["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NoVirtualMachinesSelected" and f"team-{tag}=data" in ready["message"], ready
    # labelling the namespace (the operator watches namespaces) brings w under it; b stays with batch
    fleet.kube.kubectl("label", "namespace", ns, f"team-{tag}=data")
    assert policy_status(fleet, by_ns, 1)["selected"] == [f"{ns}/w"]
    assert policy_status(fleet, batch, 1)["selected"] == [f"{ns}/b"]
    # the migration controller reads the same answer
    fleet.wait_phase("vsvm", "w", ns, {"Running"})
    fleet.unpin(ns, "w")
    fleet.apply(fleet.migration(ns, "w-move", "w"))
    moved = fleet.wait_phase("vsmig", "w-move", ns, FINISHED)
    assert moved["phase"] == "Succeeded" and moved["policy"] == by_ns, moved


def test_the_policys_downtime_budget_reaches_the_agent(fleet: Fleet, policies: list[str]) -> None:
    """A guest that cannot converge falls back to Quick only within the policy's maxDowntimeMs.

    The guest rewrites its whole 64 MiB faster than the link carries it, so no round can shrink what
    is left; kept small so that each round is short even when the agents share a loaded machine."""
    tag = uuid.uuid4().hex[:6]
    tight = f"tight-{tag}"
    fleet.apply(migration_policy(tight, {
        "ladder": ["PreCopy", "Quick"], "allowQuick": True, "maxDowntimeMs": 5, "maxRounds": 4, "stallRounds": 2,
        "selector": {"vmSelector": {"matchLabels": {"budget": tag}}}}))
    policies.append(tight)
    ns = fleet.namespace()
    fleet.running_vm(ns, "hot", host="h-slow", compatibility=True, memory=64, dirty=200, working_set=64,
                     labels={"budget": tag})
    policy_status(fleet, tight, 1)
    fleet.apply(fleet.migration(ns, "hot-move", "hot", "h-icelake-1", mode="Live"))
    status = fleet.wait_phase("vsmig", "hot-move", ns, FINISHED, timeout=120)
    failure = status.get("failure") or {}
    assert status["phase"] == "Failed" and failure.get("reason") == "NotConverging", status
    assert "maxDowntimeMs=5" in failure.get("message", ""), failure
    assert status["policy"] == tight
    assert list(fleet.copies(fleet.uid(ns, "hot"))) == ["h-slow"]


def test_the_policys_outbound_limit_per_host_holds(fleet: Fleet, policies: list[str]) -> None:
    """parallelOutboundMigrationsPerHost 1: the policy's VMs leave h-slow one at a time, the others wait
    with a message naming the limit (h-slow itself would allow 2)."""
    tag = uuid.uuid4().hex[:6]
    one_out = f"one-out-{tag}"
    fleet.apply(migration_policy(one_out, {"parallelOutboundMigrationsPerHost": 1,
                                           "selector": {"vmSelector": {"matchLabels": {"outbound": tag}}}}))
    policies.append(one_out)
    ns = fleet.namespace()
    names = ["o1", "o2", "o3"]
    fleet.apply(*[fleet.vm(ns, n, host="h-slow", compatibility=True, memory=192, dirty=5, labels={"outbound": tag})
                  for n in names])
    for n in names:
        fleet.wait_phase("vsvm", n, ns, {"Running"})
        fleet.unpin(ns, n)
    policy_status(fleet, one_out, 3)
    seen: list[int] = []
    messages: set[str] = set()
    done = threading.Event()

    def watch() -> None:
        # The agent is asked every 50 ms; the conditions (three kubectl calls) every 0.5 s: under load,
        # kubectl processes started twenty times a second took the CPU the migrations needed.
        polls = 0
        while not done.is_set():
            seen.append(fleet.agent_host("h-slow").migrations)
            if polls % 10 == 0:
                for n in names:
                    for c in fleet.status("vsmig", f"{n}-out", ns).get("conditions") or []:
                        messages.add(c.get("message", ""))
            polls += 1
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    fleet.apply(*[fleet.migration(ns, f"{n}-out", n, "h-icelake-1" if i % 2 else "h-icelake-2")
                  for i, n in enumerate(names)])
    try:
        for n in names:
            assert fleet.wait_phase("vsmig", f"{n}-out", ns, FINISHED, timeout=180)["phase"] == "Succeeded"
    finally:
        done.set()
        watcher.join()
    assert max(seen) == 1, f"h-slow ran {max(seen)} outbound migrations at once (the policy allows 1)"
    assert any("parallelOutboundMigrationsPerHost of 1" in m for m in messages), messages


def test_host_selector_match_expressions_decide_placement(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(
        fleet.vm(ns, "in-r3", placement={"hostSelector": {"matchExpressions": [
            {"key": "rack", "operator": "In", "values": ["r3"]}]}}),
        fleet.vm(ns, "nowhere", placement={"hostSelector": {"matchExpressions": [
            {"key": "rack", "operator": "DoesNotExist"}]}}),
    )
    # rack=r3: h-small (h-cordoned takes nothing); the expression was ignored, so any host did
    assert fleet.wait_phase("vsvm", "in-r3", ns, {"Running"})["host"] == "h-small"
    # every host has a rack label: no host satisfies DoesNotExist, and the VM says which term fails

    def refused() -> dict[str, Any] | None:
        status = fleet.status("vsvm", "nowhere", ns)
        return status if status.get("reason") == "PlacementConstraint" and "!rack" in status.get("message", "") \
            else None
    status = wait_for(refused, "nowhere to be refused placement naming !rack", 60,
                      describe=lambda: json.dumps(fleet.status("vsvm", "nowhere", ns))[:1500])
    assert status["phase"] == "Pending" and not status.get("host"), status
