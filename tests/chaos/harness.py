"""Randomized, seed-reproducible fault-injection trials on the real product; shared by tests/chaos and bench/chaos.py.

One ``Campaign`` owns a control plane, the operator process and the proxies; each trial brings up
its own hosts (fresh agent processes, each behind a MigrationProxy), its own namespace and VMs,
asks for migrations (or a drain), injects one fault from its plan, heals, lets the product settle,
and checks the invariants from the agents themselves (invariants.py), then removes its hosts. The
plan of a trial is a pure function of its seed (``plan_trial``), so a failing seed replays:

    .venv/bin/python bench/chaos.py --seed 4711 --trials 1
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from tests.chaos.invariants import AgentView, ExpectedVM, api_migration_problems, settled_problems, two_running
from tests.chaos.proxy import Fault, MigrationProxy, Phase, ProxyLoop, Trigger, precopy_frame
from vmshift.devcluster.cluster import ControlPlane
from vmshift.devcluster.stack import HostPlan, Stack
from vmshift.hypervisor.client import AgentError, HypervisorClient
from vmshift.hypervisor.launcher import AgentProcess

#: Every migration a trial asks for carries this timeout; its bound adds the faults' downtime and SLACK.
MIGRATION_TIMEOUT_SECONDS = 20
#: Time a trial's migrations get beyond their own timeout and the fault's downtime: the operator
#: declares a silent source lost after 20 s, a restart of the operator takes a few seconds.
SLACK_SECONDS = 40.0
#: How long a trial waits for every VM to sit on one host once its migrations ended.
SETTLE_SECONDS = 45.0
RESERVATION_SECONDS = 5.0
GROUP, VERSION = "vmshift.io", "v1alpha1"
PLURALS = {"Host": "hosts", "VirtualMachine": "virtualmachines", "VirtualMachineMigration": "virtualmachinemigrations"}
OPERATOR_ARGS = ("--agent-poll-seconds", "0.5", "--keep-finished-migrations", "50")


class Kind(StrEnum):
    """The fault kinds; a trial's kind is its seed modulo their number, so a campaign covers each evenly."""

    OperatorKill = "operator-sigkill"
    OperatorTerm = "operator-sigterm"
    SourceAgentKill = "source-agent-kill"
    TargetAgentKill = "target-agent-kill"
    ApiServerRestart = "apiserver-restart"
    Partition = "partition"
    Blackhole = "blackhole"
    DeleteMigration = "delete-migration"
    DeleteVM = "delete-vm"
    DrainRace = "drain-race"


KINDS = list(Kind)
#: Phases at which a stream-driven fault falls; None: a random moment after the requests.
PHASES: list[Phase | None] = [None, *Phase]


@dataclass(frozen=True)
class VmPlan:
    name: str
    memory_mib: int
    dirty_mib_ps: float
    mode: str  # Auto, Live, Quick


@dataclass(frozen=True)
class TrialPlan:
    """Everything random about one trial, drawn from its seed."""

    seed: int
    kind: Kind
    phase: Phase | None  # the stream phase that triggers the fault (None: ``delay`` after the requests)
    delay: float  # seconds after the requests (phase None) before the fault
    downtime: float  # how long the killed process stays down or the partition lasts
    bandwidth_mbps: int
    vms: tuple[VmPlan, ...]
    drain_first: bool = False  # drain-race: maintenance before the manual migrations
    drain_gap: float = 0.0  # drain-race: seconds between the two
    precopy_frame: int = 1

    def describe(self) -> str:
        at = self.phase.value if self.phase else f"+{self.delay:.2f}s"
        vms = ", ".join(f"{v.name}:{v.memory_mib}MiB/{v.dirty_mib_ps:g}MiBps/{v.mode}" for v in self.vms)
        return (f"seed {self.seed}: {self.kind.value} at {at}, down {self.downtime:.2f}s, "
                f"{self.bandwidth_mbps} Mbps, vms [{vms}]")


def plan_trial(seed: int) -> TrialPlan:
    """The trial of ``seed`` (pure)."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    count = rng.choice([1, 1, 2])
    vms = tuple(VmPlan(f"vm{i}", rng.choice([64, 96, 128, 160]), rng.choice([0.0, 2.0, 8.0, 20.0]),
                       rng.choice(["Auto", "Live", "Live", "Quick"])) for i in range(count))
    phase: Phase | None
    if kind in (Kind.Partition, Kind.Blackhole):
        phase = rng.choice(list(Phase))
    elif kind in (Kind.DeleteMigration, Kind.DeleteVM, Kind.DrainRace):
        phase = None
    else:
        phase = rng.choice(PHASES)
    downtime = {Kind.Partition: rng.uniform(0.3, 6.0), Kind.Blackhole: rng.uniform(0.3, 6.0),
                Kind.ApiServerRestart: rng.uniform(0.0, 3.0)}.get(kind, rng.uniform(0.0, 2.0))
    return TrialPlan(
        seed=seed, kind=kind, phase=phase, delay=rng.uniform(0.0, 2.5), downtime=downtime,
        bandwidth_mbps=rng.choice([600, 1000, 1500]), vms=vms, drain_first=rng.random() < 0.5,
        drain_gap=rng.uniform(0.0, 1.5), precopy_frame=precopy_frame(rng, min(v.memory_mib for v in vms)),
    )


@dataclass
class TrialResult:
    plan: TrialPlan
    violations: list[str] = field(default_factory=list)
    hit: bool = False  # the fault fell where planned (the stream reached the phase)
    seconds: float = 0.0
    outcomes: list[str] = field(default_factory=list)  # how each migration ended
    notes: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds spent in setup, fault, settle, teardown


class LoopThread(ProxyLoop):
    """An event loop in a daemon thread for the agents' API calls (the same shape as the proxies')."""


class Campaign:
    """The shared installation trials run on: a control plane, the operator process, the proxies."""

    def __init__(self, plane: ControlPlane, workdir: Path, *, log: Callable[[str], None] = lambda line: None) -> None:
        state = plane.up(fresh=True)  # started here, so that restart() can restart its API server
        self.plane = plane
        self.workdir = workdir
        self.log = log
        self.stack = Stack(state, workdir)
        client = kubernetes.config.new_client_from_config(config_file=state.kubeconfig)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)
        self.stack.install_crds()
        self.proxy_loop = ProxyLoop()
        self.agent_loop = LoopThread()
        # Processes tied to their parent (PR_SET_PDEATHSIG) die with the *thread* that started them:
        # the operator and a restarted API server are started from this one long-lived thread, never
        # from a lane's or the janitor's, whose threads end before the campaign does.
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chaos-spawner")
        self.spawn(lambda: self.stack.start_operator(*OPERATOR_ARGS))
        self.results: list[TrialResult] = []
        self._session: aiohttp.ClientSession | None = None
        self._janitor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="chaos-janitor")
        self._cleanups: list[Future[None]] = []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.drain_janitor()
        self._janitor.shutdown()
        if self._session is not None:
            with contextlib.suppress(Exception):
                self.agent_loop.call(self._session.close())
        self.stack.stop()
        self._spawner.shutdown()
        self.proxy_loop.close()
        self.agent_loop.close()

    # -- the API server (the official client: a kubectl process per poll cost more CPU than the trial),
    #    with patience for its restarts ---------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, patience: float = 60.0, **kwargs: Any) -> Any:
        deadline = time.monotonic() + patience
        while True:
            try:
                return fn(*args, _request_timeout=30, **kwargs)
            except ApiException as exc:
                if exc.status not in (429, 500, 502, 503, 504) or time.monotonic() > deadline:
                    raise
            except (urllib3.exceptions.HTTPError, OSError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)

    def create(self, body: dict[str, Any]) -> None:
        plural = PLURALS[body["kind"]]
        namespace = body["metadata"].get("namespace")
        try:
            if namespace:
                self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body)
            else:
                self._call(self.custom.create_cluster_custom_object, GROUP, VERSION, plural, body)
        except ApiException as exc:
            if exc.status != 409:  # a retry after a restart found the first attempt's object
                raise

    def patch(self, plural: str, namespace: str | None, name: str, body: dict[str, Any]) -> None:
        if namespace:
            self._call(self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, plural, name, body)
        else:
            self._call(self.custom.patch_cluster_custom_object, GROUP, VERSION, plural, name, body)

    def delete(self, plural: str, namespace: str, name: str) -> None:
        try:
            self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, plural, name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def items(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        if namespace:
            listed = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural)
        else:
            listed = self._call(self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
        return list(listed.get("items", []))

    def namespace(self, name: str, *, delete: bool = False) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        try:
            if delete:
                self._call(self.core.delete_namespace, name)
            else:
                self._call(self.core.create_namespace, body)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise

    # -- agents ----------------------------------------------------------------------------------

    def views(self, agents: dict[str, AgentProcess], order: Iterable[str], *, full: bool = True) -> list[AgentView]:
        """Read the agents one after the other in ``order`` (the order matters to two_running)."""
        async def read(host: str, session: aiohttp.ClientSession) -> AgentView:
            agent = agents[host]
            if not agent.alive:
                return AgentView(host, False)
            client = HypervisorClient(agent.endpoint, agent.token, timeout_seconds=5, session=session)
            try:
                vms = tuple(await client.list_vms())
                if not full:
                    return AgentView(host, True, vms)
                return AgentView(host, True, vms, await client.host(), tuple(await client.list_migrations()))
            except AgentError:
                return AgentView(host, False)

        async def sweep() -> list[AgentView]:
            if self._session is None:  # one pool, made on the loop that uses it
                self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
            return [await read(h, self._session) for h in order]

        return list(self.agent_loop.call(sweep(), timeout=60))

    # -- one trial -------------------------------------------------------------------------------

    def run(self, plan: TrialPlan) -> TrialResult:
        result = TrialResult(plan)
        started = time.monotonic()
        try:
            _Trial(self, plan, result).run()
        except Exception as exc:  # the harness itself failed: report, never hide
            result.violations.append(f"harness error: {type(exc).__name__}: {exc}")
        result.seconds = time.monotonic() - started
        self.results.append(result)
        self.log(f"{'FAIL' if result.violations else 'ok  '} {result.seconds:5.1f}s {plan.describe()}"
                 f"{' (hit)' if result.hit else ''} -> {', '.join(result.outcomes)} "
                 f"[{' '.join(f'{k} {v:.1f}' for k, v in result.steps.items())}]"
                 + "".join(f"\n      {v}" for v in result.violations)
                 + "".join(f"\n      note: {n}" for n in result.notes))
        return result

    def janitor_work(self, teardown: Callable[[], None], result: TrialResult) -> None:
        """Tear a finished trial down in the background while the next one starts."""
        def work() -> None:
            try:
                teardown()
            except Exception as exc:
                result.violations.append(f"tearing the trial down failed: {type(exc).__name__}: {exc}")
        self._cleanups.append(self._janitor.submit(work))

    def drain_janitor(self) -> None:
        for future in self._cleanups:
            future.result()
        self._cleanups.clear()

    def spawn(self, start: Callable[[], Any]) -> Any:
        """Run ``start`` (which starts a process tied to its parent) on the spawner thread."""
        return self._spawner.submit(start).result()

    def ensure_operator(self) -> None:
        if self.stack.operator is None or self.stack.operator.poll() is not None:
            self.spawn(lambda: self.stack.start_operator(*OPERATOR_ARGS))


class _Trial:
    """The steps of one trial; every wait has a deadline and says what it waited for."""

    def __init__(self, campaign: Campaign, plan: TrialPlan, result: TrialResult) -> None:
        self.c = campaign
        self.plan = plan
        self.result = result
        tag = f"{plan.seed}-{uuid.uuid4().hex[:4]}"
        self.ns = f"chaos-{tag}"
        self.hosts = [f"c{tag}-{x}" for x in ("a", "b", "c")[:3 if plan.kind is Kind.DrainRace else 2]]
        self.source, self.target, self.spare = self.hosts[0], self.hosts[1], self.hosts[-1]
        self.proxies: dict[str, MigrationProxy] = {}
        self.uids: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.mig_names: list[str] = []
        self.mig_created: dict[str, float] = {}
        self.mig_ended: dict[str, float] = {}
        self.downtime_total = 0.0
        self.stop_sampling = threading.Event()
        self.sampled: list[str] = []
        self.rng = random.Random(plan.seed * 7919 + 1)

    @property
    def agents(self) -> dict[str, AgentProcess]:
        return {h: self.c.stack.agents[h] for h in self.hosts if h in self.c.stack.agents}

    # -- setup -----------------------------------------------------------------------------------

    def setup(self) -> None:
        plans = []
        for i, host in enumerate(self.hosts):
            proxy = MigrationProxy(self.c.proxy_loop, host)
            port = proxy.start()
            self.proxies[host] = proxy
            plans.append(HostPlan(host, "icelake", cores=16, memory_mib=8192, bandwidth_mbps=self.plan.bandwidth_mbps,
                                  shared_volumes=("csv-1",), labels={"chaos": self.ns, "slot": str(i)},
                                  advertise_migration_port=port, reservation_seconds=RESERVATION_SECONDS))
        self.c.stack.start_hosts(plans, apply=False)
        for host, agent in self.agents.items():
            self.proxies[host].set_upstream(agent.migration_port)
        for p in plans:
            self.c.create(p.manifest(self.c.stack.agents[p.name].endpoint))
        self.c.namespace(self.ns)
        self.wait("hosts Ready", 60, lambda: [(h.get("status") or {}).get("phase") for h in self.c.items("hosts")
                                              if h["metadata"]["name"] in self.hosts] == ["Ready"] * len(self.hosts))
        for v in self.plan.vms:
            self.c.create(self.vm_manifest(v))
        self.wait("VMs Running", 60, lambda: self._all_running())
        for v in self.plan.vms:
            self.c.patch("virtualmachines", self.ns, v.name, {"spec": {"placement": {"host": None}}})
        self.uids = {v["metadata"]["name"]: v["metadata"]["uid"] for v in self.c.items("virtualmachines", self.ns)}

    def _all_running(self) -> bool:
        vms = self.c.items("virtualmachines", self.ns)
        return len(vms) == len(self.plan.vms) and all((v.get("status") or {}).get("phase") == "Running" for v in vms)

    def vm_manifest(self, v: VmPlan) -> dict[str, Any]:
        return {"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": v.name, "namespace": self.ns, "labels": {"app": v.name}},
                "spec": {"cpus": 1, "memoryMiB": v.memory_mib, "processor": {"compatibility": True},
                         "disks": [{"name": "root", "sizeGiB": 1, "volume": "csv-1"}],
                         "workload": {"dirtyRateMiBps": v.dirty_mib_ps, "workingSetMiB": 16},
                         # its own hosts only: trials run side by side, and a drain or a re-placement
                         # must not carry one trial's VM onto another trial's hosts
                         "placement": {"host": self.source, "hostSelector": {"matchLabels": {"chaos": self.ns}}}}}

    def migrate(self, v: VmPlan, target: str) -> None:
        name = f"{v.name}-to-{target.rsplit('-', 1)[-1]}-{len(self.mig_names)}"
        self.mig_names.append(name)
        self.mig_created[name] = time.monotonic()
        self.c.create({"apiVersion": "vmshift.io/v1alpha1", "kind": "VirtualMachineMigration",
                      "metadata": {"name": name, "namespace": self.ns},
                      "spec": {"vmName": v.name, "targetHost": target, "mode": v.mode,
                               "timeoutSeconds": MIGRATION_TIMEOUT_SECONDS}})

    def drain(self) -> None:
        self.c.patch("hosts", None, self.source, {"spec": {"maintenance": True}})

    # -- faults ----------------------------------------------------------------------------------

    def _kill_agent(self, host: str) -> None:
        agent = self.c.stack.agents.get(host)
        if agent is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(agent.process.pid, signal.SIGKILL)

    def _signal_operator(self, sig: signal.Signals) -> None:
        proc = self.c.stack.operator
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def immediate_action(self) -> Callable[[], None] | None:
        """What runs the instant the fault falls (in the proxy's thread when a stream phase triggers it)."""
        kind = self.plan.kind
        if kind is Kind.OperatorKill:
            return lambda: self._signal_operator(signal.SIGKILL)
        if kind is Kind.OperatorTerm:
            return lambda: self._signal_operator(signal.SIGTERM)
        if kind is Kind.SourceAgentKill:
            return lambda: self._kill_agent(self.source)
        if kind is Kind.TargetAgentKill:
            return lambda: self._kill_agent(self.target)
        return None

    def recover(self) -> None:
        """After the fault (and its downtime): bring back what was killed."""
        kind, down = self.plan.kind, self.plan.downtime
        if kind in (Kind.OperatorKill, Kind.OperatorTerm):
            proc = self.c.stack.operator
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)  # SIGTERM: the operator finishes its shutdown first
                if proc.poll() is None:
                    self.result.violations.append("the operator did not exit within 30 s of SIGTERM")
                    self._signal_operator(signal.SIGKILL)
                    proc.wait(10)
            time.sleep(down)
            self.c.stack.operator = None
            self.c.ensure_operator()
        elif kind in (Kind.SourceAgentKill, Kind.TargetAgentKill):
            host = self.source if kind is Kind.SourceAgentKill else self.target
            time.sleep(down)
            agent = self.c.stack.restart_agent(host)  # a rebooted host: empty, Host re-pointed at it
            self.proxies[host].set_upstream(agent.migration_port)
        elif kind is Kind.ApiServerRestart:
            self.c.spawn(lambda: self.c.plane.restart("kube-apiserver", down_seconds=down))
        self.downtime_total += down

    def inject(self) -> None:
        """Ask for the moves and let the planned fault fall."""
        plan = self.plan
        action = self.immediate_action()
        trigger: Trigger | None = None
        if plan.phase is not None:
            fault = {Kind.Partition: Fault.Cut, Kind.Blackhole: Fault.Blackhole}.get(plan.kind)
            trigger = Trigger(plan.phase, fault=fault, seconds=plan.downtime, action=action,
                              pages=plan.precopy_frame)
            if plan.kind is Kind.ApiServerRestart:
                trigger.action = None
            self.proxies[self.target].arm(trigger)
        if plan.kind is Kind.DrainRace:
            if plan.drain_first:
                self.drain()
                time.sleep(plan.drain_gap)
            for v in plan.vms:
                self.migrate(v, self.target if self.rng.random() < 0.5 else self.spare)
            if not plan.drain_first:
                time.sleep(plan.drain_gap)
                self.drain()
            self.result.hit = True
            return
        for v in plan.vms:
            self.migrate(v, self.target)
        if trigger is not None:
            # Wait for the stream to reach the phase; if every migration ends first, the fault falls late.
            deadline = time.monotonic() + 30
            while not trigger.fired.wait(0.1):
                if time.monotonic() > deadline or self._migrations_over():
                    break
            self.result.hit = trigger.fired.is_set()
            if not trigger.fired.is_set():
                self.proxies[self.target].arm(Trigger(Phase.Handshake))  # disarm
                self.result.notes.append(f"the stream never reached {plan.phase.value}; the fault fell after it")
                if trigger.fault is not None:
                    self.proxies[self.target].partition(trigger.fault, plan.downtime)
                elif action is not None:
                    action()
            if plan.kind is Kind.ApiServerRestart or action is not None:
                self.recover()
            return
        time.sleep(plan.delay)
        self.result.hit = True
        if plan.kind is Kind.DeleteMigration:
            victim = self.rng.choice(self.mig_names)
            self.c.delete("virtualmachinemigrations", self.ns, victim)
            self.result.notes.append(f"deleted migration {victim}")
        elif plan.kind is Kind.DeleteVM:
            victim = self.rng.choice(self.plan.vms).name
            self.c.delete("virtualmachines", self.ns, victim)
            self.deleted.add(victim)
            self.result.notes.append(f"deleted VM {victim}")
        elif action is not None:
            action()
            self.recover()
        elif plan.kind is Kind.ApiServerRestart:
            self.recover()

    # -- watching and settling -------------------------------------------------------------------

    def _migrations_over(self) -> bool:
        finished = {"Succeeded", "Failed", "Cancelled"}
        items = {m["metadata"]["name"]: m for m in self.c.items("virtualmachinemigrations", self.ns)}
        now = time.monotonic()
        for name in self.mig_names:
            m = items.get(name)
            if name not in self.mig_ended and (m is None or (m.get("status") or {}).get("phase") in finished):
                self.mig_ended[name] = now
        return all(n in self.mig_ended for n in self.mig_names) and all(
            (m.get("status") or {}).get("phase") in finished for m in items.values())

    def sample(self) -> None:
        """Until the trial settles: two sweeps of the agents in opposite orders, looking for two running copies."""
        names = {uid: name for name, uid in self.uids.items()}
        while not self.stop_sampling.wait(0.25):
            try:
                order = list(self.agents)
                agents = self.agents
                forward = self.c.views(agents, order, full=False)
                backward = self.c.views(agents, list(reversed(order)), full=False)
            except Exception:  # an agent restarting under our feet: next sweep
                continue
            for problem in two_running(forward, backward, names):
                if problem not in self.sampled:
                    self.sampled.append(problem)

    def settle(self) -> list[str]:
        bound = MIGRATION_TIMEOUT_SECONDS + self.downtime_total + SLACK_SECONDS
        deadline = time.monotonic() + bound
        while not self._migrations_over() and time.monotonic() < deadline:
            time.sleep(0.3)
        self.result.steps["migrations"] = time.monotonic() - (deadline - bound)
        problems: list[str] = []
        for name in self.mig_names:
            ended = self.mig_ended.get(name)
            if ended is None:
                problems.append(f"migration {name} did not end within {bound:.0f} s")
            elif ended - self.mig_created[name] > bound:
                problems.append(f"migration {name} took {ended - self.mig_created[name]:.0f} s (bound {bound:.0f} s)")
        started = time.monotonic()
        deadline = started + SETTLE_SECONDS + RESERVATION_SECONDS
        told = started
        while True:
            last = self.check()
            if not last or time.monotonic() > deadline:
                break
            if time.monotonic() - told > 10:
                told = time.monotonic()
                self.result.notes.append(f"still settling after {told - started:.0f} s: {'; '.join(last)[:300]}")
            time.sleep(0.5)
        return problems + last

    def check(self) -> list[str]:
        vms = {v["metadata"]["name"]: v for v in self.c.items("virtualmachines", self.ns)}
        migrations = self.c.items("virtualmachinemigrations", self.ns)
        expected = []
        for name, uid in self.uids.items():
            obj = vms.get(name)
            mine = tuple(m for m in migrations if (m.get("spec") or {}).get("vmName") == name)
            expected.append(ExpectedVM(name, uid, deleted=name in self.deleted, exists=obj is not None,
                                       status=(obj or {}).get("status") or {}, migrations=mine))
        problems = settled_problems(self.c.views(self.agents, list(self.agents)), expected)
        problems += api_migration_problems(migrations)
        for name, obj in vms.items():
            phase = (obj.get("status") or {}).get("phase")
            if name not in self.deleted and phase != "Running":
                problems.append(f"VM {name} is {phase}, not Running")
        return problems

    def wrong_words(self) -> list[str]:
        """A migration may blame an agent only if that agent was really lost in this trial."""
        lost = {Kind.SourceAgentKill: {"SourceLost", "AgentUnreachable"},
                Kind.TargetAgentKill: {"TargetLost", "AgentUnreachable"},
                Kind.Partition: {"TargetLost", "SourceLost", "Timeout", "AgentUnreachable"},
                Kind.Blackhole: {"TargetLost", "SourceLost", "Timeout", "AgentUnreachable"}}.get(self.plan.kind, set())
        problems = []
        for m in self.c.items("virtualmachinemigrations", self.ns):
            failure = (m.get("status") or {}).get("failure") or {}
            reason = failure.get("reason")
            if reason in {"SourceLost", "TargetLost", "AgentUnreachable"} and reason not in lost:
                problems.append(f"migration {m['metadata']['name']} failed with {reason} although no agent was lost "
                                f"({self.plan.kind.value}): {str(failure.get('message'))[:200]}")
        return problems

    def outcomes(self) -> list[str]:
        out = []
        for m in self.c.items("virtualmachinemigrations", self.ns):
            status = m.get("status") or {}
            reason = (status.get("failure") or {}).get("reason")
            out.append(f"{m['metadata']['name']}={status.get('phase')}{'/' + reason if reason else ''}")
        return sorted(out)

    # -- teardown --------------------------------------------------------------------------------

    def teardown(self) -> None:
        self.stop_sampling.set()
        for proxy in self.proxies.values():
            proxy.arm(Trigger(Phase.Handshake))  # nothing armed any more
        with contextlib.suppress(Exception):
            for proxy in self.proxies.values():
                proxy.heal()
        self.c.ensure_operator()
        for plural in ("virtualmachinemigrations", "virtualmachines"):
            for obj in self.c.items(plural, self.ns):
                self.c.delete(plural, self.ns, obj["metadata"]["name"])
        deadline = time.monotonic() + 120
        while self.c.items("virtualmachines", self.ns) or self.c.items("virtualmachinemigrations", self.ns):
            if time.monotonic() > deadline:
                left = [o["metadata"]["name"] for p in ("virtualmachines", "virtualmachinemigrations")
                        for o in self.c.items(p, self.ns)]
                self.result.violations.append(f"deleting the trial's objects hung for 120 s: {left}")
                for plural in ("virtualmachinemigrations", "virtualmachines"):
                    for obj in self.c.items(plural, self.ns):
                        self.c.patch(plural, self.ns, obj["metadata"]["name"], {"metadata": {"finalizers": None}})
                break
            time.sleep(0.5)
        with contextlib.suppress(Exception):
            self.c.stack.remove_hosts([h for h in self.hosts if h in self.c.stack.agents])
        for proxy in self.proxies.values():
            proxy.close()
        with contextlib.suppress(Exception):
            self.c.namespace(self.ns, delete=True)

    def wait(self, what: str, timeout: float, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout:.0f} s; operator log:\n"
                                   f"{self.c.stack.operator_log_tail(15)}")
            time.sleep(0.2)

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        started = time.monotonic()
        try:
            return fn()
        finally:
            self.result.steps[name] = time.monotonic() - started

    def run(self) -> None:
        sampler = threading.Thread(target=self.sample, name=f"sampler-{self.plan.seed}", daemon=True)
        try:
            self.c.ensure_operator()
            self.step("setup", self.setup)
            sampler.start()
            self.step("fault", self.inject)
            problems = self.step("settle", self.settle)
            self.stop_sampling.set()
            sampler.join(10)
            self.result.violations += self.sampled + problems
            self.result.outcomes = self.outcomes()
            self.result.violations += self.wrong_words()
        finally:
            self.stop_sampling.set()
            self.c.janitor_work(lambda: self.step("teardown", self.teardown), self.result)


# -- the table ---------------------------------------------------------------------------------------


def table(results: list[TrialResult]) -> str:
    """Trials per fault kind, how many hit the planned phase, violations, and the seeds that reproduce them."""
    rows = [f"{'fault kind':<20} {'trials':>6} {'hit':>5} {'violations':>10} {'mean s':>7}  reproducing seeds"]
    for kind in KINDS:
        mine = [r for r in results if r.plan.kind is kind]
        if not mine:
            continue
        bad = [r for r in mine if r.violations]
        seeds = " ".join(str(r.plan.seed) for r in bad[:12]) + (" ..." if len(bad) > 12 else "")
        rows.append(f"{kind.value:<20} {len(mine):>6} {sum(r.hit for r in mine):>5} {len(bad):>10} "
                    f"{sum(r.seconds for r in mine) / len(mine):>7.1f}  {seeds}")
    bad = [r for r in results if r.violations]
    rows.append(f"{'total':<20} {len(results):>6} {sum(r.hit for r in results):>5} {len(bad):>10} "
                f"{sum(r.seconds for r in results) / max(len(results), 1):>7.1f}")
    return "\n".join(rows)


def violations_report(results: list[TrialResult]) -> str:
    lines = []
    for r in results:
        if r.violations:
            lines.append(f"{r.plan.describe()}  [{', '.join(r.outcomes)}]")
            lines += [f"    - {v}" for v in r.violations]
            lines += [f"    note: {n}" for n in r.notes]
    return "\n".join(lines)


def run_trials(campaign: Campaign, seeds: Iterable[int], *, lanes: int = 1,
               deadline: float | None = None) -> list[TrialResult]:
    """Run the trials of ``seeds``; with ``lanes`` > 1, trials whose faults touch only their own hosts
    run side by side (the operator and API server faults always run alone). No trial starts after
    ``deadline`` (time.monotonic()); the ones that ran are returned."""
    seeds = list(seeds)
    shared = _SharedLock()
    global_kinds = {Kind.OperatorKill, Kind.OperatorTerm, Kind.ApiServerRestart}

    def one(seed: int) -> TrialResult | None:
        plan = plan_trial(seed)
        with shared.exclusive() if plan.kind in global_kinds and lanes > 1 else shared.shared():
            if deadline is not None and time.monotonic() > deadline:
                return None
            return campaign.run(plan)

    with ThreadPoolExecutor(max_workers=max(1, lanes)) as pool:
        results = [r for r in pool.map(one, seeds) if r is not None]
    campaign.drain_janitor()
    return results


class _SharedLock:
    """Many readers or one writer: local trials share the installation, global faults have it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def shared(self) -> Any:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Any:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
