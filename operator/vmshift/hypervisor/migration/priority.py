"""A switchover's priority on its agent: the gate that holds other migrations' bulk work, and the
short busy-read that spares the switchover a trip through the event loop.

No I/O but the non-blocking reads of :func:`read_frame_spinning`. An agent runs all its migrations on
one event loop, so a paused guest's switchover waits behind whatever the loop does first: with eight
migrations at once, the two hops of a switchover (the final frame to the target, RESUMED back) were
mostly other migrations' page frames being built, sent, checked and applied (measured: the work of
either side took a tenth of a millisecond, each hop milliseconds).

- :class:`SwitchoverGate`: while a switchover holds it, the agent's other migrations send and apply no
  page frames (:meth:`SwitchoverGate.wait` before each one); their guests run on, only their copy
  waits. A hold is a lease (:data:`LEASE_SECONDS`): it ends by itself, so a peer that vanishes in the
  middle of a switchover stalls the others' copies no longer than that. While the gate is closed the
  cyclic garbage collector waits too (a collection of the older generations took 1-5 ms, measured in
  an agent): the few objects a switchover makes are collected once it is over.
- :func:`read_frame_spinning`: the next frame read by polling the non-blocking socket for up to a
  couple of milliseconds before it waits on the event loop, so the answer a paused guest waits for is
  taken the moment it arrives, without the process sleeping and being woken (the scheduler's wake-up
  is the rest of a hop). The spin is bounded, yields the CPU between polls (the peer may need this
  core) and happens only while a guest is paused or about to be.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time

from vmshift.hypervisor.migration.stream import FrameStream, Received

#: The longest a switchover holds its agent's other migrations' bulk work.
LEASE_SECONDS = 0.1
#: How long a switchover polls its socket for the frame it waits for before it sleeps on the event loop.
SPIN_SECONDS = 0.002
#: A gap this long between two polls means another process had this CPU: the spin stops at once (on a busy
#: host it would only spend the CPU time the scheduler then makes the agent wait for).
PREEMPTED_SECONDS = 0.0002


class GateHold:
    """One switchover's hold on the gate; :meth:`release` ends it (idempotent), the lease otherwise."""

    def __init__(self, gate: SwitchoverGate, lease_seconds: float) -> None:
        self._gate = gate
        self._lease = asyncio.get_running_loop().call_later(lease_seconds, self.release)
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._lease.cancel()
            self._gate._released(self)


class SwitchoverGate:
    """Closed while any switchover on this agent holds it; bulk work waits for it to open."""

    def __init__(self) -> None:
        self._holds: set[GateHold] = set()
        self._open = asyncio.Event()
        self._open.set()
        self._collector_paused = False  # this gate disabled the garbage collector (and enables it again)

    @property
    def closed(self) -> bool:
        return bool(self._holds)

    def hold(self, lease_seconds: float = LEASE_SECONDS) -> GateHold:
        """Close the gate for one switchover until the hold is released or its lease runs out."""
        held = GateHold(self, lease_seconds)
        self._holds.add(held)
        self._open.clear()
        if gc.isenabled():
            gc.disable()
            self._collector_paused = True
        return held

    def _released(self, held: GateHold) -> None:
        self._holds.discard(held)
        if not self._holds:
            self._open.set()
            if self._collector_paused:
                self._collector_paused = False
                gc.enable()

    async def wait(self) -> None:
        """Return once no switchover holds the gate (at once when none does)."""
        while self._holds:
            await self._open.wait()


async def read_frame_spinning(stream: FrameStream, within: float, max_body: int,
                              spin_seconds: float = SPIN_SECONDS) -> Received:
    """The stream's next frame: polled for up to ``spin_seconds`` while this CPU is free (the spin yields it
    between polls and stops once another process took it), then awaited on the event loop (StreamClosed when
    nothing comes within ``within`` seconds)."""
    last = time.perf_counter()
    deadline = last + spin_seconds
    while True:
        frame = stream.poll_frame(max_body)
        if frame is not None:
            return frame
        now = time.perf_counter()
        if now >= deadline or now - last > PREEMPTED_SECONDS:
            return await stream.read_frame(within, max_body)
        last = now
        os.sched_yield()
