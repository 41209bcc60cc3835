"""What one migration knows about itself on one side: its record (progress and outcome, what the
agent's API reports) and the failure that ends it.

No I/O. Both sides fill a :class:`MigrationRecord`; :class:`MigrationFailed` carries a reason from the
closed FailureReason set and a message a person can act on, across the stream (an ABORT) and up to
the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.migration.wire import Abort
from vmshift.hypervisor.protocol import MigrationFailureReport, MigrationRole, MigrationStatus, RoundInfo

#: Rounds kept in a record's history.
ROUND_HISTORY = 64


class MigrationFailed(Exception):
    """A migration failed for a reason in FailureReason; the message says what a person can do."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def abort(self) -> Abort:
        """The ABORT message that tells the peer."""
        return Abort(reason=self.reason.value, message=self.message[:4096])


def failure_from_abort(abort: Abort, default: FailureReason, who: str) -> MigrationFailed:
    """The failure a peer's ABORT stands for (``default`` when its reason is not a FailureReason word)."""
    try:
        reason = FailureReason(abort.reason)
    except ValueError:
        reason = default
    return MigrationFailed(reason, f"{who}: {abort.message[:1000]}")


class MigrationRecord:
    """Progress and outcome of one migration on one side; what the API reports."""

    def __init__(self, migration_id: str, vm_id: str, role: MigrationRole, mode: MigrationMode,
                 total_pages: int) -> None:
        self.migration_id = migration_id
        self.vm_id = vm_id
        self.role = role
        self.mode = mode
        self.phase = MigrationPhase.Pending
        self.total_pages = max(total_pages, 1)
        self.round = 0
        self.pages_sent = 0
        self.remaining_pages = total_pages
        self.dirty_rate_mib_ps = 0.0
        self.throughput_mbps = 0.0
        self.throttle_percent = 0.0
        self.postcopy = False
        self.rounds: deque[RoundInfo] = deque(maxlen=ROUND_HISTORY)
        self.downtime_ms: float | None = None
        self.expected_downtime_ms: float | None = None
        self.duration_ms: float | None = None
        self.source_digest: str | None = None
        self.target_digest: str | None = None
        self.committed = False
        self.in_doubt = False
        self.ready_to_switch_over = False
        self.switchover_acknowledged: bool | None = None
        self.failure: MigrationFailureReport | None = None
        self.peer: str | None = None
        self.created = time.monotonic()
        self.started: float | None = None
        self.wire_bytes = 0
        self._changed = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self.phase.finished

    def touch(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, within: float) -> None:
        event = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await event.wait()

    async def wait_finished(self, within: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._done.wait()

    def finish(self, phase: MigrationPhase, failure: MigrationFailureReport | None = None) -> None:
        self._done.set()
        self.phase = phase
        self.failure = failure
        if self.started is not None and self.duration_ms is None:
            self.duration_ms = (time.monotonic() - self.started) * 1000
        if phase is MigrationPhase.Succeeded:
            self.remaining_pages = 0
        self.touch()

    def status(self) -> MigrationStatus:
        percent = 100.0 if self.phase is MigrationPhase.Succeeded else \
            max(0.0, min(99.9, 100.0 * (1 - self.remaining_pages / self.total_pages)))
        if self.phase is MigrationPhase.Pending:
            percent = 0.0
        return MigrationStatus(
            migration_id=self.migration_id,
            vm_id=self.vm_id,
            role=self.role,
            mode=self.mode,
            phase=self.phase,
            round=self.round,
            transferred_mib=self.pages_sent / 256,
            remaining_mib=self.remaining_pages / 256,
            dirty_rate_mib_ps=round(self.dirty_rate_mib_ps, 3),
            throughput_mbps=round(self.throughput_mbps, 3),
            percent=round(percent, 2),
            throttle_percent=self.throttle_percent,
            rounds=list(self.rounds),
            postcopy=self.postcopy,
            downtime_ms=self.downtime_ms,
            expected_downtime_ms=self.expected_downtime_ms,
            duration_ms=self.duration_ms,
            source_digest=self.source_digest,
            target_digest=self.target_digest,
            committed=self.committed,
            in_doubt=self.in_doubt and not self.finished,
            ready_to_switch_over=self.ready_to_switch_over and self.phase is MigrationPhase.Transferring,
            switchover_acknowledged=self.switchover_acknowledged,
            failure=self.failure,
            peer=self.peer,
        )
