"""Demo scenes built on a running Stack: a fan fails and a RemediationPolicy evacuates the host's critical VMs.

Glue only, like the demo itself: applies manifests with kubectl, calls an agent's sensor API the
way a hardware fault would, releases the host with ``kubectl vmshift release`` (the plugin must be
on the stack's PATH, as ``vmshift demo`` puts it), and prints what the operator reports (conditions, status.remediation,
status.drain, migrations, events). ``vmshift demo`` calls :func:`fan_failure_scene`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from vmshift.api.common import API_VERSION
from vmshift.api.host import HardwareAlert
from vmshift.api.labels import EVACUATION_LABEL, RELEASE_ANNOTATION
from vmshift.devcluster.stack import Stack, wait_until
from vmshift.hypervisor.protocol import ComponentFault, SensorChange

FAN_FAILURE = HardwareAlert.FanFailure.value

POLICY = "fan-failure-evacuate"
#: The scene's VMs: (name, priority). At or above the threshold they must leave the host.
SCENE_VMS = [("payments-db", 900), ("api-gateway", 600), ("ci-runner", 10), ("batch-etl", 0)]


class _Scene:
    def __init__(self, stack: Stack, log: Callable[[str], None], namespace: str) -> None:
        self.stack = stack
        self.log = log
        self.namespace = namespace

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.stack.kubectl(*args, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def status(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.get(kind, name, namespace).get("status") or {}

    def condition(self, host: str, type: str) -> dict[str, Any]:
        conditions = self.status("host", host).get("conditions") or []
        return next((c for c in conditions if c.get("type") == type), {})

    def sensors(self, host: str, change: SensorChange) -> None:
        async def call() -> None:
            async with self.stack.agents[host].client() as client:
                await client.set_sensors(change)
        asyncio.run(call())

    def vm(self, name: str, priority: int, host: str, volume: str) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION, "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": self.namespace, "labels": {"app": name, "scene": "fan"}},
            "spec": {"cpus": 2, "memoryMiB": 512, "priority": priority, "processor": {"compatibility": True},
                     "disks": [{"name": "os", "sizeGiB": 20, "volume": volume}],
                     "workload": {"dirtyRateMiBps": 20, "workingSetMiB": 32}, "placement": {"host": host}},
        }

    def vms_on(self, host: str) -> list[tuple[str, int]]:
        items = json.loads(self.stack.kubectl("get", "vsvm", "-A", "-o", "json").stdout)["items"]
        return sorted(((f"{vm['metadata']['namespace']}/{vm['metadata']['name']}", int(vm["spec"].get("priority", 0)))
                       for vm in items if (vm.get("status") or {}).get("host") == host), key=lambda v: -v[1])

    def follow_drain(self, host: str, timeout: float = 240) -> dict[str, Any]:
        """Print status.drain as it changes until the evacuation completes or blocks."""
        shown: tuple[Any, ...] = ()
        deadline = time.monotonic() + timeout
        drain: dict[str, Any] = {}
        while time.monotonic() < deadline:
            drain = self.status("host", host).get("drain") or {}
            line = (drain.get("state"), drain.get("moved"), drain.get("inFlight"), drain.get("total"))
            if drain.get("trigger") and line != shown:
                shown = line
                self.log(f"  status.drain: {drain.get('state')}, {drain.get('moved')} of {drain.get('total')} moved, "
                         f"{drain.get('inFlight')} in flight, {drain.get('failed')} failed attempt(s)")
            if drain.get("trigger") and drain.get("state") in ("Completed", "Blocked"):
                return drain
            time.sleep(0.5)
        raise TimeoutError(f"the evacuation of {host} did not finish in {timeout:.0f} s: {json.dumps(drain)}")


def _pick_host(stack: Stack) -> str:
    """The first host whose vendor has another host to move to."""
    plans = list(stack.plans.values())
    vendors = [("AMD" if p.cpu_model.startswith("zen") else "Intel") for p in plans]
    for plan, vendor in zip(plans, vendors, strict=True):
        if vendors.count(vendor) > 1:
            return plan.name
    raise ValueError("the fan-failure scene needs two hosts of one CPU vendor")


def fan_failure_scene(stack: Stack, log: Callable[[str], None], *, host: str | None = None,
                      namespace: str = "vmshift-demo", priority_threshold: int = 500) -> dict[str, Any]:
    """Fail a fan on ``host`` (default: the first host with a same-vendor peer) holding critical and
    ordinary VMs, under a RemediationPolicy EvacuateCritical; show the evacuation, the quarantine,
    the repair and the release. Returns what moved, what stayed and what was blocked."""
    scene = _Scene(stack, log, namespace)
    host = host or _pick_host(stack)
    volume = (stack.plans[host].shared_volumes or ("csv-01",))[0]
    stack.kubectl("create", "namespace", namespace, check=False)
    log(f"  RemediationPolicy {POLICY}: on {FAN_FAILURE}, move VMs with priority >= {priority_threshold} off the host "
        f"(highest first) and quarantine it until a person sets {RELEASE_ANNOTATION}.")
    stack.apply({"apiVersion": API_VERSION, "kind": "RemediationPolicy", "metadata": {"name": POLICY},
                 "spec": {"match": {"alertname": FAN_FAILURE}, "action": "EvacuateCritical",
                          "priorityThreshold": priority_threshold, "debounceSeconds": 3, "cooldownSeconds": 60,
                          "release": {"mode": "Annotation", "annotation": RELEASE_ANNOTATION}}})
    stack.apply([scene.vm(name, priority, host, volume) for name, priority in SCENE_VMS])
    for name, _ in SCENE_VMS:
        def running(vm: str = name) -> bool:
            return bool(scene.status("vsvm", vm, namespace).get("phase") == "Running")
        wait_until(running, f"{name} to run", 120)
        stack.kubectl("patch", "vsvm", name, "-n", namespace, "--type=merge",
                      "-p", '{"spec":{"placement":{"host":null}}}')
    before = scene.vms_on(host)
    log(f"  {host} runs: " + ", ".join(f"{vm} (priority {p})" for vm, p in before))

    log(f"  The agent of {host} reports fan 1 failed (POST /v1/sensors).")
    started = time.monotonic()
    scene.sensors(host, SensorChange(fan=ComponentFault(index=0, failed=True)))
    health = wait_until(lambda: (c := scene.condition(host, "HardwareHealthy")).get("status") == "False" and c,
                        "HardwareHealthy=False", 60)
    log(f"  Host condition HardwareHealthy=False ({health.get('reason')}): {health.get('message')}")
    remediation = wait_until(lambda: scene.status("host", host).get("remediation"), "the remediation to start", 90)
    log(f"  status.remediation: {remediation.get('policy')} -> {remediation.get('action')} "
        f"(alerts: {', '.join(a['alertname'] + '/' + str(a.get('severity')) for a in remediation.get('alerts', []))})")
    log(f"    {remediation.get('message')}")
    drain = scene.follow_drain(host)
    took = time.monotonic() - started
    migrations = json.loads(stack.kubectl("get", "vsmig", "-A", "-l", f"{EVACUATION_LABEL}={host}",
                                          "-o", "json").stdout)["items"]
    done = sorted((m for m in migrations if (m.get("status") or {}).get("phase") == "Succeeded"),
                  key=lambda m: (m["status"].get("startedAt") or "", m["metadata"]["name"]))
    for m in done:
        s = m["status"]
        log(f"  moved {m['metadata']['namespace']}/{m['spec']['vmName']} -> {s.get('targetHost')} "
            f"({s.get('mode')}, downtime {s.get('downtimeMs')} ms, memory verified {s.get('memoryVerified')})")
    for blocked in drain.get("blocked") or []:
        log(f"  blocked {blocked['vm']} ({blocked['reason']}): {blocked['message']}")
    after = scene.vms_on(host)
    log(f"  Evacuation {drain.get('state')} {took:.1f} s after the fault; still on {host}: "
        + (", ".join(f"{vm} (priority {p})" for vm, p in after) or "nothing"))
    schedulable = scene.condition(host, "Schedulable")
    log(f"  Schedulable=False ({schedulable.get('reason')}): {schedulable.get('message')}")

    probe = "fan-probe"
    stack.apply(scene.vm(probe, 0, host, volume))
    refused = wait_until(lambda: scene.status("vsvm", probe, namespace).get("reason"), "the probe VM's refusal", 60)
    log(f"  A new VM pinned to {host} waits: {refused}: "
        f"{scene.status('vsvm', probe, namespace).get('message')}")

    log(f"  The fan is replaced (sensors healed); {host} stays quarantined until a person releases it.")
    scene.sensors(host, SensorChange(heal=True))
    wait_until(lambda: scene.condition(host, "HardwareHealthy").get("status") == "True", "HardwareHealthy=True", 60)
    log(f"  $ kubectl vmshift release {host} --reason fan-replaced   (sets {RELEASE_ANNOTATION})")
    released = stack.kubectl("vmshift", "release", host, "--reason", "fan-replaced", timeout=120)
    for line in released.stdout.strip().splitlines():
        log(f"  {line}")
    wait_until(lambda: not scene.status("host", host).get("remediation"), "the release", 60)
    wait_until(lambda: scene.status("host", host).get("phase") == "Ready", f"{host} to be Ready", 60)
    wait_until(lambda: scene.status("vsvm", probe, namespace).get("phase") == "Running", "the probe VM to start", 90)
    log(f"  {host} is Ready and schedulable again; the waiting VM {probe} now runs on it.")
    events = stack.kubectl("get", "events", "--field-selector", f"involvedObject.name={host}",
                           "--sort-by=.lastTimestamp", "-o", "custom-columns=REASON:.reason,MESSAGE:.message").stdout
    log("  Events on the Host:")
    for line in events.strip().splitlines()[1:]:
        if line.startswith(("Remediation", "Drain")):
            log(f"    {line[:200]}")
    return {
        "host": host,
        "moved": [f"{m['metadata']['namespace']}/{m['spec']['vmName']}" for m in done],
        "stayed": [vm for vm, _ in after],
        "blocked": [b["vm"] for b in drain.get("blocked") or []],
        "seconds": round(took, 1),
    }
