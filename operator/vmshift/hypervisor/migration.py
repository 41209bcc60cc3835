"""Live and quick migration between agents: the TCP stream protocol, both of its sides, and records.

Talks only to the peer agent, over one TCP connection per migration (plus a short re-dial that
resolves an in-doubt switchover); reaches the rest of its own agent only through the small
``MigrationHost`` interface, so it holds no HTTP and no host bookkeeping.

Wire format (all integers little-endian). The source opens with ``MAGIC`` then frames of
``<type u8, flags u8, reserved u16, length u32>`` + body. Control frames carry a JSON object;
PAGES frames carry ``<round u32, count u32>``, ``count`` page indexes (u32), ``count`` versions
(u32) and ``count`` pages of 4 KiB, so a run of pages crosses in one large write.

    source                                   target
    HELLO {ticket, migrationId, ...}  ──▶    checks the one-time HMAC ticket (else drops the socket)
                                      ◀──    WELCOME {resolvePort}
    PAGES … ROUND_END (round 0: all pages; round i: pages dirtied during round i-1)
    -- pause the guest --
    PAGES (flag FINAL) … SWITCHOVER {digest, heartbeat, drivers}     (one write)
                                             verifies the digest, resumes the guest: the commit point
                                      ◀──    RESUMED
    -- the source releases its paused copy --
    FINISHED {downtimeMs, durationMs} ──▶

Two-phase, so that the VM never runs on two hosts and is never lost: the target resumes only
after it holds verified memory, and the source releases its (paused) copy only after it knows the
target resumed. Any failure before SWITCHOVER resumes the guest on the source and makes the target
discard its partial copy. If the stream breaks after SWITCHOVER, the source keeps its guest paused
and re-dials the target's migration port with RESOLVE: the target answers whether it resumed (and,
if it had not, never will). Until the target answers (refused connections and silence prove
nothing: a partition looks like a dead host) the source keeps its copy paused and reports the
migration in doubt; the operator may pass on the target's answer when it can reach the target.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
import socket
import struct
import time
from array import array
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from vmshift.api.reasons import FailureReason, MigrationMode, MigrationPhase
from vmshift.hypervisor.guest import PAGE_SIZE, CorruptPage, Guest, GuestMemory
from vmshift.hypervisor.precopy import Ladder, RoundFacts, Step, next_step
from vmshift.hypervisor.protocol import (
    MigrationFailure,
    MigrationRequest,
    MigrationRole,
    MigrationStatus,
    RoundInfo,
    VmState,
)
from vmshift.hypervisor.ratelimit import TokenBucket, mbps_to_bytes_per_second

log = logging.getLogger("vmshift.agent.migration")

MAGIC = b"VMSHIFT\x01"
_HEADER = struct.Struct("<BBHI")
_PAGES_HEAD = struct.Struct("<II")
FLAG_FINAL = 1

#: Pages per PAGES frame: 1 MiB writes keep syscalls and Python overhead small against the bytes.
CHUNK_PAGES = 256
MAX_FRAME_PAGES = 4096
MAX_CONTROL_BYTES = 64 * 1024
MAX_HELLO_BYTES = 4096
SOCKET_BUFFER = 4 * 1024 * 1024
READ_AHEAD = 64 * 1024

HANDSHAKE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0
SEND_STALL_TIMEOUT = 30.0
RESUMED_TIMEOUT = 10.0
#: How long the source asks the target after a broken switchover before it reports the migration in doubt.
IN_DOUBT_AFTER = 10.0
#: The longest pause between two questions to a target that cannot be asked.
IN_DOUBT_RETRY_MAX = 5.0
#: Rounds kept in a record's history.
ROUND_HISTORY = 64


class Frame(IntEnum):
    HELLO = 1
    WELCOME = 2
    PAGES = 3
    ROUND_END = 4
    SWITCHOVER = 5
    RESUMED = 8
    ABORT = 9
    FINISHED = 10
    RESOLVE = 11
    DECISION = 12


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


class StreamClosed(ConnectionError):
    """The peer closed the connection (or it broke)."""


class Failure(Exception):
    """A migration failed for a reason in FailureReason; the message says what a person can do."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --------------------------------------------------------------------------------------------------
# Framing


@dataclass
class Received:
    kind: int
    flags: int
    body: memoryview  # valid until the next read on the stream


def control_frame(kind: Frame, payload: dict[str, Any] | None = None, flags: int = 0) -> bytes:
    body = json.dumps(payload or {}, separators=(",", ":")).encode()
    return _HEADER.pack(kind, flags, 0, len(body)) + body


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"control frame holds a number out of range: {text[:40]}")
    return value


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"control frame holds {name}, which is not a number a peer may send")


def parse_control(body: memoryview | bytes) -> dict[str, Any]:
    """A control frame's JSON object; NaN, infinities and overflowing numbers are refused (they would
    reach status and the API as values no client can read)."""
    try:
        value = json.loads(bytes(body), parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"control frame is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("control frame is not a JSON object")
    return value


def pages_prefix(round_index: int, count: int, flags: int = 0) -> bytes:
    body_len = _PAGES_HEAD.size + 8 * count + PAGE_SIZE * count
    return _HEADER.pack(Frame.PAGES, flags, 0, body_len) + _PAGES_HEAD.pack(round_index, count)


def parse_pages(body: memoryview) -> tuple[int, array[int], array[int], memoryview]:
    if len(body) < _PAGES_HEAD.size:
        raise ProtocolError("PAGES frame too short")
    round_index, count = _PAGES_HEAD.unpack_from(body)
    if count > MAX_FRAME_PAGES or len(body) != _PAGES_HEAD.size + count * (8 + PAGE_SIZE):
        raise ProtocolError(f"PAGES frame of {len(body)} bytes does not hold {count} pages")
    lo = _PAGES_HEAD.size
    idx = array("I")
    idx.frombytes(body[lo:lo + 4 * count])
    versions = array("I")
    versions.frombytes(body[lo + 4 * count:lo + 8 * count])
    return round_index, idx, versions, body[lo + 8 * count:]


class FrameStream:
    """One migration connection over a non-blocking socket, read into a reusable buffer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray(2 * 1024 * 1024)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self.closed = False
        self.bytes_received = 0

    @property
    def peer(self) -> tuple[str, int]:
        try:
            address = self.sock.getpeername()
            return str(address[0]), int(address[1])
        except OSError:
            return ("?", 0)

    async def send(self, data: bytes, within: float | None = SEND_STALL_TIMEOUT) -> None:
        if self.closed:
            raise StreamClosed("stream already closed")
        try:
            async with asyncio.timeout(within):
                await self._loop.sock_sendall(self.sock, data)
        except TimeoutError:
            raise StreamClosed(f"the peer accepted no data for {within:.0f} s") from None
        except OSError as exc:
            raise StreamClosed(f"sending failed: {exc}") from None

    async def send_control(self, kind: Frame, payload: dict[str, Any] | None = None) -> None:
        await self.send(control_frame(kind, payload))

    def _make_room(self, n: int) -> None:
        """Make sure ``n`` bytes fit from the read position, moving the (small) unread rest if needed."""
        have = self._end - self._start
        if have == 0:
            self._start = self._end = 0
        if len(self._buf) - self._start >= n:
            return
        if n > len(self._buf):
            new = bytearray(max(n, 2 * len(self._buf)))
            new[:have] = self._view[self._start:self._end]
            with contextlib.suppress(BufferError):
                self._view.release()
            self._buf = new
            self._view = memoryview(new)
        else:
            self._buf[:have] = self._buf[self._start:self._end]
        self._start = 0
        self._end = have

    async def read_exactly(self, n: int, within: float | None) -> memoryview:
        """The next ``n`` bytes, as a view that stays valid until the next read.

        A large read asks the kernel for exactly what is missing, so a frame lands in place and
        nothing is copied; small reads take up to READ_AHEAD bytes at once to save system calls.
        """
        if self._end - self._start < n:
            self._make_room(n)
            try:
                async with asyncio.timeout(within):
                    while self._end - self._start < n:
                        want = max(n - (self._end - self._start), READ_AHEAD)
                        limit = min(len(self._buf), self._end + want)
                        got = await self._loop.sock_recv_into(self.sock, self._view[self._end:limit])
                        if got == 0:
                            raise StreamClosed("the peer closed the connection")
                        self._end += got
                        self.bytes_received += got
            except TimeoutError:
                raise StreamClosed(f"no data from the peer for {within:.0f} s") from None
            except OSError as exc:
                if isinstance(exc, StreamClosed):
                    raise
                raise StreamClosed(f"receiving failed: {exc}") from None
        out = self._view[self._start:self._start + n]
        self._start += n
        return out

    async def read_frame(self, within: float | None, max_body: int) -> Received:
        head = await self.read_exactly(_HEADER.size, within)
        kind, flags, _reserved, length = _HEADER.unpack(head)
        if kind not in Frame._value2member_map_:
            raise ProtocolError(f"unknown frame type {kind}")
        if length > max_body:
            raise ProtocolError(f"frame of type {Frame(kind).name} is {length} bytes, more than {max_body}")
        body = await self.read_exactly(length, within)
        return Received(kind, flags, body)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


async def open_stream(host: str, port: int, within: float = CONNECT_TIMEOUT) -> FrameStream:
    """Connect to a migration listener; OSError (or TimeoutError) if nobody answers."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(within):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {host}")
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
    stream = FrameStream(sock)
    await stream.send(MAGIC)
    return stream


# --------------------------------------------------------------------------------------------------
# Tickets


class TicketIssuer:
    """One-time HMAC tickets that let one source stream one migration into this host."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)

    def _mac(self, migration_id: str, vm_id: str, expires: int) -> str:
        message = f"{migration_id}\n{vm_id}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def issue(self, migration_id: str, vm_id: str, ttl_seconds: float) -> str:
        expires = int(time.time() + ttl_seconds) + 1
        return f"{expires}.{self._mac(migration_id, vm_id, expires)}"

    def check(self, ticket: str, migration_id: str, vm_id: str) -> bool:
        expires_text, _, mac = ticket.partition(".")
        if not expires_text.isdigit() or len(expires_text) > 12 or not mac:
            return False
        expires = int(expires_text)
        good = hmac.compare_digest(mac.encode(), self._mac(migration_id, vm_id, expires).encode())
        return good and time.time() <= expires


# --------------------------------------------------------------------------------------------------
# The agent, as migrations see it


class MigrationHost(Protocol):
    """What the migration code needs from its agent (host.py implements it)."""

    egress: TokenBucket
    ingress: TokenBucket
    migration_port: int

    def release_source_vm(self, guest: Guest) -> None: ...

    def discard_incoming(self, guest: Guest) -> None: ...

    def activate_incoming(self, guest: Guest, state: VmState) -> None: ...

    def migration_ended(self, migration: SourceMigration | TargetMigration) -> None: ...

    def find_incoming(self, migration_id: str) -> TargetMigration | None: ...



# --------------------------------------------------------------------------------------------------
# Records


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
        self.rounds: deque[RoundInfo] = deque(maxlen=ROUND_HISTORY)
        self.downtime_ms: float | None = None
        self.duration_ms: float | None = None
        self.source_digest: str | None = None
        self.target_digest: str | None = None
        self.committed = False
        self.in_doubt = False
        self.failure: MigrationFailure | None = None
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

    def finish(self, phase: MigrationPhase, failure: MigrationFailure | None = None) -> None:
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
            downtime_ms=self.downtime_ms,
            duration_ms=self.duration_ms,
            source_digest=self.source_digest,
            target_digest=self.target_digest,
            committed=self.committed,
            in_doubt=self.in_doubt and not self.finished,
            failure=self.failure,
            peer=self.peer,
        )


def _failure_from_peer(payload: dict[str, Any], default: FailureReason, who: str) -> Failure:
    try:
        reason = FailureReason(str(payload.get("reason")))
    except ValueError:
        reason = default
    return Failure(reason, f"{who}: {str(payload.get('message', 'aborted'))[:1000]}")


# --------------------------------------------------------------------------------------------------
# Source side


class SourceMigration:
    """Sends one VM to a target that issued a ticket; owns the guest until commit or abort."""

    role = MigrationRole.source

    def __init__(self, host: MigrationHost, guest: Guest, request: MigrationRequest,
                 bandwidth_mbps: float) -> None:
        assert guest.memory is not None
        self.host = host
        self.guest = guest
        self.memory: GuestMemory = guest.memory
        self.request = request
        self.record = MigrationRecord(request.migration_id, guest.vm_id, MigrationRole.source,
                                      request.mode, self.memory.pages)
        self.record.peer = f"{request.target.host}:{request.target.port}"
        self.bandwidth_mbps = bandwidth_mbps  # 0: unlimited
        self.rate = mbps_to_bytes_per_second(bandwidth_mbps) if bandwidth_mbps > 0 else math.inf
        self.bucket = TokenBucket(self.rate)
        self._measured_rate = 0.0  # bytes per second of the last round that took long enough to tell
        self.resolve_token = secrets.token_hex(16)
        self.committed = False
        self.in_doubt = False  # SWITCHOVER sent: only the target's answer decides from here
        self._verdict: asyncio.Future[bool] | None = None  # the target's statement, passed on by the operator
        self._resolve_port: int | None = None
        self.task: asyncio.Task[None] | None = None
        self._cancel: Failure | None = None
        self._stream: FrameStream | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[tuple[int, dict[str, Any]] | None] = asyncio.Queue()
        self._target_abort: dict[str, Any] | None = None
        self._target_gone: str | None = None
        self._prior_state = guest.state
        self._halted = False
        self._paused_at: float | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._ending = False
        self._marks: list[tuple[str, float]] = []  # switchover timeline, for the debug log

    @property
    def migration_id(self) -> str:
        return self.request.migration_id

    def start(self) -> None:
        self.record.started = time.monotonic()
        self.record.phase = MigrationPhase.Transferring
        self.task = asyncio.create_task(self.run(), name=f"migration-out-{self.migration_id}")

    def cancel(self, reason: FailureReason, message: str) -> bool:
        """Abort before the commit point (False when it is too late or already over)."""
        if self.committed or self.in_doubt or self._ending or self.task is None or self.task.done():
            return False
        if self._cancel is None:
            self._cancel = Failure(reason, message)
            self.task.cancel()
        return True

    def settle(self, target_resumed: bool) -> bool:
        """The operator passes on the target's statement while this side is in doubt (False if it is not)."""
        if not self.record.in_doubt or self._verdict is None or self._verdict.done():
            return False
        self._verdict.set_result(target_resumed)
        return True

    # -- the run ---------------------------------------------------------------------------------

    async def run(self) -> None:
        record = self.record
        if record.started is None:
            record.started = time.monotonic()
        record.phase = MigrationPhase.Transferring
        record.touch()
        timeout = self.request.timeout_seconds
        if timeout:
            self._watchdog = asyncio.get_running_loop().call_later(
                timeout, self.cancel, FailureReason.Timeout,
                f"the migration did not reach its commit point within timeoutSeconds={timeout:g}; "
                "the VM keeps running on the source")
        failure: Failure | None = None
        try:
            await self._precommit()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            failure = self._cancel or Failure(FailureReason.SourceLost, "the source agent is shutting down")
        except Failure as exc:
            failure = exc
        except (StreamClosed, OSError, ProtocolError) as exc:
            failure = self._explain_stream_error(exc)
        except Exception as exc:  # never leave the VM paused because of a bug
            log.exception("migration %s failed unexpectedly", self.migration_id)
            failure = Failure(FailureReason.TargetLost, f"internal error on the source: {exc!r}")
        self._ending = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        try:
            if failure is not None:
                await self._abort(failure)
            else:
                await self._commit_tail()
        finally:
            await self._close()
            self.host.migration_ended(self)

    def _explain_stream_error(self, exc: BaseException) -> Failure:
        if self._target_abort is not None:
            return _failure_from_peer(self._target_abort, FailureReason.TargetLost, "the target aborted")
        return Failure(FailureReason.TargetLost,
                       f"the migration stream to the target broke ({exc}); the VM keeps running on the source")

    async def _precommit(self) -> None:
        request = self.request
        target = request.target
        try:
            self._stream = await open_stream(target.host, target.port)
        except (OSError, TimeoutError) as exc:
            raise Failure(FailureReason.AgentUnreachable,
                          f"cannot connect to the target's migration port {target.host}:{target.port}: "
                          f"{exc or 'timed out'}") from None
        stream = self._stream
        await stream.send_control(Frame.HELLO, {
            "migrationId": request.migration_id,
            "vmId": self.guest.vm_id,
            "ticket": target.ticket,
            "mode": request.mode.value,
            "pages": self.memory.pages,
            "resolveToken": self.resolve_token,
        })
        try:
            welcome = await stream.read_frame(HANDSHAKE_TIMEOUT * 2, MAX_CONTROL_BYTES)
        except (StreamClosed, ProtocolError):
            raise Failure(FailureReason.AgentUnreachable,
                          "the target dropped the migration connection at the handshake: its ticket was "
                          "refused, already used or expired; ask the target for a new one") from None
        payload = parse_control(welcome.body)
        if welcome.kind == Frame.ABORT:
            raise _failure_from_peer(payload, FailureReason.TargetLost, "the target refused the migration")
        if welcome.kind != Frame.WELCOME:
            raise ProtocolError(f"expected WELCOME, got frame type {welcome.kind}")
        port = payload.get("resolvePort")
        self._resolve_port = port if isinstance(port, int) and 0 < port < 65536 else None
        self._reader = asyncio.create_task(self._read_target())
        if request.mode is MigrationMode.Quick:
            await self._quick()
        else:
            await self._live()

    async def _read_target(self) -> None:
        assert self._stream is not None
        try:
            while True:
                frame = await self._stream.read_frame(None, MAX_CONTROL_BYTES)
                payload = parse_control(frame.body)
                if frame.kind == Frame.ABORT:
                    self._target_abort = payload
                self._inbox.put_nowait((frame.kind, payload))
        except (StreamClosed, OSError, ProtocolError) as exc:
            self._target_gone = str(exc)
        finally:
            self._inbox.put_nowait(None)

    def _check_target(self) -> None:
        if self._target_abort is not None:
            raise _failure_from_peer(self._target_abort, FailureReason.TargetLost, "the target aborted")
        if self._target_gone is not None:
            raise Failure(FailureReason.TargetLost,
                          f"the target closed the migration stream ({self._target_gone}); the VM keeps "
                          "running on the source")

    async def _expect(self, kind: Frame, within: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(within):
                while True:
                    item = await self._inbox.get()
                    if item is None:
                        self._inbox.put_nowait(None)
                        self._check_target()
                        raise Failure(FailureReason.TargetLost, "the target closed the migration stream")
                    got, payload = item
                    if got == Frame.ABORT:
                        raise _failure_from_peer(payload, FailureReason.TargetLost, "the target aborted")
                    if got == kind:
                        return payload
        except TimeoutError:
            raise Failure(FailureReason.TargetLost,
                          f"the target did not answer {kind.name} within {within:g} s") from None

    # -- pre-copy ----------------------------------------------------------------------------------

    async def _send_pages(self, round_index: int, pages: range | list[int], final: bool = False) -> float:
        """Send ``pages`` in large frames, shaped to the link; return the seconds it took."""
        assert self._stream is not None
        stream = self._stream
        record = self.record
        memory = self.memory
        flags = FLAG_FINAL if final else 0
        started = time.monotonic()
        sent_bytes = 0
        total = len(pages)
        for lo in range(0, total, CHUNK_PAGES):
            chunk = pages[lo:lo + CHUNK_PAGES]
            frame = memory.encode(chunk, pages_prefix(round_index, len(chunk), flags))
            await self.bucket.consume(len(frame))
            await self.host.egress.consume(len(frame))
            self._check_target()
            await stream.send(frame)
            sent_bytes += len(frame)
            record.pages_sent += len(chunk)
            record.wire_bytes += len(frame)
            record.remaining_pages = (total - lo - len(chunk)) + memory.dirty_count()
            elapsed = time.monotonic() - started
            if elapsed > 0.02:
                record.throughput_mbps = sent_bytes * 8 / 1e6 / elapsed
            record.touch()
        return time.monotonic() - started

    async def _round(self, round_index: int, pages: range | list[int], final: bool = False) -> None:
        record = self.record
        record.round = round_index
        writes_before = self.memory.writes
        seconds = await self._send_pages(round_index, pages, final)
        if seconds > 0.01 and pages:
            self._measured_rate = len(pages) * PAGE_SIZE / seconds
        self.guest.advance()
        dirty = self.memory.dirty_count()
        if seconds > 0 and not final:
            record.dirty_rate_mib_ps = (self.memory.writes - writes_before) / 256 / seconds
        record.remaining_pages = dirty
        record.rounds.append(RoundInfo(round=round_index, sent_mib=len(pages) / 256, seconds=round(seconds, 6),
                                       dirty_mib=dirty / 256))
        record.touch()
        assert self._stream is not None
        if not final:
            await self._stream.send_control(Frame.ROUND_END, {
                "round": round_index, "pages": len(pages), "seconds": seconds, "dirtyPages": dirty,
                "dirtyRateMiBps": record.dirty_rate_mib_ps, "throttlePercent": self.guest.throttle_percent,
                "throughputMbps": record.throughput_mbps,
            })

    async def _live(self) -> None:
        request = self.request
        record = self.record
        memory = self.memory
        auto = request.auto_converge
        ladder = Ladder(threshold_ms=request.threshold_ms, max_rounds=request.max_rounds,
                        stall_rounds=request.stall_rounds, auto_converge=auto.enabled,
                        throttle_initial=auto.initial_percent, throttle_step=auto.step_percent,
                        throttle_max=auto.max_percent, fallback_to_quick=request.fallback_to_quick,
                        max_downtime_ms=request.max_downtime_ms)
        memory.take_dirty()
        await self._round(0, range(memory.pages))
        sent_last = memory.pages
        round_index = 0
        stalled = 0
        while True:
            self.guest.advance()
            dirty = memory.dirty_count()
            decision = next_step(RoundFacts(
                round_index=round_index, remaining_bytes=dirty * PAGE_SIZE, sent_bytes=sent_last * PAGE_SIZE,
                link_rate=self._link_rate(), write_rate=record.dirty_rate_mib_ps * 2**20,
                throttle_percent=self.guest.throttle_percent, stalled=stalled), ladder)
            stalled = decision.stalled
            if decision.step is Step.SwitchOver:
                await self._switchover(quick=False)
                return
            if decision.step is Step.Throttle:
                self.guest.set_throttle(decision.throttle_percent)
                record.throttle_percent = decision.throttle_percent
                log.info("migration %s: %s", self.migration_id, decision.why)
            elif decision.step is Step.Quick:
                log.info("migration %s: pre-copy does not converge (%s), falling back to quick", self.migration_id,
                         decision.why)
                record.mode = MigrationMode.Quick
                await self._switchover(quick=True)
                return
            elif decision.step is Step.Fail:
                raise Failure(FailureReason.NotConverging, self._not_converging(dirty, round_index, decision.why))
            round_index += 1
            pages = sorted(memory.take_dirty())
            await self._round(round_index, pages)
            sent_last = len(pages)

    def _link_rate(self) -> float:
        """Bytes per second the switchover threshold assumes: the configured rate, else the measured one."""
        if not math.isinf(self.rate):
            return self.rate
        return self._measured_rate or 1e9

    def _not_converging(self, dirty: int, round_index: int, extra: str | None) -> str:
        threshold_mib = self._link_rate() * self.request.threshold_ms / 1000 / 2**20
        text = (f"pre-copy did not converge after {round_index + 1} rounds: {dirty / 256:.1f} MiB stay dirty "
                f"per round (guest writes {self.guest.definition.workload.dirty_rate_mib_ps:g} MiB/s in a "
                f"{self.guest.definition.workload.working_set_mib:g} MiB hot set) against a switchover "
                f"threshold of {threshold_mib:.2f} MiB ({self.request.threshold_ms:g} ms at "
                f"{self._link_rate() * 8 / 1e6:.0f} Mbit/s)")
        if extra:
            text += f"; {extra}"
        return text + ("; the VM keeps running on the source. Allow autoConverge or fallbackToQuick, "
                       "raise the bandwidth or the threshold, or migrate when the guest is quieter")

    def _halt_guest(self, quick: bool) -> None:
        self._paused_at = time.monotonic()
        self._halted = True
        if self.guest.state is VmState.Running:
            if quick:
                self.guest.save()
            else:
                self.guest.pause()

    async def _quick(self) -> None:
        memory = self.memory
        self._halt_guest(quick=True)
        memory.take_dirty()
        await self._round(0, range(memory.pages), final=True)
        await self._switchover(quick=True, already_halted=True)

    async def _switchover(self, quick: bool, already_halted: bool = False) -> None:
        """Pause, send the rest with the device state in one write, and learn whether the target resumed."""
        record = self.record
        record.phase = MigrationPhase.SwitchingOver
        record.touch()
        assert self._stream is not None
        stream = self._stream
        final: list[int] = []
        if not already_halted:
            self._halt_guest(quick)
            final = sorted(self.memory.take_dirty())
        digest = self.memory.digest_hex()
        record.source_digest = digest
        switchover = control_frame(Frame.SWITCHOVER, {
            "digest": digest,
            "heartbeat": self.guest.heartbeat,
            "drivers": self.guest.drivers,
            "resumeState": VmState.Saved.value if self._prior_state is VmState.Saved else VmState.Running.value,
            "mode": record.mode.value,
        })
        pages = [self.memory.encode(final[lo:lo + CHUNK_PAGES], pages_prefix(
            record.round + 1, len(final[lo:lo + CHUNK_PAGES]), FLAG_FINAL)) for lo in range(0, len(final), CHUNK_PAGES)]
        payload = b"".join([*pages, switchover])
        await self.bucket.consume(len(payload) - len(switchover))
        await self.host.egress.consume(len(payload) - len(switchover))
        self._check_target()
        self._marks.append(("final built", time.monotonic()))
        # From the moment this write may reach the target, only the target knows whether the guest
        # resumed there: no cancel, and a broken stream is resolved by asking (never by guessing).
        self.in_doubt = True
        if not already_halted:  # the stop-and-copy round of a live migration (possibly empty)
            record.round += 1
            record.pages_sent += len(final)
        record.wire_bytes += len(payload)
        try:
            await stream.send(payload)
            self._marks.append(("switchover sent", time.monotonic()))
            if not already_halted:
                assert self._paused_at is not None
                record.rounds.append(RoundInfo(round=record.round, sent_mib=len(final) / 256,
                                               seconds=round(time.monotonic() - self._paused_at, 6), dirty_mib=0.0))
            resumed = await self._expect(Frame.RESUMED, RESUMED_TIMEOUT)
        except (Failure, StreamClosed, OSError, ProtocolError) as exc:
            if self._target_abort is not None:  # the target refused explicitly: it did not resume
                raise _failure_from_peer(self._target_abort, FailureReason.TargetLost, "the target aborted") \
                    from None
            log.warning("migration %s: stream lost during the switchover (%s); asking the target",
                        self.migration_id, exc)
            await self._resolve(str(exc))
        else:
            record.target_digest = str(resumed.get("digest", ""))[:64] or None
            self._marks.append(("resumed", time.monotonic()))
        self.committed = True
        record.committed = True
        assert self._paused_at is not None
        record.downtime_ms = (time.monotonic() - self._paused_at) * 1000

    async def _resolve(self, why: str) -> None:
        """Ask the target whether it resumed the guest; return if it did, raise Failure if it says it did not.

        Only the target's statement decides. While it cannot be asked (connections refused, silence:
        a partition or a dead host) the guest stays paused here and the migration is in doubt: resuming
        it could make two running copies. The source asks again and again, and the operator may pass on
        the target's answer (``settle``) when it can reach the target and this host cannot.
        """
        target = self.request.target
        port = self._resolve_port or target.port
        self._verdict = asyncio.get_running_loop().create_future()
        asker = asyncio.create_task(self._ask_until_answered(target.host, port, why))
        try:
            await asyncio.wait({asker, self._verdict}, return_when=asyncio.FIRST_COMPLETED)
            resumed = self._verdict.result() if self._verdict.done() else asker.result()
        finally:
            asker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asker
        if self.record.in_doubt:
            log.warning("migration %s: no longer in doubt: the target %s the VM", self.migration_id,
                        "resumed" if resumed else "did not resume")
            self.record.in_doubt = False
            self.record.touch()
        if not resumed:
            raise Failure(FailureReason.TargetLost,
                          f"the stream to the target broke during the switchover ({why}) and the target had "
                          "not resumed the VM; it keeps running on the source")
        log.info("migration %s: the target confirms it resumed the VM", self.migration_id)

    async def _ask_until_answered(self, host: str, port: int, why: str) -> bool:
        delay = 1.0
        while True:
            answer = await resolve_with_target(host, port, self.migration_id, self.resolve_token,
                                               give_up_after=IN_DOUBT_AFTER)
            if answer is not None:
                return answer
            if not self.record.in_doubt:
                log.error("migration %s is in doubt: the switchover was sent (%s) and the target %s:%d cannot be "
                          "asked whether it resumed the VM; the VM stays paused here until it answers",
                          self.migration_id, why, host, port)
                self.record.in_doubt = True
                self.record.touch()
            await asyncio.sleep(delay)
            delay = min(delay * 2, IN_DOUBT_RETRY_MAX)

    async def _commit_tail(self) -> None:
        record = self.record
        self.host.release_source_vm(self.guest)
        self.guest.migration_id = None
        record.remaining_pages = 0
        record.finish(MigrationPhase.Succeeded)
        if log.isEnabledFor(logging.DEBUG) and self._paused_at is not None:
            log.debug("migration %s switchover: %s", self.migration_id, ", ".join(
                f"{what} +{(when - self._paused_at) * 1000:.2f} ms" for what, when in self._marks))
        if self._stream is not None:
            with contextlib.suppress(StreamClosed, OSError):
                await self._stream.send_control(Frame.FINISHED, {"downtimeMs": record.downtime_ms,
                                                                 "durationMs": record.duration_ms})

    async def _abort(self, failure: Failure) -> None:
        record = self.record
        guest = self.guest
        if self._halted and guest.state in (VmState.Paused, VmState.Saved):
            if self._prior_state is VmState.Running:
                guest.resume()
            elif guest.state is VmState.Paused:
                guest.save()
        if guest.throttle_percent:
            guest.set_throttle(0.0)
        self.memory.stop_tracking()
        guest.migration_id = None
        if self._paused_at is not None:
            record.downtime_ms = (time.monotonic() - self._paused_at) * 1000
        if self._stream is not None and not self._stream.closed:
            with contextlib.suppress(StreamClosed, OSError, TimeoutError):
                await self._stream.send(control_frame(Frame.ABORT, {
                    "reason": failure.reason.value, "message": failure.message}), within=1.0)
        phase = MigrationPhase.Cancelled if failure.reason is FailureReason.Cancelled else MigrationPhase.Failed
        log.info("migration %s %s: %s", self.migration_id, phase.value.lower(), failure.message)
        record.finish(phase, MigrationFailure(reason=failure.reason, message=failure.message))

    async def _close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._stream is not None:
            self._stream.close()


# --------------------------------------------------------------------------------------------------
# Target side


class TargetMigration:
    """Receives one VM: a reservation and a ticket first, then the stream, then the switchover."""

    role = MigrationRole.target

    def __init__(self, host: MigrationHost, guest: Guest, migration_id: str, mode: MigrationMode,
                 ticket: str, expires_in: float) -> None:
        assert guest.memory is not None
        self.host = host
        self.guest = guest
        self.memory: GuestMemory = guest.memory
        self.migration_id = migration_id
        self.ticket = ticket
        self.expires_in = expires_in
        self.record = MigrationRecord(migration_id, guest.vm_id, MigrationRole.target, mode, self.memory.pages)
        self.connected = False
        self.resolve_token: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._cancel: Failure | None = None
        self._final_at: float | None = None
        self._marks: list[tuple[str, float]] = []
        self._expiry = asyncio.get_running_loop().call_later(expires_in, self._expire)

    @property
    def committed(self) -> bool:
        """True once the guest resumed here: from then on the VM is this host's."""
        return self.record.committed

    def _expire(self) -> None:
        if not self.connected and not self.record.finished:
            self._discard(Failure(FailureReason.Timeout,
                                  f"no migration stream arrived within {self.expires_in:g} s; the "
                                  "reservation was released"))

    def cancel(self, reason: FailureReason, message: str) -> bool:
        """Abort before the guest resumed here (False when it already did, or the migration is over)."""
        if self.committed or self.record.finished:
            return False
        if not self.connected or self.task is None or self.task.done():
            self._discard(Failure(reason, message))
            return True
        if self._cancel is None:
            self._cancel = Failure(reason, message)
            self.task.cancel()
        return True

    def _discard(self, failure: Failure) -> None:
        if self.record.finished:
            return
        self._expiry.cancel()
        self.host.discard_incoming(self.guest)
        phase = MigrationPhase.Cancelled if failure.reason is FailureReason.Cancelled else MigrationPhase.Failed
        log.info("incoming migration %s %s: %s", self.migration_id, phase.value.lower(), failure.message)
        self.record.finish(phase, MigrationFailure(reason=failure.reason, message=failure.message))
        self.host.migration_ended(self)

    def accepts(self, hello: dict[str, Any], issuer: TicketIssuer) -> bool:
        """True when the HELLO carries this migration's valid, unused ticket."""
        ticket = hello.get("ticket")
        return (not self.connected and not self.record.finished and isinstance(ticket, str)
                and hmac.compare_digest(ticket.encode(), self.ticket.encode())
                and issuer.check(ticket, self.migration_id, self.guest.vm_id)
                and hello.get("vmId") == self.guest.vm_id and hello.get("pages") == self.memory.pages)

    async def serve(self, stream: FrameStream, hello: dict[str, Any]) -> None:
        """Run the target side on an accepted, authenticated stream."""
        self.connected = True
        self._expiry.cancel()
        self.task = asyncio.current_task()
        record = self.record
        record.started = time.monotonic()
        record.phase = MigrationPhase.Transferring
        record.peer = stream.peer[0]
        record.touch()
        token = hello.get("resolveToken")
        self.resolve_token = token if isinstance(token, str) and 16 <= len(token) <= 128 else None
        try:
            try:
                try:
                    await stream.send_control(Frame.WELCOME, {"resolvePort": self.host.migration_port})
                except (StreamClosed, OSError) as exc:
                    raise Failure(FailureReason.SourceLost, f"the source went away at the handshake ({exc}); "
                                  "the reservation was released") from None
                switchover = await self._receive(stream)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                raise self._cancel or Failure(FailureReason.TargetLost, "the target agent is shutting down") \
                    from None
            self._switchover(switchover)  # no await in there: the guest resumes or the copy is refused
        except Failure as failure:
            with contextlib.suppress(StreamClosed, OSError, TimeoutError):
                await stream.send(control_frame(Frame.ABORT, {
                    "reason": failure.reason.value, "message": failure.message}), within=1.0)
            self._discard(failure)
            return
        except Exception as exc:  # a bug must not keep the reservation (or the copy) forever
            log.exception("incoming migration %s failed unexpectedly", self.migration_id)
            if not self.committed:
                self._discard(Failure(FailureReason.SourceLost, f"internal error on the target: {exc!r}; the "
                                      "partial VM was discarded"))
            return
        with contextlib.suppress(StreamClosed, OSError, ProtocolError, TimeoutError):
            await stream.send_control(Frame.RESUMED, {"digest": record.target_digest,
                                                      "heartbeat": self.guest.heartbeat})
            log.info("VM %s arrived by migration %s and is %s", self.guest.vm_id, self.migration_id,
                     self.guest.state.value)
            frame = await stream.read_frame(5.0, MAX_CONTROL_BYTES)
            if frame.kind == Frame.FINISHED:
                payload = parse_control(frame.body)
                if isinstance(payload.get("downtimeMs"), int | float):
                    record.downtime_ms = float(payload["downtimeMs"])
                record.touch()

    async def _receive(self, stream: FrameStream) -> dict[str, Any]:
        record = self.record
        memory = self.memory
        ingress = self.host.ingress
        max_body = _PAGES_HEAD.size + MAX_FRAME_PAGES * (8 + PAGE_SIZE)
        round_started = time.monotonic()
        round_bytes = 0
        try:
            while True:
                frame = await stream.read_frame(IDLE_TIMEOUT, max_body)
                if frame.kind == Frame.PAGES:
                    size = len(frame.body)
                    round_index, idx, versions, payload = parse_pages(frame.body)
                    if frame.flags & FLAG_FINAL and self._final_at is None and round_index > 0:
                        self._final_at = time.monotonic()
                        if record.mode is MigrationMode.Live:
                            record.phase = MigrationPhase.SwitchingOver
                    memory.apply(idx, versions, payload)
                    if round_index != record.round:
                        record.round = round_index
                        round_started = time.monotonic()
                        round_bytes = 0
                    round_bytes += size
                    record.pages_sent += len(idx)
                    record.wire_bytes += size
                    record.remaining_pages = max(0, record.remaining_pages - len(idx))
                    elapsed = time.monotonic() - round_started
                    if elapsed > 0.02:
                        record.throughput_mbps = round_bytes * 8 / 1e6 / elapsed
                    record.touch()
                    if self._final_at is not None:
                        self._marks.append(("applied", time.monotonic()))
                    await ingress.consume(size)
                    if self._final_at is not None:
                        self._marks.append(("shaped", time.monotonic()))
                    continue
                payload_json = parse_control(frame.body)
                self._marks.append((Frame(frame.kind).name, time.monotonic()))
                if frame.kind == Frame.ROUND_END:
                    record.remaining_pages = int(payload_json.get("dirtyPages", 0))
                    record.dirty_rate_mib_ps = float(payload_json.get("dirtyRateMiBps", 0.0))
                    record.throttle_percent = float(payload_json.get("throttlePercent", 0.0))
                    record.rounds.append(RoundInfo(
                        round=int(payload_json.get("round", record.round)),
                        sent_mib=int(payload_json.get("pages", 0)) / 256,
                        seconds=float(payload_json.get("seconds", 0.0)),
                        dirty_mib=record.remaining_pages / 256))
                    record.touch()
                elif frame.kind == Frame.SWITCHOVER:
                    return payload_json
                elif frame.kind == Frame.ABORT:
                    raise _failure_from_peer(payload_json, FailureReason.SourceLost, "the source aborted")
                else:
                    raise ProtocolError(f"unexpected frame {Frame(frame.kind).name} during transfer")
        except CorruptPage as exc:
            raise Failure(FailureReason.MemoryMismatch,
                          f"a page arrived with other bytes than its version promises ({exc}); the partial VM "
                          "was discarded and the VM keeps running on the source") from None
        except (StreamClosed, OSError) as exc:
            raise Failure(FailureReason.SourceLost,
                          f"the source went away during the copy after {record.pages_sent / 256:.1f} MiB "
                          f"({exc}); the partial VM was discarded") from None
        except (ProtocolError, ValueError, TypeError, ArithmeticError) as exc:
            raise Failure(FailureReason.SourceLost,
                          f"the source broke the migration protocol ({exc}); the partial VM was discarded") \
                from None

    def _switchover(self, switchover: dict[str, Any]) -> None:
        """Verify the memory and resume the guest here (the commit point), or raise Failure."""
        record = self.record
        record.phase = MigrationPhase.SwitchingOver
        with contextlib.suppress(ValueError):
            record.mode = MigrationMode(str(switchover.get("mode", record.mode.value)))
        digest = self.memory.digest_hex()
        record.source_digest = str(switchover.get("digest", ""))[:64]
        record.target_digest = digest
        if record.source_digest != digest:
            raise Failure(FailureReason.MemoryMismatch,
                          f"memory digest mismatch after the copy (source {record.source_digest}, target "
                          f"{digest}); the target discarded its copy and the VM keeps running on the source")
        heartbeat = switchover.get("heartbeat")
        drivers = switchover.get("drivers")
        if isinstance(heartbeat, int) and heartbeat >= 0:
            self.guest.heartbeat = heartbeat
        if isinstance(drivers, list) and all(isinstance(d, str) for d in drivers):
            self.guest.drivers = list(drivers)
        state = VmState.Saved if switchover.get("resumeState") == VmState.Saved.value else VmState.Running
        self.host.activate_incoming(self.guest, state)
        record.committed = True
        record.remaining_pages = 0
        record.finish(MigrationPhase.Succeeded)
        self.host.migration_ended(self)
        if self._final_at is not None and log.isEnabledFor(logging.DEBUG):
            log.debug("incoming migration %s: resumed +%.2f ms after the first final frame (%s)",
                      self.migration_id, (time.monotonic() - self._final_at) * 1000, ", ".join(
                          f"{what} +{(when - self._final_at) * 1000:.2f}" for what, when in self._marks
                          if when >= self._final_at))

    def answer_resolve(self, token: Any) -> bool | None:
        """The source lost the stream during the switchover: did the guest resume here?

        None for a wrong token. If it had not resumed, it never will: the copy is discarded now.
        """
        if self.resolve_token is None or not isinstance(token, str) \
                or not hmac.compare_digest(token.encode(), self.resolve_token.encode()):
            return None
        if not self.committed:
            self.cancel(FailureReason.SourceLost, "the stream broke before the switchover completed and the "
                        "source kept the VM; the copy here was discarded")
        return self.committed


async def resolve_with_target(host: str, port: int, migration_id: str, token: str,
                              give_up_after: float = 60.0) -> bool | None:
    """Ask the target whether it resumed the guest: True or False as it states, None when it cannot be
    asked within ``give_up_after`` seconds (refused connections and silence prove nothing: a partition
    looks the same as a dead host). A target that does not know the migration has restarted since,
    with whatever it ran: the guest cannot run there (False)."""
    deadline = time.monotonic() + give_up_after
    delay = 0.05
    while True:
        try:
            stream = await open_stream(host, port, within=2.0)
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                log.warning("migration %s: cannot reach the target for %.0f s (%s)", migration_id, give_up_after,
                            exc)
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        try:
            await stream.send_control(Frame.RESOLVE, {"migrationId": migration_id, "resolveToken": token})
            frame = await stream.read_frame(10.0, MAX_CONTROL_BYTES)
            payload = parse_control(frame.body)
            if frame.kind == Frame.DECISION:
                return bool(payload.get("known")) and bool(payload.get("resumed"))
        except (StreamClosed, OSError, ProtocolError):
            pass
        finally:
            stream.close()
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(delay)


# --------------------------------------------------------------------------------------------------
# The listener's side of a connection


async def handle_connection(host: MigrationHost, issuer: TicketIssuer, sock: socket.socket) -> None:
    """Serve one connection to the migration port; anything unauthenticated or malformed is dropped."""
    stream = FrameStream(sock)
    try:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                if bytes(await stream.read_exactly(len(MAGIC), None)) != MAGIC:
                    raise ProtocolError("bad magic")
                frame = await stream.read_frame(None, MAX_HELLO_BYTES)
                payload = parse_control(frame.body)
        except (TimeoutError, StreamClosed, ProtocolError, OSError) as exc:
            log.info("migration port: dropped a connection from %s: %s", stream.peer[0], exc)
            return
        migration_id = payload.get("migrationId")
        if frame.kind == Frame.HELLO and isinstance(migration_id, str):
            incoming = host.find_incoming(migration_id)
            if incoming is None or not incoming.accepts(payload, issuer):
                log.warning("migration port: refused a stream for %r from %s (no valid ticket)",
                            migration_id, stream.peer[0])
                return
            await incoming.serve(stream, payload)
        elif frame.kind == Frame.RESOLVE and isinstance(migration_id, str):
            incoming = host.find_incoming(migration_id)
            if incoming is None:
                await stream.send_control(Frame.DECISION, {"known": False})
                return
            resumed = incoming.answer_resolve(payload.get("resolveToken"))
            if resumed is not None:
                await stream.send_control(Frame.DECISION, {"known": True, "resumed": resumed})
        else:
            log.info("migration port: dropped a connection from %s: unexpected opening frame", stream.peer[0])
    except Exception:  # the listener must survive anything a peer does
        log.exception("migration port: error serving a connection")
    finally:
        stream.close()
