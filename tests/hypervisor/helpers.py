"""Helpers for the hypervisor tests: polling with deadlines, agent fixtures' building blocks, and a
TCP proxy that breaks a migration stream at a chosen moment.

Talks to agents only through HypervisorClient and their TCP ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from vmshift.hypervisor.client import AgentError, HypervisorClient
from vmshift.hypervisor.migration.wire import Frame
from vmshift.hypervisor.protocol import MigrationStatus, VmDefinition, VmInfo, VmState, WorkloadSpec

T = TypeVar("T")
#: Clients of the two agents of ``pair``.
Clients = tuple[HypervisorClient, HypervisorClient]


async def poll(check: Callable[[], Awaitable[T | None]], what: str, within: float = 60.0,
               interval: float = 0.05, describe: Callable[[], Awaitable[str]] | None = None) -> T:
    """Await ``check`` until it returns something truthy; fail saying what was expected and seen."""
    deadline = time.monotonic() + within
    last: object = None
    while True:
        try:
            result = await check()
        except AgentError as exc:
            result, last = None, exc
        else:
            last = result
        if result:
            return result
        if time.monotonic() > deadline:
            seen = await describe() if describe else repr(last)
            raise AssertionError(f"timed out after {within:.0f}s waiting for {what}; last seen: {seen}")
        await asyncio.sleep(interval)


async def running_vm(client: HypervisorClient, vm_id: str, memory_mib: int = 64, *, dirty: float = 0.0,
                     working_set: float = 0.0, prefill: float = 0.0, compatibility: bool = False,
                     cpus: int = 1, disks: list[dict[str, object]] | None = None) -> VmInfo:
    """Define and start a VM whose workload dirties ``dirty`` MiB/s in a ``working_set`` MiB hot set."""
    definition = VmDefinition.model_validate({
        "name": vm_id, "namespace": "tests", "cpus": cpus, "memoryMiB": memory_mib,
        "compatibility": compatibility, "disks": disks or [],
        "workload": WorkloadSpec(dirty_rate_mib_ps=dirty, working_set_mib=working_set,
                                 prefill_mib=prefill).model_dump(),
    })
    await client.define_vm(vm_id, definition)
    return await client.start_vm(vm_id)


async def finished(client: HypervisorClient, migration_id: str, within: float = 90.0) -> MigrationStatus:
    """The migration's status once it has finished on this agent."""
    async def check() -> MigrationStatus | None:
        status = await client.get_migration(migration_id)
        return status if status.phase.finished else None

    async def describe() -> str:
        return (await client.get_migration(migration_id)).model_dump_json()

    return await poll(check, f"migration {migration_id} to finish on {client.endpoint}", within,
                      describe=describe)


async def vm_state(client: HypervisorClient, vm_id: str) -> VmState | None:
    """The VM's state on this agent, None when the agent does not have it."""
    try:
        return (await client.get_vm(vm_id)).state
    except AgentError as exc:
        if exc.status == 404:
            return None
        raise


async def heartbeat_grows(client: HypervisorClient, vm_id: str, within: float = 20.0) -> None:
    """Fail unless the VM's heartbeat moves on this agent (it runs here)."""
    first = (await client.get_vm(vm_id)).heartbeat

    async def moved() -> bool:
        vm = await client.get_vm(vm_id)
        return vm.state is VmState.Running and vm.heartbeat > first

    await poll(moved, f"VM {vm_id}'s heartbeat to grow past {first} on {client.endpoint}", within)


_HEADER = struct.Struct("<BBHI")


class BreakingProxy:
    """A TCP proxy from a source agent to a target's migration port that breaks the stream on cue.

    ``cut_after_bytes``: close both sides once that many bytes went source -> target.
    ``close_on_source_frame``: close both sides, without forwarding it, when the source sends a frame
    of this type (e.g. SWITCHOVER: the source is left in doubt, the target never heard it).
    ``close_on_target_frame``: close both sides, without forwarding it, when the target sends a frame of
    this type (e.g. RESUMED), so the source never hears it; ``target_kinds``: the types the target sent.
    ``drop_source_frame``: (type, k): silently drop the source's k-th frame of that type and forward the
    rest (e.g. a PAGES frame: the target misses those pages without knowing it).
    ``resolve_port``: tell the source (in the target's WELCOME, the rest of it kept) to re-dial this port to
    resolve a broken switchover, e.g. a closed one: the source cannot ask the target (a partition).
    ``corrupt_source_frame``: (type, k, offset): flip one bit of the body byte at ``offset`` (negative:
    from the end) in the source's k-th frame of that type and forward it (a page damaged on the way).
    """

    def __init__(self, target_host: str, target_port: int, *, cut_after_bytes: int | None = None,
                 close_on_source_frame: int | None = None, close_on_target_frame: int | None = None,
                 drop_source_frame: tuple[int, int] | None = None, resolve_port: int | None = None,
                 corrupt_source_frame: tuple[int, int, int] | None = None) -> None:
        self.target = (target_host, target_port)
        self.corrupt_source_frame = corrupt_source_frame
        self.resolve_port = resolve_port
        self.drop_source_frame = drop_source_frame
        self.source_frames: dict[int, int] = {}
        self.cut_after_bytes = cut_after_bytes
        self.close_on_source_frame = close_on_source_frame
        self.close_on_target_frame = close_on_target_frame
        self.forwarded = 0
        self.target_kinds: list[int] = []
        self.broken = asyncio.Event()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept(self._listener))
        return int(self._listener.getsockname()[1])

    async def close(self) -> None:
        self._break()
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()

    def _break(self) -> None:
        """Close every connection at once: their pumps stop and _serve closes both sockets."""
        self.broken.set()
        for pump in self._pumps:
            pump.cancel()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _address = await loop.sock_accept(listener)
            client.setblocking(False)
            connection = asyncio.create_task(self._serve(client))
            self._connections.add(connection)
            connection.add_done_callback(self._connections.discard)

    async def _serve(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.setblocking(False)
        try:
            await loop.sock_connect(upstream, self.target)
            pumps = [asyncio.create_task(self._upstream(_Side(client), _Side(upstream))),
                     asyncio.create_task(self._downstream(_Side(upstream), _Side(client)))]
            self._pumps.update(pumps)
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            upstream.close()
            client.close()

    async def _upstream(self, reader: _Side, writer: _Side) -> None:
        try:
            await writer.send(await reader.read_exactly(8))  # the magic
            while not self.broken.is_set():
                head = await reader.read_exactly(_HEADER.size)
                kind, _flags, _reserved, length = _HEADER.unpack(head)
                body = await reader.read_exactly(length)
                if kind == self.close_on_source_frame:
                    break
                self.source_frames[kind] = self.source_frames.get(kind, 0) + 1
                if self.drop_source_frame == (kind, self.source_frames[kind]):
                    continue
                if self.corrupt_source_frame is not None and self.corrupt_source_frame[:2] == (
                        kind, self.source_frames[kind]):
                    damaged = bytearray(body)
                    damaged[self.corrupt_source_frame[2]] ^= 0x10
                    body = bytes(damaged)
                try:
                    await writer.send(head + body)
                except OSError:
                    return  # the target closed: what it sent before that still reaches the source (downstream)
                self.forwarded += len(head) + len(body)
                if self.cut_after_bytes is not None and self.forwarded >= self.cut_after_bytes:
                    break
        except OSError:
            pass
        self._break()

    async def _downstream(self, reader: _Side, writer: _Side) -> None:
        with contextlib.suppress(OSError):
            while not self.broken.is_set():
                head = await reader.read_exactly(_HEADER.size)
                body = await reader.read_exactly(_HEADER.unpack(head)[3])
                kind = _HEADER.unpack(head)[0]
                self.target_kinds.append(kind)
                if kind == self.close_on_target_frame:
                    break
                if kind == Frame.WELCOME and self.resolve_port is not None:
                    body = json.dumps({**json.loads(body), "resolvePort": self.resolve_port}).encode()
                    head = _HEADER.pack(*_HEADER.unpack(head)[:3], len(body))
                await writer.send(head + body)
        self._break()


class _Side:
    """One side of the proxy: a non-blocking socket read into a buffer. A failed send leaves reads alone, so
    what a peer sent before it reset the connection still comes out (an asyncio stream drops it: a failed
    write closes its transport at once)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()

    async def read_exactly(self, n: int) -> bytes:
        """The next ``n`` bytes; ConnectionError if the peer closes first."""
        while len(self._buffer) < n:
            chunk = await self._loop.sock_recv(self.sock, max(n - len(self._buffer), 1 << 20))
            if not chunk:
                raise ConnectionError("the peer closed the connection")
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def send(self, data: bytes) -> None:
        await self._loop.sock_sendall(self.sock, data)
