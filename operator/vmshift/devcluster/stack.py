"""A whole vmshift installation on the embedded control plane: CRDs, agents, their Host objects, the operator.

Starts and stops processes and applies manifests with kubectl; decides nothing. The demo, the
end-to-end tests and the benchmarks build on it, so all three run the product the same way a
user would: agents as separate processes, the operator as a separate process, objects applied
with kubectl.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmshift.api.common import API_VERSION
from vmshift.api.labels import AGENT_HOSTS_ANNOTATION, CPU_LABEL
from vmshift.devcluster.cluster import ClusterState, _die_with_parent
from vmshift.hypervisor.launcher import AgentConfig, AgentProcess, start_agent

REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "crds"
SYSTEM_NAMESPACE = "vmshift-system"
TOKEN_SECRET = "agent-token"


@dataclass(frozen=True)
class HostPlan:
    """One simulated host: its agent's configuration and the Host object's extras."""

    name: str
    cpu_model: str = "icelake"
    cores: int = 32
    memory_mib: int = 65536
    bandwidth_mbps: float = 10_000.0
    shared_volumes: tuple[str, ...] = ("csv-1",)
    passthrough_luns: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, hash=False)
    max_concurrent_migrations: int = 2
    unschedulable: bool = False
    #: The migration port other agents are told to dial (0: the agent's own); a proxy in front of it.
    advertise_migration_port: int = 0
    #: How long the agent holds an incoming migration's reservation for its stream to arrive.
    reservation_seconds: float = 30.0
    #: What runs the host's guests: simulated, or qemu (real guests; every qemu agent of a Stack shares
    #: one directory as its shared volumes).
    driver: str = "simulated"
    #: qemu: how long a converged switchover waits for the operator's go, the guest paused (0: never).
    qemu_switchover_hold_seconds: float = 0.0

    def agent_config(self) -> AgentConfig:
        return AgentConfig(name=self.name, cpu_model=self.cpu_model, cores=self.cores, memory_mib=self.memory_mib,
                           bandwidth_mbps=self.bandwidth_mbps, shared_volumes=self.shared_volumes,
                           passthrough_luns=self.passthrough_luns,
                           advertise_migration_port=self.advertise_migration_port,
                           reservation_seconds=self.reservation_seconds, driver=self.driver,
                           qemu_switchover_hold_seconds=self.qemu_switchover_hold_seconds)

    def manifest(self, endpoint: str) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "Host",
            "metadata": {"name": self.name, "labels": {CPU_LABEL: self.cpu_model, **self.labels}},
            "spec": {
                "cpu": {"model": self.cpu_model, "cores": self.cores},
                "memoryMiB": self.memory_mib,
                "migrationBandwidthMbps": int(self.bandwidth_mbps),
                "storage": {"sharedVolumes": list(self.shared_volumes), "passthroughLuns": list(self.passthrough_luns)},
                "maxConcurrentMigrations": self.max_concurrent_migrations,
                "unschedulable": self.unschedulable,
                "agent": {"endpoint": endpoint, "tokenSecretRef": {
                    "name": TOKEN_SECRET, "namespace": SYSTEM_NAMESPACE, "key": "token"}},
            },
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """Agents and an operator running against one control plane."""

    def __init__(self, state: ClusterState, workdir: Path, *, tie_to_parent: bool = True,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.state = state
        self.workdir = workdir
        self.tie_to_parent = tie_to_parent
        self.log = log
        self.env = {**os.environ, **state.env()}
        self.token = secrets.token_urlsafe(24)
        self.agents: dict[str, AgentProcess] = {}
        self.plans: dict[str, HostPlan] = {}
        self.operator: subprocess.Popen[bytes] | None = None
        self.operator_log = workdir / "operator.log"
        self.metrics_port = 0
        workdir.mkdir(parents=True, exist_ok=True)

    # -- kubectl -------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]]) -> None:
        items = obj if isinstance(obj, list) else [obj]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def install_crds(self) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
        self.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
        self.kubectl("create", "secret", "generic", TOKEN_SECRET, "-n", SYSTEM_NAMESPACE,
                     f"--from-literal=token={self.token}", check=False)
        # every agent of this stack shares the one token, so every Host may use it
        self.kubectl("annotate", "--overwrite", "secret", TOKEN_SECRET, "-n", SYSTEM_NAMESPACE,
                     f"{AGENT_HOSTS_ANNOTATION}=*")

    # -- agents --------------------------------------------------------------------------------

    def start_hosts(self, plans: list[HostPlan], *, apply: bool = True) -> None:
        """Start one agent per plan (all at once) and (``apply``) create its Host object pointing at it."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, max(1, len(plans)))) as pool:
            started = list(pool.map(lambda p: start_agent(p.agent_config(), self.token, self.workdir / "agents"),
                                    plans))
        for plan, agent in zip(plans, started, strict=True):
            self.agents[plan.name] = agent
            self.plans[plan.name] = plan
            self.log(f"agent {plan.name} ({plan.cpu_model}) listens at {agent.endpoint}")
        if apply:
            self.apply([p.manifest(self.agents[p.name].endpoint) for p in plans])

    def restart_agent(self, name: str) -> AgentProcess:
        """A fresh agent process for ``name`` (empty: a rebooted host), and the Host re-pointed at it."""
        old = self.agents.pop(name, None)
        if old is not None:
            old.kill()
        plan = self.plans[name]
        agent = start_agent(plan.agent_config(), self.token, self.workdir / "agents")
        self.agents[name] = agent
        self.apply(plan.manifest(agent.endpoint))
        return agent

    def remove_hosts(self, names: list[str], *, timeout: float = 60.0) -> None:
        """Delete the Host objects and stop their agents (a host taken out of the fleet)."""
        if names:
            self.kubectl("delete", "hosts.vmshift.io", *names, "--ignore-not-found", "--wait=true",
                         f"--timeout={timeout:.0f}s", timeout=timeout + 10)
        for name in names:
            agent = self.agents.pop(name, None)
            self.plans.pop(name, None)
            if agent is not None:
                agent.stop(timeout_seconds=5)

    # -- operator ------------------------------------------------------------------------------

    def start_operator(self, *extra: str) -> subprocess.Popen[bytes]:
        if self.operator is not None and self.operator.poll() is None:
            return self.operator
        self.metrics_port = _free_port()
        argv = [sys.executable, "-m", "vmshift.cli.main", "operator", "--standalone",
                "--metrics-port", str(self.metrics_port), *extra]
        with self.operator_log.open("ab") as out:
            self.operator = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, preexec_fn=_die_with_parent if self.tie_to_parent else None,
            )
        self.log(f"operator started (pid {self.operator.pid}, log {self.operator_log})")
        return self.operator

    def stop_operator(self, *, kill: bool = False, timeout: float = 15.0) -> None:
        proc, self.operator = self.operator, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def operator_log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.operator_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"

    def stop(self) -> None:
        self.stop_operator()
        for agent in self.agents.values():
            agent.stop(timeout_seconds=5)
        self.agents.clear()


def wait_until(check: Callable[[], Any], what: str, timeout: float, interval: float = 0.25,
               describe: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; raise TimeoutError saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                               + (f"; last seen: {describe()}" if describe else ""))
        time.sleep(interval)
