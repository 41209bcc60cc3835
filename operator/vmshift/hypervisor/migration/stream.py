"""The migration connection: framed reads and writes over one non-blocking TCP socket.

Transport only: it moves frames of the wire format (``wire.py``) and knows nothing of what they
mean. Reads land in one reusable buffer, so a PAGES frame arrives in place without a copy; writes
give up when the peer accepts nothing for ``SEND_STALL_TIMEOUT`` seconds. A frame of pages goes out
as one scatter-gather write (:meth:`FrameStream.send_parts`) straight from the views it is made of.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from vmshift.hypervisor.migration.wire import HEADER, MAGIC, ControlMessage, Frame, ProtocolError, encode

SOCKET_BUFFER = 4 * 1024 * 1024
READ_AHEAD = 64 * 1024
CONNECT_TIMEOUT = 5.0
SEND_STALL_TIMEOUT = 30.0
#: After a last word (an ABORT), how long to read and drop what the peer still sends before closing.
LINGER_SECONDS = 5.0
#: The most buffers one sendmsg() takes (the kernel's IOV_MAX).
IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)

Buffer = bytes | bytearray | memoryview


class StreamClosed(ConnectionError):
    """The peer closed the connection (or it broke)."""


@dataclass
class Received:
    kind: int
    flags: int
    body: memoryview  # valid until the next read on the stream


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

    async def send_parts(self, parts: Sequence[Buffer], within: float | None = SEND_STALL_TIMEOUT) -> None:
        """Write ``parts`` back to back, with as few system calls as the kernel allows and no copy in
        between (sendmsg of up to IOV_MAX buffers at a time; a partial write goes on where it stopped)."""
        if self.closed:
            raise StreamClosed("stream already closed")
        parts = list(parts)
        ends = list(itertools.accumulate(map(len, parts)))  # where each part ends in the whole write
        total = ends[-1] if ends else 0
        done = self._send_now(parts, ends, 0)
        if done >= total:
            return
        try:
            async with asyncio.timeout(within):
                while done < total:
                    await self._writable()
                    done = self._send_now(parts, ends, done)
        except TimeoutError:
            raise StreamClosed(f"the peer accepted no data for {within:.0f} s") from None
        except OSError as exc:
            raise StreamClosed(f"sending failed: {exc}") from None

    def _send_now(self, parts: list[Buffer], ends: list[int], done: int) -> int:
        """Send ``parts`` from byte ``done`` on, as much as the kernel takes without waiting; the new ``done``."""
        total = ends[-1] if ends else 0
        try:
            while done < total:
                batch = _rest(parts, ends, done, IOV_MAX)
                n = self.sock.sendmsg(batch)
                done += n
                if n < sum(map(len, batch)):
                    return done
        except (BlockingIOError, InterruptedError):
            return done
        except OSError as exc:
            raise StreamClosed(f"sending failed: {exc}") from None
        return done

    async def _writable(self) -> None:
        """Wait until the socket takes data again."""
        waiter: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        fd = self.sock.fileno()
        self._loop.add_writer(fd, ready)
        try:
            await waiter
        finally:
            self._loop.remove_writer(fd)

    async def send_message(self, message: ControlMessage, within: float | None = SEND_STALL_TIMEOUT) -> None:
        await self.send(encode(message), within)

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

        A frame lands in place and nothing of it is copied; each read also takes up to READ_AHEAD bytes
        of what follows, so the next frame's header costs no system call. What the kernel holds already
        is read without a trip through the event loop; only a read that must wait sets a timeout.
        """
        if self._end - self._start < n:
            self._make_room(n)
            if not self._recv_now(n):
                await self._recv_within(n, within)
        out = self._view[self._start:self._start + n]
        self._start += n
        return out

    def _want(self, n: int) -> memoryview:
        """Where the next read lands: what ``n`` still misses, plus READ_AHEAD (the next frame's header
        and the start of its body come along) as far as the buffer has room."""
        limit = min(len(self._buf), self._start + n + READ_AHEAD)
        return self._view[self._end:limit]

    def _recv_now(self, n: int) -> bool:
        """Read what the kernel holds, without waiting; True once ``n`` bytes are buffered."""
        try:
            while self._end - self._start < n:
                got = self.sock.recv_into(self._want(n))
                if got == 0:
                    raise StreamClosed("the peer closed the connection")
                self._end += got
                self.bytes_received += got
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if isinstance(exc, StreamClosed):
                raise
            raise StreamClosed(f"receiving failed: {exc}") from None
        return True

    async def _recv_within(self, n: int, within: float | None) -> None:
        """Wait for the rest of ``n`` bytes; StreamClosed when none come for ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while self._end - self._start < n:
                    got = await self._loop.sock_recv_into(self.sock, self._want(n))
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

    async def read_frame(self, within: float | None, max_body: int) -> Received:
        head = await self.read_exactly(HEADER.size, within)
        kind, flags, _reserved, length = HEADER.unpack(head)
        if kind not in Frame._value2member_map_:
            raise ProtocolError(f"unknown frame type {kind}")
        if length > max_body:
            raise ProtocolError(f"frame of type {Frame(kind).name} is {length} bytes, more than {max_body}")
        body = await self.read_exactly(length, within)
        return Received(kind, flags, body)

    def poll_frame(self, max_body: int) -> Received | None:
        """The next frame if the kernel holds all of it now, else None and nothing consumed (never waits)."""
        if self._end - self._start < HEADER.size:
            self._make_room(HEADER.size)
            if not self._recv_now(HEADER.size):
                return None
        kind, flags, _reserved, length = HEADER.unpack_from(self._buf, self._start)
        if kind not in Frame._value2member_map_:
            raise ProtocolError(f"unknown frame type {kind}")
        if length > max_body:
            raise ProtocolError(f"frame of type {Frame(kind).name} is {length} bytes, more than {max_body}")
        whole = HEADER.size + length
        if self._end - self._start < whole:
            self._make_room(whole)
            if not self._recv_now(whole):
                return None
        body = self._view[self._start + HEADER.size:self._start + whole]
        self._start += whole
        return Received(kind, flags, body)

    async def linger(self, within: float = LINGER_SECONDS) -> None:
        """Close after a last word: end our side, then read and drop what the peer still sends until it
        closes too, for at most ``within`` seconds.

        Closing a socket that holds unread data resets the connection at once. The peer's next send then
        fails before it may have read our last frame, and a relay on the way may drop that frame. Once the
        peer has read it, it stops sending and closes, and so do we."""
        if self.closed:
            return
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self._start = self._end = 0
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(within):
                while await self._loop.sock_recv_into(self.sock, self._view):
                    pass
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


def _rest(parts: list[Buffer], ends: list[int], done: int, most: int) -> list[Buffer]:
    """Up to ``most`` of the parts that follow the first ``done`` bytes (the first one cut where they end).
    ``ends``: the running total of the parts' sizes, so the place is found by bisection, not a loop
    over a frame's thousand parts."""
    first = bisect.bisect_right(ends, done)
    rest = parts[first:first + most]
    into = done - (ends[first - 1] if first else 0)
    if into and rest:
        rest[0] = memoryview(rest[0])[into:]
    return rest


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
