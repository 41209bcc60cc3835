"""A live migration's switchover held for the caller's go: so that the operator can show the
SwitchingOver phase before the guest pauses, not by chance in the milliseconds the pause lasts.

No I/O but a timer. Once pre-copy has converged, the source (source.py) holds the switchover while
:meth:`SwitchoverHold.holding` says so: the guest runs on and rounds keep its dirty set small. The
hold ends with the go (the agent's ``POST /v1/migrations/{id}/switchover``), or when the wait runs
out (the caller is down or slow: a migration never hangs on its operator), which the record keeps
as ``switchoverAcknowledged`` false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from vmshift.hypervisor.migration.record import MigrationRecord

log = logging.getLogger("vmshift.agent.migration")

#: While the switchover is held, the source sends the pages the guest dirtied at most this often (and
#: nothing while it dirtied none): each round stays as small as the one that converged, so the final
#: copy after the go is no larger than without the wait, and the stream is not flooded.
WAIT_ROUND_SECONDS = 0.1
#: A hold ends this long before the migration's timeout at the latest: the wait never turns a
#: converged migration into a Timeout.
WAIT_TIMEOUT_MARGIN = 1.0


class SwitchoverHold:
    """Whether a converged live migration still waits for its go; what the record says about it."""

    def __init__(self, record: MigrationRecord, wait_seconds: float, timeout_seconds: float | None) -> None:
        self.record = record
        self.wait_seconds = wait_seconds  # 0: never hold
        self.timeout_seconds = timeout_seconds
        self.ready_since: float | None = None  # when pre-copy converged and the hold began
        self._go = asyncio.Event()

    def go(self) -> None:
        """The caller's go: switch over after the next round once pre-copy has converged (at once if it
        has). Harmless when early, repeated or late."""
        self._go.set()

    def holding(self, converged: bool) -> bool:
        """True while the switchover waits for the go; ``converged``: the convergence rule says switch over now.

        The first converged round marks the record ready to switch over; from then on the hold lasts
        until the go or the end of the wait, whatever later rounds say (a burst of writes does not
        take back a phase the operator has shown). Once it ends the rule decides again as usual.
        """
        record = self.record
        if not self.wait_seconds:
            return False
        if self.ready_since is None:
            if not converged:
                return False
            self.ready_since = time.monotonic()
            record.ready_to_switch_over = True
            record.touch()
            log.info("migration %s: pre-copy converged (%.2f MiB left); waiting up to %g s for the go to switch "
                     "over", record.migration_id, record.remaining_pages / 256, self.wait_seconds)
        if self._go.is_set():
            if record.switchover_acknowledged is None:
                record.switchover_acknowledged = True
            return False
        if time.monotonic() >= self.deadline():
            if record.switchover_acknowledged is None:
                record.switchover_acknowledged = False
                log.warning("migration %s: no go for the switchover within %.1f s; switching over without it",
                            record.migration_id, time.monotonic() - self.ready_since)
            return False
        return True

    def deadline(self) -> float:
        """When the hold ends without a go (monotonic clock)."""
        assert self.ready_since is not None
        deadline = self.ready_since + self.wait_seconds
        if self.timeout_seconds and self.record.started is not None:
            deadline = min(deadline, self.record.started + self.timeout_seconds - WAIT_TIMEOUT_MARGIN)
        return deadline

    async def wait(self, at_most: float) -> None:
        """Wait for the go, at most ``at_most`` seconds and never past the end of the hold."""
        within = min(at_most, self.deadline() - time.monotonic())
        if within <= 0 or self._go.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._go.wait()
