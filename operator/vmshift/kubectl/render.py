"""How the plugin shows things: lines, table rows and the live progress view. Pure: no I/O.

Functions here turn API objects (plain dicts) and the scheduler's answers into text, table rows or
``rich`` renderables; ``output`` decides where they go and whether they get colour.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from vmshift.kubectl.decide import created_key, phase_of

if TYPE_CHECKING:  # the fleet view loads the scheduler; only why and drain --dry-run need it
    from vmshift.kubectl.fleetview import Why
    from vmshift.scheduling.moves import DrainPlan

Row = list[str]


def mib(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.2f} GiB" if value >= 10240 else f"{value:.1f} MiB"


def seconds(value: float | None) -> str:
    """``0.4 s``, ``12 s``, ``3m 05s``, ``1h 02m``."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.1f} s"
    total = round(value)
    if total < 60:
        return f"{total} s"
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {total % 3600 // 60:02d}m"


def age(timestamp: str | None, now: datetime) -> str:
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "-"
    delta = max((now - then).total_seconds(), 0)
    if delta < 120:
        return f"{delta:.0f}s"
    if delta < 7200:
        return f"{delta // 60:.0f}m"
    if delta < 172800:
        return f"{delta // 3600:.0f}h"
    return f"{delta // 86400:.0f}d"


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- migrate --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationView:
    """A migration's status as the progress view shows it."""

    name: str
    vm: str
    phase: str
    source: str | None
    target: str | None
    mode: str | None
    percent: int | None
    round: int | None
    sent_mib: float | None
    left_mib: float | None
    dirty_mibps: float | None
    link_mbps: float | None
    eta_seconds: float | None
    throttle_percent: int | None

    @classmethod
    def of(cls, migration: Mapping[str, Any]) -> MigrationView:
        status = migration.get("status") or {}
        p = status.get("progress") or {}
        phase = phase_of(migration)
        percent = p.get("percent")
        if phase.value == "Succeeded":
            percent = 100
        return cls(name=migration["metadata"]["name"], vm=(migration.get("spec") or {}).get("vmName", ""),
                   phase=phase.value, source=status.get("sourceHost"),
                   target=status.get("targetHost") or (migration.get("spec") or {}).get("targetHost"),
                   mode=status.get("mode"), percent=percent, round=p.get("round"),
                   sent_mib=p.get("transferredMiB"), left_mib=p.get("remainingMiB"),
                   dirty_mibps=p.get("dirtyRateMiBps"), link_mbps=p.get("throughputMbps"),
                   eta_seconds=p.get("etaSeconds"), throttle_percent=p.get("throttlePercent"))

    @property
    def route(self) -> str:
        return f"{self.source or '?'} → {self.target or '(scheduler picks)'}"

    def details(self) -> str:
        """Round, MiB sent and left, dirty rate, link rate (what a person watches during pre-copy)."""
        if self.round is None and self.sent_mib is None:
            return ""
        parts = [f"round {self.round if self.round is not None else 0}", f"{mib(self.sent_mib)} sent",
                 f"{mib(self.left_mib)} left", f"dirty {self.dirty_mibps or 0:.1f} MiB/s",
                 f"link {(self.link_mbps or 0) / 1000:.2f} Gbps"]
        if self.throttle_percent:
            parts.append(f"throttled {self.throttle_percent}%")
        return " · ".join(parts)

    def eta(self) -> str:
        return f"ETA {seconds(self.eta_seconds)}" if self.eta_seconds is not None else "ETA -"


def progress_line(view: MigrationView) -> str:
    """One plain line per change, for logs (no terminal)."""
    line = f"{view.phase:<13} {view.percent if view.percent is not None else 0:3d}%"
    details = view.details()
    if details:
        line += f"  {details}  {view.eta()}"
    return line


def progress_renderable(view: MigrationView) -> RenderableType:
    """The live view on a terminal: a heading, a bar with percentage and ETA, and the transfer's numbers."""
    heading = Text.assemble((f"{view.vm}", "bold"), f"  {view.route}  ",
                            (view.mode or "", "cyan"), "  ", (view.phase, "yellow"))
    percent = view.percent or 0
    bar = Table.grid(padding=(0, 1))
    bar.add_column(width=40)
    bar.add_column(justify="right", width=4)
    bar.add_column()
    bar.add_row(ProgressBar(total=100, completed=percent, width=40), f"{percent}%", view.eta())
    return Group(heading, bar, Text(view.details() or "waiting for the transfer to start", style="dim"))


def outcome_lines(migration: Mapping[str, Any]) -> list[str]:
    """How a finished migration ended: downtime and memory check, or the reason and what to do."""
    status = migration.get("status") or {}
    view = MigrationView.of(migration)
    name = f"{migration['metadata'].get('namespace', '')}/{view.name}".lstrip("/")
    if view.phase == "Succeeded":
        verified = status.get("memoryVerified")
        check = ("memory verified (digests match)" if verified else
                 "memory NOT verified" if verified is False else "memory not checked")
        rounds = len(status.get("rounds") or [])
        return [f"Succeeded: {view.vm} now runs on {view.target} ({view.mode or 'Auto'} migration from {view.source},"
                f" {rounds} round{'s' if rounds != 1 else ''}, {seconds((status.get('durationMs') or 0) / 1000)}).",
                f"Downtime {status.get('downtimeMs', 0):.1f} ms; {check}."]
    failure = status.get("failure") or {}
    reason = failure.get("reason") or view.phase
    lines = [f"{view.phase} ({reason}): migration {name} of {view.vm} did not complete; the VM stays on "
             f"{view.source or 'its host'}."]
    if failure.get("message"):
        lines.append(str(failure["message"]))
    if view.phase == "Failed":
        lines.append(f"See which hosts could take it: kubectl vmshift why {view.vm}")
    return lines


def history_rows(migrations: Iterable[Mapping[str, Any]], now: datetime) -> list[Row]:
    rows = []
    for m in sorted(migrations, key=created_key, reverse=True):
        status = m.get("status") or {}
        failure = status.get("failure") or {}
        downtime = status.get("downtimeMs")
        rows.append([m["metadata"]["name"], phase_of(m).value, status.get("sourceHost") or "-",
                     status.get("targetHost") or (m.get("spec") or {}).get("targetHost") or "-",
                     status.get("mode") or (m.get("spec") or {}).get("mode") or "-",
                     f"{downtime:.1f} ms" if downtime is not None else "-",
                     seconds(status["durationMs"] / 1000) if status.get("durationMs") is not None else "-",
                     failure.get("reason") or "-", age(m["metadata"].get("creationTimestamp"), now)])
    return rows


HISTORY_COLUMNS = ["MIGRATION", "PHASE", "FROM", "TO", "MODE", "DOWNTIME", "TOOK", "REASON", "AGE"]


# --- top / status ---------------------------------------------------------------------------------

HOST_COLUMNS = ["HOST", "PHASE", "CPU", "VMS", "CPUS USED", "MEMORY USED", "IN", "OUT", "DRAIN"]
MOVING_COLUMNS = ["NAMESPACE", "VM", "MIGRATION", "PHASE", "FROM", "TO", "PROGRESS", "ETA"]


def host_rows(hosts: Iterable[Mapping[str, Any]]) -> list[Row]:
    rows = []
    for h in sorted(hosts, key=lambda h: h["metadata"]["name"]):
        spec, status = h.get("spec") or {}, h.get("status") or {}
        used = status.get("allocated") or {}
        migrations = status.get("migrations") or {}
        drain = status.get("drain") or {}
        memory = int(spec.get("memoryMiB") or 0)
        share = f" ({100 * int(used.get('memoryMiB') or 0) / memory:.0f}%)" if memory else ""
        drain_text = (f"{drain.get('state')} {drain.get('moved', 0)}/{drain.get('total', 0)}"
                      if drain.get("trigger") else "-")
        rows.append([h["metadata"]["name"], status.get("phase") or "-", (spec.get("cpu") or {}).get("model", "-"),
                     str(status.get("vms") or 0),
                     f"{used.get('cpus') or 0}/{(spec.get('cpu') or {}).get('cores', 0)}",
                     f"{_memory(float(used.get('memoryMiB') or 0), memory)} of {mib(float(memory))}{share}",
                     str(migrations.get("inbound") or 0), str(migrations.get("outbound") or 0), drain_text])
    return rows


def _memory(value: float, total: float) -> str:
    """``value`` in the unit ``mib`` picks for ``total``, so a column reads 4.50 GiB of 64.00 GiB."""
    return f"{value / 1024:.2f} GiB" if total >= 10240 else mib(value)


def moving_rows(migrations: Iterable[Mapping[str, Any]]) -> list[Row]:
    rows = []
    for m in sorted(migrations, key=created_key):
        if phase_of(m).finished:
            continue
        view = MigrationView.of(m)
        rows.append([m["metadata"]["namespace"], view.vm, view.name, view.phase, view.source or "-",
                     view.target or "-", f"{view.percent or 0}%",
                     seconds(view.eta_seconds) if view.eta_seconds is not None else "-"])
    return rows


# --- drain ----------------------------------------------------------------------------------------

PLAN_COLUMNS = ["ORDER", "VM", "PRIORITY", "TARGET", "MODE", "SHARE", "RATE", "SENDS", "START", "FINISH"]


def plan_rows(plan: DrainPlan) -> list[Row]:
    total_weight = sum(m.weight for m in plan.moves[: max(plan.parallelism, 1)]) or 1.0
    rows = []
    for m in plan.moves:
        share = m.weight / total_weight if plan.parallelism > 1 else 1.0
        rows.append([str(m.order + 1), m.vm, str(m.priority), m.target, m.mode.value, f"{100 * min(share, 1.0):.0f}%",
                     f"{m.bandwidth_mbps:.0f} Mbps", mib(m.expected_transfer_mib), seconds(m.expected_start),
                     seconds(m.expected_finish)])
    return rows


def plan_summary(plan: DrainPlan) -> list[str]:
    lines = [f"Drain plan for {plan.host} (dry run: nothing was changed): {len(plan.moves)} to move, "
             f"{len(plan.blocked)} blocked" + (f", {len(plan.skipped)} skipped (already migrating)"
                                              if plan.skipped else "") + "."]
    if plan.moves:
        ratio = plan.expected_makespan_seconds / plan.lower_bound_seconds if plan.lower_bound_seconds else 1.0
        lines.append(f"Strategy: {plan.strategy}. Expected makespan {seconds(plan.expected_makespan_seconds)}; "
                     f"no schedule can beat {seconds(plan.lower_bound_seconds)} (lower bound; plan at "
                     f"{ratio:.2f}x).")
    for b in plan.blocked:
        lines.append(f"Blocked {b.vm} ({b.reason.value}): {b.message}")
    return lines


def plan_data(plan: DrainPlan) -> dict[str, Any]:
    return {
        "host": plan.host, "strategy": plan.strategy, "parallelism": plan.parallelism,
        "expectedMakespanSeconds": round(plan.expected_makespan_seconds, 3),
        "lowerBoundSeconds": round(plan.lower_bound_seconds, 3),
        "moves": [{"order": m.order + 1, "vm": m.vm, "priority": m.priority, "target": m.target,
                   "mode": m.mode.value, "weight": m.weight, "bandwidthMbps": m.bandwidth_mbps,
                   "expectedTransferMiB": m.expected_transfer_mib,
                   "expectedStartSeconds": round(m.expected_start, 3),
                   "expectedFinishSeconds": round(m.expected_finish, 3), "alternates": list(m.alternates)}
                  for m in plan.moves],
        "blocked": [{"vm": b.vm, "reason": b.reason.value, "message": b.message} for b in plan.blocked],
        "skipped": list(plan.skipped),
    }


def drain_line(host: Mapping[str, Any]) -> str:
    name = host["metadata"]["name"]
    status = host.get("status") or {}
    drain = status.get("drain") or {}
    if not drain:
        return f"{name}: {status.get('phase') or 'Pending'}, the drain has not started yet"
    return (f"{name}: {status.get('phase') or '-'}, drain {drain.get('state') or 'Pending'}: "
            f"{drain.get('moved', 0)} of {drain.get('total', 0)} moved, {drain.get('inFlight', 0)} in flight, "
            f"{drain.get('failed', 0)} failed attempt(s), {len(drain.get('blocked') or [])} blocked")


def blocked_lines(host: Mapping[str, Any]) -> list[str]:
    drain = (host.get("status") or {}).get("drain") or {}
    return [f"Blocked {b.get('vm')} ({b.get('reason')}): {b.get('message')}" for b in drain.get("blocked") or []]


# --- why ------------------------------------------------------------------------------------------

WHY_COLUMNS = ["HOST", "CAN TAKE IT", "REASONS", "WHY NOT"]


def why_lines(answer: Why) -> list[str]:
    where = f"{answer.namespace}/{answer.vm} runs on {answer.host}" if answer.host else \
        f"{answer.namespace}/{answer.vm} runs on no host"
    if answer.desired_host:
        pinned = "where" if answer.desired_host == answer.host else "but"
        where += f", {pinned} spec.placement.host asks for {answer.desired_host}"
    m = answer.migratable
    return [where + ".", f"Migratable={'True' if m.migratable else 'False'} ({m.reason}): {m.message}"]


def why_rows(answer: Why) -> list[Row]:
    rows = []
    for v in answer.verdicts:
        if v.ok:
            can = "yes, waits for a slot" if v.waits else "yes"
        else:
            can = "quick only" if v.quick_only else "no"
        reasons = ", ".join(r.value for r in v.reasons) or "-"
        text = " ".join(_strip_prefix(p.message) for p in v.problems) or "-"
        rows.append([v.host, can, reasons, text])
    return rows


def why_data(answer: Why) -> dict[str, Any]:
    return {"vm": f"{answer.namespace}/{answer.vm}", "host": answer.host, "desiredHost": answer.desired_host,
            "migratable": {"status": answer.migratable.migratable, "reason": answer.migratable.reason,
                           "message": answer.migratable.message, "hosts": answer.migratable.hosts},
            "hosts": [{"host": v.host, "canTakeIt": v.ok, "waitsForSlot": v.waits, "quickOnly": v.quick_only,
                       "problems": [{"reason": p.reason.value, "message": p.message} for p in v.problems]}
                      for v in answer.verdicts]}


def _strip_prefix(message: str) -> str:
    """Drop the ``Migration vm -> host refused: `` prefix a problem's message starts with (the row names both)."""
    head, sep, tail = message.partition(" refused: ")
    return tail if sep and head.startswith("Migration ") else message


# --- import ---------------------------------------------------------------------------------------


def import_step_lines(status: Mapping[str, Any], shown: Sequence[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Steps whose state changed since ``shown`` (step, state) pairs: (step, state, message)."""
    out = []
    for step in status.get("steps") or []:
        key = (str(step.get("name")), str(step.get("state")))
        if key not in shown and key[1] != "Pending":
            out.append((key[0], key[1], str(step.get("message") or "")))
    return out
