"""A real Kubernetes node on this machine, joined to an embedded control plane: pods run for real.

``vmshift dev node up`` starts, as root, everything a one-node cluster needs beside the control
plane of ``cluster.py``:

- a Linux bridge ``vmshift0`` whose address (``NODE_IP``) is the node's: the API server, the
  kubelet and the DNS server listen there, so pods reach them and nothing listens on the machine's
  outside interfaces;
- Debian's containerd with a configuration, root, state and socket of its own (the machine's
  Docker keeps its own), the CNI bridge plugin of Debian's ``containernetworking-plugins``, and
  a runc wrapper (``runcwrap.py``) where the machine's capability bounding set lacks
  CAP_SYS_RESOURCE;
- kubelet, kube-scheduler and kube-proxy (iptables mode) built from the Go module proxy at the
  control plane's version; CoreDNS (``corednsbuild/``) answering ``cluster.local``;
- a pause image made here from a static Go program (``pausebuild/``): no registry is needed;
  ``vmshift dev node load IMAGE`` copies an image from the local Docker daemon into the node.

Every build output is cached under ``~/.cache/vmshift`` keyed by its version; containerd's image
store persists across ``down``/``up``. ``down`` removes every container, network namespace, mount,
iptables rule, cgroup and the bridge that ``up`` made. Starts and stops processes, runs ``ip``,
``iptables`` and ``ctr``; decides nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmshift.devcluster import binaries
from vmshift.devcluster.cluster import (
    ClusterState,
    ControlPlane,
    ServeOptions,
    _alive,
    _free_port,
    _kill_groups,
    _stderr,
    _tail,
)
from vmshift.devcluster.imagetar import write_image_tar
from vmshift.devcluster.pki import Pki, ensure_pki, issue_pair
from vmshift.devcluster.statefile import StateFile

Log = Callable[[str], None]

NODE_NAME = "vmshift-node"
BRIDGE = "vmshift0"
#: The bridge's address: the pods' gateway and the node's own address.
NODE_IP = "10.244.0.1"
#: The API server's port on NODE_IP (the address is the node's alone, so the port is free).
API_PORT = 6443
POD_CIDR = "10.244.0.0/24"
CLUSTER_DOMAIN = "cluster.local"
COREDNS_VERSION = "v1.14.7"
PAUSE_IMAGE = "vmshift.local/pause:1"
#: Short paths for sockets (a unix socket path must stay under 108 bytes).
RUN_DIR = Path("/run/vmshift-node")
FORWARD_CHAIN = "VMSHIFT-NODE"
#: Chains the kubelet makes in (table, chain) form; ``down`` removes them (kube-proxy cleans its own).
KUBELET_CHAINS = (("filter", "KUBE-FIREWALL"), ("filter", "KUBE-KUBELET-CANARY"), ("nat", "KUBE-KUBELET-CANARY"),
                  ("mangle", "KUBE-KUBELET-CANARY"), ("mangle", "KUBE-IPTABLES-HINT"))
CNI_BIN_DIR = Path("/usr/lib/cni")
HERE = Path(__file__).parent
COREDNS_MODULE_DIR = HERE / "corednsbuild"
PAUSE_MODULE_DIR = HERE / "pausebuild"
#: (program, Debian package) that a node needs on the machine.
HOST_TOOLS = (("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc"), ("iptables", "iptables"),
              ("ip", "iproute2"))
#: The order processes start in; ``down`` stops them in reverse.
COMPONENTS = ("containerd", "kubelet", "kube-scheduler", "kube-proxy", "coredns")


def default_dir(name: str = "kube") -> Path:
    return binaries.cache_root() / "clusters" / name


def serve_options(pki: Pki) -> ServeOptions:
    """How the control plane of a cluster with a node serves (see ``ServeOptions``)."""
    return ServeOptions(
        address=NODE_IP,
        port=API_PORT,
        authorization_modes="Node,RBAC",
        controllers="*",
        apiserver_args=(
            f"--kubelet-client-certificate={pki.dir / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki.dir / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki.ca_cert}",
            "--kubelet-preferred-address-types=InternalIP",
            "--enable-admission-plugins=NodeRestriction",
        ),
    )


# -- builds ----------------------------------------------------------------------------------------


def coredns_path() -> Path:
    return binaries.cache_root() / f"coredns-{COREDNS_VERSION}" / "bin" / "coredns"


def pause_image_tar() -> Path:
    digest = hashlib.sha256((PAUSE_MODULE_DIR / "main.go").read_bytes()).hexdigest()[:12]
    return binaries.cache_root() / f"pause-{digest}" / "pause.tar"


def ensure_builds(log: Log) -> dict[str, Path]:
    """Every binary and image the node runs, built once into the cache."""
    binaries.ensure(log)
    bin_dir = binaries.build(log, binaries.NODE_NAMES)
    binaries.go_build(COREDNS_MODULE_DIR, ".", coredns_path(), "-s -w", log, f"CoreDNS {COREDNS_VERSION}")
    tar = pause_image_tar()
    if not tar.exists():
        program = tar.with_name("pause")
        binaries.go_build(PAUSE_MODULE_DIR, ".", program, "-s -w", log, "pause")
        write_image_tar(tar, PAUSE_IMAGE, {"pause": program.read_bytes()}, entrypoint=["/pause"])
    paths = {name: bin_dir / name for name in binaries.NODE_NAMES}
    paths["kubectl"] = bin_dir / "kubectl"
    paths["coredns"] = coredns_path()
    paths["pause.tar"] = tar
    return paths


# -- state -----------------------------------------------------------------------------------------


@dataclass
class NodeState(StateFile):
    """What ``node/state.json`` records about a running node."""

    dir: str
    kubeconfig: str
    containerd_socket: str
    pids: dict[str, int]
    started_at: float


def missing_host_tools() -> list[str]:
    """What the machine lacks for a node, each as 'program (Debian package)'."""
    missing = [f"{program} (apt-get install {package})" for program, package in HOST_TOOLS
               if shutil.which(program) is None]
    if not (CNI_BIN_DIR / "bridge").exists():
        missing.append(f"{CNI_BIN_DIR}/bridge (apt-get install containernetworking-plugins)")
    return missing


def capability_missing(name: str = "CAP_SYS_RESOURCE", bit: int = 24) -> bool:
    """True when this machine's capability bounding set lacks ``bit`` (then runc needs the wrapper)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return not (int(line.split()[1], 16) >> bit) & 1
    raise RuntimeError(f"no CapBnd line in /proc/self/status; cannot tell whether {name} is available")


def _run(argv: list[str], *, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, input=input, capture_output=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc


class Node:
    """A one-node cluster living in ``directory``: the control plane there, the node in ``directory/node``."""

    def __init__(self, directory: Path, *, log: Log = _stderr) -> None:
        self.cluster_dir = directory
        self.dir = directory / "node"
        self.log = log
        self.pki = Pki(directory / "pki")
        self.plane = ControlPlane(directory, log=log, serve=serve_options(self.pki))
        self.logs = self.dir / "logs"
        self.socket = RUN_DIR / "containerd.sock"

    # -- lifecycle -------------------------------------------------------------------------------

    def up(self, *, fresh: bool = False, timeout: float = 180.0) -> ClusterState:
        """Start the control plane and the node (or keep the running ones); wait until the node is Ready."""
        if os.geteuid() != 0:
            raise RuntimeError("vmshift dev node needs root: it creates a bridge, iptables rules, cgroups and "
                               "mounts, and runs containerd and the kubelet")
        missing = missing_host_tools()
        if missing:
            raise RuntimeError("the machine lacks what a node needs: " + ", ".join(missing))
        started = time.monotonic()
        paths = ensure_builds(self.log)
        state = NodeState.load(self.dir)
        plane_state = ClusterState.load(self.cluster_dir)
        if (state and plane_state and not fresh and all(_alive(p) for p in state.pids.values())
                and all(_alive(p) for p in plane_state.pids.values()) and self._node_ready(plane_state)):
            self.log(f"node {NODE_NAME} already running (KUBECONFIG={plane_state.kubeconfig})")
            return plane_state
        self.down()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self._network_up()
        ensure_pki(self.pki.dir, extra_ips=(NODE_IP,))
        issue_pair(self.pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        issue_pair(self.pki, "kubelet", f"system:node:{NODE_NAME}", "system:nodes", server_ips=(NODE_IP,))
        plane_state = self.plane.up(fresh=fresh, timeout=timeout)
        state = NodeState(dir=str(self.dir), kubeconfig=plane_state.kubeconfig, containerd_socket=str(self.socket),
                          pids={}, started_at=time.time())
        try:
            self._start_containerd(state)
            self._import(paths["pause.tar"].read_bytes())
            self._start_kubelet(state, plane_state, paths["kubelet"])
            self._start_scheduler(state, plane_state, paths["kube-scheduler"])
            self._start_proxy(state, plane_state, paths["kube-proxy"])
            self._start_coredns(state, plane_state, paths["coredns"])
            self._wait(lambda: self._node_ready(plane_state), f"node {NODE_NAME} Ready", timeout, "kubelet", state)
        except BaseException:
            self.down()
            raise
        self.log(f"node {NODE_NAME} Ready in {time.monotonic() - started:.1f}s (KUBECONFIG={plane_state.kubeconfig})")
        return plane_state

    def down(self) -> None:
        """Stop the node and its control plane; remove every container, mount, rule and link the node made."""
        state = NodeState.load(self.dir)
        if state is not None:
            others = {n: p for n, p in state.pids.items() if n != "containerd"}
            _kill_groups(others, self.log)
            if "containerd" in state.pids and _alive(state.pids["containerd"]):
                self._remove_containers()
            _kill_groups({n: p for n, p in state.pids.items() if n == "containerd"}, self.log)
            self._kill_shims()
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "state.json").unlink()
        self._unmount_under((self.dir / "kubelet", RUN_DIR, Path("/run/netns/vmshift")))
        self._remove_cgroups()
        self._network_down()
        shutil.rmtree(self.dir / "kubelet", ignore_errors=True)
        shutil.rmtree(self.dir / "cni-ipam", ignore_errors=True)
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        self.plane.down()

    def status(self) -> dict[str, object]:
        state = NodeState.load(self.dir)
        plane = self.plane.status()
        if state is None:
            return {"running": False, "dir": str(self.dir), "control_plane": plane}
        plane_state = ClusterState.load(self.cluster_dir)
        return {
            "running": all(_alive(p) for p in state.pids.values()),
            "ready": plane_state is not None and self._node_ready(plane_state),
            "processes": {n: {"pid": p, "alive": _alive(p)} for n, p in state.pids.items()},
            "control_plane": plane,
            "dir": str(self.dir),
        }

    def load_images(self, images: list[str]) -> None:
        """Copy images from the local Docker daemon into the node's containerd (``docker save`` | import)."""
        if NodeState.load(self.dir) is None:
            raise RuntimeError(f"no node running in {self.dir}; start one with: vmshift dev node up")
        for image in images:
            saved = subprocess.run(["docker", "save", image], capture_output=True, timeout=600)
            if saved.returncode != 0:
                raise RuntimeError(f"docker save {image} failed: {saved.stderr.decode(errors='replace').strip()}")
            self._import(saved.stdout)
            self.log(f"loaded {image} into node {NODE_NAME} ({len(saved.stdout) / 2**20:.0f} MiB)")

    def container_images(self) -> list[str]:
        """The image of every container the node's containerd holds (pod sandboxes included)."""
        listing = self._ctr("containers", "list").stdout.decode().splitlines()[1:]
        return [line.split()[1] for line in listing if len(line.split()) >= 2]

    # -- network ---------------------------------------------------------------------------------

    def _network_up(self) -> None:
        if _run(["ip", "link", "show", BRIDGE], check=False).returncode != 0:
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        addrs = _run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout.decode()
        if f" {NODE_IP}/" not in addrs:
            _run(["ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        # Docker's FORWARD policy is DROP: let the pods' bridge forward, in a chain of ours.
        if _run(["iptables", "-w", "-N", FORWARD_CHAIN], check=False).returncode == 0:
            _run(["iptables", "-w", "-A", FORWARD_CHAIN, "-i", BRIDGE, "-j", "ACCEPT"])
            _run(["iptables", "-w", "-A", FORWARD_CHAIN, "-o", BRIDGE, "-j", "ACCEPT"])
        if _run(["iptables", "-w", "-C", "FORWARD", "-j", FORWARD_CHAIN], check=False).returncode != 0:
            _run(["iptables", "-w", "-I", "FORWARD", "1", "-j", FORWARD_CHAIN])

    def _network_down(self) -> None:
        proxy = binaries.build_dir() / "kube-proxy"
        if proxy.exists() and shutil.which("iptables"):
            _run([str(proxy), "--cleanup"], check=False)
        if shutil.which("iptables"):
            while _run(["iptables", "-w", "-D", "FORWARD", "-j", FORWARD_CHAIN], check=False).returncode == 0:
                pass
            _run(["iptables", "-w", "-F", FORWARD_CHAIN], check=False)
            _run(["iptables", "-w", "-X", FORWARD_CHAIN], check=False)
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool) is None:
                continue
            for parent in ("INPUT", "OUTPUT"):
                while _run([tool, "-w", "-D", parent, "-j", "KUBE-FIREWALL"], check=False).returncode == 0:
                    pass
            for table, chain in KUBELET_CHAINS:
                _run([tool, "-w", "-t", table, "-F", chain], check=False)
                _run([tool, "-w", "-t", table, "-X", chain], check=False)
        if shutil.which("ip"):
            _run(["ip", "link", "del", BRIDGE], check=False)

    # -- containerd ------------------------------------------------------------------------------

    def _runtime_binary(self) -> str:
        """runc itself, or the wrapper where the machine lacks CAP_SYS_RESOURCE."""
        runc = shutil.which("runc") or "/usr/bin/runc"
        if not capability_missing():
            return runc
        wrapper = self.dir / "runc-wrapper"
        script = HERE / "runcwrap.py"
        wrapper.write_text(f"#!/bin/sh\nVMSHIFT_REAL_RUNC={runc} exec {sys.executable} -I -S {script} \"$@\"\n")
        wrapper.chmod(0o755)
        return str(wrapper)

    def _start_containerd(self, state: NodeState) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        cni_conf = self.dir / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-vmshift.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "vmshift",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "hairpinMode": True, "ipMasq": False,
                 "ipam": {"type": "host-local", "dataDir": str(self.dir / "cni-ipam"),
                          "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=2))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{self.dir / 'containerd'}"
state = "{RUN_DIR / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{self.socket}"

[ttrpc]
  address = "{RUN_DIR / 'containerd.sock.ttrpc'}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  enable_selinux = false
  restrict_oom_score_adj = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{self._runtime_binary()}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{cni_conf}"
"""
        (self.dir / "containerd.toml").write_text(config)
        self._spawn(state, "containerd", ["containerd", "--config", str(self.dir / "containerd.toml")])
        self._wait(lambda: self._ctr("version", check=False).returncode == 0, "containerd", 60, "containerd", state)

    def _ctr(self, *args: str, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return _run(["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args], check=check, input=input)

    def _import(self, archive: bytes) -> None:
        self._ctr("images", "import", "--no-unpack=false", "-", input=archive)

    def _remove_containers(self) -> None:
        """Kill and delete every task and container of the node's containerd; remove their network namespaces."""
        ids = self._ctr("containers", "list", "--quiet", check=False).stdout.decode().split()
        netns: set[str] = set()
        for cid in ids:
            info = self._ctr("containers", "info", cid, check=False)
            with contextlib.suppress(ValueError):
                spec = json.loads(info.stdout).get("Spec") or {}
                for ns in (spec.get("linux") or {}).get("namespaces") or []:
                    if ns.get("type") == "network" and ns.get("path", "").startswith("/var/run/netns/"):
                        netns.add(ns["path"])
            self._ctr("tasks", "kill", "--signal", "SIGKILL", cid, check=False)
        deadline = time.monotonic() + 15
        for cid in ids:
            while self._ctr("tasks", "delete", cid, check=False).returncode != 0:
                listed = self._ctr("tasks", "list", "--quiet", check=False).stdout.decode().split()
                if cid not in listed or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            self._ctr("containers", "delete", cid, check=False)
        for path in sorted(netns):
            _run(["umount", path], check=False)
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _kill_shims(self) -> None:
        """Shims of this containerd that outlived it (they hold the state directory)."""
        marker = str(self.socket).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and marker in cmdline:
                    os.kill(int(proc.name), 9)

    @staticmethod
    def _unmount_under(roots: tuple[Path, ...]) -> None:
        targets: list[str] = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if any(mount_point == str(r) or mount_point.startswith(f"{r}/") for r in roots):
                targets.append(mount_point)
        for target in sorted(targets, key=len, reverse=True):
            if _run(["umount", target], check=False).returncode != 0:
                _run(["umount", "-l", target], check=False)

    @staticmethod
    def _remove_cgroups() -> None:
        """The kubelet's ``kubepods`` cgroups, emptied by now, in every hierarchy (deepest first)."""
        root = Path("/sys/fs/cgroup")
        for top in [root / "kubepods", *root.glob("*/kubepods")]:
            if not top.is_dir():
                continue
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: len(t[0]), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    # -- kubelet, scheduler, proxy, DNS -----------------------------------------------------------

    def _node_kubeconfig(self, server: str) -> Path:
        path = self.dir / "kubelet.kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "vmshift", "cluster": {"server": server,
                                                         "certificate-authority": str(self.pki.ca_cert)}}],
            "users": [{"name": "kubelet", "user": {"client-certificate": str(self.pki.dir / "kubelet.crt"),
                                                   "client-key": str(self.pki.dir / "kubelet.key")}}],
            "contexts": [{"name": "kubelet", "context": {"cluster": "vmshift", "user": "kubelet"}}],
            "current-context": "kubelet",
        }, indent=2))
        path.chmod(0o600)
        return path

    def _start_kubelet(self, state: NodeState, plane: ClusterState, kubelet: Path) -> None:
        root = self.dir / "kubelet"
        root.mkdir(exist_ok=True)
        resolv = self.dir / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "address": NODE_IP, "port": _free_port(NODE_IP), "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": _free_port(),
            "tlsCertFile": str(self.pki.dir / "kubelet.crt"), "tlsPrivateKeyFile": str(self.pki.dir / "kubelet.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(self.pki.ca_cert)}},
            "authorization": {"mode": "AlwaysAllow"},
            "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN, "resolvConf": str(resolv),
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                             "imagefs.available": "0%", "imagefs.inodesFree": "0%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "podLogsDir": str(self.dir / "pod-logs"), "rotateCertificates": False, "serverTLSBootstrap": False,
            "registerNode": True, "maxPods": 110, "localStorageCapacityIsolation": False,
            "protectKernelDefaults": False, "makeIPTablesUtilChains": True,
        }
        (self.dir / "kubelet.yaml").write_text(json.dumps(config, indent=2))
        self._spawn(state, "kubelet", [
            str(kubelet), f"--config={self.dir / 'kubelet.yaml'}",
            f"--kubeconfig={self._node_kubeconfig(plane.server)}", f"--root-dir={root}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ])

    def _start_scheduler(self, state: NodeState, plane: ClusterState, scheduler: Path) -> None:
        self._spawn(state, "kube-scheduler", [
            str(scheduler), f"--kubeconfig={plane.kubeconfig}", f"--authentication-kubeconfig={plane.kubeconfig}",
            f"--authorization-kubeconfig={plane.kubeconfig}", "--bind-address=127.0.0.1",
            f"--secure-port={_free_port()}", "--leader-elect=false", "--v=1",
        ])

    def _start_proxy(self, state: NodeState, plane: ClusterState, proxy: Path) -> None:
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": plane.kubeconfig}, "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP, "healthzBindAddress": f"127.0.0.1:{_free_port()}",
            "metricsBindAddress": f"127.0.0.1:{_free_port()}", "mode": "iptables", "clusterCIDR": POD_CIDR,
            # Service traffic is masqueraded to the node's address, so replies come back through the
            # node whether or not bridged traffic passes iptables on this machine.
            "iptables": {"masqueradeAll": True, "localhostNodePorts": False},
            "nodePortAddresses": [f"{NODE_IP}/32"],
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }
        (self.dir / "kube-proxy.yaml").write_text(json.dumps(config, indent=2))
        self._spawn(state, "kube-proxy", [str(proxy), f"--config={self.dir / 'kube-proxy.yaml'}", "--v=1"])

    def _start_coredns(self, state: NodeState, plane: ClusterState, coredns: Path) -> None:
        ready_port = _free_port()
        corefile = f""".:53 {{
    bind {NODE_IP}
    errors
    health 127.0.0.1:{_free_port()}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {plane.kubeconfig} vmshift-dev
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
"""
        (self.dir / "Corefile").write_text(corefile)
        self._spawn(state, "coredns", [str(coredns), "-conf", str(self.dir / "Corefile")])

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ready_port}/ready", timeout=2) as resp:
                    return bool(resp.status == 200)
            except (OSError, urllib.error.URLError):
                return False
        self._wait(ready, "CoreDNS /ready", 60, "coredns", state)

    # -- helpers ---------------------------------------------------------------------------------

    def _spawn(self, state: NodeState, name: str, argv: list[str]) -> None:
        log_file = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log_file.close()
        state.pids[name] = proc.pid
        state.save()

    def _wait(self, check: Callable[[], bool], what: str, timeout: float, log_name: str, state: NodeState) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            dead = [n for n, p in state.pids.items() if not _alive(p)]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}; last lines of "
                                   f"{self.logs / (dead[0] + '.log')}:\n{_tail(self.logs / (dead[0] + '.log'))}")
            time.sleep(0.5)
        raise RuntimeError(f"{what} not reached within {timeout:.0f}s; last lines of "
                           f"{self.logs / (log_name + '.log')}:\n{_tail(self.logs / (log_name + '.log'))}")

    def _node_ready(self, plane: ClusterState) -> bool:
        proc = subprocess.run(
            ["kubectl", "get", "node", NODE_NAME, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}"],
            capture_output=True, text=True, env={**os.environ, **plane.env()}, timeout=30,
        )
        return proc.returncode == 0 and proc.stdout.strip() == "True"

