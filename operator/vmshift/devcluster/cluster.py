"""The embedded local control plane: a real etcd, kube-apiserver and kube-controller-manager on 127.0.0.1.

Starts and stops processes and writes a cluster directory (PKI, etcd data, logs, kubeconfig,
``state.json`` with the pids); nothing else. Every process runs in a process group of its own and
is recorded before anything waits on it, so ``down`` (or the stale sweep at the next ``up``) kills
whole groups and a crashed test run leaves no orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmshift.devcluster import binaries
from vmshift.devcluster.pki import Pki, ensure_pki
from vmshift.devcluster.statefile import StateFile
from vmshift.privatefile import write_private

Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_dir(name: str = "dev") -> Path:
    return binaries.cache_root() / "clusters" / name


#: Go runtime settings per component. A development API server on two cores spent half its CPU in
#: garbage collection under 10,000 objects; collecting at 4x the live heap (not 2x) trades memory,
#: which is plentiful here, for that CPU.
GO_ENV: dict[str, dict[str, str]] = {"kube-apiserver": {"GOGC": "400"}}


@dataclass
class ClusterState(StateFile):
    """What ``state.json`` records about a running control plane."""

    dir: str
    server: str
    kubeconfig: str
    etcd_url: str
    pids: dict[str, int]
    bin_dirs: list[str]
    started_at: float

    def env(self) -> dict[str, str]:
        """Environment for a client of this cluster: KUBECONFIG and the matching kubectl first on PATH."""
        path = os.pathsep.join([*self.bin_dirs, os.environ.get("PATH", "")])
        return {"KUBECONFIG": self.kubeconfig, "PATH": path}


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still "exists": reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def _kill_groups(pids: dict[str, int], log: Log, grace: float = 5.0) -> None:
    """SIGTERM each process group, SIGKILL what still lives after ``grace`` seconds."""
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.1)
    for name, pid in pids.items():
        if _alive(pid):
            log(f"{name} (pid {pid}) still running {grace:.0f}s after SIGTERM; killing its process group")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


#: Controllers of the API-only control plane: enough for namespaces, owner references and service accounts.
API_ONLY_CONTROLLERS = "namespace,garbagecollector,serviceaccount,serviceaccount-token,clusterrole-aggregation"


@dataclass(frozen=True)
class ServeOptions:
    """How the control plane serves: by default on 127.0.0.1, for API-only use (no nodes, no pods).

    A control plane with a node (``vmshift.devcluster.node``) listens on the node's address, which
    pods can reach, authorizes kubelets with the Node authorizer, reaches kubelets with a client
    certificate (logs, exec) and runs every default controller (Deployments, StatefulSets,
    EndpointSlices, ...).
    """

    address: str = "127.0.0.1"
    #: 0: a free port, new at each start. A node's cluster keeps one port: the API server's Service
    #: endpoint (what pods reach as kubernetes.default) keeps the port it was first written with.
    port: int = 0
    authorization_modes: str = "RBAC"
    controllers: str = API_ONLY_CONTROLLERS
    apiserver_args: tuple[str, ...] = ()


class ControlPlane:
    """One embedded control plane living in ``directory``."""

    def __init__(self, directory: Path, *, tie_to_parent: bool = False, log: Log = _stderr,
                 serve: ServeOptions = ServeOptions()) -> None:
        self.dir = directory
        self.tie_to_parent = tie_to_parent
        self.log = log
        self.serve = serve
        self.pki = Pki(directory / "pki")
        self.logs = directory / "logs"
        self.kubeconfig = directory / "kubeconfig"
        #: The command line of each component this object started, so restart() can repeat it.
        self._argv: dict[str, list[str]] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def up(self, *, fresh: bool = False, timeout: float = 120.0) -> ClusterState:
        """Start the control plane (or return the running one) and wait until /readyz answers."""
        state = ClusterState.load(self.dir)
        if state and not fresh and all(_alive(p) for p in state.pids.values()) and self._ready(state.server):
            self.log(f"control plane already running at {state.server}")
            return state
        self.sweep()
        if fresh:
            shutil.rmtree(self.dir / "etcd", ignore_errors=True)
        bins = binaries.ensure(self.log)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        ensure_pki(self.pki.dir, extra_ips=() if self.serve.address == "127.0.0.1" else (self.serve.address,))
        started = time.monotonic()

        etcd_port, peer_port, kcm_port = (_free_port() for _ in range(3))
        api_port = self.serve.port or _free_port(self.serve.address)
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        server = f"https://{self.serve.address}:{api_port}"
        state = ClusterState(
            dir=str(self.dir), server=server, kubeconfig=str(self.kubeconfig), etcd_url=etcd_url,
            pids={}, bin_dirs=[str(d) for d in bins.bin_dirs], started_at=time.time(),
        )
        try:
            self._spawn(state, "etcd", [
                str(bins.etcd), "--name=vmshift-dev", f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=vmshift-dev=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync", "--quota-backend-bytes=8589934592", "--log-level=warn",
            ])
            self._wait(lambda: self._etcd_healthy(etcd_url), "etcd", timeout, "etcd")
            self._spawn(state, "kube-apiserver", [
                str(bins.kube_apiserver), f"--etcd-servers={etcd_url}", f"--bind-address={self.serve.address}",
                f"--advertise-address={self.serve.address}", f"--secure-port={api_port}",
                f"--cert-dir={self.dir / 'apiserver-certs'}",
                f"--tls-cert-file={self.pki.serving_cert}", f"--tls-private-key-file={self.pki.serving_key}",
                f"--client-ca-file={self.pki.ca_cert}", f"--authorization-mode={self.serve.authorization_modes}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={self.pki.sa_pub}",
                f"--service-account-signing-key-file={self.pki.sa_key}",
                "--allow-privileged=true", "--max-requests-inflight=2000",
                "--max-mutating-requests-inflight=1000", "--v=1", *self.serve.apiserver_args,
            ])
            self.write_kubeconfig(server)
            self._wait(lambda: self._ready(server), "kube-apiserver /readyz", timeout, "kube-apiserver")
            self._spawn(state, "kube-controller-manager", [
                str(bins.kube_controller_manager), f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}", "--authentication-skip-lookup",
                "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", "--leader-elect=false",
                f"--controllers={self.serve.controllers}",
                f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca_cert}",
                "--use-service-account-credentials=false", "--v=1",
            ])
        except BaseException:
            self.down()
            raise
        self.log(f"control plane ready at {server} in {time.monotonic() - started:.1f}s "
                 f"(KUBECONFIG={self.kubeconfig})")
        return state

    def restart(self, name: str, *, down_seconds: float = 0.0, kill: bool = True, timeout: float = 60.0) -> None:
        """Stop one component (SIGKILL, or SIGTERM with ``kill=False``), leave it down for ``down_seconds``,
        start it again with the same command line (same ports) and wait until it answers.

        Only for components this object started (``up`` in this process); the fault-injection runs
        use it to restart the API server under a working operator.
        """
        state = ClusterState.load(self.dir)
        if state is None or name not in state.pids or name not in self._argv:
            raise RuntimeError(f"cannot restart {name}: this ControlPlane did not start it in {self.dir}")
        pid = state.pids[name]
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            _kill_groups({name: pid}, self.log)
        time.sleep(down_seconds)
        self._spawn(state, name, self._argv[name])
        if name == "kube-apiserver":
            self._wait(lambda: self._ready(state.server), "kube-apiserver /readyz", timeout, name)
        elif name == "etcd":
            self._wait(lambda: self._etcd_healthy(state.etcd_url), "etcd", timeout, name)

    def down(self) -> None:
        """Stop every process of this control plane (whole process groups) and forget them."""
        state = ClusterState.load(self.dir)
        if state is None:
            return
        # Clients first, etcd last, so that the API server never loses its storage while serving.
        _kill_groups({n: p for n, p in state.pids.items() if n != "etcd"}, self.log)
        _kill_groups({n: p for n, p in state.pids.items() if n == "etcd"}, self.log)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "state.json").unlink()

    def sweep(self) -> None:
        """Kill what a previous, crashed run left behind in this directory."""
        state = ClusterState.load(self.dir)
        if state and any(_alive(p) for p in state.pids.values()):
            self.log(f"stopping a stale control plane left in {self.dir}")
        self.down()

    def status(self) -> dict[str, object]:
        state = ClusterState.load(self.dir)
        if state is None:
            return {"running": False, "dir": str(self.dir)}
        processes = {name: {"pid": pid, "alive": _alive(pid)} for name, pid in state.pids.items()}
        return {
            "running": all(p["alive"] for p in processes.values()),
            "ready": self._ready(state.server),
            "server": state.server,
            "kubeconfig": state.kubeconfig,
            "processes": processes,
            "dir": str(self.dir),
        }

    # -- pieces ----------------------------------------------------------------------------

    def _spawn(self, state: ClusterState, name: str, argv: list[str]) -> None:
        self._argv[name] = argv
        log_file = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **GO_ENV.get(name, {})},
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if self.tie_to_parent else None,
        )
        log_file.close()
        state.pids[name] = proc.pid
        state.save()

    def _wait(self, check: Callable[[], bool], what: str, timeout: float, log_name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            state = ClusterState.load(self.dir)
            if state and log_name in state.pids and not _alive(state.pids[log_name]):
                break
            time.sleep(0.2)
        raise RuntimeError(
            f"{what} did not become ready within {timeout:.0f}s; last lines of "
            f"{self.logs / (log_name + '.log')}:\n{_tail(self.logs / (log_name + '.log'))}"
        )

    @staticmethod
    def _etcd_healthy(url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _ready(self, server: str) -> bool:
        if not self.pki.complete():
            return False
        try:
            with urllib.request.urlopen(f"{server}/readyz", timeout=2, context=self._ssl_context()) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def write_kubeconfig(self, server: str) -> Path:
        """An admin kubeconfig (client certificate in system:masters) for this cluster."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "vmshift-dev", "cluster": {
                "server": server, "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": "vmshift-admin", "user": {
                "client-certificate": str(self.pki.admin_cert), "client-key": str(self.pki.admin_key)}}],
            "contexts": [{"name": "vmshift-dev", "context": {"cluster": "vmshift-dev", "user": "vmshift-admin"}}],
            "current-context": "vmshift-dev",
        }
        write_private(self.kubeconfig, json.dumps(config, indent=2))
        return self.kubeconfig
