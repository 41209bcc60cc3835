"""The embedded control plane is a real one: RBAC, namespace lifecycle, garbage collection, cleanup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.kube import Kube, wait_for
from vmshift.devcluster.cluster import ClusterState, ControlPlane, _alive

pytestmark = pytest.mark.e2e


def test_server_version_matches_kubectl(kube: Kube) -> None:
    versions = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"] == "v1.35.4"
    assert versions["clientVersion"]["minor"] == versions["serverVersion"]["minor"]


def test_rbac_denies_a_service_account_without_bindings(kube: Kube) -> None:
    kube.kubectl("create", "namespace", "rbac-check")
    kube.kubectl("create", "serviceaccount", "nobody", "-n", "rbac-check")
    token = kube.kubectl("create", "token", "nobody", "-n", "rbac-check").stdout.strip()
    as_nobody = ["--kubeconfig=/dev/null", f"--server={kube.state.server}",
                 f"--certificate-authority={Path(kube.state.dir) / 'pki' / 'ca.crt'}", f"--token={token}"]
    denied = kube.kubectl("get", "secrets", "-n", "kube-system", *as_nobody, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    kube.kubectl("create", "rolebinding", "view", "--clusterrole=view", "--serviceaccount=rbac-check:nobody",
                 "-n", "rbac-check")
    allowed = wait_for(
        lambda: kube.kubectl("get", "configmaps", "-n", "rbac-check", *as_nobody, check=False).returncode == 0,
        "the bound service account to list configmaps", timeout=30)
    assert allowed


def test_namespace_deletion_and_owner_references_cascade(kube: Kube) -> None:
    kube.kubectl("create", "namespace", "gc-check")
    owner = json.loads(kube.kubectl("create", "configmap", "owner", "-n", "gc-check", "-o", "json").stdout)
    dependent = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "namespace": "gc-check", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]},
    }
    kube.kubectl("apply", "-f", "-", input=json.dumps(dependent))
    kube.kubectl("delete", "configmap", "owner", "-n", "gc-check")
    wait_for(lambda: kube.kubectl("get", "configmap", "dependent", "-n", "gc-check", check=False).returncode != 0,
             "the garbage collector to delete the dependent configmap", timeout=60)
    kube.kubectl("delete", "namespace", "gc-check", "--timeout=60s")
    assert kube.kubectl("get", "namespace", "gc-check", check=False).returncode != 0


def test_a_crashed_owner_leaves_nothing_behind_after_the_next_start(tmp_path: Path) -> None:
    """A process that started a control plane dies by SIGKILL; the next start sweeps its processes."""
    directory = tmp_path / "cluster"
    script = textwrap.dedent(f"""
        import os, pathlib, signal
        from vmshift.devcluster.cluster import ControlPlane
        ControlPlane(pathlib.Path({str(directory)!r})).up()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = ClusterState.load(directory)
    assert state is not None and all(_alive(pid) for pid in state.pids.values()), "expected orphans to sweep"
    ControlPlane(directory).sweep()
    assert not any(_alive(pid) for pid in state.pids.values())
    assert ClusterState.load(directory) is None
