"""Drains and remediation end to end: maintenance, blocked VMs, stopping, a failed fan, Alertmanager's webhook.

Real API server, real agents, the operator as a separate process (restarted once here with its
webhook receiver on). Each test gets its own pool of hosts (label ``pool``) and its VMs select that
pool, so drains never touch the shared e2e hosts or other tests' VMs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.alertmanager import Alertmanager
from tests.e2e.conftest import Fleet
from tests.kube import wait_for
from vmshift.devcluster.stack import HostPlan
from vmshift.hypervisor.protocol import ComponentFault, SensorChange

pytestmark = pytest.mark.e2e

FINISHED = {"Succeeded", "Failed", "Cancelled"}
EVACUATION = "vmshift.io/evacuation"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Drains:
    """The shared fleet plus the webhook receiver's address and token, and this module's pools."""

    def __init__(self, fleet: Fleet, port: int, token: str) -> None:
        self.fleet = fleet
        self.port = port
        self.token = token
        self.hosts: list[str] = []
        self.namespaces: list[str] = []
        self.policies: list[str] = []

    # -- set-up ------------------------------------------------------------------------------------

    def pool(self, name: str, *plans: HostPlan) -> list[str]:
        """Start hosts labelled pool=<name>; wait until they are Ready."""
        labelled = [replace(p, labels={"pool": name, **p.labels}) for p in plans]
        self.fleet.stack.start_hosts(labelled)
        self.hosts += [p.name for p in labelled]
        for p in labelled:
            self.fleet.wait_phase("host", p.name, None, {"Ready"}, timeout=90)
        return [p.name for p in labelled]

    def namespace(self) -> str:
        ns = self.fleet.namespace()
        self.namespaces.append(ns)
        return ns

    def vms(self, ns: str, pool: str, host: str, specs: list[tuple[str, int]], **kw: Any) -> dict[str, str]:
        """VMs (name, priority) started on ``host`` and left free to move within ``pool``; name -> uid."""
        selector = {"hostSelector": {"matchLabels": {"pool": pool}}}
        kw.setdefault("compatibility", True)
        self.fleet.apply(*[self.fleet.vm(ns, name, host=host, placement=dict(selector), priority=priority, **kw)
                           for name, priority in specs])
        for name, _ in specs:
            self.fleet.wait_phase("vsvm", name, ns, {"Running"}, timeout=120)
            self.fleet.unpin(ns, name)
        return {name: self.fleet.uid(ns, name) for name, _ in specs}

    def policy(self, name: str, spec: dict[str, Any]) -> None:
        self.fleet.apply({"apiVersion": "vmshift.io/v1alpha1", "kind": "RemediationPolicy",
                          "metadata": {"name": name}, "spec": spec})
        self.policies.append(name)

    # -- observation -------------------------------------------------------------------------------

    def host(self, name: str) -> dict[str, Any]:
        return self.fleet.get("host", name)

    def drain(self, host: str) -> dict[str, Any]:
        return self.fleet.status("host", host).get("drain") or {}

    def condition(self, host: str, type: str) -> dict[str, Any]:
        return next((c for c in self.fleet.status("host", host).get("conditions") or [] if c["type"] == type), {})

    def wait_condition(self, host: str, type: str, status: str, timeout: float = 20) -> dict[str, Any]:
        """The host's own daemon derives its conditions from what other controllers write (a
        remediation, a drain): they follow within an event, not in the same write."""
        return wait_for(lambda: (c := self.condition(host, type)).get("status") == status and c,
                        f"{type}={status} on {host}", timeout, interval=0.3, describe=lambda: self.describe(host))

    def maintenance(self, host: str, on: bool) -> None:
        self.fleet.kube.kubectl("patch", "host", host, "--type=merge",
                                "-p", json.dumps({"spec": {"maintenance": on}}))

    def migrations(self, ns: str, host: str) -> list[dict[str, Any]]:
        items = self.fleet.kube.get_json("vsmig", "-n", ns, "-l", f"{EVACUATION}={host}")["items"]
        return list(items)

    def where(self, ns: str, name: str, uid: str) -> str:
        """The one host that holds the guest, checked against the VM's status."""
        status = self.fleet.status("vsvm", name, ns)
        copies = list(self.fleet.copies(uid))
        assert copies == [status.get("host")], f"{name}: agents hold {copies}, status says {status.get('host')}"
        return copies[0]

    def settled(self, ns: str, uids: dict[str, str], timeout: float = 90) -> dict[str, str]:
        """Wait until every VM runs on exactly the host its status names; name -> host."""
        def check() -> dict[str, str] | None:
            out = {}
            for name, uid in uids.items():
                status = self.fleet.status("vsvm", name, ns)
                copies = list(self.fleet.copies(uid))
                if status.get("phase") != "Running" or copies != [status.get("host")]:
                    return None
                out[name] = copies[0]
            return out
        return wait_for(check, "every VM on exactly one host, the one its status names", timeout,
                        interval=0.5, describe=lambda: self.fleet.stack.operator_log_tail(20))

    def events(self, name: str, namespace: str = "default") -> str:
        return self.fleet.kube.kubectl("get", "events", "-n", namespace, "--field-selector",
                                       f"involvedObject.name={name}", "-o",
                                       "custom-columns=REASON:.reason,MESSAGE:.message").stdout

    def describe(self, host: str) -> str:
        return (f"drain {json.dumps(self.drain(host))[:1500]}\nremediation "
                f"{json.dumps(self.fleet.status('host', host).get('remediation'))}\n"
                f"operator log:\n{self.fleet.stack.operator_log_tail(25)}")

    # -- the webhook -------------------------------------------------------------------------------

    def post(self, body: bytes | str, *, token: str | None = "default") -> tuple[int, str]:
        """POST to the receiver with curl, as Alertmanager would; (status code, body)."""
        data = body.encode() if isinstance(body, str) else body
        args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-X", "POST",
                "-H", "Content-Type: application/json", "--data-binary", "@-",
                f"http://127.0.0.1:{self.port}/alerts"]
        if token is not None:
            args[1:1] = ["-H", f"Authorization: Bearer {self.token if token == 'default' else token}"]
        proc = subprocess.run(args, input=data, capture_output=True, timeout=30, check=True)
        text, _, code = proc.stdout.decode().rpartition("\n")
        return int(code), text


def payload(status: str, alerts: list[dict[str, Any]]) -> str:
    """An Alertmanager v4 webhook body."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({
        "version": "4", "groupKey": "{}:{alertname=\"HostPsuRedundancyLost\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "vmshift", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [{"status": status, "labels": a, "annotations": {"summary": "test"}, "startsAt": now,
                    "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus.example/graph", "fingerprint": ""} for a in alerts],
    })


@pytest.fixture(scope="module")
def drains(fleet: Fleet) -> Iterator[Drains]:
    """The operator restarted with its webhook receiver on (the settings stay for later restarts)."""
    port, token = _free_port(), secrets.token_urlsafe(24)
    fleet.stack.env.update({"VMSHIFT_WEBHOOK_PORT": str(port), "VMSHIFT_WEBHOOK_TOKEN": token,
                            "VMSHIFT_WEBHOOK_ADDRESS": "127.0.0.1"})
    fleet.stack.stop_operator()
    fleet.stack.start_operator("--keep-finished-migrations", "50")

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(healthy, "the webhook receiver to answer", 60, interval=0.5,
             describe=lambda: fleet.stack.operator_log_tail(20))
    d = Drains(fleet, port, token)
    try:
        yield d
    finally:
        for name in d.policies:
            fleet.kube.kubectl("delete", "remediationpolicy", name, "--wait=false", check=False)
        for ns in d.namespaces:
            fleet.kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        for ns in d.namespaces:
            fleet.kube.kubectl("wait", "--for=delete", f"namespace/{ns}", "--timeout=120s", check=False)
        for host in d.hosts:
            fleet.kube.kubectl("delete", "host", host, "--wait=false", check=False)
            agent = fleet.stack.agents.pop(host, None)
            if agent is not None:
                agent.stop(timeout_seconds=5)


# -- maintenance ------------------------------------------------------------------------------------


def test_maintenance_drains_twenty_vms_with_visible_progress(drains: Drains) -> None:
    pool = f"p-{uuid.uuid4().hex[:5]}"
    src, *targets = drains.pool(pool, HostPlan(f"{pool}-src", max_concurrent_migrations=2),
                                *[HostPlan(f"{pool}-t{i}", max_concurrent_migrations=2) for i in range(3)])
    ns = drains.namespace()
    specs = [(f"vm-{i:02d}", 100 if i < 5 else 0) for i in range(20)]
    uids = drains.vms(ns, pool, src, specs, memory=128, dirty=5, working_set=16)
    samples: list[dict[str, Any]] = []
    done = threading.Event()

    outbound: list[int] = []

    def sample() -> None:
        while not done.is_set():
            samples.append(drains.drain(src))
            outbound.append(drains.fleet.agent_host(src).migrations)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    drains.maintenance(src, True)
    sampler.start()
    try:
        drains.fleet.wait_phase("host", src, None, {"Maintenance"}, timeout=400)
    finally:
        done.set()
        sampler.join()
    took = time.monotonic() - started
    drained = drains.fleet.status("host", src)
    # the status that says Maintenance already counts what the agent holds after the last move
    assert drained["vms"] == 0 and drained["allocated"]["memoryMiB"] == 0, drained
    drain = drains.drain(src)
    assert drain["state"] == "Completed" and drain["total"] == 20 and drain["moved"] == 20, drain
    assert drain["trigger"] == "spec.maintenance" and not drain.get("blocked") and drain.get("finishedAt"), drain
    running = [s for s in samples if s.get("state") == "Running"]
    assert any(0 < s.get("moved", 0) < 20 for s in running), f"no intermediate progress seen in {len(samples)} samples"
    assert any(s.get("inFlight", 0) > 0 for s in running), "no migration in flight was ever reported"
    assert max(outbound) <= 2, f"the source ran {max(outbound)} migrations at once (maxConcurrentMigrations 2)"
    assert max(s.get("inFlight", 0) for s in samples) <= 3, "more than the source's 2 slots plus 1 queued"
    hosts = drains.settled(ns, uids)
    assert src not in hosts.values(), hosts
    assert set(hosts.values()) <= set(targets)
    for name, uid in uids.items():
        assert drains.where(ns, name, uid) == hosts[name]
    assert drains.condition(src, "Schedulable")["status"] == "False"
    # most important first: every priority-100 VM's migration was created no later than any other's
    created = {m["spec"]["vmName"]: m["metadata"]["creationTimestamp"] for m in drains.migrations(ns, src)}
    important = [created[n] for n, p in specs if p == 100]
    ordinary = [created[n] for n, p in specs if p == 0]
    assert max(important) <= min(ordinary), created
    print(f"\n20-VM drain: {took:.1f} s measured, planner expected {drain.get('expectedSeconds')} s "
          f"(bound {drain.get('lowerBoundSeconds')} s), strategy {drain.get('strategy')!r}, "
          f"{drain.get('failed')} failed attempts")
    # back in service
    drains.maintenance(src, False)
    drains.fleet.wait_phase("host", src, None, {"Ready"}, timeout=60)
    wait_for(lambda: drains.condition(src, "Schedulable").get("status") == "True", "Schedulable=True", 30)
    after = drains.drain(src)
    assert after["state"] == "Completed" and not after.get("trigger"), after


def test_a_drain_plans_on_what_the_sources_migration_stream_was_measured_to_carry(drains: Drains) -> None:
    """The source's agent measures what one migration stream carries (a real stream over TCP) and the
    figure reaches the Host's status; the drain then plans on it. No stream fills a 100 Gbit/s link on
    these machines, so two moves at once is the shorter drain. Unmeasured, one stream is taken to fill the
    link on its own, and the same fleet is planned "1 at once +1 ready"."""
    pool = f"p-{uuid.uuid4().hex[:5]}"
    link = 100_000
    src, first, _ = drains.pool(pool, *[HostPlan(f"{pool}-{n}", bandwidth_mbps=link) for n in ("src", "t0", "t1")])
    ns = drains.namespace()
    drains.vms(ns, pool, src, [("warm", 0)], memory=1536, dirty=5, working_set=64)
    uids = drains.vms(ns, pool, src, [(f"vm-{i}", 0) for i in range(4)], memory=256, dirty=5, working_set=16)
    assert "streamMbps" not in (drains.fleet.status("host", src).get("migrations") or {}), "measured before any move"

    drains.fleet.apply(drains.fleet.migration(ns, "warm-up", "warm", first))
    warm_up = drains.fleet.wait_phase("vsmig", "warm-up", ns, FINISHED, timeout=120)
    assert warm_up["phase"] == "Succeeded", warm_up
    figure = wait_for(lambda: (drains.fleet.status("host", src).get("migrations") or {}).get("streamMbps"),
                      f"{src}'s status to show what its stream carried", 30, interval=0.5,
                      describe=lambda: json.dumps(drains.fleet.status("host", src).get("migrations")))
    assert 0 < figure < link, figure

    drains.maintenance(src, True)
    drains.fleet.wait_phase("host", src, None, {"Maintenance"}, timeout=300)
    drain = drains.drain(src)
    assert drain["state"] == "Completed" and drain["moved"] == 4 and not drain.get("blocked"), drain
    assert drain["strategy"].startswith("2 at once"), (figure, drain)
    assert src not in drains.settled(ns, uids).values()


def test_a_vm_that_cannot_move_is_blocked_and_the_drain_stalls(drains: Drains) -> None:
    pool = f"p-{uuid.uuid4().hex[:5]}"
    src, _ = drains.pool(pool, HostPlan(f"{pool}-src"), HostPlan(f"{pool}-t0"))
    ns = drains.namespace()
    uids = drains.vms(ns, pool, src, [("mover-1", 0), ("mover-2", 0)], memory=128, dirty=5)
    uids |= drains.vms(ns, pool, src, [("pinned-disk", 50)], memory=128, dirty=5,
                       disks=[{"name": "scratch", "sizeGiB": 5, "local": True}])
    drains.maintenance(src, True)
    drain = wait_for(lambda: (d := drains.drain(src)).get("state") == "Blocked" and d, "the drain to end Blocked",
                     180, interval=0.5, describe=lambda: drains.describe(src))
    assert drain["moved"] == 2 and drain["total"] == 3 and drain["inFlight"] == 0, drain
    [blocked] = drain["blocked"]
    assert blocked["vm"] == f"{ns}/pinned-disk" and blocked["reason"] == "StorageNotShared", blocked
    assert "local" in blocked["message"], blocked
    stalled = wait_for(lambda: (c := drains.condition(src, "Stalled")).get("status") == "True" and c,
                       "Stalled=True on the host", 30, describe=lambda: drains.describe(src))
    assert stalled["reason"] == "DrainBlocked" and "pinned-disk" in stalled["message"], stalled
    assert drains.condition(src, "Reconciling") == {}  # kstatus's abnormal-true pair: only while True
    assert drains.fleet.status("host", src)["phase"] == "Draining"
    assert "DrainBlocked" in drains.events(src)
    # it does not spin: no migration of the blocked VM, and nothing new while we watch
    count = len(drains.migrations(ns, src))
    assert count == 2 and not [m for m in drains.migrations(ns, src) if m["spec"]["vmName"] == "pinned-disk"]
    time.sleep(6)  # the fault to observe is the absence of activity over time
    assert len(drains.migrations(ns, src)) == count
    assert drains.where(ns, "pinned-disk", uids["pinned-disk"]) == src
    drains.maintenance(src, False)
    wait_for(lambda: drains.drain(src).get("state") == "Cancelled", "the blocked drain to end Cancelled", 30,
             describe=lambda: drains.describe(src))
    wait_for(lambda: drains.condition(src, "Stalled") == {}, "Stalled gone", 30)
    drains.fleet.wait_phase("host", src, None, {"Ready"}, timeout=30)


def test_turning_maintenance_off_mid_drain_stops_it_cleanly(drains: Drains) -> None:
    pool = f"p-{uuid.uuid4().hex[:5]}"
    src, *_ = drains.pool(pool, HostPlan(f"{pool}-src", bandwidth_mbps=1000), HostPlan(f"{pool}-t0"),
                          HostPlan(f"{pool}-t1"))
    ns = drains.namespace()
    uids = drains.vms(ns, pool, src, [(f"s{i}", 0) for i in range(8)], memory=256, dirty=5)
    drains.maintenance(src, True)
    wait_for(lambda: 1 <= drains.drain(src).get("moved", 0) < 6, "the drain to move its first VMs", 180,
             interval=0.3, describe=lambda: drains.describe(src))
    drains.maintenance(src, False)
    drain = wait_for(lambda: (d := drains.drain(src)).get("state") == "Cancelled" and d.get("finishedAt") and d,
                     "the drain to end Cancelled with nothing in flight", 120, interval=0.5,
                     describe=lambda: drains.describe(src))
    assert drain["inFlight"] == 0 and not drain.get("trigger"), drain
    migrations = drains.migrations(ns, src)
    assert all((m.get("status") or {}).get("phase") in FINISHED for m in migrations), \
        [(m["metadata"]["name"], (m.get("status") or {}).get("phase")) for m in migrations]
    hosts = drains.settled(ns, uids)
    moved = sum(1 for h in hosts.values() if h != src)
    assert moved == drain["moved"] and 1 <= moved < 8, (moved, drain)
    count = len(migrations)
    time.sleep(5)  # the fault to observe is the absence of new migrations after the stop
    assert len(drains.migrations(ns, src)) == count
    drains.fleet.wait_phase("host", src, None, {"Ready"}, timeout=30)
    assert drains.condition(src, "Schedulable")["status"] == "True"
    assert drains.condition(src, "Draining")["reason"] == "DrainCancelled"
    assert "DrainCancelled" in drains.events(src)


def test_a_drain_survives_an_operator_killed_mid_drain(drains: Drains) -> None:
    pool = f"p-{uuid.uuid4().hex[:5]}"
    src, *_ = drains.pool(pool, HostPlan(f"{pool}-src", bandwidth_mbps=1000), HostPlan(f"{pool}-t0"),
                          HostPlan(f"{pool}-t1"))
    ns = drains.namespace()
    uids = drains.vms(ns, pool, src, [(f"k{i}", 0) for i in range(6)], memory=256, dirty=5)
    drains.maintenance(src, True)
    before = wait_for(lambda: (d := drains.drain(src)).get("moved", 0) >= 1 and d, "the first VM to move", 180,
                      interval=0.3, describe=lambda: drains.describe(src))
    drains.fleet.stack.stop_operator(kill=True)
    drains.fleet.stack.start_operator("--keep-finished-migrations", "50")
    drains.fleet.wait_phase("host", src, None, {"Maintenance"}, timeout=300)
    drain = drains.drain(src)
    assert drain["startedAt"] == before["startedAt"], "the restarted operator began another drain"
    assert (drain["state"], drain["total"], drain["moved"]) == ("Completed", 6, 6), drain
    hosts = drains.settled(ns, uids)
    assert src not in hosts.values(), hosts
    succeeded = [m["spec"]["vmName"] for m in drains.migrations(ns, src)
                 if (m.get("status") or {}).get("phase") == "Succeeded"]
    assert sorted(succeeded) == sorted(uids), f"every VM moved exactly once: {succeeded}"
    drains.maintenance(src, False)
    drains.fleet.wait_phase("host", src, None, {"Ready"}, timeout=60)


# -- remediation ------------------------------------------------------------------------------------


def _set_sensors(drains: Drains, host: str, change: SensorChange) -> None:
    async def call() -> None:
        async with drains.fleet.stack.agents[host].client() as client:
            await client.set_sensors(change)
    asyncio.run(call())


def _evacuated_in_priority_order(drains: Drains, ns: str, src: str, critical: list[str]) -> None:
    """The critical VMs' migrations ran one at a time (one slot), most important first."""
    runs = {m["spec"]["vmName"]: m["status"] for m in drains.migrations(ns, src)
            if (m.get("status") or {}).get("phase") == "Succeeded"}
    assert set(runs) == set(critical), runs
    started = [runs[name]["startedAt"] for name in critical]
    assert started == sorted(started) and started[0] < started[-1], list(zip(critical, started, strict=True))
    for earlier, later in itertools.pairwise(critical):
        assert runs[earlier]["finishedAt"] <= runs[later]["startedAt"], (earlier, later, runs)


def test_a_failed_fan_evacuates_the_critical_vms_under_evacuate_critical(drains: Drains) -> None:
    pool = f"p-{uuid.uuid4().hex[:5]}"
    src, t0, _ = drains.pool(pool, HostPlan(f"{pool}-src", bandwidth_mbps=1000, max_concurrent_migrations=1),
                             HostPlan(f"{pool}-t0"), HostPlan(f"{pool}-t1"))
    ns = drains.namespace()
    critical = ["crit-900", "crit-500", "crit-100"]
    uids = drains.vms(ns, pool, src, [("crit-100", 100), ("crit-900", 900), ("ord-10", 10), ("crit-500", 500),
                                      ("ord-0", 0)], memory=256, dirty=5)
    outsider = drains.vms(ns, pool, t0, [("outsider", 0)], memory=128, dirty=5)
    policy = f"fan-{pool}"
    drains.policy(policy, {"match": {"alertname": "FanFailure"}, "action": "EvacuateCritical",
                           "priorityThreshold": 100, "debounceSeconds": 1, "cooldownSeconds": 0,
                           "release": {"mode": "Annotation"}})
    _set_sensors(drains, src, SensorChange(fan=ComponentFault(index=0, failed=True)))
    health = wait_for(lambda: (c := drains.condition(src, "HardwareHealthy")).get("status") == "False" and c,
                      "HardwareHealthy=False", 30)
    assert health["reason"] == "FanFailure", health
    remediation = wait_for(lambda: drains.fleet.status("host", src).get("remediation"), "the remediation to start",
                           60, describe=lambda: drains.describe(src))
    assert remediation["policy"] == policy and remediation["action"] == "EvacuateCritical", remediation
    assert remediation["priorityThreshold"] == 100
    assert [a["alertname"] for a in remediation["alerts"]] == ["FanFailure"]
    assert remediation["alerts"][0]["source"] == "Agent" and remediation["alerts"][0]["severity"] == "warning"
    drain = wait_for(lambda: (d := drains.drain(src)).get("state") == "Completed" and d.get("trigger") and d,
                     "the evacuation to complete", 180, interval=0.5, describe=lambda: drains.describe(src))
    assert drain["total"] == 3 and drain["moved"] == 3 and drain["minPriority"] == 100, drain
    hosts = drains.settled(ns, uids)
    assert all(hosts[n] != src for n in critical), hosts
    assert hosts["ord-10"] == src and hosts["ord-0"] == src, hosts
    _evacuated_in_priority_order(drains, ns, src, critical)
    events = drains.events(src)
    assert "RemediationTriggered" in events and policy in events, events
    active = drains.fleet.status("remediationpolicy", policy).get("active") or []
    assert [a["host"] for a in active] == [src], active
    # quarantined: no inbound migration, no new VM
    drains.fleet.apply(drains.fleet.migration(ns, "back-in", "outsider", src))
    refused = drains.fleet.wait_phase("vsmig", "back-in", ns, FINISHED)
    assert (refused.get("failure") or {}).get("reason") == "TargetUnschedulable", refused
    drains.fleet.apply(drains.fleet.vm(ns, "newcomer", host=src, compatibility=True, memory=128, dirty=5))
    wait_for(lambda: drains.fleet.status("vsvm", "newcomer", ns).get("reason") == "TargetUnschedulable",
             "the new VM to be refused", 60, describe=lambda: json.dumps(drains.fleet.status("vsvm", "newcomer", ns)))
    # healed: still quarantined until a person releases it
    _set_sensors(drains, src, SensorChange(heal=True))
    wait_for(lambda: drains.condition(src, "HardwareHealthy").get("status") == "True", "HardwareHealthy=True", 30)
    time.sleep(3)  # the release must not come by itself: observe that nothing changes
    assert drains.fleet.status("host", src).get("remediation"), "the remediation ended without its release"
    assert drains.condition(src, "Schedulable")["status"] == "False"
    assert drains.fleet.status("vsvm", "newcomer", ns).get("phase") == "Pending"
    drains.fleet.kube.kubectl("annotate", "host", src, "vmshift.io/release-remediation=fan replaced")
    wait_for(lambda: not drains.fleet.status("host", src).get("remediation"), "the release", 60,
             describe=lambda: drains.describe(src))
    last = drains.fleet.status("host", src)["lastRemediation"]
    assert last["policy"] == policy and last["reason"] == "ReleasedByAnnotation", last
    wait_for(lambda: "vmshift.io/release-remediation" not in (drains.host(src)["metadata"].get("annotations") or {}),
             "the release annotation to be consumed", 30)
    drains.fleet.wait_phase("host", src, None, {"Ready"}, timeout=60)
    # in service again: the waiting VM lands on it, and it accepts inbound migrations
    assert drains.fleet.wait_phase("vsvm", "newcomer", ns, {"Running"}, timeout=90)["host"] == src
    drains.fleet.apply(drains.fleet.migration(ns, "back-in-2", "outsider", src))
    assert drains.fleet.wait_phase("vsmig", "back-in-2", ns, FINISHED, timeout=90)["phase"] == "Succeeded"
    assert drains.where(ns, "outsider", outsider["outsider"]) == src
    wait_for(lambda: not drains.fleet.status("remediationpolicy", policy).get("active"),
             "the policy to list no active host", 30)


def test_alertmanager_webhook_authenticates_validates_and_drives_remediation(drains: Drains) -> None:
    pool = f"p-{uuid.uuid4().hex[:5]}"
    src, _ = drains.pool(pool, HostPlan(f"{pool}-src"), HostPlan(f"{pool}-t0"))
    ns = drains.namespace()
    uids = drains.vms(ns, pool, src, [("db", 300), ("batch", 0)], memory=128, dirty=5)
    policy = f"psu-{pool}"
    drains.policy(policy, {"match": {"alertname": "HostPsuRedundancyLost", "severity": "critical"},
                           "action": "EvacuateCritical", "priorityThreshold": 100, "debounceSeconds": 0,
                           "cooldownSeconds": 0, "release": {"mode": "AlertResolved", "holdSeconds": 3}})
    alert = {"alertname": "HostPsuRedundancyLost", "severity": "critical", "host": src, "team": "hardware"}
    firing = payload("firing", [alert])
    # refused, and nothing changes: no token, a wrong token, malformed bodies, an oversized one
    assert drains.post(firing, token=None)[0] == 401
    assert drains.post(firing, token="not-the-token")[0] == 401
    code, text = drains.post("{not json")
    assert code == 400 and "not JSON" in text, text
    code, text = drains.post(json.dumps({"version": "4", "status": "firing", "receiver": "x", "groupKey": "g"}))
    assert code == 400 and "alerts" in text, text
    code, text = drains.post(firing.replace('"version": "4"', '"version": "3"'))
    assert code == 400 and "version" in text, text
    assert drains.post(b"x" * (1024 * 1024 + 10))[0] == 413
    time.sleep(2)  # the fault to observe is the absence of any remediation
    assert not drains.fleet.status("host", src).get("remediation")
    # an alert about no known host: an event on the policy, not an error
    code, text = drains.post(payload("firing", [{**alert, "host": "no-such-host"}]))
    assert code == 200 and json.loads(text)["unknownHost"] == ["HostPsuRedundancyLost"], text
    wait_for(lambda: "UnknownHost" in drains.events(policy), "an UnknownHost event on the policy", 30)
    # the real alert
    code, text = drains.post(firing)
    assert code == 200 and json.loads(text)["accepted"] == [{"alertname": "HostPsuRedundancyLost", "host": src,
                                                             "status": "firing"}], text
    remediation = wait_for(lambda: drains.fleet.status("host", src).get("remediation"), "the remediation", 60,
                           describe=lambda: drains.describe(src))
    assert remediation["policy"] == policy and remediation["alerts"][0]["source"] == "Alertmanager", remediation
    hardware = drains.wait_condition(src, "HardwareHealthy", "False")  # the alert, as the Host API documents
    assert hardware["reason"] == "AlertFiring" and "HostPsuRedundancyLost (critical)" in hardware["message"], hardware
    wait_for(lambda: drains.drain(src).get("state") == "Completed", "the evacuation", 120,
             describe=lambda: drains.describe(src))
    hosts = drains.settled(ns, uids)
    assert hosts["db"] != src and hosts["batch"] == src, hosts
    schedulable = drains.wait_condition(src, "Schedulable", "False")
    assert schedulable["reason"] == "Cordoned" and f"RemediationPolicy {policy}" in schedulable["message"], schedulable
    # resolved: the action ends after the hold
    assert drains.post(payload("resolved", [alert]))[0] == 200
    wait_for(lambda: not drains.fleet.status("host", src).get("remediation"), "the remediation to end", 60,
             describe=lambda: drains.describe(src))
    last = drains.fleet.status("host", src)["lastRemediation"]
    assert last["reason"] == "AlertsResolved" and last["policy"] == policy, last
    drains.fleet.wait_phase("host", src, None, {"Ready"}, timeout=60)
    assert drains.condition(src, "Schedulable")["status"] == "True"
    assert "RemediationAlertsResolved" in drains.events(src)
    assert drains.wait_condition(src, "HardwareHealthy", "True")["reason"] == "SensorsNormal"


def test_a_real_alertmanager_group_of_500_alerts_drives_remediation(drains: Drains, tmp_path: Path) -> None:
    """Prometheus Alertmanager (built from the Go module proxy) notifies the receiver with its bearer
    token from a credentials file: one group of 500 alerts (about 450 KiB, read in many pieces) is
    accepted whole, EvacuateCritical moves the critical VM, and the resolved notification releases it."""
    pool = f"p-{uuid.uuid4().hex[:5]}"
    src, _ = drains.pool(pool, HostPlan(f"{pool}-src"), HostPlan(f"{pool}-t0"))
    ns = drains.namespace()
    uids = drains.vms(ns, pool, src, [("db", 300), ("batch", 0)], memory=128, dirty=5)
    policy = f"psu-am-{pool}"
    drains.policy(policy, {"match": {"alertname": "HostPsuRedundancyLost", "severity": "critical"},
                           "action": "EvacuateCritical", "priorityThreshold": 100, "debounceSeconds": 0,
                           "cooldownSeconds": 0, "release": {"mode": "AlertResolved", "holdSeconds": 3}})
    alerts = [{"alertname": "HostPsuRedundancyLost", "severity": "critical", "host": src, "psu": f"psu-{i}",
               "datacenter": "dc-east-1", "rack": f"rack-{pool}", "team": "hardware"} for i in range(500)]
    # annotations as real rules carry them: the group's notification is about 450 KiB, more than one
    # socket read (256 KiB) can bring, so the receiver must read on to the end of the body
    notes = {"description": "Power supply redundancy lost: the host runs on one PSU. " * 5,
             "runbook_url": f"https://runbooks.example/hardware/psu?pool={pool}"}
    with Alertmanager(tmp_path / "alertmanager", f"http://127.0.0.1:{drains.port}/alerts", drains.token) as am:
        am.post_alerts(alerts, annotations=notes)

        def notified() -> bool:
            if am.metric("alertmanager_notifications_failed_total", integration="webhook") > 0:
                raise AssertionError(f"Alertmanager's notification failed:\n{am.log_tail()}\n"
                                     f"operator log:\n{drains.fleet.stack.operator_log_tail(20)}")
            return am.metric("alertmanager_notifications_total", integration="webhook") >= 1

        wait_for(notified, "Alertmanager to notify the receiver", 60, describe=am.log_tail)
        remediation = wait_for(lambda: drains.fleet.status("host", src).get("remediation"), "the remediation", 60,
                               describe=lambda: drains.describe(src))
        assert remediation["policy"] == policy and remediation["alerts"][0]["source"] == "Alertmanager", remediation
        wait_for(lambda: drains.drain(src).get("state") == "Completed", "the evacuation", 120,
                 describe=lambda: drains.describe(src))
        hosts = drains.settled(ns, uids)
        assert hosts["db"] != src and hosts["batch"] == src, hosts
        # resolved by Alertmanager (send_resolved): the action ends after the hold
        am.post_alerts(alerts, resolved=True, annotations=notes)
        wait_for(lambda: not drains.fleet.status("host", src).get("remediation"), "the remediation to end", 90,
                 describe=lambda: f"{drains.describe(src)}\nalertmanager:\n{am.log_tail()}")
        assert drains.fleet.status("host", src)["lastRemediation"]["reason"] == "AlertsResolved"
        assert am.metric("alertmanager_notifications_failed_total", integration="webhook") == 0, am.log_tail()
        assert am.metric("alertmanager_notifications_total", integration="webhook") >= 2, am.log_tail()
