"""The migration connection's transport: scatter-gather writes that the kernel takes in pieces."""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmshift.hypervisor.guest import GuestMemory
from vmshift.hypervisor.migration.stream import IOV_MAX, FrameStream, StreamClosed, _rest
from vmshift.hypervisor.migration.wire import MAX_PAGES_BODY, Abort, Frame, decode, pages_prefix, parse_pages


async def test_a_scatter_gather_write_arrives_whole_through_a_small_socket_buffer() -> None:
    """More parts than one sendmsg takes, through buffers far smaller than the data: every partial
    write goes on where it stopped, and the frames arrive byte for byte."""
    memory = GuestMemory("vm-stream", 16)
    memory.prefill(memory.pages)
    # Every other page (a dirty round's scattered pages): one part per page, so more parts than IOV_MAX.
    scattered = [*range(0, memory.pages, 2), *range(1, memory.pages, 2)]
    frames = [memory.frame_parts(scattered[lo:lo + 256], pages_prefix(0, 256)) for lo in range(0, memory.pages, 256)]
    parts = [part for frame in frames for part in frame]
    assert len(parts) > IOV_MAX
    left, right = socket.socketpair()
    for sock in (left, right):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sender, receiver = FrameStream(left), FrameStream(right)
    target = GuestMemory("vm-stream", 16)

    async def receive() -> int:
        count = 0
        for _ in frames:
            frame = await receiver.read_frame(10.0, MAX_PAGES_BODY)
            assert frame.kind == Frame.PAGES
            _round, idx, versions, payload = parse_pages(frame.body)
            target.apply(idx, versions, payload)
            count += len(idx)
        return count

    reading = asyncio.create_task(receive())
    await sender.send_parts(parts)
    assert await reading == memory.pages
    assert target.digest == memory.digest
    sender.close()
    receiver.close()


async def test_a_scatter_gather_write_to_a_closed_peer_is_a_closed_stream() -> None:
    left, right = socket.socketpair()
    sender = FrameStream(left)
    right.close()
    with pytest.raises(StreamClosed, match="sending failed"):
        await sender.send_parts([b"x" * 65536] * 64)
    sender.close()


async def test_frames_arrive_whole_however_the_bytes_are_cut_and_a_silent_peer_times_out() -> None:
    """Reads take what the kernel holds (and read ahead into the next frame): frames written in odd
    pieces (a header split, several frames in one write, a body a byte at a time) arrive byte for byte,
    then a peer that sends nothing more is a closed stream after ``within`` seconds."""
    memory = GuestMemory("vm-cuts", 4)
    memory.prefill(300)
    frames = [memory.encode(range(lo, lo + n), pages_prefix(0, n)) for lo, n in ((0, 3), (3, 256), (259, 1), (260, 40))]
    data = b"".join(frames)
    cuts = [0, 5, 9, len(frames[0]) + 17, len(frames[0]) + len(frames[1]) - 1, len(frames[0]) + len(frames[1]),
            len(data) - 4000, *range(len(data) - 20, len(data)), len(data)]
    left, right = socket.socketpair()
    sender, receiver = FrameStream(left), FrameStream(right)
    target = GuestMemory("vm-cuts", 4)

    async def write() -> None:
        for lo, hi in itertools.pairwise(cuts):
            await sender.send(data[lo:hi])
            await asyncio.sleep(0.001)

    writing = asyncio.create_task(write())
    for expected in frames:
        frame = await receiver.read_frame(5.0, MAX_PAGES_BODY)
        assert frame.kind == Frame.PAGES and len(frame.body) == len(expected) - 8
        target.apply(*parse_pages(frame.body)[1:])
    await writing
    assert target.digest == memory.digest
    with pytest.raises(StreamClosed, match="no data from the peer"):
        await receiver.read_frame(0.05, MAX_PAGES_BODY)
    sender.close()
    receiver.close()


async def _after_the_last_word(end: Callable[[FrameStream], Awaitable[None]]) -> str:
    """Over real TCP, the sender has sent what the receiver never reads; the receiver answers with an ABORT
    and ends the connection with ``end``. What the sender's read after the ABORT says."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        left = socket.create_connection(listener.getsockname())
        right, _ = listener.accept()
    sender, receiver = FrameStream(left), FrameStream(right)
    await sender.send(b"\0" * 256 * 1024)  # unread by the receiver: closing on it resets the connection
    await receiver.send_message(Abort(reason="MemoryMismatch", message="page 7 differs"))
    ending = asyncio.create_task(end(receiver))
    frame = await sender.read_frame(10.0, 4096)
    assert decode(frame.kind, frame.body) == Abort(reason="MemoryMismatch", message="page 7 differs")
    with pytest.raises(StreamClosed) as after:
        await sender.read_frame(10.0, 4096)
    sender.close()
    await asyncio.wait_for(ending, 30)  # a lingering receiver ends once the sender closed, not at its timeout
    receiver.close()
    return str(after.value)


async def _close(stream: FrameStream) -> None:
    stream.close()


async def test_a_last_word_then_a_linger_ends_the_stream_cleanly_where_a_close_resets_it() -> None:
    """An agent that refuses a migration sends ABORT, then lingers: the source, still sending, reads the ABORT
    and then the end of the stream. A plain close with the source's data unread resets the connection,
    and a source (or a relay between) whose send fails on that reset may never read the ABORT."""
    assert await _after_the_last_word(FrameStream.linger) == "the peer closed the connection"
    assert "Connection reset by peer" in await _after_the_last_word(_close)


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(min_value=0, max_value=9), min_size=1, max_size=12), cut=st.floats(0, 1))
def test_what_is_left_after_a_partial_write_is_exactly_the_unsent_bytes(sizes: list[int], cut: float) -> None:
    data = bytes(range(sum(sizes)))
    parts: list[bytes | bytearray | memoryview] = []
    at = 0
    for size in sizes:
        parts.append(data[at:at + size])
        at += size
    sent = int(cut * len(data))
    ends = list(itertools.accumulate(map(len, parts)))
    assert b"".join(bytes(p) for p in _rest(parts, ends, sent, len(parts))) == data[sent:]
    rest = _rest(parts, ends, sent, 2)
    assert len(rest) <= 2 and data[sent:].startswith(b"".join(bytes(p) for p in rest))
