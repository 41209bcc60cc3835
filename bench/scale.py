"""Control-plane scale: 1,000 Hosts and 10,000 VMs as objects in a real API server, the real operator.

The agents are a test double (bench/fake_agents.py: one process answering for every host, guests
without memory), because 1,000 real agents do not fit on two cores; everything else is the product.
Measured, in one run, each beside its floor and the target the project set itself:
  * the floor: the API server's own cost of one small status write per VM, measured first with a
    bare async client (aiohttp, 32 requests in flight) on the same machine and API server;
  * initial sync, twice: a first start (operator start -> every VM Ready, adopted from the agents
    that already run it; timed on vmshift_virtualmachines_in_sync, then checked with one list of
    every VM) against at most 1.5x the floor, and a restart over the settled fleet
    (start -> every VM re-checked, vmshift_virtualmachines_in_sync) against at most 0.5x the floor;
  * migration request -> first status written by the operator, p50/p99 over many requests, and the
    operator's event loop lag meanwhile: p99 and max of every sample the operator took in that window
    (one each 10 ms, recorded with ``vmshift operator --loop-lag-record``), with the longest stalls;
  * operator RSS after sync and after the migrations;
  * the operator's CPU time in each sync (user + system, from /proc): on a loaded machine the wall
    time of a phase depends on the neighbours, its CPU time much less;
  * API requests per minute while idle (from kube-apiserver's own request counter).

  * the CPU the first start and the floor took on the machine, by process (the control plane, the
    operator or the floor's client, the fake agents, this script): on two cores a
    phase takes at least half its CPU seconds of wall time, whoever spends them;
  * the API server's and etcd's CPU time per VM in the floor and in the first start: what a write
    costs the control plane, the operator's own requests and watches included.

    .venv/bin/python bench/scale.py [--hosts 1000] [--vms 10000] [--profile DIR] [--apiserver-profile DIR]

``--profile DIR``: py-spy (``pip install py-spy``) samples the operator during the first start, the
migrations and the restart, into ``DIR/<phase>.txt`` (raw collapsed stacks; ``bench/pyspy_top.py``
prints their top entries). The sampler costs CPU on the same cores, so time a run without it.

``--apiserver-profile DIR``: kube-apiserver's own CPU profile (its /debug/pprof/profile) during the
floor and during the first start, into ``DIR/<phase>.pprof``, and a table of where its samples go
(``go tool pprof`` reads the files; Go must be on PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

import aiohttp
import kubernetes
import orjson

from vmshift.controllers.supervisor import read_lag_record
from vmshift.devcluster.cluster import ControlPlane, default_dir
from vmshift.devcluster.stack import Stack, wait_until

GROUP, VERSION = "vmshift.io", "v1alpha1"
MODELS = ["icelake", "cascadelake", "haswell", "zen3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def own_cpu_seconds() -> float:
    """CPU time (user + system) this process has used so far (the floor's client, its polls of /metrics)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far: on a shared, loaded machine the wall
    time of a phase says as much about the neighbours as about the operator; this does not."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_cpu(state: Any) -> dict[str, float]:
    """CPU seconds kube-apiserver and etcd have used so far."""
    return {name: cpu_seconds(state.pids[name]) for name in ("kube-apiserver", "etcd")}


#: Where kube-apiserver's CPU goes: each sample counts once, for the first category in this order
#: that one of its frames matches (so JSON work done for managed fields counts as managed fields).
APISERVER_CATEGORIES = {
    "managed fields (structured merge diff)": ("structured-merge-diff", "fieldmanager"),
    "CRD schema validation and defaulting": ("apiextensions-apiserver/pkg/apiserver/validation",
                                             "kube-openapi/pkg/validation", "apiserver/schema", "cel-go"),
    "merge patch": ("json-patch", "(*jsonPatcher)", "mergepatch", "strategicpatch"),
    "JSON decode/encode": ("encoding/json", "sigs.k8s.io/json", "serializer/json", "json-iterator",
                           "serializer/cbor"),
    "watch cache and watch delivery": ("cacher",),
    "etcd client and storage": ("go.etcd.io/etcd/client", "storage/etcd3", "grpc"),
    "authentication, authorization, audit, admission": ("authentication", "authorization", "audit", "admission"),
    "TLS": ("crypto/",),
    "HTTP/2 and HTTP": ("net/http", "golang.org/x/net/http2"),
    "garbage collection": ("runtime.gcBgMarkWorker", "runtime.gcDrain"),
    "memory allocation": ("runtime.mallocgc",),
}


class ApiserverProfile:
    """kube-apiserver's CPU profile over one phase of the benchmark (nothing when ``out_dir`` is None)."""

    def __init__(self, plane: ControlPlane, server: str, out_dir: Path | None) -> None:
        self.plane, self.server, self.out_dir = plane, server, out_dir
        self.thread: threading.Thread | None = None
        self.shares: dict[str, dict[str, float]] = {}

    def start(self, phase: str, seconds: int) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        out = self.out_dir / f"{phase}.pprof"
        ctx = ssl.create_default_context(cafile=str(self.plane.pki.ca_cert))
        ctx.load_cert_chain(str(self.plane.pki.admin_cert), str(self.plane.pki.admin_key))

        def fetch() -> None:
            url = f"{self.server}/debug/pprof/profile?seconds={seconds}"
            out.write_bytes(urllib.request.urlopen(url, context=ctx, timeout=seconds + 60).read())
            self.shares[phase] = apiserver_shares(out)

        self.thread = threading.Thread(target=fetch, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        thread, self.thread = self.thread, None
        if thread is not None:
            thread.join()


def apiserver_shares(profile: Path) -> dict[str, float]:
    """The share of the profile's CPU samples in each of ``APISERVER_CATEGORIES`` (and "other")."""
    text = subprocess.run(["go", "tool", "pprof", "-traces", str(profile)], capture_output=True, text=True,
                          check=True).stdout
    totals = dict.fromkeys([*APISERVER_CATEGORIES, "other"], 0.0)
    total = 0.0
    # -traces prints each distinct stack once: a line with its sample value, then its frames, then a line of dashes.
    for block in re.split(r"(?m)^-+\+-+$", text)[1:]:
        lines = [line for line in block.strip().splitlines() if line.strip()]
        if not lines:
            continue
        value = re.match(r"\s*([\d.]+)(ms|s|us|µs)?", lines[0])
        if not value:
            continue
        unit = {"s": 1000.0, "ms": 1.0, "us": 0.001, "µs": 0.001}.get(value.group(2) or "ms", 1.0)
        weight = float(value.group(1)) * unit
        frames = " ".join(lines)
        total += weight
        category = next((c for c, patterns in APISERVER_CATEGORIES.items() if any(p in frames for p in patterns)),
                        "other")
        totals[category] += weight
    return {category: (100 * value / total if total else 0.0) for category, value in totals.items()}


def apiserver_requests(plane: ControlPlane, server: str) -> dict[str, float]:
    """kube-apiserver's apiserver_request_total for the resources the operator uses, by verb/resource
    (WATCH excluded: an open watch is not traffic)."""
    ctx = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
    ctx.load_cert_chain(str(plane.pki.admin_cert), str(plane.pki.admin_key))
    text = urllib.request.urlopen(f"{server}/metrics", context=ctx, timeout=10).read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if labels.get("verb") in ("WATCH", "CONNECT") or not labels.get("resource"):
            continue
        # Only what the operator touches: the control plane's own heartbeats (leases, endpoints) are not it.
        if labels.get("group") != GROUP and labels["resource"] not in ("secrets", "configmaps", "events"):
            continue
        key = f"{labels['verb']} {labels.get('group', '')}/{labels['resource']}"
        totals[key] = totals.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def floor_status_writes(plane: ControlPlane, server: str, vms: list[dict[str, Any]], in_flight: int = 32) -> float:
    """Seconds a bare async client takes to write one small status per VM (the floor the operator's
    adoption is measured against): a merge patch of ``status.phase: Pending``, what a fresh VM shows
    anyway, so the operator then starts from the same objects it would have without it."""
    ctx = ssl.create_default_context(cafile=str(plane.pki.ca_cert))
    ctx.load_cert_chain(str(plane.pki.admin_cert), str(plane.pki.admin_key))
    body = json.dumps({"status": {"phase": "Pending"}}).encode()
    headers = {"Content-Type": "application/merge-patch+json"}

    async def run() -> float:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for vm in vms:
            queue.put_nowait(vm)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=in_flight)) as session:
            async def worker() -> None:
                while not queue.empty():
                    vm = queue.get_nowait()
                    url = (f"{server}/apis/{GROUP}/{VERSION}/namespaces/{vm['namespace']}/virtualmachines/"
                           f"{vm['name']}/status")
                    async with session.patch(url, data=body, headers=headers) as reply:
                        if reply.status != 200:
                            raise RuntimeError(f"status patch of {vm['name']}: HTTP {reply.status} "
                                               f"{(await reply.text())[:200]}")
            t = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return time.monotonic() - t

    return asyncio.run(run())


def create_objects(api: Any, hosts: int, vms: int, endpoint: str) -> list[dict[str, Any]]:
    host_bodies = [{
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Host", "metadata": {"name": f"h-{i:04d}"},
        "spec": {"cpu": {"model": MODELS[i % len(MODELS)], "cores": 64}, "memoryMiB": 262144,
                 "migrationBandwidthMbps": 10000, "storage": {"sharedVolumes": ["csv-1"]},
                 "agent": {"endpoint": f"{endpoint}/h-{i:04d}",
                           "tokenSecretRef": {"name": "agent-token", "namespace": "vmshift-system", "key": "token"}}},
    } for i in range(hosts)]
    vm_bodies = [{
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachine",
        "metadata": {"name": f"vm-{i:05d}", "namespace": f"ns-{i % 10}"},
        "spec": {"cpus": 2, "memoryMiB": 4096, "processor": {"compatibility": True},
                 "disks": [{"name": "os", "sizeGiB": 20, "volume": "csv-1"}]},
    } for i in range(vms)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda b: api.create_cluster_custom_object(GROUP, VERSION, "hosts", b), host_bodies))
        created = list(pool.map(lambda b: api.create_namespaced_custom_object(
            GROUP, VERSION, b["metadata"]["namespace"], "virtualmachines", b), vm_bodies))
    return [{"uid": c["metadata"]["uid"], "name": c["metadata"]["name"], "namespace": c["metadata"]["namespace"],
             "cpus": 2, "memoryMiB": 4096, "host": f"h-{i % hosts:04d}"} for i, c in enumerate(created)]


def is_ready(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def count_ready(api: Any) -> int:
    """How many VMs the API server holds as Ready (one paged list; run after a phase, not during it)."""
    ready, token = 0, None
    while True:
        kwargs: dict[str, Any] = {"limit": 1000, **({"_continue": token} if token else {})}
        page = orjson.loads(api.list_cluster_custom_object(GROUP, VERSION, "virtualmachines",
                                                           _preload_content=False, **kwargs).data)
        ready += sum(is_ready(item) for item in page["items"])
        token = page["metadata"].get("continue")
        if not token:
            return ready


class SyncWatch:
    """The operator's count of VMs in sync (``vmshift_virtualmachines_in_sync``), polled from its
    /metrics: when the first and when the last of ``vms`` got there. A VM is in sync once the status
    write that settled it came back from the API server, so the count is what the API server holds;
    :func:`count_ready` checks that after the phase. A watch of every VM from this script would cost
    the machine the phase runs on about 5 CPU-seconds at 10,000 VMs (the API server's events and this
    process's parsing), which the floor does not pay."""

    def __init__(self, port: int | None) -> None:
        self.port = port
        self.first: float | None = None

    def count(self) -> float:
        n = operator_gauge(self.port, "vmshift_virtualmachines_in_sync")
        if n >= 1 and self.first is None:
            self.first = time.monotonic()
        return n


def first_status_latencies(api: Any, vms: list[dict[str, Any]], hosts: int,
                           count: int) -> tuple[list[float], float, float]:
    """Create ``count`` migrations and time each from creation to the operator's first status; also
    the window (monotonic start, end) from the first creation to the last first status."""
    seen: dict[str, float] = {}
    created: dict[str, float] = {}
    stop = threading.Event()

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(api.list_cluster_custom_object, GROUP, VERSION, "virtualmachinemigrations",
                              timeout_seconds=120):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if (obj.get("status") or {}).get("phase") and name not in seen:
                seen[name] = time.monotonic()
            if stop.is_set():
                w.stop()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(1.0)
    for i in range(count):
        vm = vms[i * (len(vms) // count)]
        target = f"h-{(int(vm['host'][2:]) + 4) % hosts:04d}"  # same CPU model, another host
        body: dict[str, Any] = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VirtualMachineMigration",
                "metadata": {"name": f"m-{i:04d}", "namespace": vm["namespace"]},
                "spec": {"vmName": vm["name"], "targetHost": target}}
        created[body["metadata"]["name"]] = time.monotonic()
        api.create_namespaced_custom_object(GROUP, VERSION, vm["namespace"], "virtualmachinemigrations", body)
        time.sleep(0.05)
    wait_until(lambda: len(seen) >= count, f"first status of {count} migrations", 120,
               describe=lambda: f"{len(seen)} seen")
    stop.set()
    return [seen[name] - created[name] for name in created], min(created.values()), max(seen.values())


def recorded_lags(path: Path, start: float, end: float) -> list[float]:
    """The operator's event-loop lag samples of the window, once its record reaches past ``end``
    (it flushes about once a second)."""
    def last_time() -> float:
        try:
            lines = path.read_text(encoding="ascii").splitlines()
        except OSError:
            return 0.0
        return float(lines[-1].split()[0]) if lines and len(lines[-1].split()) == 2 else 0.0

    wait_until(lambda: last_time() > end, f"the operator's lag record {path} to reach the end of the window", 30)
    return read_lag_record(path, start, end)


class Profiler:
    """py-spy sampling one process for one phase of the benchmark (nothing when ``out_dir`` is None)."""

    def __init__(self, out_dir: Path | None) -> None:
        self.out_dir = out_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, pid: int, phase: str) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        spy = Path(sys.executable).with_name("py-spy")
        if not spy.exists():
            raise SystemExit(f"--profile needs py-spy in the venv ({spy} is missing): pip install py-spy")
        self.proc = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--rate", "100", "--nonblocking",
                                      "--format", "raw", "--output", str(self.out_dir / f"{phase}.txt")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def writes(requests: dict[str, float]) -> float:
    return sum(v for k, v in requests.items() if k.split()[0] in ("PATCH", "POST", "PUT", "DELETE"))


def operator_gauge(port: int | None, name: str) -> float:
    """One unlabelled gauge from the operator's /metrics (0 until it answers)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def metrics_answer(port: int | None) -> bool:
    """Does the operator's /metrics answer yet? (It starts serving once its modules are imported,
    before Kopf starts: the time until then is the process's start-up, whatever the fleet's size.)"""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        return True
    except OSError:
        return False


def per_vm_ms(cpu: dict[str, float], vms: int) -> str:
    """API server and etcd CPU milliseconds per VM, as "apiserver/etcd ms"."""
    return f"{cpu['kube-apiserver'] * 1000 / vms:.2f}/{cpu['etcd'] * 1000 / vms:.2f} ms"


def cpu_total(plane: dict[str, float], *processes: float) -> float:
    """CPU seconds the control plane and the other processes named used together: on two cores a phase
    cannot take less wall time than half of it."""
    return sum(plane.values()) + sum(processes)


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def ratio_row(name: str, seconds: float, floor: float, bound: float) -> tuple[str, str, str, str, str, str]:
    """A table row for a sync measured against the floor: at most ``bound`` times it."""
    ratio = seconds / floor if floor > 0 else float("inf")
    return (name, f"{seconds:.1f} s", f"{floor:.1f} s", f"{ratio:.2f}x", f"<= {bound}x floor", met(ratio <= bound))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--vms", type=int, default=10000)
    parser.add_argument("--migrations", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--profile", type=Path, default=None,
                        help="sample the operator with py-spy into this directory (one raw file per phase)")
    parser.add_argument("--apiserver-profile", type=Path, default=None,
                        help="kube-apiserver's CPU profile of the floor and of the first start, into this directory")
    parser.add_argument("--keep-log", type=Path, default=None,
                        help="copy the operator's log (both starts) to this file at the end")
    args = parser.parse_args()
    profiler = Profiler(args.profile)
    loads = {"at start": os.getloadavg()}

    # One control plane per checkout: two worktrees running this benchmark at once must not wipe each
    # other's (``up(fresh=True)`` starts from an empty directory).
    plane = ControlPlane(default_dir(f"bench-scale-{Path(__file__).resolve().parents[1].name}"), tie_to_parent=True)
    state = plane.up(fresh=True)
    work = plane.dir / "bench"
    stack = Stack(state, work)
    fake: subprocess.Popen[bytes] | None = None
    try:
        stack.install_crds()
        for i in range(10):
            stack.kubectl("create", "namespace", f"ns-{i}", check=False)
        kubernetes.config.load_kube_config(state.kubeconfig)
        client = kubernetes.client.ApiClient()
        client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
        api = kubernetes.client.CustomObjectsApi(client)
        port = free_port()
        t = time.monotonic()
        vms = create_objects(api, args.hosts, args.vms, f"http://127.0.0.1:{port}")
        create_seconds = time.monotonic() - t
        apiprof = ApiserverProfile(plane, state.server, args.apiserver_profile)
        cpu, own = control_plane_cpu(state), own_cpu_seconds()
        apiprof.start("floor", max(5, round(args.vms / 1000)))
        floor_seconds = floor_status_writes(plane, state.server, vms)
        floor_cpu = {k: v - cpu[k] for k, v in control_plane_cpu(state).items()}
        floor_client_cpu = own_cpu_seconds() - own
        apiprof.stop()
        spec_file = work / "fake-spec.json"
        spec_file.write_text(json.dumps({
            "hosts": [{"name": f"h-{i:04d}", "cpu": MODELS[i % len(MODELS)], "cores": 64, "memoryMiB": 262144}
                      for i in range(args.hosts)],
            "vms": vms}))
        port_file = work / "fake-port"
        port_file.unlink(missing_ok=True)
        fake = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_agents.py")),
                                 "--spec", str(spec_file), "--port-file", str(port_file), "--port", str(port)],
                                start_new_session=True)
        wait_until(port_file.exists, "the fake agents to listen", 60)

        before_sync = apiserver_requests(plane, state.server)
        t0 = time.monotonic()
        cpu, own, fake_cpu = control_plane_cpu(state), own_cpu_seconds(), cpu_seconds(fake.pid)
        lag_record = work / "loop-lag.txt"
        lag_record.unlink(missing_ok=True)
        proc = stack.start_operator("--agent-poll-seconds", "30", "--loop-lag-record", str(lag_record))
        profiler.start(proc.pid, "first-start")
        apiprof.start("first-start", max(10, round(args.vms / 300)))
        wait_until(lambda: metrics_answer(stack.metrics_port), "the operator to serve /metrics", 300, interval=0.05)
        startup_seconds = time.monotonic() - t0
        synced = SyncWatch(stack.metrics_port)
        wait_until(lambda: synced.count() >= args.vms, f"the operator to report {args.vms} VMs in sync", 900,
                   interval=0.1, describe=lambda: f"{synced.count():.0f} in sync\n{stack.operator_log_tail(10)}")
        sync_seconds = time.monotonic() - t0
        sync_cpu = cpu_seconds(proc.pid)
        sync_plane_cpu = {k: v - cpu[k] for k, v in control_plane_cpu(state).items()}
        sync_fake_cpu, sync_own_cpu = cpu_seconds(fake.pid) - fake_cpu, own_cpu_seconds() - own
        profiler.stop()
        apiprof.stop()
        loads["after the first start"] = os.getloadavg()
        after_sync = apiserver_requests(plane, state.server)
        rss_sync = rss_mib(proc.pid)
        ready = count_ready(api)
        if ready != args.vms:
            raise SystemExit(f"the operator reported {args.vms} VMs in sync, but {ready} are Ready")

        # Idle means after the last echo of the sync (Kopf's finalizer patches trail the status).
        settle_start = time.monotonic()
        quiet = [writes(apiserver_requests(plane, state.server))]

        def settled() -> bool:
            quiet.append(writes(apiserver_requests(plane, state.server)))
            return len(quiet) > 5 and quiet[-1] == quiet[-6]

        wait_until(settled, "API writes to stop after the sync", 300, interval=1.0)
        settle_seconds = time.monotonic() - settle_start
        before = apiserver_requests(plane, state.server)
        time.sleep(args.idle_seconds)
        after = apiserver_requests(plane, state.server)
        idle = {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0) > 0}
        idle_per_minute = sum(idle.values()) * 60 / args.idle_seconds

        profiler.start(proc.pid, "migrations")
        latencies, window_start, window_end = first_status_latencies(api, vms, args.hosts, args.migrations)
        profiler.stop()
        loads["after the migrations"] = os.getloadavg()
        lags = recorded_lags(lag_record, window_start, window_end)
        if not lags:
            raise SystemExit(f"the operator recorded no event-loop lag sample in the migrations' window ({lag_record})")
        lag_p99, lag_max = pct(lags, 0.99), max(lags)
        # The restart below is over a settled fleet: every migration ended and the last writes echoed.
        def migrations_ended() -> bool:
            listing = cast(dict[str, Any], api.list_cluster_custom_object(GROUP, VERSION, "virtualmachinemigrations"))
            return all((m.get("status") or {}).get("phase") in ("Succeeded", "Failed", "Cancelled")
                       for m in listing["items"])

        wait_until(migrations_ended, f"the {args.migrations} migrations to end", 600, interval=2.0)
        quiet.clear()
        wait_until(settled, "API writes to stop after the migrations", 300, interval=1.0)
        rss_end = rss_mib(proc.pid)

        # A restart: the fleet is settled (status, migrations ended), so the operator only re-checks it.
        stack.stop_operator()
        before_restart = apiserver_requests(plane, state.server)
        t1 = time.monotonic()
        proc = stack.start_operator("--agent-poll-seconds", "30")
        profiler.start(proc.pid, "restart")
        wait_until(lambda: metrics_answer(stack.metrics_port), "the operator to serve /metrics", 300, interval=0.05)
        restart_startup_seconds = time.monotonic() - t1
        wait_until(lambda: operator_gauge(stack.metrics_port, "vmshift_virtualmachines_in_sync") >= args.vms,
                   f"the restarted operator to re-check {args.vms} VMs", 900, interval=0.5,
                   describe=lambda: f"{operator_gauge(stack.metrics_port, 'vmshift_virtualmachines_in_sync'):.0f} "
                                    f"in sync\n{stack.operator_log_tail(10)}")
        restart_seconds = time.monotonic() - t1
        restart_cpu = cpu_seconds(proc.pid)
        profiler.stop()
        loads["after the restart"] = os.getloadavg()
        rss_restart = rss_mib(proc.pid)
        after_restart = apiserver_requests(plane, state.server)
        restart_writes = writes(after_restart) - writes(before_restart)

        per_thousand = 1000 / args.vms
        rows = [
            ("objects created (hosts + VMs)", f"{args.hosts} + {args.vms}", f"{create_seconds:.1f} s", "", "", ""),
            ("floor: 1 status write/VM, bare client", f"{floor_seconds:.1f} s", "", "", "", ""),
            ratio_row("first start: adopt all VMs", sync_seconds, floor_seconds, 1.5),
            ("  of which process start-up", f"{startup_seconds:.1f} s", "", "", "", ""),
            ("  until the first VM was in sync", f"{(synced.first or t0) - t0:.1f} s", "", "", "", ""),
            ("  operator CPU time in it", f"{sync_cpu:.1f} s", "", "", "", ""),
            ("  API server / etcd CPU per VM", per_vm_ms(sync_plane_cpu, args.vms),
             per_vm_ms(floor_cpu, args.vms), "", "", ""),
            ("  CPU on the machine (s), of which:",
             f"{cpu_total(sync_plane_cpu, sync_cpu, sync_fake_cpu, sync_own_cpu):.1f}",
             f"{cpu_total(floor_cpu, floor_client_cpu):.1f}", "", "", ""),
            ("    API server + etcd", f"{sum(sync_plane_cpu.values()):.1f}", f"{sum(floor_cpu.values()):.1f}", "", "",
             ""),
            ("    the operator / the floor's client", f"{sync_cpu:.1f}", f"{floor_client_cpu:.1f}", "", "", ""),
            ("    fake agents (test double)", f"{sync_fake_cpu:.1f}", "", "", "", ""),
            ("    this bench (polls /metrics)", f"{sync_own_cpu:.1f}", "", "", "", ""),
            ("  then until API writes stop", f"{settle_seconds:.1f} s", "", "", "", ""),
            ratio_row("restart: re-check all VMs", restart_seconds, floor_seconds, 0.5),
            ("  of which process start-up", f"{restart_startup_seconds:.1f} s", "", "", "", ""),
            ("  operator CPU time in it", f"{restart_cpu:.1f} s", "", "", "", ""),
            ("  writes during the restart sync", f"{restart_writes:.0f}", "", "", "", ""),
            ("request -> first status p50", f"{statistics.median(latencies) * 1000:.0f} ms", "", "",
             "<= 200 ms", met(statistics.median(latencies) <= 0.2)),
            ("request -> first status p99", f"{pct(latencies, 0.99) * 1000:.0f} ms", "", "", "<= 1000 ms",
             met(pct(latencies, 0.99) <= 1.0)),
            ("  event loop lag p99 meanwhile", f"{lag_p99 * 1000:.1f} ms", f"{len(lags)} samples", "", "<= 100 ms",
             met(lag_p99 <= 0.1)),
            ("  event loop lag max meanwhile", f"{lag_max * 1000:.1f} ms", f"{window_end - window_start:.1f} s", "",
             "", ""),
            ("operator RSS after sync", f"{rss_sync:.0f} MiB", f"{rss_sync * per_thousand:.1f}/1k VMs", "",
             "<= 512 MiB", met(rss_sync <= 512)),
            ("operator RSS after migrations", f"{rss_end:.0f} MiB", f"{rss_end * per_thousand:.1f}/1k VMs", "",
             "<= 512 MiB", met(rss_end <= 512)),
            ("operator RSS after restart sync", f"{rss_restart:.0f} MiB", f"{rss_restart * per_thousand:.1f}/1k VMs",
             "", "<= 512 MiB", met(rss_restart <= 512)),
            ("API requests/min when idle", f"{idle_per_minute:.1f}", "", "", "0", met(idle_per_minute == 0)),
        ]
        print(f"\nvmshift scale benchmark ({ready} VMs Ready; fake agents, real kube-apiserver v1.35.4, "
              f"{os.cpu_count()} cores)")
        print(f"{'measure':<38} {'measured':>12} {'floor':>14} {'ratio':>7} {'target':>12} {'met':>5}")
        for name, measured, floor, ratio, target, ok in rows:
            print(f"{name:<38} {measured:>12} {floor:>14} {ratio:>7} {target:>12} {ok:>5}")
        print("machine load average (1/5/15 min):",
              "; ".join(f"{when} {a:.1f}/{b:.1f}/{c:.1f}" for when, (a, b, c) in loads.items()))
        for phase, shares in apiprof.shares.items():
            print(f"kube-apiserver CPU profile, {phase} (share of CPU samples):",
                  "; ".join(f"{name} {share:.0f} %" for name, share in sorted(shares.items(), key=lambda kv: -kv[1])))
        print(f"longest event-loop lags in the migrations' window (monotonic {window_start:.1f}-{window_end:.1f} s)"
              ", ms:",
              ", ".join(f"{lag * 1000:.0f}" for lag in sorted(lags, reverse=True)[:10]))
        if idle:
            print("idle requests by verb/resource:", json.dumps(idle))
        for phase, (start, end) in {"first start": (before_sync, after_sync),
                                    "restart sync": (before_restart, after_restart)}.items():
            moved = {k: end.get(k, 0) - start.get(k, 0) for k in end if end.get(k, 0) - start.get(k, 0) > 0}
            print(f"API requests during the {phase} by verb/resource:", json.dumps(moved, sort_keys=True))
        return 0
    finally:
        profiler.stop()
        stack.stop()
        if fake is not None:
            fake.kill()
        plane.down()
        if args.keep_log is not None and stack.operator_log.exists():
            shutil.copyfile(stack.operator_log, args.keep_log)
        shutil.rmtree(plane.dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
