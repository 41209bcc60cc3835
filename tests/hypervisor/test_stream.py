"""The migration connection's transport: scatter-gather writes that the kernel takes in pieces."""

from __future__ import annotations

import asyncio
import socket

import pytest

from vmshift.hypervisor.guest import GuestMemory
from vmshift.hypervisor.migration.stream import IOV_MAX, FrameStream, StreamClosed
from vmshift.hypervisor.migration.wire import MAX_PAGES_BODY, Frame, pages_prefix, parse_pages


async def test_a_scatter_gather_write_arrives_whole_through_a_small_socket_buffer() -> None:
    """More parts than one sendmsg takes, through buffers far smaller than the data: every partial
    write goes on where it stopped, and the frames arrive byte for byte."""
    memory = GuestMemory("vm-stream", 16)
    memory.prefill(memory.pages)
    frames = [memory.frame_parts(range(lo, lo + 256), pages_prefix(0, 256)) for lo in range(0, memory.pages, 256)]
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
