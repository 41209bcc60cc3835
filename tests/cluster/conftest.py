"""vmshift installed into a real cluster from its image and manifests, driven with kubectl as a user would.

The cluster is the one-node cluster of ``vmshift dev node`` (a real kubelet, containerd, CNI
bridge, kube-proxy and CoreDNS joined to the embedded control plane): the operator and the agents
run as pods from the ``vmshift:dev`` image (``make image``), installed with ``kubectl apply -k``.
Needs root and Docker; ``make cluster`` brings the node up and loads the image, this fixture does
the same if that was not done.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.kube import REPO, Kube, wait_for
from vmshift.devcluster.node import Node, default_dir
from vmshift.hypervisor.client import HypervisorClient
from vmshift.hypervisor.protocol import VmInfo, VmState

IMAGE = os.environ.get("VMSHIFT_IMAGE", "vmshift:dev")
OVERLAY = Path(os.environ.get("VMSHIFT_OVERLAY", REPO / "manifests" / "install" / "kind"))
SAMPLE_HOSTS = Path(os.environ.get("VMSHIFT_SAMPLE_HOSTS", REPO / "manifests" / "samples" / "hosts.yaml"))
SYSTEM_NS = "vmshift-system"
OPERATOR = "vmshift-operator"
AGENT_SELECTOR = "app.kubernetes.io/name=vmshift-agent"
OPERATOR_SELECTOR = "app.kubernetes.io/name=vmshift-operator"
WEBHOOK_SERVICE = "vmshift-alerts"
WEBHOOK_SECRET = "vmshift-webhook-token"
FINISHED = {"Succeeded", "Failed", "Cancelled"}
#: Kinds whose objects the uninstall must leave none of.
VMSHIFT_CRDS = ["hosts.vmshift.io", "virtualmachines.vmshift.io", "virtualmachinemigrations.vmshift.io",
                "migrationpolicies.vmshift.io", "remediationpolicies.vmshift.io",
                "virtualmachineimports.vmshift.io"]
RESIDENT = {VmState.Running, VmState.Paused, VmState.Saved, VmState.Defined, VmState.Stopped}


@dataclass
class InCluster:
    """kubectl against the cluster, plus the agents' own word (through their Services) to check the truth."""

    kube: Kube
    node: Node
    timings: dict[str, float] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> Any:
        return self.kube.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, *objs: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        args = [kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        proc = self.kubectl("get", *args, check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    def status(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.get(kind, name, namespace).get("status") or {}

    def operator_log(self, lines: int = 30) -> str:
        proc = self.kubectl("logs", "-n", SYSTEM_NS, f"deploy/{OPERATOR}", f"--tail={lines}", check=False)
        return str(proc.stdout or proc.stderr)

    def wait_phase(self, kind: str, name: str, namespace: str | None, phases: set[str],
                   timeout: float = 120) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(kind, name, namespace)
            return status if status.get("phase") in phases else None
        return wait_for(check, f"{kind} {namespace}/{name} to reach {sorted(phases)}", timeout, interval=0.5,
                        describe=lambda: f"{json.dumps(self.status(kind, name, namespace))[:1500]}\n"
                                         f"operator log:\n{self.operator_log()}")

    def namespace(self) -> str:
        name = f"c-{uuid.uuid4().hex[:8]}"
        self.kubectl("create", "namespace", name)
        self.namespaces.append(name)
        return name

    def vm(self, namespace: str, name: str, host: str, *, memory: int = 256, dirty: float = 20.0,
           working_set: int = 32, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {"cpus": 1, "memoryMiB": memory, "processor": {"compatibility": True},
                     "disks": [{"name": "root", "sizeGiB": 10, "volume": "csv-01"}],
                     "workload": {"dirtyRateMiBps": dirty, "workingSetMiB": working_set},
                     "placement": {"host": host}, **spec},
        }

    def migration(self, namespace: str, name: str, vm: str, target: str, **spec: Any) -> dict[str, Any]:
        return {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineMigration",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"vmName": vm, "targetHost": target, **spec}}

    def running_vm(self, namespace: str, name: str, host: str, **kw: Any) -> str:
        """Create a VM on ``host``, wait until it runs, unpin it (so a migration may move it); its uid."""
        self.apply(self.vm(namespace, name, host, **kw))
        assert self.wait_phase("vsvm", name, namespace, {"Running"}, timeout=120)["host"] == host
        self.kubectl("patch", "vsvm", name, "-n", namespace, "--type=merge", "-p",
                     '{"spec":{"placement":{"host":null}}}')
        return str(self.get("vsvm", name, namespace)["metadata"]["uid"])

    # -- agents, through their Services --------------------------------------------------------------

    def agent_address(self, host: str) -> str:
        """Where this machine reaches the agent of Host ``host``, resolved as the cluster's DNS would.

        ``<service>.<namespace>.svc``: the Service's cluster IP (kube-proxy's rules apply on the
        node too); ``<pod>.<service>.<namespace>.svc`` (a StatefulSet behind a headless Service):
        that pod's IP on the pod network.
        """
        url = urlparse(self.get("host", host)["spec"]["agent"]["endpoint"])
        labels = (url.hostname or "").split(".")
        if "svc" not in labels:
            raise AssertionError(f"Host {host}'s endpoint {url.geturl()} is no in-cluster Service name")
        names = labels[:labels.index("svc")]
        if len(names) == 2:
            ip = self.get("service", names[0], names[1])["spec"]["clusterIP"]
        elif len(names) == 3:
            ip = self.get("pod", names[0], names[2])["status"]["podIP"]
        else:
            raise AssertionError(f"cannot resolve {url.hostname}: "
                                 "neither <service>.<ns>.svc nor <pod>.<service>.<ns>.svc")
        return f"{url.scheme}://{ip}:{url.port}"

    def agent_client(self, host: str) -> HypervisorClient:
        """A client of the agent behind Host ``host``, with the token from the Secret the Host names."""
        ref = self.get("host", host)["spec"]["agent"]["tokenSecretRef"]
        secret = self.get("secret", ref["name"], ref.get("namespace", SYSTEM_NS))
        token = base64.b64decode(secret["data"][ref.get("key", "token")]).decode()
        return HypervisorClient(self.agent_address(host), token, timeout_seconds=10)

    def agent_vms(self, host: str) -> list[VmInfo]:
        async def call() -> list[VmInfo]:
            async with self.agent_client(host) as client:
                return await client.list_vms()
        return asyncio.run(call())

    def copies(self, uid: str, hosts: list[str]) -> dict[str, VmInfo]:
        """Every host among ``hosts`` whose agent holds the guest ``uid``; unreachable agents are skipped."""
        found: dict[str, VmInfo] = {}
        for host in hosts:
            try:
                vms = self.agent_vms(host)
            except Exception:  # an agent pod being replaced: it holds nothing we can see
                continue
            for vm in vms:
                if vm.id == uid and vm.state in RESIDENT:
                    found[host] = vm
        return found

    def vmshift_crds(self) -> list[dict[str, Any]]:
        """The vmshift CRDs still in the API server (terminating ones included)."""
        return [c for c in self.kube.get_json("crd")["items"] if c["metadata"]["name"] in VMSHIFT_CRDS]

    def wait_crds_gone(self, timeout: float) -> None:
        """Wait until no vmshift CRD is left; on timeout, say what each one's Terminating condition reports.

        The API server deletes a CRD only after its own finalizer has listed the kind and found no
        object left; on a loaded node that list can outlast the finalizer's one-minute poll and is
        retried with back-off, so a CRD with no objects can still take minutes to go.
        """
        def left() -> str:
            said = []
            for crd in self.vmshift_crds():
                conditions = [(c["type"], c["status"], c.get("reason"), c.get("message"))
                              for c in crd.get("status", {}).get("conditions", []) if c["type"] == "Terminating"]
                said.append(f"{crd['metadata']['name']} {conditions}")
            return "; ".join(said)
        wait_for(lambda: not self.vmshift_crds(), "every vmshift CRD to be gone", timeout, interval=2.0,
                 describe=left)

    def clear_leftovers(self) -> None:
        """Remove what an earlier, interrupted run left installed, so that this run starts from nothing.

        The leftover objects may carry the finalizers of an operator that no longer runs: the
        harness strips them (a user would run the uninstall in order instead, see docs/install.md).
        """
        if not self.vmshift_crds():
            return
        self.kubectl("delete", "-k", str(OVERLAY), "--wait=false", "--ignore-not-found", check=False, timeout=180)
        for crd in self.vmshift_crds():
            plural = crd["metadata"]["name"]
            for obj in self.kube.get_json(plural, "-A")["items"]:
                meta = obj["metadata"]
                self.kubectl("patch", plural, meta["name"], *(["-n", meta["namespace"]] if "namespace" in meta else []),
                             "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
            self.kubectl("delete", "crd", plural, "--wait=false", "--ignore-not-found", check=False)
        self.wait_crds_gone(600)

    def hosts(self) -> list[str]:
        return [h["metadata"]["name"] for h in self.kube.get_json("hosts")["items"]]

    def agent_pod(self, host: str) -> dict[str, Any]:
        """The agent pod behind Host ``host``: the pod its endpoint names, or the one its Service selects."""
        url = urlparse(self.get("host", host)["spec"]["agent"]["endpoint"])
        labels = (url.hostname or "").split(".")
        names = labels[:labels.index("svc")]
        if len(names) == 3:
            return self.get("pod", names[0], names[2])
        selector = self.get("service", names[0], names[1])["spec"]["selector"]
        pods = self.kube.get_json("pods", "-n", names[1], "-l", ",".join(f"{k}={v}" for k, v in selector.items()))
        assert len(pods["items"]) == 1, f"Service {names[1]}/{names[0]} selects {len(pods['items'])} pods"
        return dict(pods["items"][0])


@pytest.fixture(scope="session")
def cluster() -> Iterator[InCluster]:
    """The one-node cluster (brought up if needed) with the image loaded; nothing of vmshift installed yet."""
    if os.geteuid() != 0:
        raise AssertionError("tests/cluster needs root (a kubelet, containerd, a bridge); run them as root")
    node = Node(Path(os.environ.get("VMSHIFT_NODE_DIR", default_dir())))
    started = time.monotonic()
    state = node.up()
    timings = {"node_up_s": time.monotonic() - started}
    started = time.monotonic()
    node.load_images([IMAGE])
    timings["image_load_s"] = time.monotonic() - started
    cluster = InCluster(Kube(state), node, timings=timings)
    cluster.clear_leftovers()
    yield cluster
