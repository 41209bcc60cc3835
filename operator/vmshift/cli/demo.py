"""``vmshift demo``: the whole product on the embedded control plane, with a live migration and a refused one.

Glue only: brings up the control plane, four agents of mixed CPU generations and vendors, and the
operator; applies VMs with kubectl; then changes spec.placement.host the way a GitOps commit
would and prints the migration's progress as the operator reports it; then works the way a person
at a terminal does, with the ``kubectl vmshift`` plugin (migrate --wait, why, drain --dry-run,
drain, undrain, top), whose live progress bar shows when the demo runs on a terminal. Everything it starts is in
process groups tied to this process, so Ctrl-C (or any exit) cleans up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmshift.api.common import API_VERSION
from vmshift.api.labels import VM_LABEL
from vmshift.devcluster.cluster import ControlPlane, default_dir
from vmshift.devcluster.stack import HostPlan, Stack, wait_until

HOSTS = [
    HostPlan("h-icelake-1", "icelake", cores=32, memory_mib=65536, bandwidth_mbps=10_000,
             shared_volumes=("csv-01",), labels={"topology.kubernetes.io/zone": "rack-a"}),
    HostPlan("h-cascadelake-1", "cascadelake", cores=32, memory_mib=65536, bandwidth_mbps=10_000,
             shared_volumes=("csv-01",), labels={"topology.kubernetes.io/zone": "rack-a"}),
    HostPlan("h-haswell-1", "haswell", cores=16, memory_mib=32768, bandwidth_mbps=10_000,
             shared_volumes=("csv-01",), labels={"topology.kubernetes.io/zone": "rack-b"}),
    HostPlan("h-zen3-1", "zen3", cores=64, memory_mib=131072, bandwidth_mbps=10_000,
             shared_volumes=("csv-01",), labels={"topology.kubernetes.io/zone": "rack-b"}),
]
NAMESPACE = "vmshift-demo"


def _vm(name: str, host: str, *, compatibility: bool, memory: int, dirty: float, working_set: int,
        priority: int = 100, disk_gib: int = 40) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {"cpus": 2, "memoryMiB": memory, "processor": {"compatibility": compatibility},
                 "disks": [{"name": "os", "sizeGiB": disk_gib, "volume": "csv-01"}], "priority": priority,
                 "workload": {"dirtyRateMiBps": dirty, "workingSetMiB": working_set},
                 "placement": {"host": host}},
    }


VMS = [
    _vm("web-1", "h-icelake-1", compatibility=True, memory=4096, dirty=60, working_set=64, priority=500),
    _vm("db-1", "h-icelake-1", compatibility=False, memory=512, dirty=30, working_set=32, priority=900),
    _vm("analytics-1", "h-zen3-1", compatibility=True, memory=512, dirty=20, working_set=32),
]

#: ``--driver qemu``: two real Linux guests, small enough to boot under TCG on a laptop in seconds.
QEMU_VMS = [
    _vm("web-1", "h-icelake-1", compatibility=True, memory=96, dirty=2.5, working_set=8, priority=500, disk_gib=1),
    _vm("db-1", "h-icelake-1", compatibility=False, memory=96, dirty=1, working_set=8, priority=900, disk_gib=1),
]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("demo", help="run the demo on the embedded control plane (Ctrl-C ends it)")
    parser.add_argument("--exit", action="store_true", help="exit after the scenes instead of waiting for Ctrl-C")
    parser.add_argument("--dir", type=Path, default=None, help="cluster directory (default ~/.cache/vmshift/"
                                                               "clusters/demo)")
    parser.add_argument("--driver", choices=("simulated", "qemu"), default="simulated",
                        help="what the agents run: simulated guests (default) or real Linux guests under QEMU "
                             "(two small ones; needs qemu-system-x86, qemu-utils and the guest image, which "
                             "`vmshift dev guest-image` builds from Debian's packages)")
    parser.set_defaults(func=run)


def say(line: str = "") -> None:
    print(line, flush=True)


class _Demo:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def get(self, kind: str, name: str, namespace: str | None = NAMESPACE) -> dict[str, Any]:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.stack.kubectl(*args, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def status(self, kind: str, name: str, namespace: str | None = NAMESPACE) -> dict[str, Any]:
        return self.get(kind, name, namespace).get("status") or {}

    def guest_counter(self, vm: str) -> int:
        """The real guest's counter as its host's agent reads it from the serial console (0 before its first tick)."""
        host = str(self.status("vsvm", vm).get("host"))
        uid = str(self.get("vsvm", vm)["metadata"]["uid"])

        async def ask() -> int:
            async with self.stack.agents[host].client() as client:
                return (await client.get_vm(uid)).heartbeat
        return asyncio.run(ask())

    def wait_counter(self, vm: str, above: int, timeout: float = 400) -> int:
        wait_until(lambda: self.guest_counter(vm) > above, f"{vm}'s guest to print a tick after {above}", timeout)
        return self.guest_counter(vm)

    def wait_phase(self, kind: str, name: str, namespace: str | None, phase: str, timeout: float = 60) -> None:
        def reached() -> bool:
            return self.status(kind, name, namespace).get("phase") == phase
        wait_until(reached, f"{kind} {name} to be {phase}", timeout)

    def show(self, *args: str) -> None:
        say(self.stack.kubectl("get", *args).stdout.rstrip())

    def follow_migration(self, name: str, timeout: float = 120) -> dict[str, Any]:
        """Print the migration's progress as the operator reports it, until it ends."""
        last = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status("vsmig", name)
            phase = status.get("phase", "Pending")
            p = status.get("progress") or {}
            line = f"  {phase:<13}"
            if p:
                line += (f" round {p.get('round', 0)}: {p.get('transferredMiB', 0):8.1f} MiB sent, "
                         f"{p.get('remainingMiB', 0):7.2f} MiB left, guest dirties {p.get('dirtyRateMiBps', 0):5.1f}"
                         f" MiB/s, link {p.get('throughputMbps', 0) / 1000:5.2f} Gbps, {p.get('percent', 0):3d}%")
            if line != last:
                say(line)
                last = line
            if phase in ("Succeeded", "Failed", "Cancelled"):
                return status
            time.sleep(0.3)
        raise TimeoutError(f"migration {name} did not finish within {timeout:.0f}s")

    def plugin(self, *args: str, expect: int = 0) -> int:
        """Run ``kubectl vmshift ARGS`` as a person would, its output straight to this terminal (so a
        terminal shows the live progress bar, a pipe plain lines); the package's kubectl-vmshift is on PATH."""
        say(f"$ kubectl vmshift {' '.join(shlex.quote(a) for a in args)}")
        sys.stdout.flush()
        code = subprocess.run(["kubectl", "vmshift", *args], env=self.stack.env, check=False, timeout=600).returncode
        if code != expect:
            raise RuntimeError(f"kubectl vmshift {' '.join(args)} exited {code}, expected {expect}")
        return code

    def migration_of(self, vm: str, target: str) -> str:
        def find() -> str | None:
            items = json.loads(self.stack.kubectl("get", "vsmig", "-n", NAMESPACE, "-l", f"{VM_LABEL}={vm}",
                                                  "-o", "json").stdout)["items"]
            names = [i["metadata"]["name"] for i in items if i["spec"].get("targetHost") == target]
            return names[-1] if names else None
        return str(wait_until(find, f"a migration of {vm} to {target}", 30))


def run(args: argparse.Namespace) -> int:
    plane = ControlPlane(args.dir or default_dir("demo"), tie_to_parent=True, log=say)
    stack: Stack | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        hosts = [replace(h, driver=args.driver) for h in HOSTS]
        vms = QEMU_VMS if args.driver == "qemu" else VMS
        kind = "simulated hypervisors" if args.driver == "simulated" else "hypervisors running real guests under QEMU"
        say(f"== vmshift demo: a real etcd and kube-apiserver on 127.0.0.1, four {kind} ==")
        state = plane.up(fresh=True)
        stack = Stack(state, plane.dir / "stack", log=lambda line: say(f"  {line}"))
        # kubectl finds the plugin (kubectl-vmshift, installed beside this command) on PATH
        stack.env["PATH"] = os.pathsep.join([stack.env.get("PATH", ""), str(Path(sys.executable).parent)])
        stack.install_crds()
        stack.start_hosts(hosts)
        stack.start_operator()
        demo = _Demo(stack)
        for plan in hosts:
            demo.wait_phase("host", plan.name, None, "Ready", timeout=300)
        say()
        demo.show("hosts")
        stack.kubectl("create", "namespace", NAMESPACE, check=False)
        stack.apply(vms)
        for vm in vms:
            demo.wait_phase("vsvm", vm["metadata"]["name"], NAMESPACE, "Running")
        say()
        demo.show("vsvm", "-n", NAMESPACE)

        say("\n== Scene 1: a GitOps change of spec.placement.host moves web-1 (icelake -> haswell) by live "
            "migration ==")
        say("   web-1 runs in processor compatibility mode, so an older generation can take it.")
        before = 0
        if args.driver == "qemu":
            say("   (its guest boots first: a Debian kernel and busybox under QEMU, 10-30 s under TCG)")
            before = demo.wait_counter("web-1", 1)
            say(f"   web-1's guest prints its counter on its serial console: {before}")
        stack.kubectl("patch", "vsvm", "web-1", "-n", NAMESPACE, "--type=merge",
                      "-p", '{"spec":{"placement":{"host":"h-haswell-1"}}}')
        done = demo.follow_migration(demo.migration_of("web-1", "h-haswell-1"))
        say(f"  -> {done.get('phase')}: downtime {done.get('downtimeMs')} ms, total {done.get('durationMs')} ms, "
            f"{len(done.get('rounds') or [])} rounds, memory digest verified: {done.get('memoryVerified')}")
        if args.driver == "qemu":
            after = demo.wait_counter("web-1", 0, timeout=60)
            say(f"  -> on h-haswell-1 the same guest goes on counting: {after} (it was at {before} before the move; "
                "the downtime is QEMU's own measurement)")

        say("\n== Scene 2: a person asks for db-1 (full icelake feature set) on haswell: refused, it keeps running ==")
        demo.plugin("migrate", "db-1", "--to", "h-haswell-1", "--wait", "-n", NAMESPACE, expect=1)
        say(f"  db-1 still runs on {demo.status('vsvm', 'db-1').get('host')}. Which hosts could take it?")
        demo.plugin("why", "db-1", "-n", NAMESPACE)

        say("\n== Scene 3: kubectl vmshift moves web-1 live to cascadelake, with a progress bar ==")
        stack.kubectl("patch", "vsvm", "web-1", "-n", NAMESPACE, "--type=merge",
                      "-p", '{"spec":{"placement":{"host":null}}}')  # unpinned, so the operator keeps it there
        demo.plugin("migrate", "web-1", "--to", "h-cascadelake-1", "--max-downtime", "300ms", "--wait",
                    "-n", NAMESPACE)

        say("\n== Scene 4: maintenance of h-cascadelake-1: the plan first (a dry run), then the drain ==")
        demo.plugin("drain", "h-cascadelake-1", "--dry-run")
        demo.plugin("drain", "h-cascadelake-1", "--wait")
        demo.plugin("top")
        demo.plugin("undrain", "h-cascadelake-1")
        try:
            from vmshift.demo_scenes import fan_failure_scene
        except ImportError:
            fan_failure_scene = None  # type: ignore[assignment]
        if fan_failure_scene is not None and args.driver == "qemu":
            say("\n(Scene 5, a fan failure, is left out with --driver qemu: it would boot five 512 MiB guests.)")
        elif fan_failure_scene is not None:
            say("\n== Scene 5: a fan fails on a host; the remediation policy evacuates its critical VMs ==")
            outcome = fan_failure_scene(stack, say)
            if asyncio.iscoroutine(outcome):
                asyncio.run(outcome)
        say()
        demo.show("vsvm,vsmig", "-n", NAMESPACE)
        say("\nThe cluster is yours while this runs:")
        say(f"  export KUBECONFIG={state.kubeconfig}")
        say(f"  export PATH={':'.join(state.bin_dirs)}:$PATH   # a kubectl matching the server")
        say("  kubectl get hosts,vsvm,vsmig -A")
        say(f"  export PATH=$PATH:{Path(sys.executable).parent}   # kubectl vmshift top, why, migrate, drain ...")
        if args.exit:
            return 0
        say("\nPress Ctrl-C to stop the demo and clean up.")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("\nstopping")
        return 0
    finally:
        if stack is not None:
            stack.stop()
        plane.down()
