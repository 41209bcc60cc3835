"""The node itself: ``down`` leaves nothing on the machine; a warm ``up`` is quick (after the install tests)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import InCluster
from vmshift.devcluster.node import BRIDGE, FORWARD_CHAIN, RUN_DIR, NodeState

pytestmark = pytest.mark.cluster


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def test_down_removes_everything_the_node_made_and_up_comes_back_warm(cluster: InCluster) -> None:
    node = cluster.node
    pids = dict((NodeState.load(node.dir) or NodeState("", "", "", {}, 0)).pids)
    assert set(pids) == {"containerd", "kubelet", "kube-scheduler", "kube-proxy", "coredns"}, pids
    node.down()
    assert NodeState.load(node.dir) is None
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower(), name
    assert _run("ip", "link", "show", BRIDGE).returncode != 0, f"bridge {BRIDGE} is still there"
    rules = _run("iptables-save").stdout + _run("ip6tables-save").stdout
    assert "KUBE-" not in rules and FORWARD_CHAIN not in rules, [r for r in rules.splitlines() if "KUBE-" in r][:10]
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(node.dir) not in mounts and str(RUN_DIR) not in mounts
    assert not list(Path("/sys/fs/cgroup").glob("*/kubepods")), "kubepods cgroups left behind"
    shims = [p for p in Path("/proc").iterdir() if p.name.isdigit() and b"containerd-shim" in
             (p / "cmdline").read_bytes() and str(node.socket).encode() in (p / "cmdline").read_bytes()]
    assert not shims, shims

    started = time.monotonic()
    node.up()
    warm = time.monotonic() - started
    cluster.timings["node_up_warm_s"] = warm
    print(f"\nnode timings: {json.dumps({k: round(v, 1) for k, v in cluster.timings.items()})}")
    assert node.status()["ready"] is True
    nodes = cluster.kube.get_json("nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["vmshift-node"]
