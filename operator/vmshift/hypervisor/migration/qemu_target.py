"""The target side of a migration whose guest runs under the QEMU driver.

The reservation, the one-time ticket, its expiry, cancel and the RESOLVE answer are
:class:`TargetMigration`'s. What differs: ``prepare`` readies the driver when the operator asks for
the reservation (live: an incoming QEMU listening on a port; quick: the guest defined, its disks
opened), the WELCOME tells the source that port, and the commit point is QEMU's: the guest runs
here once the incoming QEMU runs it (live) or once its saved state is restored (quick). A target
never kills its incoming QEMU because the agents' stream broke (QEMU's own stream decides); it
discards it when the source says the move failed, when QEMU's transfer fails, or on cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.driver import (
    CpuChoice,
    DriverError,
    GuestDriver,
    IncomingEndpoint,
    MigrationParameters,
    SavedState,
)
from vmshift.hypervisor.guest import Guest
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.record import MigrationFailed, failure_from_abort
from vmshift.hypervisor.migration.stream import FrameStream, StreamClosed
from vmshift.hypervisor.migration.target import TargetMigration
from vmshift.hypervisor.migration.wire import (
    MAX_CONTROL_BYTES,
    Abort,
    ControlMessage,
    Finished,
    Hello,
    ProtocolError,
    Resumed,
    Switchover,
    Welcome,
    decode,
)
from vmshift.hypervisor.protocol import VmState

log = logging.getLogger("vmshift.agent.migration")

POLL_SECONDS = 0.1
#: How long a quick migration's target waits for the source to save the guest and name the file.
SAVE_SECONDS = 300.0


class QemuTargetMigration(TargetMigration):
    """Receives one QEMU guest: an incoming QEMU (live) or a restore from the shared volume (quick)."""

    def __init__(self, host: MigrationHost, guest: Guest, migration_id: str, mode: MigrationMode, ticket: str,
                 expires_in: float, driver: GuestDriver, cpu: CpuChoice, shared_dir: Path | None) -> None:
        super().__init__(host, guest, migration_id, mode, ticket, expires_in)
        self.driver = driver
        self.cpu = cpu
        self.shared_dir = shared_dir
        self.endpoint: IncomingEndpoint | None = None
        self._prepared = asyncio.Lock()
        self._ready = False
        self._cleanup: set[asyncio.Task[None]] = set()

    @property
    def vm_id(self) -> str:
        return self.guest.vm_id

    async def prepare(self) -> None:
        """Ready the driver (once; a repeated request waits for the first). DriverError when it cannot."""
        async with self._prepared:
            if self._ready:
                return
            if self.record.mode is MigrationMode.Live:
                # post-copy on: the source's QEMU decides whether it is used (when its policy allows it)
                self.endpoint = await self.driver.prepare_incoming(self.vm_id, self.guest.definition, self.cpu,
                                                                   MigrationParameters(postcopy_allowed=True))
            else:
                await self.driver.define(self.vm_id, self.guest.definition)
            self._ready = True
            log.info("VM %s: ready to receive it under QEMU (migration %s, %s, cpu %s%s)", self.vm_id,
                     self.migration_id, self.record.mode.value, self.cpu.model,
                     f", QEMU listens on port {self.endpoint.port}" if self.endpoint else "")

    def _discard(self, failure: MigrationFailed) -> None:
        if self.record.finished:
            return
        super()._discard(failure)
        task = asyncio.get_running_loop().create_task(self._release_driver(), name=f"discard-{self.migration_id}")
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    async def _release_driver(self) -> None:
        async with self._prepared:
            try:
                await self.driver.abort_incoming(self.vm_id)
            except DriverError as exc:
                log.warning("incoming migration %s: %s", self.migration_id, exc)

    async def serve(self, stream: FrameStream, hello: Hello) -> None:
        record = self._begin(stream, hello)
        inbox: asyncio.Queue[ControlMessage | None] = asyncio.Queue()
        reader = asyncio.create_task(_read(stream, inbox))
        try:
            try:
                if not self._ready:
                    raise MigrationFailed(FailureReason.TargetLost, "the target's QEMU was not ready to receive "
                                          "the guest; ask the target for a new reservation")
                await self._welcome(stream, Welcome(resolve_port=self.host.migration_port,
                                                    qemu_port=self.endpoint.port if self.endpoint else None))
                if record.mode is MigrationMode.Live:
                    await self._until_qemu_runs_it(inbox)
                else:
                    await self._restore(inbox)
            except asyncio.CancelledError:
                raise self._interrupted() from None
        except MigrationFailed as failure:
            reader.cancel()  # before _fail: its linger reads the stream to the end
            await asyncio.gather(reader, return_exceptions=True)
            await self._fail(stream, failure)
            return
        self._commit()
        with contextlib.suppress(StreamClosed, OSError, ProtocolError, TimeoutError):
            await stream.send_message(Resumed(heartbeat=self.guest.heartbeat))
            async with asyncio.timeout(10.0):
                while (message := await inbox.get()) is not None:
                    if isinstance(message, Finished):
                        if message.downtime_ms is not None:
                            record.downtime_ms = message.downtime_ms
                        record.touch()
                        break
        reader.cancel()

    async def _until_qemu_runs_it(self, inbox: asyncio.Queue[ControlMessage | None]) -> None:
        """Wait until the incoming QEMU runs the guest (the source's QEMU completed), or fail."""
        while True:
            self._check_source(inbox)
            try:
                described = await self.driver.describe(self.vm_id)
            except DriverError as exc:
                raise MigrationFailed(FailureReason.TargetLost, f"the target's QEMU is gone ({exc}); the VM keeps "
                                      "running on the source") from None
            if described.state is VmState.Running:
                return
            if described.state not in (VmState.Incoming, VmState.Paused):
                raise MigrationFailed(FailureReason.TargetLost,
                                      f"the target's incoming QEMU ended ({described.state.value}, exit "
                                      f"{described.details.get('exit', '?')}) before it ran the guest; the VM "
                                      "keeps running on the source")
            await asyncio.sleep(POLL_SECONDS)

    def _check_source(self, inbox: asyncio.Queue[ControlMessage | None]) -> None:
        while not inbox.empty():
            message = inbox.get_nowait()
            if isinstance(message, Abort):
                raise failure_from_abort(message, FailureReason.SourceLost, "the source aborted")

    async def _restore(self, inbox: asyncio.Queue[ControlMessage | None]) -> None:
        """Quick: wait for the source to save the guest and name the file, then restore it here."""
        try:
            async with asyncio.timeout(SAVE_SECONDS):
                while True:
                    message = await inbox.get()
                    if message is None:
                        raise MigrationFailed(FailureReason.SourceLost, "the source closed the migration stream "
                                              "before it saved the guest; the reservation was released")
                    if isinstance(message, Abort):
                        raise failure_from_abort(message, FailureReason.SourceLost, "the source aborted")
                    if isinstance(message, Switchover):
                        break
        except TimeoutError:
            raise MigrationFailed(FailureReason.SourceLost, f"the source did not save the guest within "
                                  f"{SAVE_SECONDS:g} s") from None
        self.record.phase = MigrationPhase.SwitchingOver
        path = self._state_path(message.state_file)
        try:
            size = (await asyncio.to_thread(path.stat)).st_size
            await self.driver.restore(self.vm_id, SavedState(path=path, size_bytes=size, cpu=self.cpu))
        except (OSError, DriverError) as exc:
            raise MigrationFailed(FailureReason.TargetLost, f"the target could not restore the saved guest: {exc}; "
                                  "the source resumes it") from None

    def _state_path(self, named: str | None) -> Path:
        """The saved state's file, which must lie in this host's shared directory."""
        if named is None or self.shared_dir is None:
            raise MigrationFailed(FailureReason.StorageNotShared,
                                  "the source named no saved state on a shared directory this host mounts; give "
                                  "both agents the same --shared-dir")
        path = Path(named).resolve()
        if not path.is_relative_to(self.shared_dir.resolve()):
            raise MigrationFailed(FailureReason.StorageNotShared,
                                  f"the saved state {named} is outside this host's shared directory {self.shared_dir}")
        return path

    def _commit(self) -> None:
        record = self.record
        self.host.activate_incoming(self.guest, VmState.Running)
        record.committed = True
        record.remaining_pages = 0
        record.finish(MigrationPhase.Succeeded)
        self.host.migration_ended(self)
        log.info("VM %s arrived by migration %s and runs here under QEMU", self.vm_id, self.migration_id)


async def _read(stream: FrameStream, inbox: asyncio.Queue[ControlMessage | None]) -> None:
    """The source's control messages, into ``inbox``; None once the stream ends."""
    try:
        while True:
            frame = await stream.read_frame(None, MAX_CONTROL_BYTES)
            inbox.put_nowait(decode(frame.kind, frame.body))
    except (StreamClosed, OSError, ProtocolError):
        pass
    finally:
        inbox.put_nowait(None)
