"""QEMU's monitor (QMP, through the ``qemu.qmp`` client): connecting, quitting, and reading
``query-migrate`` and ``query-status`` in the agent's terms.

Talks to one QEMU process's monitor; knows nothing of guests' bookkeeping (driver.py) or the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient, QMPError

from vmshift.hypervisor.driver import DriverError, TransferPhase, TransferProgress
from vmshift.hypervisor.protocol import VmState

#: A deadline, not an expectation: QEMU answers in well under a second, but a host loaded 10x over
#: (two cores shared by a test campaign) has been seen to take many seconds to start it.
QMP_CONNECT_SECONDS = 60.0
QUIT_SECONDS = 5.0
POLL_SECONDS = 0.05

PHASES = {
    "none": TransferPhase.Setup, "setup": TransferPhase.Setup, "active": TransferPhase.Active,
    "pre-switchover": TransferPhase.Active, "device": TransferPhase.Active, "wait-unplug": TransferPhase.Active,
    "cancelling": TransferPhase.Active, "postcopy-active": TransferPhase.PostCopy,
    "postcopy-paused": TransferPhase.PostCopyPaused, "postcopy-recover": TransferPhase.PostCopy,
    "completed": TransferPhase.Completed, "failed": TransferPhase.Failed, "cancelled": TransferPhase.Cancelled,
}
#: query-migrate statuses in which the source's guest is stopped and its last state crosses.
SWITCHING_OVER = frozenset({"pre-switchover", "device"})
RUNSTATES = {
    "running": VmState.Running, "paused": VmState.Paused, "postmigrate": VmState.Paused,
    "finish-migrate": VmState.Paused, "save-vm": VmState.Paused, "suspended": VmState.Paused,
    "inmigrate": VmState.Incoming, "prelaunch": VmState.Defined, "shutdown": VmState.Stopped,
    "internal-error": VmState.Stopped, "guest-panicked": VmState.Stopped,
}


async def connect(proc: asyncio.subprocess.Process, path: Path, what: str,
                  log_file: Path | None = None) -> QMPClient:
    """Connect to the QMP socket at ``path`` of QEMU ``proc``, waiting for it to appear; DriverError, with
    the end of QEMU's log, when QEMU exits first or the monitor does not answer in time."""
    deadline = time.monotonic() + QMP_CONNECT_SECONDS
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            break
        if await asyncio.to_thread(path.exists):
            qmp = QMPClient(what)
            try:
                await qmp.connect(str(path))
                return qmp
            except (QMPError, OSError) as exc:
                last = exc
        await asyncio.sleep(POLL_SECONDS)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.5)
    message = ""
    if log_file is not None and await asyncio.to_thread(log_file.exists):
        message = (await asyncio.to_thread(log_file.read_text, errors="replace")).strip()[-2000:]
    elif proc.stderr is not None and proc.returncode is not None:
        message = (await proc.stderr.read()).decode(errors="replace").strip()[-2000:]
    if proc.returncode is not None:
        raise DriverError(f"QEMU for {what} exited ({proc.returncode}) before its monitor answered: "
                          f"{message or 'no message'}")
    raise DriverError(f"QEMU's monitor for {what} did not answer within {QMP_CONNECT_SECONDS:g} s ({last})")


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
        switching_over=status in SWITCHING_OVER,
        held=status == "pre-switchover",
    )
