"""QEMU's monitor (QMP, through the ``qemu.qmp`` client): quitting, and reading ``query-migrate`` and
the run state in the agent's terms.

Talks to one QEMU process's monitor; knows nothing of the guests' bookkeeping (driver.py) or the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from qemu.qmp import QMPClient, QMPError

from vmshift.hypervisor.driver import TransferPhase, TransferProgress
from vmshift.hypervisor.protocol import VmState

QUIT_SECONDS = 5.0

PHASES = {
    "none": TransferPhase.Setup, "setup": TransferPhase.Setup, "active": TransferPhase.Active,
    "pre-switchover": TransferPhase.Active, "device": TransferPhase.Active, "wait-unplug": TransferPhase.Active,
    "cancelling": TransferPhase.Active, "postcopy-active": TransferPhase.PostCopy,
    "postcopy-paused": TransferPhase.PostCopy, "postcopy-recover": TransferPhase.PostCopy,
    "completed": TransferPhase.Completed, "failed": TransferPhase.Failed, "cancelled": TransferPhase.Cancelled,
}
RUNSTATES = {
    "running": VmState.Running, "paused": VmState.Paused, "postmigrate": VmState.Paused,
    "finish-migrate": VmState.Paused, "save-vm": VmState.Paused, "suspended": VmState.Paused,
    "inmigrate": VmState.Incoming, "prelaunch": VmState.Defined, "shutdown": VmState.Stopped,
    "internal-error": VmState.Stopped, "guest-panicked": VmState.Stopped,
}



async def quit_monitor(qmp: QMPClient, ask: bool = True) -> None:
    """Ask QEMU to quit (when ``ask``) and drop the monitor connection. QEMU closing the socket before,
    during or after its answer is what quitting looks like, not an error (the client then raises
    EOFError from ``execute`` or ``disconnect``)."""
    if ask:
        with contextlib.suppress(QMPError, OSError, EOFError, TimeoutError):
            await asyncio.wait_for(qmp.execute("quit"), QUIT_SECONDS)
    with contextlib.suppress(QMPError, OSError, EOFError):
        await qmp.disconnect()


def progress_of(answer: dict[str, Any]) -> TransferProgress:
    """``query-migrate``'s answer in the units of MigrationStatus."""
    status = str(answer.get("status", "none"))
    phase = PHASES.get(status, TransferPhase.Active)
    ram = answer.get("ram") or {}
    page = float(ram.get("page-size") or 4096)
    mib = 1024 * 1024
    expected = answer.get("expected-downtime")
    downtime = answer.get("downtime")
    total_time = answer.get("total-time")
    return TransferProgress(
        phase=phase,
        rounds=int(ram.get("dirty-sync-count") or 0),
        transferred_mib=float(ram.get("transferred") or 0) / mib,
        remaining_mib=float(ram.get("remaining") or 0) / mib,
        total_mib=float(ram.get("total") or 0) / mib,
        dirty_rate_mib_ps=float(ram.get("dirty-pages-rate") or 0) * page / mib,
        throughput_mbps=float(ram.get("mbps") or 0),
        expected_downtime_ms=float(expected) if expected is not None else None,
        throttle_percent=float(answer.get("cpu-throttle-percentage") or 0),
        downtime_ms=float(downtime) if downtime is not None and phase is TransferPhase.Completed else None,
        duration_ms=float(total_time) if total_time is not None else None,
        error=str(answer["error-desc"]) if answer.get("error-desc") else None,
    )
