"""vmshift as its users run it: installed with kubectl from its manifests, operator and agents as pods.

The tests run in file order and share one installation: install, VMs, a live migration between
agent pods, an operator restarted mid-transfer, an agent pod deleted mid-migration, an
Alertmanager payload through the webhook Service, and finally the uninstall.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.conftest import (
    AGENT_SELECTOR,
    FINISHED,
    OPERATOR,
    OPERATOR_SELECTOR,
    OVERLAY,
    SAMPLE_HOSTS,
    SYSTEM_NS,
    WEBHOOK_SECRET,
    WEBHOOK_SERVICE,
    InCluster,
)
from tests.kube import wait_for

pytestmark = pytest.mark.cluster

SOURCE, TARGET = "h-icelake-1", "h-icelake-2"


def _slow_policy(c: InCluster, namespace: str, mbps: int) -> None:
    """A MigrationPolicy for ``namespace`` that holds migrations to ``mbps``, so that they stay in flight."""
    c.apply({"apiVersion": "vmshift.io/v1alpha1", "kind": "MigrationPolicy",
             "metadata": {"name": f"slow-{namespace}"},
             "spec": {"precedence": 1000, "selector": {"namespaces": [namespace]}, "bandwidthMbps": mbps}})


def _settled_on_one_host(c: InCluster, namespace: str, name: str, uid: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = c.status("vsvm", name, namespace)
        copies = c.copies(uid, c.hosts())
        return status if status.get("phase") == "Running" and list(copies) == [status.get("host")] else None
    return wait_for(check, f"{namespace}/{name} to run on exactly one host, the one its status names", 120,
                    interval=1.0, describe=lambda: f"status {json.dumps(c.status('vsvm', name, namespace))[:800]}, "
                                                   f"copies {list(c.copies(uid, c.hosts()))}")


def test_install_from_the_manifests_brings_every_host_ready(cluster: InCluster) -> None:
    started = time.monotonic()
    cluster.kubectl("apply", "-k", str(OVERLAY), timeout=180)
    cluster.kubectl("rollout", "status", f"deployment/{OPERATOR}", "-n", SYSTEM_NS, "--timeout=300s", timeout=320)
    cluster.kubectl("wait", "--for=condition=Ready", "pod", "-l", AGENT_SELECTOR, "-n", SYSTEM_NS,
                    "--timeout=300s", timeout=320)
    cluster.kubectl("apply", "-f", str(SAMPLE_HOSTS))
    hosts = cluster.hosts()
    assert SOURCE in hosts and TARGET in hosts, hosts
    for host in hosts:
        cordoned = bool(cluster.get("host", host)["spec"].get("unschedulable"))
        status = cluster.wait_phase("host", host, None, {"Cordoned" if cordoned else "Ready"}, timeout=180)
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True" and ready["reason"] == "AgentReachable", ready
    cluster.timings["ready_fleet_s"] = time.monotonic() - started
    print(f"\ncluster timings: {json.dumps({k: round(v, 1) for k, v in cluster.timings.items()})}")
    # every agent is a pod with its own address on the pod network
    pods = cluster.kube.get_json("pods", "-n", SYSTEM_NS, "-l", AGENT_SELECTOR)["items"]
    ips = {p["status"].get("podIP") for p in pods}
    assert len(pods) >= len(hosts) and len(ips) == len(pods), [p["status"].get("podIP") for p in pods]
    for host in hosts:
        assert cluster.agent_pod(host)["status"]["phase"] == "Running"


def test_vms_run_on_the_agents_their_status_names(cluster: InCluster) -> None:
    ns = cluster.namespace()
    uids = {name: cluster.running_vm(ns, name, host) for name, host in (("a", SOURCE), ("b", TARGET))}
    for name, host in (("a", SOURCE), ("b", TARGET)):
        status = _settled_on_one_host(cluster, ns, name, uids[name])
        assert status["host"] == host
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions["Placed"] == "True", conditions


def test_live_migration_between_agent_pods_verifies_memory(cluster: InCluster) -> None:
    ns = cluster.namespace()
    uid = cluster.running_vm(ns, "web", SOURCE, memory=512, dirty=40, working_set=16)
    before = cluster.copies(uid, [SOURCE])[SOURCE]
    cluster.apply(cluster.migration(ns, "move", "web", TARGET, mode="Live"))
    status = cluster.wait_phase("vsmig", "move", ns, FINISHED, timeout=180)
    assert status["phase"] == "Succeeded", status
    assert status["mode"] == "Live" and status["memoryVerified"] is True, status
    assert status["sourceHost"] == SOURCE and status["targetHost"] == TARGET
    assert len(status["rounds"]) >= 1 and status["downtimeMs"] is not None
    assert status["downtimeMs"] < 300, status["downtimeMs"]
    settled = _settled_on_one_host(cluster, ns, "web", uid)
    assert settled["host"] == TARGET
    after = cluster.copies(uid, [TARGET])[TARGET]
    assert after.heartbeat >= before.heartbeat, "the guest's heartbeat went backwards"
    # the memory crossed the pod network: source and target are pods with addresses of their own
    assert cluster.agent_pod(SOURCE)["status"]["podIP"] != cluster.agent_pod(TARGET)["status"]["podIP"]


def test_operator_rollout_restart_mid_transfer_does_not_fail_the_migration(cluster: InCluster) -> None:
    ns = cluster.namespace()
    _slow_policy(cluster, ns, mbps=150)
    uid = cluster.running_vm(ns, "busy", SOURCE, memory=768, dirty=2, working_set=16)
    cluster.apply(cluster.migration(ns, "through-restart", "busy", TARGET, mode="Live"))
    cluster.wait_phase("vsmig", "through-restart", ns, {"Transferring"}, timeout=120)
    old_pods = {p["metadata"]["name"] for p in cluster.kube.get_json(
        "pods", "-n", SYSTEM_NS, "-l", OPERATOR_SELECTOR)["items"]}
    cluster.kubectl("rollout", "restart", f"deployment/{OPERATOR}", "-n", SYSTEM_NS)
    cluster.kubectl("rollout", "status", f"deployment/{OPERATOR}", "-n", SYSTEM_NS, "--timeout=180s", timeout=200)
    new_pods = {p["metadata"]["name"] for p in cluster.kube.get_json(
        "pods", "-n", SYSTEM_NS, "-l", OPERATOR_SELECTOR)["items"]}
    assert new_pods and not (new_pods & old_pods), (old_pods, new_pods)
    status = cluster.wait_phase("vsmig", "through-restart", ns, FINISHED, timeout=300)
    assert status["phase"] == "Succeeded", (
        f"the operator's restart ended the migration: {json.dumps(status.get('failure'))}")
    assert status["memoryVerified"] is True
    assert _settled_on_one_host(cluster, ns, "busy", uid)["host"] == TARGET


def test_an_agent_pod_deleted_mid_migration_leaves_the_vm_on_one_host(cluster: InCluster) -> None:
    ns = cluster.namespace()
    _slow_policy(cluster, ns, mbps=150)
    uid = cluster.running_vm(ns, "orphan", SOURCE, memory=768, dirty=2, working_set=16)
    cluster.apply(cluster.migration(ns, "interrupted", "orphan", TARGET, mode="Live"))
    cluster.wait_phase("vsmig", "interrupted", ns, {"Transferring"}, timeout=120)
    pod = cluster.agent_pod(TARGET)
    cluster.kubectl("delete", "pod", pod["metadata"]["name"], "-n", pod["metadata"]["namespace"], "--wait=true")
    status = cluster.wait_phase("vsmig", "interrupted", ns, FINISHED, timeout=180)
    failure = status.get("failure") or {}
    assert status["phase"] == "Failed" and failure.get("reason") == "TargetLost", json.dumps(status)[:1500]
    assert TARGET in failure["message"] and SOURCE in failure["message"], failure
    # the replacement pod is an empty host again; the VM stays on its source, and only there
    cluster.wait_phase("host", TARGET, None, {"Ready"}, timeout=180)
    settled = _settled_on_one_host(cluster, ns, "orphan", uid)
    assert settled["host"] == SOURCE, settled


def _alert_payload(status: str, host: str) -> str:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    labels = {"alertname": "HostPsuRedundancyLost", "severity": "critical", "host": host, "team": "hardware"}
    return json.dumps({
        "version": "4", "groupKey": "{}:{alertname=\"HostPsuRedundancyLost\"}", "truncatedAlerts": 0,
        "status": status, "receiver": "vmshift", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [{"status": status, "labels": labels, "annotations": {"summary": "PSU redundancy lost"},
                    "startsAt": now, "endsAt": now if status == "resolved" else "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus.example/graph", "fingerprint": ""}],
    })


#: Run inside a pod of the cluster, as Alertmanager would: resolve the Service by DNS, POST the body.
_POST = """
import sys, urllib.request, urllib.error
url, token = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, data=sys.stdin.buffer.read(), method="POST", headers={
    "Content-Type": "application/json", "Authorization": "Bearer " + token})
try:
    with urllib.request.urlopen(request, timeout=20) as response:
        print(response.status, response.read().decode())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode())
"""


def _post_alert(c: InCluster, body: str) -> tuple[int, str]:
    secret = c.get("secret", WEBHOOK_SECRET, SYSTEM_NS)
    token = base64.b64decode(secret["data"]["token"]).decode()
    port = c.get("service", WEBHOOK_SERVICE, SYSTEM_NS)["spec"]["ports"][0]["port"]
    sender = c.agent_pod(SOURCE)["metadata"]["name"]
    url = f"http://{WEBHOOK_SERVICE}.{SYSTEM_NS}.svc.cluster.local:{port}/alerts"
    out = c.kubectl("exec", "-i", "-n", SYSTEM_NS, sender, "--", "python3", "-c", _POST, url, token,
                    input=body).stdout
    code, _, text = out.strip().partition(" ")
    return int(code), text


def test_an_alertmanager_payload_through_the_webhook_service_drives_a_remediation_policy(
        cluster: InCluster) -> None:
    ns = cluster.namespace()
    uids = {name: cluster.running_vm(ns, name, SOURCE, priority=priority, memory=128, dirty=5)
            for name, priority in (("db", 300), ("batch", 0))}
    policy = f"psu-{ns}"
    cluster.apply({"apiVersion": "vmshift.io/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": policy},
                   "spec": {"match": {"alertname": "HostPsuRedundancyLost", "severity": "critical"},
                            "action": "EvacuateCritical", "priorityThreshold": 100, "debounceSeconds": 0,
                            "cooldownSeconds": 0, "release": {"mode": "AlertResolved", "holdSeconds": 3}}})
    code, text = _post_alert(cluster, _alert_payload("firing", SOURCE))
    assert code == 200, text
    assert json.loads(text)["accepted"] == [{"alertname": "HostPsuRedundancyLost", "host": SOURCE,
                                             "status": "firing"}], text
    remediation = wait_for(lambda: cluster.status("host", SOURCE).get("remediation"), "the remediation", 90,
                           interval=0.5, describe=cluster.operator_log)
    assert remediation["policy"] == policy and remediation["alerts"][0]["source"] == "Alertmanager", remediation
    wait_for(lambda: (cluster.status("host", SOURCE).get("drain") or {}).get("state") == "Completed",
             "the evacuation", 180, interval=1.0,
             describe=lambda: json.dumps(cluster.status("host", SOURCE).get("drain")))
    assert _settled_on_one_host(cluster, ns, "db", uids["db"])["host"] != SOURCE
    assert _settled_on_one_host(cluster, ns, "batch", uids["batch"])["host"] == SOURCE
    code, text = _post_alert(cluster, _alert_payload("resolved", SOURCE))
    assert code == 200, text
    wait_for(lambda: not cluster.status("host", SOURCE).get("remediation"), "the remediation to end", 90,
             interval=0.5, describe=cluster.operator_log)
    assert cluster.status("host", SOURCE)["lastRemediation"]["reason"] == "AlertsResolved"
    cluster.kubectl("delete", "remediationpolicy", policy)


_SCRAPE = """
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=20) as response:
    sys.stdout.write(response.read().decode())
"""


def test_prometheus_scrapes_the_metrics_service_inside_the_cluster(cluster: InCluster) -> None:
    """What a ServiceMonitor does: GET /metrics through the Service from a pod, in Prometheus' text format."""
    port = cluster.get("service", "vmshift-operator-metrics", SYSTEM_NS)["spec"]["ports"][0]["port"]
    url = f"http://vmshift-operator-metrics.{SYSTEM_NS}.svc.cluster.local:{port}/metrics"
    scraper = cluster.agent_pod(SOURCE)["metadata"]["name"]
    text = cluster.kubectl("exec", "-n", SYSTEM_NS, scraper, "--", "python3", "-c", _SCRAPE, url).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    names = {name for name, _ in samples}
    assert "vmshift_build_info" in names, sorted(names)[:40]
    ready = sum(v for (name, labels), v in samples.items() if name == "vmshift_hosts" and ("phase", "Ready") in labels)
    assert ready >= 1, "no Ready host in vmshift_hosts"
    # the evacuation just before ran in this operator process: its moves are counted
    succeeded = sum(v for (name, labels), v in samples.items()
                    if name == "vmshift_migrations_total" and ("result", "Succeeded") in labels)
    moved = sum(v for (name, _), v in samples.items() if name == "vmshift_migration_transferred_bytes_total")
    assert succeeded >= 1 and moved > 0, (succeeded, moved)


def test_uninstall_leaves_nothing_behind(cluster: InCluster) -> None:
    # what a user made goes first, while the operator still runs to release its finalizers
    for ns in cluster.namespaces:
        cluster.kubectl("delete", "namespace", ns, "--wait=false")
    for ns in cluster.namespaces:
        cluster.kubectl("wait", "--for=delete", f"namespace/{ns}", "--timeout=180s", timeout=200)
    cluster.kubectl("delete", "migrationpolicies.vmshift.io", "--all")
    # a RemediationPolicy carries the operator's finalizer too
    cluster.kubectl("delete", "remediationpolicies.vmshift.io", "--all", "--wait=true", "--timeout=120s", timeout=140)
    cluster.kubectl("delete", "-f", str(SAMPLE_HOSTS), "--wait=true", "--timeout=120s", timeout=140)
    cluster.kubectl("delete", "-k", str(OVERLAY), "--wait=false", timeout=120)
    # No object of any vmshift kind is left, yet on a loaded node the API server's own CRD
    # finalizer was seen to need more than 240 s (its list of the kind outlasts its one-minute poll).
    cluster.wait_crds_gone(480)
    cluster.kubectl("wait", "--for=delete", f"namespace/{SYSTEM_NS}", "--timeout=180s", timeout=200)
    assert cluster.kubectl("get", "namespace", SYSTEM_NS, check=False).returncode != 0
    cluster_scoped = cluster.kubectl("get", "clusterroles,clusterrolebindings,validatingwebhookconfigurations,"
                                     "mutatingwebhookconfigurations,clusterkopfpeerings.kopf.dev",
                                     "-o", "name", check=False).stdout.split()
    assert not [o for o in cluster_scoped if "vmshift" in o], cluster_scoped
    pods = cluster.kube.get_json("pods", "-A")["items"]
    assert not [p["metadata"]["name"] for p in pods if "vmshift" in p["metadata"]["name"]], pods
    # and on the node: the kubelet removed every container of the operator and the agents
    wait_for(lambda: not [i for i in cluster.node.container_images() if "vmshift:" in i],
             "the node's containerd to hold no vmshift container", 120, interval=1.0,
             describe=lambda: str(cluster.node.container_images()))
