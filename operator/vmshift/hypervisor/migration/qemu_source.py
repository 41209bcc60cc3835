"""The source side of a migration whose guest runs under the QEMU driver.

The agents' handshake, ticket, control messages, cancel, watchdog and in-doubt resolution are
:class:`SourceMigration`'s; only the data plane differs. Live: QEMU's own pre-copy, from this host's
QEMU to the port the target's incoming QEMU listens on (the target's WELCOME names it), with the
request's switchover threshold (capped by its downtime budget) as QEMU's ``downtime-limit`` and its
bandwidth as ``max-bandwidth``; ``query-migrate`` fills the record, and QEMU's measured downtime is the
final one. QEMU switches over by itself once the rest fits its downtime limit; after each round QEMU
reports (its dirty-sync-count) the agents' convergence rule (``next_action``) judges the round from
``query-migrate`` as it judges the simulated driver's, and its ladder applies: Fail cancels QEMU's
transfer (NotConverging, the guest runs on here), Quick raises QEMU's downtime limit to the pause the
rest needs (QEMU stops the guest, sends the rest, and the target runs it: the guest arrives running),
PostCopy switches QEMU to post-copy (both QEMUs have ``postcopy-ram`` on when the policy allows it; from
then on the guest runs on the target and the move can no longer be cancelled; when the target's QEMU
or the link is lost after the switch, QEMU's ``postcopy-paused``, the move fails TargetLost with the
guest kept paused here, never resumed: its memory is split between the hosts). Throttling is QEMU's own
auto-converge. The record's phase is SwitchingOver while QEMU has the guest stopped for the last of
its state, and from the switch to post-copy on. The operator's switchover hold (hold.py) is QEMU's
pause-before-switchover, only on a host started with --qemu-switchover-hold-seconds: QEMU stops at
``pre-switchover`` with the guest already paused, so the wait is downtime (see ``_held``).
Quick: the guest's state is saved to a file on the
shared directory standing for the cluster shared volume, the SWITCHOVER names that file, and the
target restores it.

Reaches its driver only through ``GuestDriver``; a transfer QEMU fails or that is cancelled before QEMU
completed it leaves the guest running here (QEMU resumes it, or this side restores the saved state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
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
from vmshift.hypervisor.migration.hold import SwitchoverHold
from vmshift.hypervisor.migration.host import MigrationHost
from vmshift.hypervisor.migration.record import MigrationFailed, failure_from_abort
from vmshift.hypervisor.migration.source import SourceMigration
from vmshift.hypervisor.migration.stream import StreamClosed
from vmshift.hypervisor.migration.streamrate import RoundSample
from vmshift.hypervisor.migration.wire import ProtocolError, Resumed, Switchover
from vmshift.hypervisor.protocol import MigrationRequest, RoundInfo, VmState
from vmshift.precopy.convergence import Action, ActionKind, ConvergencePolicy, RoundStats, next_action

log = logging.getLogger("vmshift.agent.migration")

#: How often QEMU's progress is read into the record.
POLL_SECONDS = 0.1
#: How long a quick migration's target may take to restore the saved state (a TCG guest on a loaded host).
RESTORE_SECONDS = 300.0
#: Where on the shared directory saved states go while a quick migration moves them.
STATES_DIR = ".vmshift-states"


def parameters(request: MigrationRequest, bandwidth_mbps: float, hold: bool = False) -> MigrationParameters:
    """The request's policy as QEMU's knobs: the switchover threshold is QEMU's downtime limit (capped by
    the downtime budget when one is set), the link rate its bandwidth cap, the policy's auto-converge
    throttle (initial, step, max percent) QEMU's own when auto-converge is on."""
    limit = request.threshold_ms
    if request.max_downtime_ms is not None:
        limit = min(limit, request.max_downtime_ms)
    auto = request.auto_converge
    return MigrationParameters(downtime_limit_ms=limit, bandwidth_mbps=bandwidth_mbps or None,
                               auto_converge=auto.enabled,
                               throttle_initial_percent=auto.initial_percent if auto.enabled else None,
                               throttle_step_percent=auto.step_percent if auto.enabled else None,
                               throttle_max_percent=auto.max_percent if auto.enabled else None,
                               postcopy_allowed=request.fallback_to_postcopy, pause_before_switchover=hold)


@dataclass
class QemuRounds:
    """The convergence rule over QEMU's rounds: ``judge`` takes each ``query-migrate`` look and, when QEMU
    finished a round since the last one judged, returns ``next_action``'s verdict on it (None otherwise).

    QEMU's dirty-sync-count is 1 once its first bitmap sync is done and grows by one at the end of every
    pass over dirty memory, so after ``rounds`` syncs round ``rounds - 2`` has ended. Polled, several
    rounds may end between two looks: they are judged as one, what was sent since the last look spread
    evenly over them. ``link_rate`` is the configured rate in bytes per second (None: QEMU's measured one).
    """

    policy: ConvergencePolicy
    link_rate: float | None
    judged: int = 1  # the dirty-sync-count last judged
    sent_mib: float = 0.0  # transferred when it was judged
    stalled: int = 0
    rung_started: int = 0

    def judge(self, progress: TransferProgress) -> Action | None:
        if progress.phase is not TransferPhase.Active or progress.switching_over or progress.rounds <= self.judged:
            return None
        ended = progress.rounds - self.judged
        sent = (progress.transferred_mib - self.sent_mib) / ended
        self.judged, self.sent_mib = progress.rounds, progress.transferred_mib
        rate = self.link_rate if self.link_rate is not None else progress.throughput_mbps * 1e6 / 8
        action = next_action(RoundStats(
            round_index=progress.rounds - 2, remaining_bytes=progress.remaining_mib * 2**20,
            sent_bytes=sent * 2**20, link_rate=rate if rate > 0 else 1e9,
            write_rate=progress.dirty_rate_mib_ps * 2**20, throttle_percent=progress.throttle_percent,
            stalled=self.stalled, rung_started=self.rung_started), self.policy)
        self.stalled, self.rung_started = action.stalled, action.rung_started
        return action


#: A pass over memory timed by polling (POLL_SECONDS apart) shorter than this says little of its rate.
MIN_PASS_SECONDS = 1.0
#: A pass that sent at this fraction of QEMU's bandwidth cap or more was held by the cap.
CAPPED_FRACTION = 0.9


@dataclass
class QemuPasses:
    """What QEMU's migration stream carries, pass by pass, for the host's stream figure (``streamrate``).

    QEMU sends without the agents' shaper, so a pass it finished is a sample: the bytes sent since the look
    that saw the previous pass end, over the seconds between the two looks. A pass also ends when QEMU
    switches over (or has completed) at the next look: a guest whose dirty pages fit the downtime after its
    one long pass goes from that pass straight to the switchover, and that pass is the one worth timing.
    Polled looks time a pass to a poll or so, hence only passes of MIN_PASS_SECONDS or more count. A pass
    that ran at QEMU's bandwidth cap (``cap``, bytes per second; None: no cap) carried what it was allowed,
    so it counts as held throughout.
    """

    cap: float | None
    mark: tuple[int, float, float] | None = None  # (dirty-sync-count, MiB sent, when) at the last pass's end

    def look(self, progress: TransferProgress, now: float) -> RoundSample | None:
        """The sample of the pass(es) ``progress`` shows ended since the last look, if one can tell."""
        ended = progress.switching_over or progress.phase is TransferPhase.Completed  # no pass goes on
        if progress.rounds < 1 or not (ended or progress.phase is TransferPhase.Active):
            self.mark = None
            return None
        mark = self.mark
        if mark is None:  # the first look of the transfer (or since it left the active phase)
            if not ended:  # a switchover seen first ends a pass no look saw begin: nothing to time
                self.mark = (progress.rounds, progress.transferred_mib, now)
            return None
        if progress.rounds == mark[0] and not ended:  # the same pass goes on
            return None
        self.mark = None if ended else (progress.rounds, progress.transferred_mib, now)
        sent = int((progress.transferred_mib - mark[1]) * 2**20)
        seconds = now - mark[2]
        if seconds < MIN_PASS_SECONDS:
            return None
        capped = self.cap is not None and sent / seconds >= CAPPED_FRACTION * self.cap
        return RoundSample(sent, seconds, seconds if capped else 0.0)


class QemuSourceMigration(SourceMigration):
    """Sends one QEMU guest to a target agent that runs the QEMU driver too."""

    def __init__(self, host: MigrationHost, guest: Guest, request: MigrationRequest, bandwidth_mbps: float,
                 driver: GuestDriver, shared_dir: Path | None, hold_seconds: float = 0.0) -> None:
        super().__init__(host, guest, request, bandwidth_mbps)
        # The switchover hold under QEMU (pause-before-switchover) waits with the guest already paused, unlike
        # the simulated driver's, where it runs on: every second of it is downtime. So it waits at most the
        # host's --qemu-switchover-hold-seconds (0 by default: no hold), never the request's longer wait.
        self.hold = SwitchoverHold(self.record, min(request.switchover_wait_seconds, hold_seconds),
                                   request.timeout_seconds)
        self._continued = False  # QEMU was told to go on past pre-switchover
        self.driver = driver
        self.shared_dir = shared_dir
        self._qemu_started = False
        self._saved: SavedState | None = None
        self._postcopy = False  # switched to post-copy: the guest runs on the target, no way back
        cap = None if math.isinf(self.rate) else self.rate  # bytes per second; None: unshaped
        self.rounds = QemuRounds(request.convergence(), cap)
        self.passes = QemuPasses(cap)

    @property
    def vm_id(self) -> str:
        return self.guest.vm_id

    def cancel(self, reason: FailureReason, message: str) -> bool:
        if self._postcopy:  # the guest already runs on the target
            return False
        return super().cancel(reason, message)

    # -- live: QEMU's pre-copy ---------------------------------------------------------------------

    async def _live(self) -> None:
        welcome = self.welcome
        if welcome is None or welcome.qemu_port is None:
            raise MigrationFailed(FailureReason.TargetLost,
                                  "the target agent offered no QEMU to receive the guest (it runs the simulated "
                                  "driver); move QEMU guests between hosts whose agents run --driver qemu")
        endpoint = IncomingEndpoint(host=self.request.target.host, port=welcome.qemu_port)
        settings = parameters(self.request, self.bandwidth_mbps, hold=self.hold.wait_seconds > 0)
        try:
            await self.driver.migrate(self.vm_id, endpoint, settings)
        except DriverError as exc:
            raise MigrationFailed(FailureReason.TargetLost, f"QEMU could not start the transfer: {exc}; the VM "
                                  "keeps running on the source") from None
        self._qemu_started = True
        try:
            progress = await self._follow()
        except (asyncio.CancelledError, MigrationFailed):
            if self._postcopy:  # nothing to stop: the guest runs on the target, QEMU's stream decides
                raise
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
            now = time.monotonic()
            sample = self.passes.look(progress, now)
            if sample is not None:
                self.host.stream_rates.record(sample, now)
            if progress.phase is TransferPhase.Completed:
                return progress
            if self._postcopy and progress.phase in (TransferPhase.Failed, TransferPhase.Cancelled) \
                    and await self._resumed_here():
                # QEMU ended the transfer before the target ran the guest (the switch to post-copy had not
                # happened yet, or its device state never arrived) and ran it here again: an ordinary failure.
                log.warning("migration %s: QEMU's transfer %s before the target ran VM %s, and QEMU resumed it "
                            "here", self.migration_id, progress.phase.value.lower(), self.vm_id)
                self._postcopy = self.record.postcopy = False
            if progress.phase is TransferPhase.PostCopyPaused or (
                    self._postcopy and progress.phase in (TransferPhase.Failed, TransferPhase.Cancelled)):
                raise MigrationFailed(FailureReason.TargetLost, self._postcopy_lost(progress))
            if progress.phase in (TransferPhase.Failed, TransferPhase.Cancelled):
                self._check_target()  # the target's own word first, when it sent one
                raise MigrationFailed(FailureReason.TargetLost,
                                      f"QEMU's transfer {progress.phase.value.lower()}: "
                                      f"{progress.error or 'the target QEMU went away'}; the VM keeps running on "
                                      "the source")
            if not self._postcopy:  # after the switch the target agent may well close its stream: QEMU's decides
                self._check_target()
            if progress.held and not self._continued:
                await self._held()
                continue
            action = self.rounds.judge(progress)
            if action is not None:
                await self._act(action, progress)
            await asyncio.sleep(POLL_SECONDS)

    async def _held(self) -> None:
        """QEMU converged and stopped at ``pre-switchover``: the guest is already paused here (the simulated
        hold keeps it running), and the record says ready to switch over so the operator shows SwitchingOver
        and gives its go. Wait for the go a poll at a time, at most the hold's end, then let QEMU go on."""
        if not self._postcopy and self.hold.holding(converged=True):  # QEMU holds the switch to post-copy too:
            await self.hold.wait(POLL_SECONDS)  # that one goes on at once (the ladder's, already SwitchingOver)
            return
        try:
            await self.driver.continue_switchover(self.vm_id)
        except DriverError as exc:
            raise MigrationFailed(FailureReason.SourceLost, f"QEMU held the switchover and did not go on: {exc}; "
                                  "the VM keeps running on the source") from None
        self._continued = True
        self.record.phase = MigrationPhase.SwitchingOver
        self.record.touch()
        log.info("migration %s: QEMU goes on with the switchover (%s the operator's go)", self.migration_id,
                 "after" if self.record.switchover_acknowledged else "without")

    async def _resumed_here(self) -> bool:
        """Whether QEMU runs the guest here again (its run state), as QEMU does when a transfer ends before the
        target ran the guest."""
        try:
            return (await self.driver.describe(self.vm_id)).state is VmState.Running
        except DriverError:
            return False

    def _postcopy_lost(self, progress: TransferProgress) -> str:
        """The failure's message when post-copy lost its target: where the guest is, and what a person can do."""
        if progress.phase is TransferPhase.PostCopyPaused:
            split = f"({progress.remaining_mib:.1f} MiB not yet pulled from the source, the rest only on the target)"
            kept = "its QEMU on the source is kept paused (QEMU status postcopy-paused), not resumed and not stopped"
            choice = ("recover the target's QEMU and resume the post-copy (QMP migrate with resume), or stop the VM, "
                      "which loses the memory the target held")
        else:  # QEMU ended the transfer for good: nothing can resume it
            split = "(the pages the target had pulled or the guest wrote there are only on the target)"
            kept = (f"its QEMU on the source ended the transfer ({progress.error or 'failed'}) and is kept paused, "
                    f"not resumed and not stopped")
            choice = "stop the VM, which loses the memory the target held, and boot it again"
        return (f"the target's QEMU (or the link to it) was lost during post-copy: the guest had switched to the "
                f"target and ran there, and its memory was split between the hosts {split}, so it can run on "
                f"neither. It does not run on the source: {kept}, so that a person decides: {choice}")

    async def _act(self, action: Action, progress: TransferProgress) -> None:
        """Follow the ladder's word on a round QEMU just ended (QEMU itself switches over and throttles)."""
        if action.kind is ActionKind.Fail:
            raise MigrationFailed(FailureReason.NotConverging, self._not_converging(
                int(progress.remaining_mib * 256), progress.rounds - 2, action.why))
        if action.kind is ActionKind.Quick:
            pause_ms = progress.remaining_mib * 2**20 / (self.rounds.link_rate or
                                                          max(progress.throughput_mbps * 1e6 / 8, 1.0)) * 1000
            log.info("migration %s: pre-copy does not converge (%s), falling back to quick: QEMU may pause the "
                     "guest ~%.0f ms to send the rest", self.migration_id, action.why, pause_ms)
            try:
                await self.driver.allow_downtime(self.vm_id, pause_ms * 1.5 + 100)
            except DriverError as exc:
                raise MigrationFailed(FailureReason.NotConverging, f"pre-copy does not converge ({action.why}) "
                                      f"and QEMU refused the quick fallback: {exc}; the VM keeps running on the "
                                      "source") from None
            self.record.mode = MigrationMode.Quick
            self.record.touch()
        elif action.kind is ActionKind.PostCopy:
            log.info("migration %s: pre-copy does not converge (%s), switching to post-copy", self.migration_id,
                     action.why)
            try:
                await self.driver.switch_to_postcopy(self.vm_id)
            except DriverError as exc:
                raise MigrationFailed(FailureReason.NotConverging, f"pre-copy does not converge ({action.why}) "
                                      f"and QEMU could not switch to post-copy: {exc}; the VM keeps running on "
                                      "the source") from None
            self._postcopy = True
            self.record.postcopy = True
            self.record.phase = MigrationPhase.SwitchingOver
            self.record.touch()

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
        waiting = progress.held and not self._continued and self.hold.wait_seconds > 0
        if (progress.switching_over and not waiting) or progress.phase is TransferPhase.PostCopy:
            # While QEMU holds the switchover for the go the record stays Transferring, as the simulated
            # source's does, so that it reports readyToSwitchOver (the operator then shows SwitchingOver).
            record.phase = MigrationPhase.SwitchingOver
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
        elif self._postcopy:  # the guest's memory is split: never resumed here (see _postcopy_lost)
            if self.guest.state is VmState.Running:
                self.guest.pause()
        elif self._qemu_started:
            progress = await self._stop_transfer()
            if progress.phase is TransferPhase.Completed:  # should not happen: the caller checked
                log.error("migration %s: QEMU completed the transfer the agent was failing", self.migration_id)
        await super()._abort(failure)
