"""The QEMU driver: real Linux guests, one ``qemu-system-x86_64`` process each, driven through QMP.

Implements ``vmshift.hypervisor.driver.GuestDriver``. Runs QEMU and ``qemu-img`` and talks QMP
(the ``qemu.qmp`` client) over a UNIX socket per guest; reads the guest's serial console from the
file QEMU writes it to. Knows nothing of HTTP, tickets or the operator. The monitor's plumbing
(connect, quit, query-migrate read as progress) is monitor.py's, the command line cmdline.py's, the
console's console.py's, the qcow2 images disks.py's.

- **Processes**: ``start`` launches QEMU (machine ``q35``, the guest image's kernel and initramfs,
  ``-nodefaults``, the serial port into ``<work_dir>/<vm>/serial.log``), KVM when a probe guest
  boots under it, else TCG (accel.py; the choice and its reason are logged once). Under TCG the
  guest's RAM is 8 KiB over its definition, which keeps QEMU 7.2 from losing writes in a live
  migration (cmdline.TCG_RAM_PAD_KIB). ``stop`` quits the process (memory gone); the disks stay.
- **CPU**: the model of the ``CpuChoice`` the agent made (cpu.py), ``cpu_models`` is QEMU's
  ``query-cpu-definitions`` with what this host cannot run.
- **Disks**: each disk on a shared volume is a qcow2 overlay ``<shared_dir>/<volume>/<vm>-<disk>.qcow2``
  over an empty base image of the disk's size; the directory stands for the cluster shared volume,
  so source and target open the same file (QEMU hands the image over at switchover). A volume this
  host has no directory for, and pass-through LUNs, are refused; a local disk lives in the guest's
  work directory (and cannot move: the agent refuses that before a driver is asked).
- **Live migration**: QEMU's pre-copy over TCP. The target is started with ``-incoming defer``,
  then ``migrate-incoming tcp:<listen_host>:0`` (the port QEMU bound is read back from
  ``query-migrate``); the source gets ``migrate-set-capabilities`` (auto-converge, post-copy when
  allowed), ``migrate-set-parameters`` (downtime-limit, max-bandwidth) and ``migrate``.
  ``progress`` is ``query-migrate``: rounds are QEMU's dirty-sync-count, and the final
  ``downtime`` is QEMU's own measurement. The agent's ladder steps in through
  ``switch_to_postcopy`` (``migrate-start-postcopy``; the target always has ``postcopy-ram`` on, the
  source only when the policy allows it) and ``allow_downtime`` (a larger ``downtime-limit``: QEMU
  stops the guest, sends the rest, and the target runs it). A transfer that fails or is cancelled before it
  completes leaves QEMU running the guest on the source. Both sides open QEMU's return path, so
  the source completes only after the target loaded the state: a target that fails to load it
  makes the source fail the transfer and run the guest again. With ``pause_before_switchover`` QEMU
  stops at ``pre-switchover`` (the guest already paused) until ``continue_switchover``
  (``migrate-continue``). After a switch to post-copy a lost target leaves the source's QEMU in
  ``postcopy-paused``: progress says PostCopyPaused and the guest is kept paused, never resumed.
- **Quick migration**: ``save`` stops the guest and streams its state into a file (``migrate``
  to ``exec:cat > FILE``, QEMU 7.2 has no ``file:`` transport), leaving the paused source process
  alive; ``restore`` resumes that process (``cont``) on the same host, or on a target starts QEMU
  with ``-incoming defer`` and ``migrate-incoming exec:cat FILE``.
- **Console**: ``describe`` reads the end of the serial console for the workload's last tick
  (``details["tick"]``, ``details["regionMd5"]``): the guest's heartbeat, for the agent's VmInfo.
  When a guest leaves the host or is deleted, its console is kept in ``<work_dir>/consoles/<vm>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shlex
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu.qmp import ExecuteError, QMPClient, QMPError

from vmshift.devcluster.guestimage import GuestImage
from vmshift.hypervisor.driver import (
    CpuChoice,
    CpuModelOffer,
    DiskDescription,
    DriverError,
    GuestDescription,
    GuestDriver,
    IncomingEndpoint,
    MigrationParameters,
    SavedState,
    TransferPhase,
    TransferProgress,
)
from vmshift.hypervisor.protocol import DiskSpec, VmDefinition, VmState
from vmshift.hypervisor.qemu import accel
from vmshift.hypervisor.qemu import cpu as cpumodels
from vmshift.hypervisor.qemu.cmdline import command_line, die_with_parent, workload_params
from vmshift.hypervisor.qemu.console import CONSOLES, console_tail, keep_console, last_tick
from vmshift.hypervisor.qemu.disks import make_disks
from vmshift.hypervisor.qemu.monitor import (
    POLL_SECONDS,
    QUIT_SECONDS,
    RUNSTATES,
    connect,
    progress_of,
    quit_monitor,
)

log = logging.getLogger("vmshift.agent.qemu")

#: The smallest guest the Debian kernel and the workload boot in. Measured here (Debian 6.1 kernel, 2 MiB
#: initramfs, TCG): at 80 MiB the guest resets before it prints anything and QEMU (-no-reboot) exits 0
#: with an empty console; 88 MiB boots.
MIN_MEMORY_MIB = 88
SAVE_SECONDS = 120.0
#: ``max-bandwidth`` for "unlimited" (QEMU caps the parameter; 100 Gbit/s is beyond any link here).
UNLIMITED_BYTES_PER_SECOND = 12_500_000_000
#: QEMU's own default, set again when a migration names none (an earlier one's limit stays in QEMU otherwise).
DEFAULT_DOWNTIME_LIMIT_MS = 300
#: The largest ``downtime-limit`` QEMU accepts (its MAX_MIGRATE_DOWNTIME, 2000 s).
MAX_DOWNTIME_LIMIT_MS = 2_000_000


#: QEMU's own auto-converge throttle (its defaults), set again when a migration names none: an earlier
#: one's values stay in QEMU otherwise.
QEMU_THROTTLE = {"cpu-throttle-initial": 20, "cpu-throttle-increment": 10, "max-cpu-throttle": 99}


def throttle_settings(parameters: MigrationParameters) -> dict[str, int]:
    """The policy's auto-converge throttle as QEMU's ``migrate-set-parameters`` (whole percents, 1 to 99)."""
    out = dict(QEMU_THROTTLE)
    for name, value in (("cpu-throttle-initial", parameters.throttle_initial_percent),
                        ("cpu-throttle-increment", parameters.throttle_step_percent),
                        ("max-cpu-throttle", parameters.throttle_max_percent)):
        if value is not None:
            out[name] = max(1, min(99, round(value)))
    return out


@dataclass(frozen=True)
class QemuConfig:
    """One host's QEMU driver: where its files go, where the shared volumes are, what it boots."""

    work_dir: Path
    shared_dir: Path
    image: GuestImage
    accel: str = "auto"
    qemu: str = "qemu-system-x86_64"
    qemu_img: str = "qemu-img"
    listen_host: str = "127.0.0.1"


@dataclass
class _Guest:
    vm_id: str
    definition: VmDefinition
    directory: Path
    qmp_path: Path
    state: VmState = VmState.Defined
    cpu: CpuChoice | None = None
    process: asyncio.subprocess.Process | None = None
    qmp: QMPClient | None = None
    disks: tuple[DiskDescription, ...] = ()
    role: str | None = None  # "source" or "target" while a transfer is in flight
    saved: SavedState | None = None
    details: dict[str, str] = field(default_factory=dict)

    @property
    def serial(self) -> Path:
        return self.directory / "serial.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


class QemuDriver:
    """``GuestDriver`` over QEMU processes (see the module docstring)."""

    name = "qemu"

    def __init__(self, config: QemuConfig) -> None:
        self.config = config
        self._guests: dict[str, _Guest] = {}
        self._accel: accel.AccelChoice | None = None
        self._sockets = Path(tempfile.mkdtemp(prefix="vmshift-qmp-"))  # short: UNIX socket paths are <108 bytes
        self._models: list[CpuModelOffer] | None = None
        self._count = 0
        config.work_dir.mkdir(parents=True, exist_ok=True)

    # -- host ------------------------------------------------------------------------------------

    async def accelerator(self) -> accel.AccelChoice:
        """KVM or TCG for every guest of this driver, chosen (and logged) once."""
        if self._accel is None:
            image = self.config.image
            self._accel = await accel.choose(self.config.qemu, image.kernel, image.initrd, self.config.accel)
            log.info("QEMU guests run under %s: %s", self._accel.accel.value.upper(), self._accel.why)
        return self._accel

    async def cpu_models(self) -> list[CpuModelOffer]:
        if self._models is None:
            choice = await self.accelerator()
            path = self._sockets / "models.sock"
            proc = await asyncio.create_subprocess_exec(
                self.config.qemu, "-machine", f"none,accel={choice.accel.value}", "-nodefaults", "-no-user-config",
                "-display", "none", "-qmp", f"unix:{path},server=on,wait=off",
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
            try:
                qmp = await connect(proc, path, "the CPU model query")
                try:
                    answer = await qmp.execute("query-cpu-definitions")
                finally:
                    await quit_monitor(qmp)
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(proc.wait(), QUIT_SECONDS)
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            assert isinstance(answer, list)
            self._models = cpumodels.offers(answer)
        return list(self._models)

    async def close(self) -> None:
        """Quit every QEMU process this driver started (the agent is stopping)."""
        for guest in list(self._guests.values()):
            await self._quit(guest)
        shutil.rmtree(self._sockets, ignore_errors=True)

    # -- guests ----------------------------------------------------------------------------------

    def _guest(self, vm_id: str) -> _Guest:
        guest = self._guests.get(vm_id)
        if guest is None:
            raise DriverError(f"the QEMU driver has no VM {vm_id!r}; define it first")
        return guest

    async def _current(self, vm_id: str) -> _Guest:
        """The guest, its state read from QEMU first: a guest that arrived by migration runs without this
        driver being told (QEMU starts it when the transfer completes)."""
        await self.describe(vm_id)
        return self._guest(vm_id)

    def beat(self, vm_id: str) -> tuple[int, str] | None:
        guest = self._guests.get(vm_id)
        tick = last_tick(guest.serial) if guest is not None else None
        return (tick.n, tick.md5) if tick is not None else None

    def exited(self, vm_id: str) -> bool:
        guest = self._guests.get(vm_id)
        return guest is not None and guest.process is not None and guest.process.returncode is not None

    def last_words(self, vm_id: str) -> str:
        guest = self._guests.get(vm_id)
        return console_tail(guest.serial) if guest is not None else ""

    def console(self, vm_id: str) -> Path:
        """The file the guest's serial console is written to on this host."""
        return self._guest(vm_id).serial

    async def define(self, vm_id: str, definition: VmDefinition) -> GuestDescription:
        if definition.memory_mib < MIN_MEMORY_MIB:
            raise DriverError(f"VM {vm_id} has {definition.memory_mib} MiB of memory; a QEMU guest needs at least "
                              f"{MIN_MEMORY_MIB} MiB (the kernel and the workload's region)")
        existing = self._guests.get(vm_id)
        if existing is not None:
            if existing.alive:
                raise DriverError(f"VM {vm_id} is {existing.state.value} under QEMU; stop it before redefining it")
            existing.definition = definition
            existing.disks = await self._disks(existing.directory, vm_id, definition.disks)
            return self._describe(existing)
        directory = self.config.work_dir / vm_id
        directory.mkdir(parents=True, exist_ok=True)
        disks = await self._disks(directory, vm_id, definition.disks)
        self._count += 1
        guest = _Guest(vm_id, definition, directory, self._sockets / f"{self._count}-{vm_id[:40]}.qmp", disks=disks)
        self._guests[vm_id] = guest
        return self._describe(guest)

    async def start(self, vm_id: str, cpu: CpuChoice) -> GuestDescription:
        guest = await self._current(vm_id)
        if guest.alive:
            if guest.state is VmState.Running:
                return await self.describe(vm_id)
            raise DriverError(f"cannot start VM {vm_id}: it is {guest.state.value} (restore a saved VM instead)")
        await self._launch(guest, cpu, incoming=False)
        guest.state = VmState.Running
        log.info("started VM %s under QEMU (pid %s, cpu %s)", vm_id, guest.details.get("pid"), cpu.model)
        return await self.describe(vm_id)

    async def stop(self, vm_id: str) -> GuestDescription:
        guest = await self._current(vm_id)
        if guest.role is not None:
            raise DriverError(f"cannot stop VM {vm_id}: a migration ({guest.role}) is in flight; cancel it first")
        await self._quit(guest)
        guest.state = VmState.Stopped
        guest.saved = None
        return self._describe(guest)

    async def delete(self, vm_id: str) -> None:
        guest = self._guests.pop(vm_id, None)
        if guest is None:
            return
        await self._quit(guest)
        await asyncio.to_thread(keep_console, guest.serial, self.config.work_dir / CONSOLES / vm_id)
        shutil.rmtree(guest.directory, ignore_errors=True)

    async def describe(self, vm_id: str) -> GuestDescription:
        guest = self._guest(vm_id)
        if guest.alive and guest.qmp is not None and guest.state is not VmState.Saved:
            try:
                status = await self._execute(guest, "query-status")
            except DriverError:
                status = None
            if isinstance(status, dict):
                runstate = str(status.get("status"))
                guest.details["runstate"] = runstate
                mapped = RUNSTATES.get(runstate)
                if mapped is not None and not (guest.state is VmState.MigratedAway and mapped is VmState.Paused):
                    guest.state = mapped
                if guest.role == "target" and mapped is VmState.Running:  # the transfer completed: it is ours
                    guest.role = None
                    guest.details.pop("incoming", None)
        elif guest.process is not None and guest.process.returncode is not None and guest.state in (
                VmState.Running, VmState.Paused, VmState.Incoming):
            guest.details["exit"] = str(guest.process.returncode)
            guest.state = VmState.Stopped
        tick = await asyncio.to_thread(last_tick, guest.serial)
        if tick is not None:
            guest.details.update({"tick": str(tick.n), "regionMd5": tick.md5})
        return self._describe(guest)

    async def _disks(self, directory: Path, vm_id: str, disks: list[DiskSpec]) -> tuple[DiskDescription, ...]:
        return await make_disks(self.config.shared_dir, self.config.qemu_img, directory, vm_id, disks)

    def _describe(self, guest: _Guest) -> GuestDescription:
        d = guest.definition
        return GuestDescription(
            vm_id=guest.vm_id, state=guest.state, cpu_model=guest.cpu.model if guest.cpu else "",
            features=guest.cpu.features if guest.cpu else frozenset(), cpus=d.cpus, memory_mib=d.memory_mib,
            disks=guest.disks, details=dict(guest.details))

    # -- save and restore (quick migration) -----------------------------------------------------------

    async def save(self, vm_id: str, state_file: Path) -> SavedState:
        guest = await self._current(vm_id)
        if guest.state is not VmState.Running or not guest.alive:
            raise DriverError(f"cannot save VM {vm_id}: it is {guest.state.value} (only a running VM can be saved)")
        assert guest.cpu is not None
        await asyncio.to_thread(state_file.parent.mkdir, parents=True, exist_ok=True)
        # A throttled or capped live migration earlier leaves its parameters in QEMU: a save runs flat out.
        await self._capabilities(guest, {"return-path": False, "auto-converge": False, "postcopy-ram": False})
        await self._execute(guest, "migrate-set-parameters", {"max-bandwidth": UNLIMITED_BYTES_PER_SECOND})
        await self._execute(guest, "stop")
        try:
            await self._execute(guest, "migrate", {"uri": f"exec:cat > {shlex.quote(str(state_file))}"})
            progress = await self._wait_finished(guest, SAVE_SECONDS)
        except DriverError:
            await self._execute(guest, "cont")
            raise
        if progress.phase is not TransferPhase.Completed:
            await self._execute(guest, "cont")
            raise DriverError(f"saving VM {vm_id} to {state_file} failed: {progress.error or progress.phase.value}; "
                              "it keeps running")
        guest.state = VmState.Saved
        size = (await asyncio.to_thread(state_file.stat)).st_size
        guest.saved = SavedState(path=state_file, size_bytes=size, cpu=guest.cpu)
        guest.details["savedTo"] = str(state_file)
        return replace(guest.saved)

    async def restore(self, vm_id: str, saved: SavedState) -> GuestDescription:
        """Resume from ``saved``: ``cont`` when this host's paused process saved it, else a new QEMU
        with the CPU it was saved with, reading the file."""
        guest = self._guest(vm_id)
        if guest.alive and guest.saved is not None and guest.saved.path == saved.path:
            await self._execute(guest, "cont")
            guest.state = VmState.Running
            guest.saved = None
            return await self.describe(vm_id)
        if guest.alive:
            raise DriverError(f"cannot restore VM {vm_id} here: it is {guest.state.value}")
        if not saved.path.is_file():
            raise DriverError(f"cannot restore VM {vm_id}: its saved state {saved.path} is not reachable from "
                              "this host (is the shared volume mounted?)")
        await self._launch(guest, saved.cpu, incoming=True)
        guest.state = VmState.Incoming
        try:
            await self._execute(guest, "migrate-incoming", {"uri": f"exec:cat {shlex.quote(str(saved.path))}"})
            progress = await self._wait_finished(guest, SAVE_SECONDS)
            if progress.phase is not TransferPhase.Completed:
                raise DriverError(f"restoring VM {vm_id} from {saved.path} failed: "
                                  f"{progress.error or progress.phase.value}")
            status = await self._execute(guest, "query-status")
            if isinstance(status, dict) and status.get("status") != "running":
                await self._execute(guest, "cont")
        except DriverError:
            await self._quit(guest)
            guest.state = VmState.Defined
            raise
        guest.state = VmState.Running
        return await self.describe(vm_id)

    # -- live migration -------------------------------------------------------------------------------

    async def prepare_incoming(self, vm_id: str, definition: VmDefinition, cpu: CpuChoice,
                               parameters: MigrationParameters) -> IncomingEndpoint:
        guest = self._guests.get(vm_id)
        if guest is not None and guest.alive:
            raise DriverError(f"VM {vm_id} already runs here under QEMU ({guest.state.value}); it cannot receive "
                              "another copy")
        await self.define(vm_id, definition)
        guest = self._guest(vm_id)
        await self._launch(guest, cpu, incoming=True)
        guest.state = VmState.Incoming
        guest.role = "target"
        try:
            await self._capabilities(guest, {"return-path": True, "postcopy-ram": parameters.postcopy_allowed})
            await self._execute(guest, "migrate-incoming", {"uri": f"tcp:{self.config.listen_host}:0"})
            port = await self._incoming_port(guest)
        except DriverError:
            await self.abort_incoming(vm_id)
            raise
        guest.details["incoming"] = f"{self.config.listen_host}:{port}"
        return IncomingEndpoint(host=self.config.listen_host, port=port)

    async def _incoming_port(self, guest: _Guest) -> int:
        answer = await self._execute(guest, "query-migrate")
        addresses = answer.get("socket-address") if isinstance(answer, dict) else None
        for address in addresses or ():
            if address.get("type") == "inet" and str(address.get("port", "")).isdigit():
                return int(address["port"])
        raise DriverError(f"QEMU for incoming VM {guest.vm_id} did not say which port it listens on "
                          f"(query-migrate: {answer!r})")

    async def abort_incoming(self, vm_id: str) -> None:
        guest = self._guests.get(vm_id)
        if guest is None:
            return
        if guest.state is VmState.Running and guest.role is None:
            raise DriverError(f"VM {vm_id} already runs here; it is no longer an incoming copy")
        await self.delete(vm_id)

    async def migrate(self, vm_id: str, endpoint: IncomingEndpoint, parameters: MigrationParameters) -> None:
        guest = await self._current(vm_id)
        if guest.state is not VmState.Running or not guest.alive:
            raise DriverError(f"cannot live-migrate VM {vm_id}: it is {guest.state.value}")
        if guest.role is not None:
            raise DriverError(f"VM {vm_id} is already migrating ({guest.role})")
        await self._capabilities(guest, {"return-path": True, "auto-converge": parameters.auto_converge,
                                         "postcopy-ram": parameters.postcopy_allowed,
                                         "pause-before-switchover": parameters.pause_before_switchover})
        cap = int(parameters.bandwidth_mbps * 1e6 / 8) if parameters.bandwidth_mbps else None
        settings: dict[str, Any] = {
            "max-bandwidth": cap or UNLIMITED_BYTES_PER_SECOND,
            # QEMU's post-copy has its own cap (0: none); the policy's link cap holds after the switch too
            "max-postcopy-bandwidth": cap or 0,
            "downtime-limit": max(1, int(parameters.downtime_limit_ms)) if parameters.downtime_limit_ms is not None
            else DEFAULT_DOWNTIME_LIMIT_MS,
        }
        settings.update(throttle_settings(parameters))
        await self._execute(guest, "migrate-set-parameters", settings)
        await self._execute(guest, "migrate", {"uri": f"tcp:{endpoint.host}:{endpoint.port}"})
        guest.role = "source"
        guest.details["migratingTo"] = f"{endpoint.host}:{endpoint.port}"
        log.info("VM %s: QEMU migrates it live to %s:%d (%s)", vm_id, endpoint.host, endpoint.port, settings)

    async def progress(self, vm_id: str) -> TransferProgress:
        guest = self._guest(vm_id)
        if not guest.alive:
            if guest.role == "target":
                return TransferProgress(phase=TransferPhase.Failed,
                                        error=f"the target QEMU of VM {vm_id} exited "
                                        f"({guest.process.returncode if guest.process else '?'})")
            raise DriverError(f"VM {vm_id} has no QEMU process here")
        answer = await self._execute(guest, "query-migrate")
        progress = progress_of(answer if isinstance(answer, dict) else {})
        if progress.finished and guest.role is not None:
            if progress.phase is TransferPhase.Completed:
                guest.state = VmState.MigratedAway if guest.role == "source" else VmState.Running
            elif progress.phase is TransferPhase.PostCopyPaused:
                # Post-copy lost its target: QEMU waits for a recovery (migrate with resume) and keeps the
                # guest stopped. It is left so (never resumed here: part of its memory is on the target);
                # stop or delete quits it.
                guest.state = VmState.Paused
                guest.details["postcopy"] = "paused: the target was lost, the guest's memory is split"
                log.error("VM %s: QEMU's post-copy lost its target; the guest's memory is split between the hosts "
                          "and its QEMU here is kept paused", vm_id)
            guest.role = None
            guest.details.pop("migratingTo", None)
        return progress

    async def switch_to_postcopy(self, vm_id: str) -> None:
        guest = self._guest(vm_id)
        if guest.role != "source":
            raise DriverError(f"VM {vm_id} is not being migrated from this host")
        await self._execute(guest, "migrate-start-postcopy")

    async def allow_downtime(self, vm_id: str, downtime_ms: float) -> None:
        guest = self._guest(vm_id)
        if guest.role != "source":
            raise DriverError(f"VM {vm_id} is not being migrated from this host")
        limit = max(1, min(math.ceil(downtime_ms), MAX_DOWNTIME_LIMIT_MS))
        await self._execute(guest, "migrate-set-parameters", {"downtime-limit": limit})
        log.info("VM %s: QEMU may now pause it for up to %d ms to finish the transfer", vm_id, limit)

    async def migration_settings(self, vm_id: str) -> dict[str, Any]:
        """QEMU's migration parameters for the guest here, as QEMU states them (``query-migrate-parameters``)."""
        answer = await self._execute(self._guest(vm_id), "query-migrate-parameters")
        return answer if isinstance(answer, dict) else {}

    async def continue_switchover(self, vm_id: str) -> None:
        guest = self._guest(vm_id)
        if guest.role != "source":
            raise DriverError(f"VM {vm_id} is not being migrated from this host")
        await self._execute(guest, "migrate-continue", {"state": "pre-switchover"})

    async def cancel(self, vm_id: str) -> TransferProgress:
        guest = self._guest(vm_id)
        if guest.role == "target":
            await self.abort_incoming(vm_id)
            return TransferProgress(phase=TransferPhase.Cancelled)
        if guest.role != "source":
            raise DriverError(f"VM {vm_id} has no migration in flight on this host")
        await self._execute(guest, "migrate_cancel")
        progress = await self._wait_finished(guest, SAVE_SECONDS)
        if progress.finished:
            guest.role = None
        return progress

    async def _wait_finished(self, guest: _Guest, within: float) -> TransferProgress:
        deadline = time.monotonic() + within
        while True:
            answer = await self._execute(guest, "query-migrate")
            progress = progress_of(answer if isinstance(answer, dict) else {})
            if progress.finished:
                return progress
            if time.monotonic() > deadline:
                raise DriverError(f"QEMU's transfer of VM {guest.vm_id} did not finish within {within:g} s "
                                  f"(last status: {progress.phase.value})")
            await asyncio.sleep(POLL_SECONDS)

    # -- QEMU processes ------------------------------------------------------------------------------

    async def _launch(self, guest: _Guest, cpu: CpuChoice, incoming: bool) -> None:
        choice = await self.accelerator()
        image = self.config.image
        d = guest.definition
        workload = workload_params(d)
        guest.qmp_path.unlink(missing_ok=True)
        # QEMU truncates the console file: keep what the guest printed last time (an oops, say) first.
        await asyncio.to_thread(keep_console, guest.serial, self.config.work_dir / CONSOLES / guest.vm_id)
        args = command_line(self.config.qemu, guest.vm_id, d, cpu.model, choice.accel, image, workload,
                            serial=guest.serial, qmp=guest.qmp_path, disks=guest.disks, incoming=incoming)
        stderr = await asyncio.to_thread(open, guest.directory / "qemu.log", "ab")  # the child's, closed below
        try:
            proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL, stdout=stderr,
                                                        stderr=stderr, start_new_session=True,
                                                        preexec_fn=die_with_parent)
        finally:
            stderr.close()
        guest.process = proc
        guest.cpu = cpu
        guest.details.update({"pid": str(proc.pid), "accel": choice.accel.value, "console": str(guest.serial),
                              "workload": workload.kernel_args()})
        try:
            guest.qmp = await connect(proc, guest.qmp_path, f"VM {guest.vm_id}",
                                      log_file=guest.directory / "qemu.log")
            size = await self._execute(guest, "query-memory-size-summary")
        except DriverError:
            await self._quit(guest)
            raise
        if isinstance(size, dict) and "base-memory" in size:
            guest.details["ramBytes"] = str(size["base-memory"])  # QEMU's own word on the RAM it gave the guest

    async def _execute(self, guest: _Guest, command: str, arguments: dict[str, Any] | None = None) -> Any:
        if guest.qmp is None or not guest.alive:
            raise DriverError(f"VM {guest.vm_id} has no running QEMU here (asked: {command})")
        try:
            return await guest.qmp.execute(command, arguments)
        except ExecuteError as exc:
            raise DriverError(f"QEMU refused {command} for VM {guest.vm_id}: {exc}") from None
        except (QMPError, OSError, EOFError) as exc:
            raise DriverError(f"QEMU's monitor for VM {guest.vm_id} failed during {command}: {exc!r}") from None

    async def _capabilities(self, guest: _Guest, wanted: dict[str, bool]) -> None:
        await self._execute(guest, "migrate-set-capabilities", {
            "capabilities": [{"capability": name, "state": state} for name, state in wanted.items()]})

    async def _quit(self, guest: _Guest) -> None:
        proc = guest.process
        if guest.qmp is not None:
            await quit_monitor(guest.qmp, ask=proc is not None and proc.returncode is None)
            guest.qmp = None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), QUIT_SECONDS)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await proc.wait()
        guest.process = None
        guest.role = None
        guest.details.pop("pid", None)


if TYPE_CHECKING:  # mypy checks that the driver has the interface's every method, with its signature
    _conforms: type[GuestDriver] = QemuDriver
