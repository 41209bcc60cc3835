"""The plugin's commands: each reads objects, calls the pure functions that decide and format, and acts.

Thin by design: decisions live in ``decide`` and ``fleetview``, wording in ``render``. Each command
takes a :class:`Context` and returns the process's exit status (``decide.EXIT_*``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vmshift.api.labels import EVACUATION_LABEL
from vmshift.kubectl import decide, render
from vmshift.kubectl.client import ApiServerError, Cluster
from vmshift.kubectl.decide import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from vmshift.kubectl.output import Output

#: Seconds between two reads of an object being followed (the operator writes status about once a second).
POLL_SECONDS = 0.4
#: How long cancel, undrain and release wait for the operator to act before they say it has not yet.
SETTLE_SECONDS = 60.0

MIGRATION = "VirtualMachineMigration"
VM = "VirtualMachine"
HOST = "Host"


@dataclass
class Context:
    cluster: Cluster
    out: Output
    args: argparse.Namespace

    @property
    def ns(self) -> str:
        return self.cluster.namespace

    def wait_wanted(self) -> bool:
        """--wait / --no-wait, else wait when a person is watching (stdout is a terminal)."""
        wanted: bool | None = getattr(self.args, "wait", None)
        return self.out.terminal if wanted is None else wanted


def _vm(ctx: Context, name: str) -> dict[str, Any]:
    vm = ctx.cluster.get(VM, name, ctx.ns)
    if vm is None:
        raise UsageError(f"there is no VirtualMachine named {name} in namespace {ctx.ns} "
                         f"(kubectl get vsvm -n {ctx.ns}; -n chooses another namespace)")
    return vm


def _host(ctx: Context, name: str) -> dict[str, Any]:
    host = ctx.cluster.get(HOST, name)
    if host is None:
        raise UsageError(f"there is no Host named {name} (kubectl get hosts lists them)")
    return host


def _poll(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        value = read()
    return value


@contextlib.contextmanager
def _live(out: Output) -> Iterator[Live | None]:
    if not out.terminal or out.structured:
        yield None
        return
    with Live(console=out.console, refresh_per_second=8, transient=False) as live:
        yield live


# --- migrate, cancel, history -----------------------------------------------------------------------


def migrate(ctx: Context) -> int:
    args = ctx.args
    mode = decide.parse_mode(args.mode)
    downtime = decide.parse_downtime_ms(args.max_downtime) if args.max_downtime else None
    vm = _vm(ctx, args.vm)
    if args.to:
        _host(ctx, args.to)
    busy = decide.active_migration(ctx.cluster.objects(MIGRATION, ctx.ns), args.vm)
    if busy is not None:
        raise UsageError(f"{args.vm} is already migrating (migration {busy['metadata']['name']}, "
                         f"{decide.phase_of(busy).value}); wait for it or run kubectl vmshift cancel {args.vm}")
    body = decide.migration_body(args.vm, ctx.ns, target=args.to, mode=mode, max_downtime_ms=downtime,
                                 reason=args.reason)
    created = ctx.cluster.create(MIGRATION, body)
    name = created["metadata"]["name"]
    source = (vm.get("status") or {}).get("host") or "its host"
    ctx.out.line(f"Migration {ctx.ns}/{name} created: {args.vm} from {source} to "
                 f"{args.to or 'the best compatible host'} ({mode.value}"
                 + (f", at most {downtime} ms of downtime" if downtime else "") + ").")
    if not ctx.wait_wanted():
        ctx.out.line(f"Follow it with: kubectl get vsmig {name} -n {ctx.ns} -w")
        return EXIT_OK
    return follow_migration(ctx, name)


def follow_migration(ctx: Context, name: str) -> int:
    """Show the migration's progress until it ends; Ctrl-C asks whether to cancel it or stop watching."""
    out = ctx.out
    migration: dict[str, Any] | None = None
    try:
        with _live(out) as live:
            shown = ""
            while True:
                migration = ctx.cluster.get(MIGRATION, name, ctx.ns)
                if migration is None:
                    raise ApiServerError(f"migration {ctx.ns}/{name} was deleted before it ended (a delete cancels it)")
                view = render.MigrationView.of(migration)
                if live is not None:
                    live.update(render.progress_renderable(view))
                else:
                    line = render.progress_line(view)
                    if line != shown:
                        out.line(line)
                        shown = line
                if decide.phase_of(migration).finished:
                    break
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return _interrupted(ctx, name)
    for line in render.outcome_lines(migration):
        out.line(line, style="green" if decide.phase_of(migration).value == "Succeeded" else "red")
    return decide.exit_status(decide.phase_of(migration))


def _interrupted(ctx: Context, name: str) -> int:
    out = ctx.out
    answer = "d"
    if sys.stdin.isatty():
        try:
            answer = out.console.input(f"\nCancel migration {name} ([bold]c[/]) or stop watching and leave it "
                                       f"running ([bold]d[/])? [c/d] ").strip().lower()[:1]
        except (KeyboardInterrupt, EOFError):
            answer = "d"
    if answer == "c":
        _cancel_and_report(ctx, name)
        return EXIT_INTERRUPTED
    out.line(f"Stopped watching; migration {ctx.ns}/{name} goes on. Watch it with kubectl get vsmig {name} -n "
             f"{ctx.ns} -w; cancel it with kubectl vmshift cancel {name} -n {ctx.ns}.")
    return EXIT_OK


def _cancel_and_report(ctx: Context, name: str) -> int:
    """Delete the migration (the operator cancels it on the agents and the VM stays), wait until it is
    gone, and say how it ended."""
    before = ctx.cluster.get(MIGRATION, name, ctx.ns)
    vm_name = ((before or {}).get("spec") or {}).get("vmName", "")
    ctx.cluster.delete(MIGRATION, name, ctx.ns)
    ctx.out.line(f"Cancelling migration {ctx.ns}/{name} of {vm_name}...")
    gone = _poll(lambda: ctx.cluster.get(MIGRATION, name, ctx.ns), lambda m: m is None, SETTLE_SECONDS)
    if gone is not None:
        ctx.out.error(f"migration {ctx.ns}/{name} still exists after {SETTLE_SECONDS:.0f} s "
                      f"({decide.phase_of(gone).value}): is the operator running? It cancels on deletion.")
        return EXIT_FAILED
    vm = ctx.cluster.get(VM, vm_name, ctx.ns) if vm_name else None
    status = (vm or {}).get("status") or {}
    last = status.get("lastMigration") or {}
    if last.get("name") == name and last.get("result") == "Succeeded":
        ctx.out.line(f"Too late: {vm_name} had already moved to {last.get('targetHost')} (Succeeded).")
        return EXIT_FAILED
    ctx.out.line(f"Cancelled: {vm_name} stays on {status.get('host') or last.get('sourceHost') or 'its host'}.")
    return EXIT_OK


def cancel(ctx: Context) -> int:
    migrations = ctx.cluster.objects(MIGRATION, ctx.ns)
    vm_exists = ctx.cluster.get(VM, ctx.args.name, ctx.ns) is not None
    name = decide.cancel_target(ctx.args.name, ctx.ns, migrations, vm_exists)
    return _cancel_and_report(ctx, name)


def history(ctx: Context) -> int:
    migrations = decide.migrations_of(ctx.cluster.objects(MIGRATION, ctx.ns), ctx.args.vm)
    if not migrations:
        _vm(ctx, ctx.args.vm)
    ctx.out.table(render.HISTORY_COLUMNS, render.history_rows(migrations, render.now_utc()),
                  data=migrations, empty=f"{ctx.args.vm} has no migrations (the operator keeps the last few).")
    return EXIT_OK


# --- drain, undrain, cordon, uncordon, release -----------------------------------------------------


def drain(ctx: Context) -> int:
    host = _host(ctx, ctx.args.host)
    name = host["metadata"]["name"]
    if ctx.args.dry_run:
        return _dry_run(ctx, name)
    ctx.cluster.patch(HOST, name, {"spec": {"maintenance": True}})
    ctx.out.line(f"{name}: maintenance on; the operator cordons it and moves every VM away.")
    if not ctx.wait_wanted():
        ctx.out.line(f"Follow it with: kubectl vmshift top (or kubectl get host {name} -w)")
        return EXIT_OK
    return follow_drain(ctx, name)


def follow_drain(ctx: Context, name: str) -> int:
    out = ctx.out
    host: dict[str, Any] = {}
    try:
        with _live(out) as live:
            shown = ""
            while True:
                host = _host(ctx, name)
                line = render.drain_line(host)
                if live is not None:
                    moving = ctx.cluster.objects(MIGRATION, all_namespaces=True,
                                              label_selector=f"{EVACUATION_LABEL}={name}")
                    rows = render.moving_rows(moving)
                    table = Table(box=None, header_style="bold", pad_edge=False)
                    for column in render.MOVING_COLUMNS:
                        table.add_column(column)
                    for row in rows:
                        table.add_row(*row)
                    live.update(Group(Text(line), table) if rows else Text(line))
                elif line != shown:
                    out.line(line)
                    shown = line
                outcome = decide.drain_outcome(host, since=None)
                if outcome.done:
                    break
                time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        out.line(f"\nStopped watching; the drain of {name} goes on (kubectl vmshift undrain {name} stops it).")
        return EXIT_OK
    for line in render.blocked_lines(host):
        out.line(line, style="red")
    drained = decide.drain_outcome(host, since=None)
    if drained.status == EXIT_OK:
        out.line(f"{name} is drained: no VM left to move; it stays in maintenance until kubectl vmshift undrain "
                 f"{name}.", style="green")
    else:
        out.line(f"The drain of {name} is Blocked: the VMs above cannot move. Fix what each message says, or "
                 f"undrain {name}.", style="red")
    return drained.status


def _dry_run(ctx: Context, name: str) -> int:
    from vmshift.kubectl.fleetview import dry_run_drain  # the scheduler: loaded only where it is needed

    c = ctx.cluster
    try:
        plan = dry_run_drain(name, c.objects(HOST), c.objects(VM, all_namespaces=True),
                             c.objects(MIGRATION, all_namespaces=True), c.objects("MigrationPolicy"))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if ctx.out.structured:
        ctx.out.data(render.plan_data(plan))
        return EXIT_OK
    lines = render.plan_summary(plan)
    ctx.out.line(lines[0])
    if plan.moves:
        ctx.out.table(render.PLAN_COLUMNS, render.plan_rows(plan))
    for line in lines[1:]:
        ctx.out.line(line)
    return EXIT_OK


def undrain(ctx: Context) -> int:
    name = _host(ctx, ctx.args.host)["metadata"]["name"]
    ctx.cluster.patch(HOST, name, {"spec": {"maintenance": False}})
    host = _poll(lambda: _host(ctx, name),
                 lambda h: (h.get("status") or {}).get("phase") not in ("Draining", "Maintenance"), SETTLE_SECONDS)
    phase = (host.get("status") or {}).get("phase")
    ctx.out.line(f"{name}: maintenance off; the host is {phase}.")
    return EXIT_OK


def _set_unschedulable(ctx: Context, value: bool) -> int:
    name = _host(ctx, ctx.args.host)["metadata"]["name"]
    ctx.cluster.patch(HOST, name, {"spec": {"unschedulable": value}})
    what = ("cordoned: no new VM or inbound migration; VMs there keep running" if value
            else "uncordoned: takes VMs again")
    ctx.out.line(f"{name}: {what}.")
    return EXIT_OK


def cordon(ctx: Context) -> int:
    return _set_unschedulable(ctx, True)


def uncordon(ctx: Context) -> int:
    return _set_unschedulable(ctx, False)


def release(ctx: Context) -> int:
    host = _host(ctx, ctx.args.host)
    name = host["metadata"]["name"]
    status = host.get("status") or {}
    policy_name = (status.get("remediation") or {}).get("policy")
    policy = ctx.cluster.get("RemediationPolicy", policy_name) if policy_name else None
    annotation = decide.release_annotation(name, status, policy)
    ctx.cluster.patch(HOST, name, {"metadata": {"annotations": {annotation: ctx.args.reason}}})
    ctx.out.line(f"{name}: set {annotation}={ctx.args.reason}; waiting for RemediationPolicy {policy_name} to "
                 f"release it...")
    after = _poll(lambda: _host(ctx, name), lambda h: not (h.get("status") or {}).get("remediation"),
                  SETTLE_SECONDS)
    after_status = after.get("status") or {}
    if after_status.get("remediation"):
        ctx.out.error(f"{name} is still held after {SETTLE_SECONDS:.0f} s: "
                      f"{(after_status['remediation'] or {}).get('message') or 'is the operator running?'}")
        return EXIT_FAILED
    last = after_status.get("lastRemediation") or {}
    ctx.out.line(f"Released ({last.get('reason')}): {last.get('message')}")
    return EXIT_OK


# --- why, top ---------------------------------------------------------------------------------------


def why_command(ctx: Context) -> int:
    from vmshift.kubectl.fleetview import fleet_of, why

    _vm(ctx, ctx.args.vm)
    c = ctx.cluster
    fleet = fleet_of(c.objects(HOST), c.objects(VM, all_namespaces=True), c.objects(MIGRATION, all_namespaces=True))
    answer = why(ctx.ns, ctx.args.vm, fleet)
    if ctx.out.structured:
        ctx.out.data(render.why_data(answer))
        return EXIT_OK
    for line in render.why_lines(answer):
        ctx.out.line(line)
    ctx.out.table(render.WHY_COLUMNS, render.why_rows(answer), empty="There is no other host.")
    return EXIT_OK


def top(ctx: Context) -> int:
    c = ctx.cluster
    hosts = c.objects(HOST)
    migrations = c.objects(MIGRATION, all_namespaces=True)
    host_rows = render.host_rows(hosts)
    moving = render.moving_rows(migrations)
    if ctx.out.structured:
        ctx.out.data({"hosts": [dict(zip(render.HOST_COLUMNS, r, strict=True)) for r in host_rows],
                      "moving": [dict(zip(render.MOVING_COLUMNS, r, strict=True)) for r in moving]})
        return EXIT_OK
    ctx.out.table(render.HOST_COLUMNS, host_rows, empty="No hosts.")
    ctx.out.line()
    ctx.out.table(render.MOVING_COLUMNS, moving, empty="No VM is being moved.")
    return EXIT_OK


# --- import ----------------------------------------------------------------------------------------


def import_command(ctx: Context) -> int:
    path = Path(ctx.args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    volume = ctx.args.volume or decide.choose_volume(ctx.cluster.objects(HOST))
    request = decide.import_request(path.name, data, namespace=ctx.ns, name=ctx.args.name, volume=volume,
                                    compatibility=ctx.args.compatibility)
    name = request.vm_import["metadata"]["name"]
    if ctx.cluster.get("VirtualMachineImport", name, ctx.ns) is not None:
        raise UsageError(f"VirtualMachineImport {ctx.ns}/{name} exists already: pass --name to choose another "
                         f"name, or delete it")
    if request.configmap is not None:
        ctx.cluster.apply_configmap(request.configmap)
        ctx.out.line(f"ConfigMap {ctx.ns}/{request.configmap['metadata']['name']} holds {path.name} "
                     f"({len(data)} bytes).")
    ctx.cluster.create("VirtualMachineImport", request.vm_import)
    ctx.out.line(f"VirtualMachineImport {ctx.ns}/{name} created: {request.kind} {path.name} -> VirtualMachine "
                 f"{ctx.ns}/{name} on volume {volume}.")
    if not ctx.wait_wanted():
        ctx.out.line(f"Follow it with: kubectl get vsimp {name} -n {ctx.ns} -w")
        return EXIT_OK
    shown: list[tuple[str, str]] = []
    status: dict[str, Any] = {}
    try:
        while True:
            current = ctx.cluster.get("VirtualMachineImport", name, ctx.ns)
            if current is None:
                raise ApiServerError(f"VirtualMachineImport {ctx.ns}/{name} was deleted before it ended")
            status = current.get("status") or {}
            for step, state, message in render.import_step_lines(status, shown):
                shown.append((step, state))
                ctx.out.line(f"  {step:<24} {state:<9} {message}",
                             style={"Failed": "red", "Succeeded": "green"}.get(state))
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        ctx.out.line(f"\nStopped watching; the import goes on (kubectl get vsimp {name} -n {ctx.ns} -w).")
        return EXIT_OK
    for warning in status.get("warnings") or []:
        ctx.out.warn(str(warning))
    if status.get("phase") == "Succeeded":
        vm = ctx.cluster.get(VM, name, ctx.ns) or {}
        ctx.out.line(f"Imported: VirtualMachine {ctx.ns}/{name} runs on {(vm.get('status') or {}).get('host')}.",
                     style="green")
        return EXIT_OK
    ctx.out.line(f"Import failed: {status.get('message')}", style="red")
    return EXIT_FAILED


def run(command: Callable[[Context], int], ctx: Context) -> int:
    """Run one command; a bad input or an API error becomes a message and an exit status."""
    try:
        return command(ctx)
    except UsageError as exc:
        ctx.out.error(str(exc))
        return EXIT_USAGE
    except ApiServerError as exc:
        ctx.out.error(str(exc))
        return EXIT_USAGE if exc.status in (400, 404, 409, 422) else EXIT_FAILED
