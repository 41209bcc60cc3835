"""Host status: what a Host's phase, conditions, capacity, sensors and counts are, from its agent's report.

Pure builders (:func:`host_status`, :func:`heartbeat`) and the cache listeners that wake a Host's
supervisor (``hostsupervisor``, the only writer of the status) when something its status derives
from changed: its spec, labels or annotations, what others wrote into its status, a migration
entering or leaving flight to or from it. A quarantine thus reads as ``Schedulable=False`` within
one event, not one agent poll later; the supervisor's own writes (capacity, sensors) wake nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vmshift import metrics
from vmshift.api import conditions as cond
from vmshift.api.host import DrainState, HostPhase, HostSpec, SensorReading
from vmshift.controllers.agents import AgentConfigError, AgentLink
from vmshift.controllers.indexes import HOSTS, MIGRATIONS, host_names
from vmshift.controllers.runtime import runtime
from vmshift.controllers.views import index_migration, parse_host_spec
from vmshift.hypervisor.protocol import HostInfo
from vmshift.sensors import Reading, verdicts
from vmshift.timestamps import rfc3339

_host_phase: dict[str, str] = {}
#: The newest Host body the informer delivered, by name, and a wake-up for each host's daemon.
_seen: dict[str, Mapping[str, Any]] = {}
#: Where each migration in flight goes (source, target), by uid: a change wakes both hosts.
_flights: dict[str, tuple[str | None, str | None]] = {}


def status_inputs(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a Host, other than its agent's report, that its supervisor's passes and status
    derive from (pure): its spec, labels and annotations (a remediation's release), and what of its
    status someone other than the supervisor may change."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    drain = status.get("drain") or {}
    return (meta.get("generation"), meta.get("labels"), meta.get("annotations"),
            (status.get("remediation") or {}).get("action"), (status.get("remediation") or {}).get("policy"),
            drain.get("trigger"), drain.get("state"))


@HOSTS.listen
def wake_on_host_event(type: str, body: Mapping[str, Any]) -> None:
    name = str((body.get("metadata") or {}).get("name", ""))
    if type == "DELETED":
        _seen.pop(name, None)
        return
    before = _seen.get(name)
    _seen[name] = body
    if before is None or status_inputs(before) != status_inputs(body):
        runtime().wake_host(name)


@HOSTS.on_listed
def forget_unlisted_hosts() -> None:
    """A listing after the watch lost its place drops Hosts without a DELETED event: forget them too."""
    for name in set(_seen) - set(host_names()):
        del _seen[name]


#: ``status.sensors`` by reading: a fleet's hosts mostly read alike, and every poll of every host asks.
_sensor_status: dict[Reading, list[dict[str, Any]]] = {}
SENSOR_TABLE_LIMIT = 4096


def _sensors(info: HostInfo) -> list[dict[str, Any]]:
    """``status.sensors``: each sensor in its unit (RPM, W, °C, errors per hour) with its health
    (a fresh copy: the caller may change it)."""
    reading = info.sensors.reading()
    made = _sensor_status.get(reading)
    if made is None:
        made = [SensorReading(name=v.name, kind=v.kind, value=v.value, health=v.health, message=v.message).to_api()
                for v in verdicts(reading)]
        if len(_sensor_status) >= SENSOR_TABLE_LIMIT:
            _sensor_status.clear()
        _sensor_status[reading] = made
    return [dict(s) for s in made]


def heartbeat(previous: str | None, answered: datetime | None, *, changed: bool) -> str | None:
    """status.lastHeartbeatTime (pure): when the agent last answered, carried by every status write
    (``changed``: the rest of the status differs from what is stored) and never the only reason for
    one, so an idle fleet costs the API server nothing. While the agent does not answer it stays
    where it was: when the host was last heard."""
    if answered is None:
        return previous
    if previous and not changed:
        return previous
    return rfc3339(answered.timestamp())


@dataclass(frozen=True)
class HostInputs:
    """What a Host's status is computed from besides its agent's report and its stored status."""

    spec: HostSpec
    generation: int
    #: The model refused the Host's spec: what is wrong.
    spec_problem: str | None = None
    #: Migrations in flight to and from the host (from the migration cache).
    inbound: int = 0
    outbound: int = 0
    #: When the agent last answered (wall clock), None if never.
    answered: datetime | None = None
    #: Alerts Alertmanager reports firing for the host, as "alertname (severity)": they make the
    #: HardwareHealthy condition False (not the phase: an alert must not beget a HostsNotReady alert).
    alerts: tuple[str, ...] = ()

    @classmethod
    def of(cls, spec: Mapping[str, Any], generation: int, **rest: Any) -> HostInputs:
        """Inputs from a raw spec, parsed by its model (pure)."""
        parsed, problem = parse_host_spec(spec)
        return cls(spec=parsed, generation=generation, spec_problem=problem, **rest)


def host_status(
    name: str,
    inputs: HostInputs,
    previous: Mapping[str, Any],
    link: AgentLink | None,
    config_error: AgentConfigError | None,
) -> dict[str, Any]:
    """The Host's status from its spec and its agent's last report (pure).

    Phase precedence: Unreachable, then Maintenance/Draining (from ``previous.drain``, which the
    drain controller writes: Draining while a drain of every VM runs or is blocked, Maintenance once
    it completed; also Draining while an EvacuateCritical evacuation runs), Degraded (hardware
    unhealthy), Cordoned (unschedulable or quarantined by a remediation), Ready. The Draining
    condition and the kstatus pair follow the drain: Reconciling while it runs, Stalled when only
    VMs that cannot move are left.
    """
    spec, generation = inputs.spec, inputs.generation
    conditions = list(previous.get("conditions") or [])
    if not conditions:
        conditions = cond.first_look(conditions, f"Contacting the agent of {name}.", observed_generation=generation)
    status: dict[str, Any] = {"observedGeneration": generation,
                              "migrations": {"inbound": inputs.inbound, "outbound": inputs.outbound}}
    info = link.info if link else None
    reachable = bool(link and link.reachable and info)
    if config_error is not None:
        reason, message = config_error.reason, config_error.message
    elif link is None or info is None:
        reason, message = "AgentNotContacted", f"The agent of {name} has not answered yet."
    elif not link.reachable:
        reason = "AgentUnreachable"
        message = (f"The agent of {name} at {link.endpoint} stopped answering ({link.last_error}). "
                   f"Check the agent process and the network; its VMs are not moved until it answers.")
    else:
        reason, message = "AgentReachable", f"The agent of {name} answers at {link.endpoint}."
    healthy = bool(info and info.health.healthy)
    if info is not None:
        status["processor"] = {"model": info.cpu_model, "vendor": info.vendor, "features": info.features}
        status["allocated"] = {"cpus": info.allocated.cpus, "memoryMiB": info.allocated.memory_mib}
        status["vms"] = info.vms
        # A figure the agent no longer reports (its samples aged out) is taken out of the status (null).
        shown = previous.get("migrations") or {}
        for key, figure in (("streamMbps", info.migration_stream_mbps),
                            ("streamsTogetherMbps", info.migration_streams_together_mbps)):
            if figure is not None or shown.get(key) is not None:
                status["migrations"][key] = figure
        status["sensors"] = _sensors(info)
    remediation = previous.get("remediation") or {}
    quarantine = remediation.get("action")
    cordoned = spec.unschedulable or spec.maintenance or bool(quarantine) or inputs.spec_problem is not None
    drain = previous.get("drain") or {}
    drain_state = drain.get("state")
    # A drain is open while its trigger (maintenance or a remediation) holds; the drain controller
    # clears the trigger when the host returns to service, so an old "Completed" never reads as now.
    drain_open = bool(drain.get("trigger"))
    full_drain = spec.maintenance or quarantine == "Maintenance"
    if not reachable:
        phase = HostPhase.Unreachable
    elif full_drain:
        phase = HostPhase.Maintenance if drain_open and drain_state == DrainState.Completed else HostPhase.Draining
    elif drain_open and drain_state in (DrainState.Running, DrainState.Blocked):
        phase = HostPhase.Draining
    elif info is not None and not healthy:
        phase = HostPhase.Degraded
    elif cordoned:
        phase = HostPhase.Cordoned
    else:
        phase = HostPhase.Ready
    status["phase"] = phase.value
    conditions = cond.ready(conditions, reachable, reason, message, observed_generation=generation)
    drain_reason, drain_message = _drain_condition(name, drain, drain_open)
    if reachable and drain_open and drain_state == DrainState.Running:
        conditions = cond.reconciling(conditions, True, "Draining", drain_message, observed_generation=generation)
    elif reachable and drain_open and drain_state == DrainState.Blocked:
        conditions = cond.stalled(conditions, True, "DrainBlocked", drain_message, observed_generation=generation)
    elif reachable:
        conditions = cond.reconciling(conditions, False, "Observed", message, observed_generation=generation)
        conditions = cond.stalled(conditions, False, "Observed", message, observed_generation=generation)
    elif config_error is not None:
        conditions = cond.stalled(conditions, True, reason, message, observed_generation=generation)
    conditions = cond.set_condition(conditions, "Draining", drain_open and drain_state == DrainState.Running,
                                    drain_reason, drain_message, observed_generation=generation)
    if inputs.spec_problem is not None:
        conditions = cond.stalled(conditions, True, "InvalidSpec",
                                  f"The spec of {name} is refused: {inputs.spec_problem}. It takes no VMs until "
                                  f"it is fixed.", observed_generation=generation)
    if cordoned:
        why = ("spec.maintenance is true" if spec.maintenance else
               f"RemediationPolicy {remediation.get('policy')} ({quarantine}) quarantined it"
               if quarantine else "spec.unschedulable is true" if spec.unschedulable else
               f"its spec is refused ({inputs.spec_problem}); fix the Host")
        conditions = cond.set_condition(conditions, "Schedulable", False, "Cordoned",
                                        f"{name} takes no new VMs or inbound migrations: {why}.",
                                        observed_generation=generation)
    elif not reachable:
        conditions = cond.set_condition(conditions, "Schedulable", False, "AgentUnreachable",
                                        f"{name} takes no new VMs while its agent does not answer.",
                                        observed_generation=generation)
    else:
        conditions = cond.set_condition(conditions, "Schedulable", True, "Schedulable",
                                        f"{name} accepts new VMs and inbound migrations.",
                                        observed_generation=generation)
    firing = (f" Alertmanager reports {len(inputs.alerts)} alert(s) firing for it: "
              f"{', '.join(inputs.alerts[:10])}{' and more' if len(inputs.alerts) > 10 else ''}."
              if inputs.alerts else "")
    problems = info.health.problems if info is not None else []
    if problems:
        worst = max(problems, key=lambda p: p.severity.value == "Critical")
        text = "; ".join(p.message for p in problems)
        conditions = cond.set_condition(conditions, "HardwareHealthy", False, f"{worst.signal.value}Failure",
                                        f"{name} reports hardware trouble: {text}.{firing}",
                                        observed_generation=generation)
    elif inputs.alerts:
        conditions = cond.set_condition(conditions, "HardwareHealthy", False, "AlertFiring",
                                        f"{name}'s own sensors read normal.{firing} RemediationPolicies that match "
                                        f"act on them (status.remediation).", observed_generation=generation)
    elif info is not None:
        conditions = cond.set_condition(conditions, "HardwareHealthy", True, "SensorsNormal",
                                        f"Every sensor of {name} reads normal.", observed_generation=generation)
    status["conditions"] = cond.dump(conditions)
    beat = heartbeat(previous.get("lastHeartbeatTime"), inputs.answered,
                     changed=not cond.changes_nothing(status, previous))
    if beat is not None:
        status["lastHeartbeatTime"] = beat
    return status


def _drain_condition(name: str, drain: Mapping[str, Any], drain_open: bool) -> tuple[str, str]:
    """Reason and message of the Draining condition from ``status.drain`` (pure)."""
    state = drain.get("state")
    counts = (f"{drain.get('moved', 0)} of {drain.get('total', 0)} VM(s) moved, {drain.get('inFlight', 0)} in "
              f"flight, {drain.get('failed', 0)} failed attempt(s)")
    if not drain_open:
        if state == DrainState.Cancelled:
            return "DrainCancelled", f"The last drain of {name} was stopped before it completed ({counts})."
        return "NotDraining", f"No drain runs on {name}."
    if state == DrainState.Running:
        return "Draining", f"{name} is being drained ({drain.get('trigger')}): {counts}."
    if state == DrainState.Blocked:
        blocked = drain.get("blocked") or []
        listed = "; ".join(f"{b.get('vm')} ({b.get('reason')}): {b.get('message')}" for b in blocked[:3])
        more = f"; and {len(blocked) - 3} more" if len(blocked) > 3 else ""
        return "DrainBlocked", (f"The drain of {name} ({drain.get('trigger')}) cannot finish: {len(blocked)} VM(s) "
                                f"cannot move: {listed}{more}. Fix the cause, or end what asked for the drain.")[:4000]
    return "Drained", f"{name} is drained ({drain.get('trigger')}): {counts}."


@MIGRATIONS.listen
def wake_on_migration_event(type: str, body: Mapping[str, Any]) -> None:
    """A migration entering or leaving flight changes status.migrations of its source and target."""
    uid = str((body.get("metadata") or {}).get("uid", ""))
    entry = index_migration(body)
    now = None if type == "DELETED" or not entry.in_flight else (entry.source, entry.target)
    before = _flights.pop(uid, None)
    if now is not None:
        _flights[uid] = now
    if now != before:
        for host in {*(before or ()), *(now or ())} - {None}:
            runtime().wake_host(str(host))


def migration_counts(flights: Mapping[str, tuple[str | None, str | None]], host: str) -> tuple[int, int]:
    """(inbound, outbound) migrations in flight of ``host`` from (source, target) pairs (pure)."""
    inbound = sum(1 for _, target in flights.values() if target == host)
    outbound = sum(1 for source, _ in flights.values() if source == host)
    return inbound, outbound


def in_flight(host: str) -> tuple[int, int]:
    """(inbound, outbound) of ``host`` as the migration cache shows them now (fresher than the fleet)."""
    return migration_counts(_flights, host)


def last_seen(name: str) -> Mapping[str, Any] | None:
    """The newest body of Host ``name`` the informer delivered (Kopf's own copy may lag behind it)."""
    return _seen.get(name)


def forget_phase(name: str) -> None:
    """The Host's supervisor ended: it no longer counts in the hosts-by-phase gauge."""
    _host_phase.pop(name, None)


def record_phase(name: str, phase: str) -> None:
    if _host_phase.get(name) == phase:
        return
    _host_phase[name] = phase
    for p in HostPhase:
        metrics.HOSTS.labels(phase=p.value).set(sum(1 for v in _host_phase.values() if v == p))
