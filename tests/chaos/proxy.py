"""A TCP proxy in front of an agent's migration port that cuts or blackholes the stream on cue.

The agent under test advertises the proxy's port (``vmshift agent --advertise-migration-port``), so
every stream a source opens to it (the migration itself and the RESOLVE re-dial of an in-doubt
switchover) crosses the proxy. The proxy reads the stream's frames (MAGIC, then ``<type u8, flags
u8, reserved u16, length u32>`` + body, see ``vmshift.hypervisor.migration.wire``) and so knows the
phase of each migration: handshake, pre-copy pages, the end of a round, the switchover, the
target's RESUMED, the source's FINISHED. A trial arms it with a phase and an action; when a stream
reaches that phase the action runs in the proxy's own thread at once (a partition, a blackhole, or a
caller's callback such as SIGKILL of an agent), before the frame that marks the phase is forwarded.

- ``Fault.Cut``: a partition with a firewall that rejects: every open stream is aborted and new
  connections are refused (the listener closes) until ``heal``.
- ``Fault.Blackhole``: a partition that drops packets: nothing is forwarded either way and new
  connections hang, until ``heal``; then the held bytes flow again, as TCP's retransmissions would.

Runs every proxy on one asyncio loop in a daemon thread, so the synchronous harness can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from vmshift.hypervisor.migration.wire import MAGIC, Frame

_HEADER = struct.Struct("<BBHI")
T = TypeVar("T")


class Phase(StrEnum):
    """Where in a migration stream a fault falls (each marked by the frame named)."""

    Handshake = "Handshake"  # the source's HELLO
    Precopy = "Precopy"  # a PAGES frame of the first round, part-way through
    RoundEnd = "RoundEnd"  # a ROUND_END: between pre-copy rounds
    Switchover = "Switchover"  # the source's SWITCHOVER: guest paused on the source, target not told yet
    Resumed = "Resumed"  # the target's RESUMED: guest runs on the target, the source not told yet
    Finished = "Finished"  # the source's FINISHED: both committed, the target not told the end


class Fault(StrEnum):
    Cut = "Cut"
    Blackhole = "Blackhole"


@dataclass
class Trigger:
    """What to do when a stream reaches ``phase``: a partition (``fault``) for ``seconds``, then
    ``action`` (if any). ``pages`` is the PAGES frame of round 0 at which Precopy fires."""

    phase: Phase
    fault: Fault | None = None
    seconds: float = 0.0
    action: Callable[[], None] | None = None
    pages: int = 1
    fired_at: float | None = None
    fired: threading.Event = field(default_factory=threading.Event)


class ProxyLoop:
    """One event loop in a daemon thread that every MigrationProxy runs on."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="chaos-proxy", daemon=True)
        self._thread.start()

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class MigrationProxy:
    """A proxy listening on a fixed loopback port, forwarding to an agent's real migration port."""

    def __init__(self, loop: ProxyLoop, name: str) -> None:
        self.loop = loop
        self.name = name
        self.upstream_port = 0
        self.port = 0
        self.trigger: Trigger | None = None
        self.frames: dict[str, int] = {}
        self.log: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._open = asyncio.Event()  # set while data may flow (not blackholed)
        self._healer: asyncio.TimerHandle | None = None
        self._refusing = False

    # -- control, from any thread -------------------------------------------------------------

    def start(self) -> int:
        self.port = int(self.loop.call(self._listen()))
        return self.port

    def set_upstream(self, port: int) -> None:
        """Where the agent (re)started listens; the proxy keeps its own port across agent restarts."""
        self.upstream_port = port

    def arm(self, trigger: Trigger) -> None:
        self.trigger = trigger

    def partition(self, fault: Fault, seconds: float) -> None:
        self.loop.call(self._as_coro(lambda: self._partition(fault, seconds)))

    def heal(self) -> None:
        self.loop.call(self._as_coro(self._heal))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.call(self._close())

    # -- inside the loop -------------------------------------------------------------------------

    @staticmethod
    async def _as_coro(fn: Callable[[], None]) -> None:
        fn()

    async def _listen(self) -> int:
        self._open.set()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self._server = await asyncio.start_server(self._serve, sock=sock)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
        self._abort_all()
        if self._server is not None:
            self._server.close()
            self._server = None

    def _note(self, text: str) -> None:
        self.log.append(f"{time.monotonic():.3f} {self.name}: {text}")

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        self._writers.clear()

    def _partition(self, fault: Fault, seconds: float) -> None:
        self._note(f"{fault.value} for {seconds:.2f} s")
        if fault is Fault.Cut:
            self._abort_all()
            self._refusing = True
            if self._server is not None:
                self._server.close()  # new connections are refused until heal
                self._server = None
        else:
            self._open.clear()
        if self._healer is not None:
            self._healer.cancel()
        self._healer = self.loop.loop.call_later(seconds, self._heal)

    def _heal(self) -> None:
        if self._healer is not None:
            self._healer.cancel()
            self._healer = None
        self._note("healed")
        self._open.set()
        if self._refusing:
            self._refusing = False
            self.loop.loop.create_task(self._listen())

    def _reached(self, phase: Phase, count: int = 1) -> bool:
        """Fire the armed trigger if ``phase`` is its phase; True if the stream must be dropped now."""
        trigger = self.trigger
        if trigger is None or trigger.fired.is_set() or trigger.phase is not phase:
            return False
        if phase is Phase.Precopy and count < trigger.pages:
            return False
        trigger.fired_at = time.monotonic()
        trigger.fired.set()
        self._note(f"reached {phase.value}")
        if trigger.action is not None:
            with contextlib.suppress(Exception):
                trigger.action()
        if trigger.fault is not None:
            self._partition(trigger.fault, trigger.seconds)
            return trigger.fault is Fault.Cut
        return False

    async def _serve(self, src_reader: asyncio.StreamReader, src_writer: asyncio.StreamWriter) -> None:
        self._writers.add(src_writer)
        await self._open.wait()
        try:
            dst_reader, dst_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            src_writer.transport.abort()  # the agent is down: the source sees the stream break
            self._writers.discard(src_writer)
            return
        self._writers.add(dst_writer)
        await asyncio.gather(self._upstream(src_reader, dst_writer), self._downstream(dst_reader, src_writer),
                             return_exceptions=True)
        for writer in (src_writer, dst_writer):
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _pass(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        await self._open.wait()  # a blackhole holds the bytes here
        if writer.is_closing():
            raise ConnectionError("closed")
        writer.write(data)
        await writer.drain()

    async def _upstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Source -> target: count frames, fire triggers on HELLO, PAGES, ROUND_END, SWITCHOVER, FINISHED."""
        pages = 0
        try:
            magic = await reader.readexactly(len(MAGIC))
            await self._pass(writer, magic)
            while True:
                head = await reader.readexactly(_HEADER.size)
                kind, _flags, _reserved, length = _HEADER.unpack(head)
                body = await reader.readexactly(length)
                self.frames[str(kind)] = self.frames.get(str(kind), 0) + 1
                drop = False
                if kind == Frame.HELLO:
                    drop = self._reached(Phase.Handshake)
                elif kind == Frame.PAGES:
                    pages += 1
                    drop = self._reached(Phase.Precopy, pages)
                elif kind == Frame.ROUND_END:
                    drop = self._reached(Phase.Precopy, 1 << 30) or self._reached(Phase.RoundEnd)
                elif kind == Frame.SWITCHOVER:
                    drop = self._reached(Phase.Switchover)
                elif kind == Frame.FINISHED:
                    drop = self._reached(Phase.Finished)
                if drop:
                    return
                await self._pass(writer, head + body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _downstream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Target -> source: fire the Resumed trigger on RESUMED."""
        try:
            while True:
                head = await reader.readexactly(_HEADER.size)
                kind, _flags, _reserved, length = _HEADER.unpack(head)
                body = await reader.readexactly(length)
                if kind == Frame.RESUMED and self._reached(Phase.Resumed):
                    return
                await self._pass(writer, head + body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.transport.abort()


def precopy_frame(rng: random.Random, memory_mib: int) -> int:
    """Which PAGES frame of round 0 a Precopy fault falls on: somewhere in the first 90 % (1 MiB frames)."""
    return rng.randint(1, max(1, int(memory_mib * 0.9)))
