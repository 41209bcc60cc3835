"""Which MigrationPolicy governs a VM, and live or quick for a migration. Pure: no I/O.

:func:`select_policy` picks the most specific matching policy with a fixed precedence, so the answer
never depends on the order the operator's index returns policies in. :func:`choose_mode` turns a
request (``Auto``/``Live``/``Quick``), the policy and the problems
:func:`~vmshift.scheduling.compatibility.check_target` found into a mode and a sentence saying why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vmshift.api import conditions as cond
from vmshift.api.common import EVERYTHING, Selector
from vmshift.api.migrationpolicy import MigrationPolicyStatus
from vmshift.api.reasons import FailureReason, MigrationMode
from vmshift.precopy.convergence import DEFAULTS as CONVERGENCE
from vmshift.precopy.convergence import ConvergencePolicy
from vmshift.precopy.model import PrecopyPrediction, predict_precopy, quick_migration_seconds
from vmshift.scheduling.compatibility import Problem, blocking
from vmshift.scheduling.fleet import VMView


class Rung(StrEnum):
    """One step of a policy's fallback ladder, tried in order when pre-copy stops converging."""

    PreCopy = "PreCopy"
    AutoConverge = "AutoConverge"
    Quick = "Quick"
    PostCopy = "PostCopy"


@dataclass(frozen=True)
class MigrationPolicyView:
    """A MigrationPolicy as the scheduler sees it.

    Selection: ``namespaces`` (names) and ``namespace_selector`` (a label selector on the namespace's
    labels) must both hold when given; ``vm_selector`` (a label selector, matchLabels and
    matchExpressions) must select the VM's labels. An empty selector matches everything. Settings
    keep the API's units. ``parallel_outbound_per_host``: migrations of the VMs this policy governs
    that may leave one host at once.
    ``completion_timeout_per_gib_seconds`` has KubeVirt's meaning: a migration of a guest with
    ``m`` GiB of memory times out after ``m`` times this many seconds.
    """

    name: str
    precedence: int = 0
    namespaces: tuple[str, ...] = ()
    namespace_selector: Selector = EVERYTHING
    vm_selector: Selector = EVERYTHING
    threshold_ms: float = CONVERGENCE.threshold_ms
    max_downtime_ms: float = 300.0
    max_rounds: int = CONVERGENCE.max_rounds
    stall_rounds: int = CONVERGENCE.stall_rounds
    ladder: tuple[Rung, ...] = (Rung.PreCopy, Rung.AutoConverge)
    #: AutoConverge's throttle: initial, step, max percent.
    throttle: tuple[float, float, float] = (CONVERGENCE.throttle_initial_percent, CONVERGENCE.throttle_step_percent,
                                            CONVERGENCE.throttle_max_percent)
    bandwidth_mbps: float | None = None
    parallel_migrations_per_cluster: int = 5
    parallel_outbound_per_host: int = 2
    progress_timeout_seconds: float = 150.0
    completion_timeout_per_gib_seconds: float = 150.0

    @property
    def allows_quick(self) -> bool:
        return Rung.Quick in self.ladder

    @property
    def allows_postcopy(self) -> bool:
        return Rung.PostCopy in self.ladder

    def convergence(self, max_downtime_ms: float | None = None) -> ConvergencePolicy:
        """The rules a live migration under this policy converges by, as the agent receives them.

        ``max_downtime_ms`` is the budget the migration carries (its own or its VM's; None: none).
        """
        return ConvergencePolicy(
            threshold_ms=self.threshold_ms, max_rounds=self.max_rounds, stall_rounds=self.stall_rounds,
            auto_converge=Rung.AutoConverge in self.ladder, throttle_initial_percent=self.throttle[0],
            throttle_step_percent=self.throttle[1], throttle_max_percent=self.throttle[2],
            fallback_to_quick=self.allows_quick, fallback_to_postcopy=self.allows_postcopy,
            max_downtime_ms=max_downtime_ms)

    def completion_timeout_seconds(self, memory_mib: float) -> float:
        """The whole migration's deadline for a guest of ``memory_mib`` (at least one GiB's worth)."""
        return self.completion_timeout_per_gib_seconds * max(memory_mib / 1024, 1.0)


#: What applies when no MigrationPolicy matches: Hyper-V's switchover threshold, QEMU's default
#: downtime budget, pre-copy then auto-converge; quick migration only when a policy allows it.
DEFAULT_POLICY = MigrationPolicyView(name="(default)")


def _specificity(
    policy: MigrationPolicyView, vm_labels: Mapping[str, str], namespace: str, namespace_labels: Mapping[str, str]
) -> tuple[int, int] | None:
    """(matched keys in all, matched namespace keys) if ``policy`` selects the VM, else None."""
    if policy.namespaces and namespace not in policy.namespaces:
        return None
    if not policy.namespace_selector.matches(namespace_labels):
        return None
    if not policy.vm_selector.matches(vm_labels):
        return None
    ns_keys = policy.namespace_selector.size + (1 if policy.namespaces else 0)
    return ns_keys + policy.vm_selector.size, ns_keys


def select_policy(
    vm_labels: Mapping[str, str],
    namespace: str,
    policies: Sequence[MigrationPolicyView],
    *,
    namespace_labels: Mapping[str, str] | None = None,
    requested: str | None = None,
) -> MigrationPolicyView | None:
    """The policy that governs a VM, or None when none matches (then :data:`DEFAULT_POLICY` applies).

    ``requested`` (the VM's ``spec.migration.policy``) wins when a policy of that name exists.
    Otherwise, among the matching policies, the highest ``precedence`` wins; then the most specific:
    the most selector terms (VM and namespace matchLabels pairs and matchExpressions, a namespace
    list counting as one),
    on a tie the one with more namespace keys; then the name, alphabetically first. Input order
    never matters.
    """
    if requested is not None:
        named = sorted((p for p in policies if p.name == requested), key=lambda p: repr(p))
        if named:
            return named[0]
    ns_labels = namespace_labels or {}
    best: tuple[tuple[int, int, int, str], MigrationPolicyView] | None = None
    for policy in policies:
        spec = _specificity(policy, vm_labels, namespace, ns_labels)
        if spec is None:
            continue
        key = (-policy.precedence, -spec[0], -spec[1], policy.name)
        if best is None or key < best[0]:
            best = (key, policy)
    return best[1] if best is not None else None


def downtime_budget_ms(migration_ms: float | None, vm_ms: float | None, policy: MigrationPolicyView | None) -> float:
    """The pause a migration may cause, as sent to the source agent: the migration's
    spec.maxDowntimeMs, else the VM's spec.migration.maxDowntimeMs, else its policy's (the
    defaults' 300 ms when no policy selects it)."""
    for value in (migration_ms, vm_ms):
        if value:
            return float(value)
    return (policy or DEFAULT_POLICY).max_downtime_ms


@dataclass(frozen=True)
class ModeChoice:
    """The mode a migration uses, or ``mode=None`` with the reason it cannot run."""

    mode: MigrationMode | None
    message: str
    reason: FailureReason | None = None
    expected_seconds: float | None = None
    expected_downtime_ms: float | None = None


def migration_bandwidth_mbps(policy: MigrationPolicyView, *links_mbps: float) -> float:
    """The rate one migration can get: the slowest of the links it crosses and the policy's cap."""
    rates = [r for r in (*links_mbps, policy.bandwidth_mbps) if r is not None and r > 0]
    return min(rates) if rates else 10_000.0


def predict_live(vm: VMView, policy: MigrationPolicyView, bandwidth_mbps: float) -> PrecopyPrediction:
    """The pre-copy model's prediction for moving ``vm`` live, alone, at ``bandwidth_mbps`` under ``policy`` (pure)."""
    return predict_precopy(
        max(vm.memory_mib, 1),
        vm.dirty_rate_mibps,
        vm.working_set_mib,
        bandwidth_mbps,
        threshold_ms=policy.threshold_ms,
        max_rounds=policy.max_rounds,
        stall_rounds=policy.stall_rounds,
    )


def choose_mode(
    requested: MigrationMode | str,
    vm: VMView,
    policy: MigrationPolicyView | None,
    problems: list[Problem],
    *,
    bandwidth_mbps: float | None = None,
) -> ModeChoice:
    """Live or Quick for this migration, and why.

    ``problems`` are :func:`check_target`'s for the chosen target; transient ones (busy slots) are
    the queue's business and ignored here. ``Auto`` picks live migration when it can, and quick
    migration when live cannot (a local disk) and the policy's ladder allows ``Quick``.
    ``bandwidth_mbps`` (the link rate) only feeds the estimates in the message.
    """
    policy = policy or DEFAULT_POLICY
    mode = MigrationMode(requested)
    rate = migration_bandwidth_mbps(policy, *(x for x in (bandwidth_mbps,) if x is not None))
    hard = blocking(problems, quick=True)
    if hard:
        return ModeChoice(None, hard[0].message, hard[0].reason)
    live_blockers = [p for p in problems if p.live_only and not p.transient]
    quick_seconds = quick_migration_seconds(vm.memory_mib + vm.local_disk_mib, rate)
    quick_note = f"the guest pauses for about {quick_seconds:.1f} s while its state is copied"

    if mode is MigrationMode.Quick:
        return ModeChoice(
            MigrationMode.Quick,
            f"Quick migration as requested: {quick_note}.",
            expected_seconds=quick_seconds,
            expected_downtime_ms=quick_seconds * 1000,
        )
    if not live_blockers:
        live = predict_live(vm, policy, rate)
        origin = "as requested" if mode is MigrationMode.Live else "chosen by Auto"
        if live.converges:
            detail = f"expected about {live.total_seconds:.1f} s with about {live.downtime_ms:.1f} ms of downtime"
        else:
            ladder = ", ".join(r.value for r in policy.ladder)
            detail = (
                f"at {rate:.0f} Mbps the guest's dirty rate ({vm.dirty_rate_mibps:.0f} MiB/s) may keep "
                f"pre-copy from converging; policy {policy.name} then follows its ladder ({ladder})"
            )
        return ModeChoice(
            MigrationMode.Live,
            f"Live migration {origin}: {detail}.",
            expected_seconds=live.total_seconds,
            expected_downtime_ms=live.downtime_ms,
        )
    why = live_blockers[0].message
    if mode is MigrationMode.Live:
        return ModeChoice(None, f"{why} (mode Live was requested)", live_blockers[0].reason)
    if policy.allows_quick:
        return ModeChoice(
            MigrationMode.Quick,
            f"Quick migration chosen by Auto because live migration cannot move {vm.name}: "
            f"{_reason_tail(why)} Policy {policy.name} allows Quick; {quick_note}.",
            expected_seconds=quick_seconds,
            expected_downtime_ms=quick_seconds * 1000,
        )
    ladder = ", ".join(r.value for r in policy.ladder)
    return ModeChoice(
        None,
        f"{why} Live migration is impossible and policy {policy.name} does not allow Quick (its ladder is "
        f"{ladder}); add Quick to the policy's ladder or request mode Quick.",
        live_blockers[0].reason,
    )


def _reason_tail(message: str) -> str:
    """The part of a refusal after ``... refused: `` (the reason itself)."""
    marker = "refused: "
    return message.split(marker, 1)[1] if marker in message else message


# --- which VMs each policy governs, and the policy's status ------------------------------------------


@dataclass(frozen=True)
class PolicySubject:
    """A VM as policy selection sees it: where it lives, its labels and the policy it names."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    requested: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def governed(
    policies: Sequence[MigrationPolicyView],
    vms: Iterable[PolicySubject],
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> dict[str, list[str]]:
    """Policy name -> the VMs (``namespace/name``, sorted) it governs: those for which
    :func:`select_policy` answers it. Every policy has an entry, empty when it governs none."""
    out: dict[str, list[str]] = {p.name: [] for p in policies}
    for vm in vms:
        chosen = select_policy(vm.labels, vm.namespace, policies, requested=vm.requested,
                               namespace_labels=namespace_labels.get(vm.namespace, {}))
        if chosen is not None:
            out[chosen.name].append(vm.key)
    return {name: sorted(keys) for name, keys in out.items()}


#: How many governed VMs a policy's status names.
LISTED_VMS = 20


def migration_policy_status(
    policy: MigrationPolicyView, vms: Sequence[str], generation: int, previous: Mapping[str, Any]
) -> dict[str, Any]:
    """A MigrationPolicy's status (pure): accepted (Ready) and the VMs it governs now."""
    shown = ", ".join(vms[:LISTED_VMS]) + (f" and {len(vms) - LISTED_VMS} more" if len(vms) > LISTED_VMS else "")
    selects = f"VMs whose labels match {policy.vm_selector.describe()}"
    if policy.namespaces:
        selects += f" in namespaces {', '.join(policy.namespaces)}"
    if not policy.namespace_selector.empty:
        selects += f" in namespaces labelled {policy.namespace_selector.describe()}"
    if vms:
        reason = "Accepted"
        message = f"MigrationPolicy {policy.name} governs {len(vms)} VM(s): {shown}."
    else:
        reason = "NoVirtualMachinesSelected"
        message = (f"MigrationPolicy {policy.name} is accepted but governs no VM now (it selects {selects}; "
                   f"a policy of higher precedence or a VM's spec.migration.policy may win). Check its selector.")
    conditions = cond.ready(previous.get("conditions") or [], True, reason, message, observed_generation=generation)
    conditions = cond.reconciling(conditions, False, reason, message, observed_generation=generation)
    conditions = cond.stalled(conditions, False, reason, message, observed_generation=generation)
    return MigrationPolicyStatus(
        observedGeneration=generation,
        selectedVirtualMachines=len(vms),
        selected=list(vms[:LISTED_VMS]),
        conditions=conditions,
    ).to_api()
