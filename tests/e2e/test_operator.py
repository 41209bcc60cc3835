"""The operator end to end: real API server, real agents, the operator as a separate process, driven with kubectl."""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import pytest

from tests.e2e.conftest import Fleet
from tests.kube import wait_for

pytestmark = pytest.mark.e2e

FINISHED = {"Succeeded", "Failed", "Cancelled"}


def _failure(fleet: Fleet, ns: str, name: str) -> tuple[str, str]:
    status = fleet.wait_phase("vsmig", name, ns, FINISHED)
    failure = status.get("failure") or {}
    return failure.get("reason", status["phase"]), failure.get("message", "")


def test_vms_and_hosts_become_ready_on_satisfying_hosts(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.apply(
        fleet.vm(ns, "any-1"),
        fleet.vm(ns, "rack-2", placement={"hostSelector": {"matchLabels": {"rack": "r2"}}}),
        fleet.vm(ns, "pinned", host="h-haswell", compatibility=True),
        fleet.vm(ns, "lun-user", disks=[{"name": "data", "sizeGiB": 50, "passthroughLun": "lun-7"}]),
    )
    fleet.kube.kubectl("wait", "--for=condition=Ready", "vsvm", "--all", "-n", ns, "--timeout=90s")
    fleet.kube.kubectl("wait", "--for=condition=Ready", "host", "--all", "--timeout=30s")
    rack2 = fleet.status("vsvm", "rack-2", ns)["host"]
    assert rack2 in ("h-icelake-2", "h-zen3")
    assert fleet.status("vsvm", "pinned", ns)["host"] == "h-haswell"
    assert fleet.status("vsvm", "lun-user", ns)["host"] in ("h-icelake-1", "h-icelake-2")
    for name in ("any-1", "rack-2", "pinned", "lun-user"):
        status = fleet.status("vsvm", name, ns)
        copies = fleet.copies(fleet.uid(ns, name))
        assert list(copies) == [status["host"]], f"{name}: agents hold {list(copies)}, status says {status['host']}"
        assert status["processor"]["features"], f"{name} has no processor features in status"
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Placed"]["status"] == "True"
        assert conditions["Migratable"]["status"] in ("True", "False") and conditions["Migratable"]["message"]
    # the cordoned and the small host take nothing
    assert fleet.status("host", "h-cordoned")["phase"] == "Cordoned"
    # the fields the operator writes name it, not its HTTP library, as their manager
    for kind, name, namespace in (("vsvm", "any-1", ns), ("host", "h-cordoned", None)):
        where = ["-n", namespace] if namespace else []
        managed = json.loads(fleet.kube.kubectl("get", kind, name, *where, "-o", "json",
                                                "--show-managed-fields").stdout)["metadata"]["managedFields"]
        status_managers = {m["manager"] for m in managed if m.get("subresource") == "status"}
        assert status_managers == {"vmshift-operator"}, f"{kind} {name}: status managed by {status_managers}"


def test_changing_placement_host_live_migrates_with_verified_memory(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "web", host="h-icelake-1", compatibility=True, dirty=40, working_set=16, keep_pin=True)
    uid = fleet.uid(ns, "web")
    before = fleet.copies(uid)["h-icelake-1"]
    fleet.kube.kubectl("patch", "vsvm", "web", "-n", ns, "--type=merge",
                       "-p", '{"spec":{"placement":{"host":"h-icelake-2"}}}')
    status = wait_for(lambda: (fleet.status("vsvm", "web", ns).get("lastMigration") or {}).get("result") and
                      fleet.status("vsvm", "web", ns), "the VM's lastMigration", 90,
                      describe=lambda: fleet.kube.kubectl("get", "vsmig", "-n", ns, "-o", "yaml").stdout[-2500:])
    assert status["lastMigration"]["result"] == "Succeeded", status
    migration = fleet.status("vsmig", status["lastMigration"]["name"], ns)
    assert migration["phase"] == "Succeeded" and migration["mode"] == "Live"
    assert migration["memoryVerified"] is True
    assert migration["downtimeMs"] is not None and migration["downtimeMs"] < 300
    assert migration["sourceHost"] == "h-icelake-1" and migration["targetHost"] == "h-icelake-2"
    assert len(migration["rounds"]) >= 1
    fleet.wait_phase("vsvm", "web", ns, {"Running"})
    assert fleet.status("vsvm", "web", ns)["host"] == "h-icelake-2"
    copies = fleet.copies(uid)
    assert list(copies) == ["h-icelake-2"]
    assert copies["h-icelake-2"].heartbeat >= before.heartbeat, "the guest's heartbeat went backwards"


def test_processor_compatibility_decides_across_generations_and_vendors(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "strict", host="h-icelake-1", compatibility=False)
    fleet.running_vm(ns, "compat", host="h-icelake-1", compatibility=True)
    fleet.apply(fleet.migration(ns, "strict-haswell", "strict", "h-haswell"),
                fleet.migration(ns, "strict-zen3", "strict", "h-zen3"))
    reason, message = _failure(fleet, ns, "strict-haswell")
    assert reason == "IncompatibleProcessor"
    assert "avx512f" in message and "compatibility" in message
    reason, _ = _failure(fleet, ns, "strict-zen3")
    assert reason == "IncompatibleProcessor"
    assert fleet.status("vsvm", "strict", ns)["host"] == "h-icelake-1"
    assert list(fleet.copies(fleet.uid(ns, "strict"))) == ["h-icelake-1"]
    fleet.apply(fleet.migration(ns, "compat-zen3", "compat", "h-zen3"))
    reason, message = _failure(fleet, ns, "compat-zen3")
    assert reason == "IncompatibleProcessor" and "AMD" in message
    fleet.apply(fleet.migration(ns, "compat-haswell", "compat", "h-haswell"))
    assert fleet.wait_phase("vsmig", "compat-haswell", ns, FINISHED)["phase"] == "Succeeded"
    assert list(fleet.copies(fleet.uid(ns, "compat"))) == ["h-haswell"]


def test_refusals_name_their_reason_and_leave_the_vm_in_place(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "local", host="h-icelake-1",
                     disks=[{"name": "scratch", "sizeGiB": 5, "local": True}])
    fleet.running_vm(ns, "big", host="h-icelake-1", memory=2048)
    fleet.running_vm(ns, "plain", host="h-icelake-1", compatibility=True)
    fleet.apply(
        fleet.migration(ns, "local-live", "local", "h-icelake-2", mode="Live"),
        fleet.migration(ns, "big-small", "big", "h-small"),
        fleet.migration(ns, "to-cordoned", "plain", "h-cordoned"),
    )
    assert _failure(fleet, ns, "local-live")[0] == "StorageNotShared"
    assert _failure(fleet, ns, "big-small")[0] == "InsufficientResources"
    assert _failure(fleet, ns, "to-cordoned")[0] == "TargetUnschedulable"
    for vm in ("local", "big", "plain"):
        assert fleet.status("vsvm", vm, ns)["host"] == "h-icelake-1"
        assert list(fleet.copies(fleet.uid(ns, vm))) == ["h-icelake-1"]
    events = fleet.kube.kubectl("get", "events", "-n", ns, "--field-selector", "type=Warning").stdout
    assert "StorageNotShared" in events and "InsufficientResources" in events


def test_quick_migration_moves_with_a_larger_downtime(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "q", host="h-icelake-1", compatibility=True, memory=256)
    fleet.running_vm(ns, "l", host="h-icelake-1", compatibility=True, memory=256)
    fleet.apply(fleet.migration(ns, "q-quick", "q", "h-icelake-2", mode="Quick"),
                fleet.migration(ns, "l-live", "l", "h-icelake-2", mode="Live"))
    quick = fleet.wait_phase("vsmig", "q-quick", ns, FINISHED)
    live = fleet.wait_phase("vsmig", "l-live", ns, FINISHED)
    assert quick["phase"] == "Succeeded" and quick["mode"] == "Quick", quick
    assert live["phase"] == "Succeeded", live
    assert quick["downtimeMs"] > 5 * live["downtimeMs"], (quick["downtimeMs"], live["downtimeMs"])
    assert list(fleet.copies(fleet.uid(ns, "q"))) == ["h-icelake-2"]


def test_concurrency_limit_on_one_target_and_one_migration_per_vm(fleet: Fleet) -> None:
    ns = fleet.namespace()
    names = [f"c{i}" for i in range(10)]
    fleet.apply(*[fleet.vm(ns, n, host="h-icelake-1" if i % 2 else "h-icelake-2", compatibility=True,
                           memory=128, dirty=5) for i, n in enumerate(names)])
    for n in names:
        fleet.wait_phase("vsvm", n, ns, {"Running"})
        fleet.unpin(ns, n)
    seen: list[int] = []
    done = threading.Event()

    def watch_target() -> None:
        while not done.is_set():
            seen.append(fleet.agent_host("h-slow").migrations)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_target, daemon=True)
    watcher.start()
    fleet.apply(*[fleet.migration(ns, f"{n}-slow", n, "h-slow") for n in names])
    for n in names:
        assert fleet.wait_phase("vsmig", f"{n}-slow", ns, FINISHED, timeout=180)["phase"] == "Succeeded"
    done.set()
    watcher.join()
    assert max(seen) == 2, f"the target ran {max(seen)} migrations at once (limit 2)"
    # ten requests for one VM at once: one runs, nine are refused. The VM is large and its link
    # slow (about 8 s of transfer), so every request arrives while the first is still in flight.
    fleet.running_vm(ns, "large", host="h-slow", compatibility=True, memory=1024, dirty=5)
    fleet.apply(*[fleet.migration(ns, f"same-{i}", "large", "h-icelake-1" if i % 2 else "h-icelake-2")
                  for i in range(10)])
    results = [fleet.wait_phase("vsmig", f"same-{i}", ns, FINISHED) for i in range(10)]
    succeeded = [r for r in results if r["phase"] == "Succeeded"]
    refused = [r for r in results if (r.get("failure") or {}).get("reason") == "AlreadyMigrating"]
    assert len(succeeded) == 1, [r.get("failure") for r in results]
    assert len(refused) == 9, [r.get("failure") for r in results]


def test_deleting_a_migration_in_flight_leaves_the_vm_on_its_source(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "victim", host="h-slow", compatibility=True, memory=1024, dirty=10)
    uid = fleet.uid(ns, "victim")
    fleet.apply(fleet.migration(ns, "doomed", "victim", "h-icelake-1"))
    fleet.wait_phase("vsmig", "doomed", ns, {"Transferring"})
    fleet.kube.kubectl("delete", "vsmig", "doomed", "-n", ns, "--timeout=60s")
    wait_for(lambda: not (fleet.status("vsvm", "victim", ns).get("migration")), "the VM to forget its migration", 30)
    assert fleet.status("vsvm", "victim", ns)["host"] == "h-slow"
    copies = fleet.copies(uid)
    assert list(copies) == ["h-slow"] and copies["h-slow"].state.value == "Running"


def test_a_busy_guest_under_a_tight_timeout_fails_and_stays(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "busy", host="h-slow", compatibility=True, memory=512, dirty=400, working_set=400)
    fleet.apply(fleet.migration(ns, "hopeless", "busy", "h-icelake-1", mode="Live", timeoutSeconds=3))
    reason, message = _failure(fleet, ns, "hopeless")
    assert reason in ("Timeout", "NotConverging"), (reason, message)
    assert "busy" in message
    assert fleet.status("vsvm", "busy", ns)["host"] == "h-slow"
    assert list(fleet.copies(fleet.uid(ns, "busy"))) == ["h-slow"]


def test_operator_killed_at_random_points_leaves_every_vm_on_one_host(fleet: Fleet) -> None:
    ns = fleet.namespace()
    rng = random.Random(7)
    names = [f"k{i}" for i in range(4)]
    fleet.apply(*[fleet.vm(ns, n, host="h-icelake-1", compatibility=True, memory=256, dirty=10) for n in names])
    for n in names:
        fleet.wait_phase("vsvm", n, ns, {"Running"})
        fleet.unpin(ns, n)
    uids = {n: fleet.uid(ns, n) for n in names}
    target = {n: "h-icelake-2" for n in names}
    for run in range(3):
        for n in names:
            fleet.apply(fleet.migration(ns, f"{n}-r{run}", n, target[n]))
        time.sleep(rng.uniform(0.2, 2.0))  # a random point of the migrations' lives: the fault to inject
        fleet.stack.stop_operator(kill=True)
        time.sleep(rng.uniform(0.0, 1.0))
        fleet.stack.start_operator("--keep-finished-migrations", "50")
        for n in names:
            fleet.wait_phase("vsmig", f"{n}-r{run}", ns, FINISHED, timeout=120)
        for n in names:
            def settled(n: str = n) -> Any:
                status = fleet.status("vsvm", n, ns)
                copies = fleet.copies(uids[n])
                return status if status.get("phase") == "Running" and list(copies) == [status.get("host")] else None
            wait_for(settled, f"{n} to run on exactly one host, the one its status names", 60,
                     describe=lambda n=n: f"status {fleet.status('vsvm', n, ns)}, copies {list(fleet.copies(uids[n]))}")
            target[n] = "h-icelake-1" if fleet.status("vsvm", n, ns)["host"] == "h-icelake-2" else "h-icelake-2"


def test_a_host_that_no_longer_matches_the_selector_is_left_by_migration(fleet: Fleet) -> None:
    ns = fleet.namespace()
    fleet.running_vm(ns, "sel", compatibility=True,
                     placement={"hostSelector": {"matchLabels": {"rack": "r1"}}})
    first = fleet.status("vsvm", "sel", ns)["host"]
    assert first in ("h-icelake-1", "h-haswell")
    fleet.kube.kubectl("patch", "vsvm", "sel", "-n", ns, "--type=merge",
                       "-p", '{"spec":{"placement":{"hostSelector":{"matchLabels":{"rack":"r2"}}}}}')
    status = wait_for(lambda: (fleet.status("vsvm", "sel", ns).get("lastMigration") or {}).get("result") and
                      fleet.status("vsvm", "sel", ns), "a migration off the host that lost the selector", 90)
    assert status["lastMigration"]["result"] == "Succeeded", status
    fleet.wait_phase("vsvm", "sel", ns, {"Running"})
    assert fleet.status("vsvm", "sel", ns)["host"] == "h-icelake-2"  # the only Intel host in rack r2
    assert list(fleet.copies(fleet.uid(ns, "sel"))) == ["h-icelake-2"]


def test_a_vm_the_agents_cannot_define_is_refused_and_starts_once_fixed(fleet: Fleet) -> None:
    """The drivers annotation has no schema: too many drivers must not leave the VM Starting forever."""
    ns = fleet.namespace()
    vm = fleet.vm(ns, "many-drivers")
    vm["metadata"]["annotations"] = {"vmshift.io/initial-drivers": ",".join(f"drv{i}" for i in range(300))}
    fleet.apply(vm)

    def refused() -> dict[str, Any] | None:
        status = fleet.status("vsvm", "many-drivers", ns)
        return status if status.get("reason") == "InvalidDefinition" else None

    status = wait_for(refused, "the VM to be refused with InvalidDefinition", 60,
                      describe=lambda: f"{fleet.status('vsvm', 'many-drivers', ns)}\n"
                                       f"{fleet.stack.operator_log_tail(20)}")
    assert status["phase"] == "Pending" and not status.get("host"), status
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Stalled"]["status"] == "True" and conditions["Ready"]["status"] == "False"
    assert "300 drivers; at most 256" in status["message"], status["message"]
    assert fleet.copies(fleet.uid(ns, "many-drivers")) == {}
    events = fleet.kube.kubectl("get", "events", "-n", ns, "--field-selector", "involvedObject.name=many-drivers",
                                "-o", "jsonpath={.items[*].reason}").stdout
    assert "InvalidDefinition" in events, events
    fleet.kube.kubectl("annotate", "--overwrite", "vsvm", "many-drivers", "-n", ns,
                       "vmshift.io/initial-drivers=vmbus,netvsc,storvsc,e1000")
    status = fleet.wait_phase("vsvm", "many-drivers", ns, {"Running"}, timeout=60)
    assert status["drivers"] == ["vmbus", "netvsc", "storvsc", "e1000"], status


def test_a_host_cannot_make_the_operator_read_a_secret_elsewhere(fleet: Fleet) -> None:
    """A Host author points tokenSecretRef at a tenant's Secret: the operator refuses to read it."""
    ns = fleet.namespace()
    fleet.kube.kubectl("create", "secret", "generic", "db-password", "-n", ns, "--from-literal=token=hunter2")
    name = f"h-probe-{ns[2:]}"
    fleet.apply({"apiVersion": "vmshift.io/v1alpha1", "kind": "Host", "metadata": {"name": name},
                 "spec": {"cpu": {"model": "icelake", "cores": 4}, "memoryMiB": 4096,
                          "migrationBandwidthMbps": 1000, "unschedulable": True,
                          "agent": {"endpoint": "http://127.0.0.1:9",
                                    "tokenSecretRef": {"name": "db-password", "namespace": ns}}}})
    try:
        def refused() -> dict[str, Any] | None:
            ready = next((c for c in fleet.status("host", name).get("conditions") or [] if c["type"] == "Ready"), {})
            return ready if ready.get("reason") == "TokenSecretOutsideOperatorNamespace" else None

        ready = wait_for(refused, "the Host to be refused with TokenSecretOutsideOperatorNamespace", 60,
                         describe=lambda: f"{fleet.status('host', name)}")
        assert ready["status"] == "False" and f"{ns}/db-password" in ready["message"], ready
        assert "hunter2" not in str(fleet.get("host", name))
        events = fleet.kube.kubectl("get", "events", "-A", "--field-selector", f"involvedObject.name={name}",
                                    "-o", "jsonpath={.items[*].reason}").stdout
        assert "TokenSecretOutsideOperatorNamespace" in events, events
    finally:
        fleet.kube.kubectl("delete", "host", name, "--wait=false", check=False)
