"""The source side of a migration whose guest runs under the QEMU driver.

The agents' handshake, ticket, control messages, cancel, watchdog and in-doubt resolution are
:class:`SourceMigration`'s; only the data plane differs. Live: QEMU's own pre-copy, from this host's
QEMU to the port the target's incoming QEMU listens on (the target's WELCOME names it), with the
request's switchover threshold (capped by its downtime budget) as QEMU's ``downtime-limit`` and its
bandwidth as ``max-bandwidth``; ``query-migrate`` fills the record, and QEMU's measured downtime is the
final one. Quick: the guest's state is saved to a file on the shared directory standing for the
cluster shared volume, the SWITCHOVER names that file, and the target restores it.

Reaches its driver only through ``GuestDriver``; a transfer QEMU fails or that is cancelled before QEMU
completed it leaves the guest running here (QEMU resumes it, or this side restores the saved state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.driver import (
    DriverError,
    GuestDriver,
    IncomingEndpoint,
    MigrationParameters,
    SavedState,
    TransferPhase,
    TransferProgress,
)
from vmshift.hypervisor.guest import Guest
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.record import MigrationFailed, failure_from_abort
from vmshift.hypervisor.migration.source import SourceMigration
from vmshift.hypervisor.migration.stream import StreamClosed
from vmshift.hypervisor.migration.wire import ProtocolError, Resumed, Switchover
from vmshift.hypervisor.protocol import MigrationRequest, RoundInfo, VmState

log = logging.getLogger("vmshift.agent.migration")

#: How often QEMU's progress is read into the record.
POLL_SECONDS = 0.1
#: How long a quick migration's target may take to restore the saved state (a TCG guest on a loaded host).
RESTORE_SECONDS = 300.0
#: Where on the shared directory saved states go while a quick migration moves them.
STATES_DIR = ".vmshift-states"


def parameters(request: MigrationRequest, bandwidth_mbps: float) -> MigrationParameters:
    """The request's policy as QEMU's knobs: the switchover threshold is QEMU's downtime limit (capped by
    the downtime budget when one is set), the link rate its bandwidth cap."""
    limit = request.threshold_ms
    if request.max_downtime_ms is not None:
        limit = min(limit, request.max_downtime_ms)
    return MigrationParameters(downtime_limit_ms=limit, bandwidth_mbps=bandwidth_mbps or None,
                               auto_converge=request.auto_converge.enabled, postcopy_allowed=False)


class QemuSourceMigration(SourceMigration):
    """Sends one QEMU guest to a target agent that runs the QEMU driver too."""

    def __init__(self, host: MigrationHost, guest: Guest, request: MigrationRequest, bandwidth_mbps: float,
                 driver: GuestDriver, shared_dir: Path | None) -> None:
        super().__init__(host, guest, request, bandwidth_mbps)
        self.driver = driver
        self.shared_dir = shared_dir
        self._qemu_started = False
        self._saved: SavedState | None = None

    @property
    def vm_id(self) -> str:
        return self.guest.vm_id

    # -- live: QEMU's pre-copy ---------------------------------------------------------------------

    async def _live(self) -> None:
        welcome = self.welcome
        if welcome is None or welcome.qemu_port is None:
            raise MigrationFailed(FailureReason.TargetLost,
                                  "the target agent offered no QEMU to receive the guest (it runs the simulated "
                                  "driver); move QEMU guests between hosts whose agents run --driver qemu")
        endpoint = IncomingEndpoint(host=self.request.target.host, port=welcome.qemu_port)
        settings = parameters(self.request, self.bandwidth_mbps)
        try:
            await self.driver.migrate(self.vm_id, endpoint, settings)
        except DriverError as exc:
            raise MigrationFailed(FailureReason.TargetLost, f"QEMU could not start the transfer: {exc}; the VM "
                                  "keeps running on the source") from None
        self._qemu_started = True
        try:
            progress = await self._follow()
        except (asyncio.CancelledError, MigrationFailed):
            progress = await self._stop_transfer()
            if progress.phase is not TransferPhase.Completed:
                raise
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()  # QEMU completed before it could be cancelled: the VM is the target's
            log.info("migration %s: QEMU completed the transfer before it could be stopped", self.migration_id)
        self._committed_by_qemu(progress)

    async def _follow(self) -> TransferProgress:
        while True:
            try:
                progress = await self.driver.progress(self.vm_id)
            except DriverError as exc:
                raise MigrationFailed(FailureReason.SourceLost, f"the source's QEMU stopped answering: {exc}") \
                    from None
            self._record(progress)
            if progress.phase is TransferPhase.Completed:
                return progress
            if progress.phase in (TransferPhase.Failed, TransferPhase.Cancelled):
                self._check_target()  # the target's own word first, when it sent one
                raise MigrationFailed(FailureReason.TargetLost,
                                      f"QEMU's transfer {progress.phase.value.lower()}: "
                                      f"{progress.error or 'the target QEMU went away'}; the VM keeps running on "
                                      "the source")
            self._check_target()
            await asyncio.sleep(POLL_SECONDS)

    async def _stop_transfer(self) -> TransferProgress:
        """Cancel QEMU's transfer; what QEMU says it ended as (Completed if it won the race)."""
        try:
            return await asyncio.shield(self.driver.cancel(self.vm_id))
        except DriverError:
            try:
                return await self.driver.progress(self.vm_id)
            except DriverError as exc:
                return TransferProgress(phase=TransferPhase.Failed, error=str(exc))

    def _record(self, progress: TransferProgress) -> None:
        record = self.record
        if progress.rounds > record.round and progress.rounds > 0:
            record.rounds.append(RoundInfo(round=progress.rounds - 1, sent_mib=round(progress.transferred_mib, 3),
                                           seconds=round(time.monotonic() - (record.started or time.monotonic()), 3),
                                           dirty_mib=round(progress.remaining_mib, 3)))
        record.round = max(record.round, progress.rounds)
        record.pages_sent = int(progress.transferred_mib * 256)
        record.wire_bytes = int(progress.transferred_mib * 2**20)
        if progress.phase is not TransferPhase.Completed:
            record.remaining_pages = int(progress.remaining_mib * 256)
        record.dirty_rate_mib_ps = progress.dirty_rate_mib_ps
        record.throughput_mbps = progress.throughput_mbps
        record.throttle_percent = progress.throttle_percent
        record.expected_downtime_ms = progress.expected_downtime_ms
        record.touch()

    def _committed_by_qemu(self, progress: TransferProgress) -> None:
        self._record(progress)
        self.committed = True
        self.record.committed = True
        self.record.downtime_ms = progress.downtime_ms
        log.info("migration %s: QEMU moved VM %s in %.0f ms with %.1f ms of downtime", self.migration_id,
                 self.vm_id, progress.duration_ms or 0.0, progress.downtime_ms or 0.0)

    # -- quick: save to the shared volume, the target restores ---------------------------------------

    async def _quick(self) -> None:
        if self.shared_dir is None:
            raise MigrationFailed(FailureReason.StorageNotShared,
                                  f"host has no shared directory (--shared-dir) to save VM {self.vm_id} to; a "
                                  "quick migration of a QEMU guest needs one that both hosts mount")
        state_file = self.shared_dir / STATES_DIR / f"{self.migration_id}.state"
        self._paused_at = time.monotonic()
        self._halted = True
        try:
            self._saved = await self.driver.save(self.vm_id, state_file)
        except DriverError as exc:
            raise MigrationFailed(FailureReason.SourceLost, f"QEMU could not save the guest: {exc}") from None
        record = self.record
        record.phase = MigrationPhase.SwitchingOver
        record.pages_sent = record.total_pages
        record.wire_bytes = self._saved.size_bytes
        record.remaining_pages = 0
        record.touch()
        assert self._stream is not None
        self._check_target()
        self.in_doubt = True  # from here only the target knows whether it restored the guest
        try:
            await self._stream.send_message(Switchover(
                digest=self.guest.digest_hex(), drivers=self.guest.drivers, resume_state=VmState.Running,
                mode=MigrationMode.Quick, state_file=str(state_file)))
            await self._expect(Resumed, RESTORE_SECONDS)
        except (MigrationFailed, StreamClosed, OSError, ProtocolError) as exc:
            if self._target_abort is not None:
                raise failure_from_abort(self._target_abort, FailureReason.TargetLost, "the target aborted") \
                    from None
            await self._resolve(str(exc))
        self.committed = True
        record.committed = True
        record.downtime_ms = (time.monotonic() - self._paused_at) * 1000

    # -- the end ---------------------------------------------------------------------------------------

    async def _commit_tail(self) -> None:
        with contextlib.suppress(DriverError):
            await self.driver.delete(self.vm_id)  # the source's QEMU (paused after the move) quits
        if self._saved is not None:
            await asyncio.to_thread(self._saved.path.unlink, True)
        await super()._commit_tail()

    async def _abort(self, failure: MigrationFailed) -> None:
        if self._saved is not None:  # a quick move that did not happen: run the saved guest again here
            try:
                await self.driver.restore(self.vm_id, self._saved)
            except DriverError as exc:
                log.error("migration %s: could not resume VM %s from its saved state: %s", self.migration_id,
                          self.vm_id, exc)
            await asyncio.to_thread(self._saved.path.unlink, True)
            self._saved = None
        elif self._qemu_started:
            progress = await self._stop_transfer()
            if progress.phase is TransferPhase.Completed:  # should not happen: the caller checked
                log.error("migration %s: QEMU completed the transfer the agent was failing", self.migration_id)
        await super()._abort(failure)
