"""Every controller decision takes any object the CRDs admit without raising.

Fleets are drawn from the CRDs' own schemas (tests/fuzz/crdgen.py): Hosts, VirtualMachines,
migrations and both kinds of policy, with names tied together so placements, selectors and
migrations refer to hosts that exist (and sometimes to hosts that do not). Each fleet goes through
the pure functions the controllers call: the index builders, the scheduler's views and fleet, the
placement, compatibility, mode, policy and queue decisions, the drain planner and the evacuation
goal, the Host status, the VM's agent definition, the remediation decision and the import planner.
The only exceptions allowed are the modules' own errors for a user's mistake (an import's
ImportFailed, a VM's DefinitionError), which the controllers turn into conditions.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.crdgen import objects
from vmshift.api.labels import DRIVERS_ANNOTATION
from vmshift.controllers.hosts import HostInputs, host_status
from vmshift.controllers.importsteps import ImportFailed, SourceMissing, make_plan, vm_manifest
from vmshift.controllers.remediation import ActiveEntry, policy_status
from vmshift.controllers.views import AgentFacts, build_fleet, index_host, index_migration, index_vm, policy_view
from vmshift.controllers.vmstatus import DefinitionError, definition, migration_name
from vmshift.remediation.decide import HostState, SignalState, decide
from vmshift.remediation.signals import last_ended_of, remediation_of
from vmshift.remediation.signals import policy_view as remediation_policy_view
from vmshift.scheduling.compatibility import blocking, check_target
from vmshift.scheduling.drain import plan_drain
from vmshift.scheduling.evacuation import goal_of
from vmshift.scheduling.moves import DrainLimits
from vmshift.scheduling.placement import migratable, pick_target, plan_placement
from vmshift.scheduling.policy import DEFAULT_POLICY, choose_mode, select_policy
from vmshift.scheduling.queue import QueuedMigration, admit

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@st.composite
def fleets(draw: st.DrawFn) -> dict[str, list[dict[str, Any]]]:
    """Objects of every kind, their references pointed (mostly) at each other."""
    hosts = draw(st.lists(objects("hosts"), min_size=1, max_size=4, unique_by=lambda h: h["metadata"]["name"]))
    names = [h["metadata"]["name"] for h in hosts]
    some_host = st.sampled_from(names) | st.just("no-such-host")
    vms = draw(st.lists(objects("virtualmachines"), max_size=4,
                        unique_by=lambda v: (v["metadata"]["namespace"], v["metadata"]["name"])))
    for vm in vms:
        status = vm.setdefault("status", {})
        if draw(st.booleans()):
            status["host"] = draw(some_host)
        if draw(st.booleans()):
            vm["spec"].setdefault("placement", {})["host"] = draw(some_host)
        if draw(st.booleans()):
            vm["metadata"].setdefault("annotations", {})[DRIVERS_ANNOTATION] = draw(
                st.text(max_size=60) | st.just("vmbus,netvsc,storvsc,e1000"))
    migrations = draw(st.lists(objects("virtualmachinemigrations"), max_size=4))
    for m in migrations:
        if vms and draw(st.booleans()):
            vm = draw(st.sampled_from(vms))
            m["metadata"]["namespace"] = vm["metadata"]["namespace"]
            m["spec"]["vmName"] = vm["metadata"]["name"]
        if draw(st.booleans()):
            m["spec"]["targetHost"] = draw(some_host)
    return {
        "hosts": hosts, "vms": vms, "migrations": migrations,
        "policies": draw(st.lists(objects("migrationpolicies"), max_size=3)),
        "remediations": draw(st.lists(objects("remediationpolicies"), max_size=3)),
    }


def _facts(draw: Any, hosts: list[str]) -> dict[str, AgentFacts]:
    return {h: AgentFacts(reachable=draw(st.booleans()), healthy=draw(st.booleans()),
                          cpu_model=draw(st.sampled_from([None, "icelake", "zen3", "haswell", "not-a-cpu"])),
                          vendor=draw(st.sampled_from([None, "Intel", "AMD"])))
            for h in hosts if draw(st.booleans())}


@FUZZ
@given(fleets(), st.data())
def test_scheduling_decisions_take_any_admitted_fleet(objs: dict[str, list[dict[str, Any]]],
                                                      data: st.DataObject) -> None:
    hosts = [index_host(h) for h in objs["hosts"]]
    vms = [index_vm(v) for v in objs["vms"]]
    migrations = [index_migration(m) for m in objs["migrations"]]
    policies = [policy_view(p["metadata"]["name"], p["spec"]) for p in objs["policies"]]
    facts = _facts(data.draw, [h.name for h in hosts])
    fleet = build_fleet(hosts, vms, migrations, facts)
    host_views = dict(fleet.hosts)
    for vm, body in zip(vms, objs["vms"], strict=True):
        view = vm.view
        plan_placement(view, fleet)
        migratable(view, fleet)
        quick = data.draw(st.booleans())
        pick_target(view, fleet, quick=quick)
        policy = select_policy(vm.labels, vm.namespace, policies,
                               requested=vm.spec.migration.policy) or DEFAULT_POLICY
        for host in [*host_views, "no-such-host"]:
            problems = check_target(view, host, fleet, moving=vm.host is not None)
            blocking(problems, quick=quick)
            link = host_views[host].bandwidth_mbps if host in host_views else None
            requested = vm.spec.migration.mode
            choose_mode(requested, view, policy, problems, bandwidth_mbps=link)
            migration_name(vm.name, host, vm.generation)
        try:  # a drivers annotation the agents cannot take is the VM's InvalidDefinition condition
            definition(vm, (body["metadata"].get("annotations") or {}))
        except DefinitionError as exc:
            assert str(exc)
    for host in hosts:
        plan_drain(host.name, fleet, DrainLimits(max_parallel=data.draw(st.none() | st.integers(1, 4))),
                   policy=data.draw(st.sampled_from([DEFAULT_POLICY, *policies])))
    for host_body in objs["hosts"]:
        goal_of(host_body["metadata"]["name"], host_body["spec"], host_body.get("status") or {})
        inputs = HostInputs.of(host_body["spec"], host_body["metadata"]["generation"])
        host_status(host_body["metadata"]["name"], inputs, host_body.get("status") or {}, None, None)
    requests = [QueuedMigration(key=m.key, namespace=m.namespace, vm=m.vm_key, source=m.source or "no-such-host",
                                 target=m.target, created=float(i), cpus=1, memory_mib=64)
                for i, m in enumerate(migrations)]
    cut = data.draw(st.integers(0, len(requests)))
    admit(requests[cut:], requests[:cut], host_views, cluster_limit=data.draw(st.none() | st.integers(0, 5)))


@FUZZ
@given(fleets(), st.floats(0, 2e9), st.data())
def test_remediation_decisions_take_any_admitted_policy_and_host(
        objs: dict[str, list[dict[str, Any]]], now: float, data: st.DataObject) -> None:
    views = [remediation_policy_view(p["metadata"]["name"], p["spec"]) for p in objs["remediations"]]
    active = []
    for body in objs["hosts"]:
        status = body.get("status") or {}
        remediation = status.get("remediation") or {}
        if remediation.get("policy"):
            active.append(ActiveEntry(body["metadata"]["name"], remediation.get("since"),
                                      tuple(str(a.get("alertname")) for a in remediation.get("alerts") or [])))
        labels = data.draw(st.dictionaries(st.sampled_from(["alertname", "severity", "host", "instance", "rack"]),
                                           st.text(max_size=20), max_size=4))
        alerts = tuple(SignalState(labels, first_seen=data.draw(st.floats(0, now)),
                                   resolved_at=data.draw(st.none() | st.floats(0, now)))
                       for _ in range(data.draw(st.integers(0, 3))))
        decide(views, HostState(host=body["metadata"]["name"], alerts=alerts, remediation=remediation_of(status),
                                last_ended=last_ended_of(status),
                                annotations=body["metadata"].get("annotations") or {}), now)
    for p in objs["remediations"]:
        policy_status(p["metadata"]["name"], p["spec"], p["metadata"]["generation"], p.get("status") or {}, active)


@FUZZ
@given(objects("virtualmachineimports"), st.none() | st.text(max_size=200) | st.binary(max_size=200))
def test_import_planning_takes_any_admitted_import(body: dict[str, Any], fetched: str | bytes | None) -> None:
    try:
        plan = make_plan(body["spec"], body["metadata"]["namespace"], fetched)
    except (ImportFailed, SourceMissing) as exc:
        assert str(exc), "an import refusal must say why"
        return
    vm_manifest(plan, body["metadata"]["name"], body["metadata"]["namespace"], body["metadata"]["uid"])
